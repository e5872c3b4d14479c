"""
The README's summary: one figure and the table of the numbers it shows, drawn from committed files only.
Left, each of the seven encodings' val loss at its own best learning rate (the lr_sweep study's 3 seeds,
read from their records); right, each encoding's passkey exact match against the reading length, 64 to 512
(the passkey study's retrieval.json), seeds as dots in both.

  python -m study.summary --plots-dir plots/summary

Writes <plots-dir>/summary.png and summary.md. It measures and trains nothing.
"""

import argparse
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import ArgumentParser, UserError, command_line, read_json, run_cli, write_text  # noqa: E402
from study.flags import add_plots_dir_flag  # noqa: E402
from study.plot import save  # noqa: E402
from study.retrieval import headline_cells, pooled  # noqa: E402
from study.runs import COLORS, LABELS, variant_of_run  # noqa: E402

SWEEP, PASSKEY = Path("plots/lr_sweep/lr_sweep.json"), Path("plots/passkey/retrieval.json")
SEEDS = (1337, 1338, 1339)


def tuned_losses(sweep_path=SWEEP, records=Path("records")):
    """{encoding: [final val loss per seed]} at each of the seven encodings' best rate in the sweep (its seed
    1337 run's name, then the same name for every seed), from the runs' records."""
    out = {}
    for row in read_json(sweep_path, "run python -m study lr_sweep"):
        if row["settings"]:  # (a variant such as a hybrid: not one of the seven)
            continue
        best = Path(row["runs"][f"{row['best_rate']:g}"])
        name, group = variant_of_run(best), best.parent.name
        out[row["encoding"]] = {"rate": row["best_rate"], "losses": [
            read_json(records / group / f"{name}_seed{s}" / "summary.json", "its record is missing")["final_val_loss"]
            for s in SEEDS]}
    return dict(sorted(out.items(), key=lambda kv: statistics.mean(kv[1]["losses"])))


def passkey_curves(path=PASSKEY):
    """{encoding: (reading lengths, (seeds, lengths) exact match)} of the seven encodings read plainly."""
    results = read_json(path, "run python -m study passkey")
    cells, out = headline_cells(results), {}
    for row in results["rows"]:
        if row["method"] != "none" or row["label"] != LABELS.get(row["encoding"]):  # (the seven, plainly)
            continue
        lengths = [L for L in results["lengths"] if not isinstance(row["results"][str(L)], str)]
        out[row["encoding"]] = (lengths, np.array([pooled(row["results"][str(L)], cells) for L in lengths]).T)
    return results["block_size"], out


def table(losses, block, curves):
    """summary.md: the numbers the figure shows."""
    lines = ["| encoding | best rate | val loss at it (mean; seeds " + "/".join(map(str, SEEDS)) + ") | "
             + " | ".join(f"passkey at {L}" for L in (block, 2 * block, 4 * block, 8 * block)) + " |",
             "|---|---:|---|" + "---:|" * 4]
    for enc, got in losses.items():
        lengths, values = curves.get(enc, ([], None))
        cells = []
        for L in (block, 2 * block, 4 * block, 8 * block):
            if L not in lengths:
                cells.append("n/a")
                continue
            v = values[:, lengths.index(L)]
            cells.append(f"{100 * v.mean():.1f}% ({'/'.join(f'{100 * x:.0f}' for x in v)})")
        each = "/".join(f"{x:.4f}" for x in got["losses"])
        lines.append(f"| {LABELS[enc]} | {got['rate']:g} | {statistics.mean(got['losses']):.4f} ({each}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(losses, block, curves, path):
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.6), dpi=120, gridspec_kw={"width_ratios": [1, 1.15]})
    for x, (enc, got) in enumerate(losses.items()):
        color = COLORS[enc]
        left.scatter([x] * len(got["losses"]), got["losses"], color=color, s=22, alpha=0.8, zorder=3)
        left.hlines(statistics.mean(got["losses"]), x - 0.3, x + 0.3, color=color, linewidth=2)
    left.set_xticks(range(len(losses)), [f"{LABELS[e]}\nlr {g['rate']:g}" for e, g in losses.items()], fontsize=8)
    left.set_ylabel("final val loss (nats/char; lower is better)")
    left.set_title("Shakespeare at 64 characters: each encoding at its own best rate\n(bar: mean of 3 seeds; dots:"
                   " each seed)", fontsize=9)
    left.grid(alpha=0.3, axis="y")
    for enc in losses:
        if enc not in curves:
            continue
        lengths, values = curves[enc]
        right.plot(lengths, values.mean(0), color=COLORS[enc], marker="o", markersize=3, label=LABELS[enc])
        for seed in values:
            right.scatter(lengths, seed, color=COLORS[enc], s=9, alpha=0.45)
    right.axvline(block, color="gray", linestyle="--", linewidth=1)
    right.set_xscale("log", base=2)
    ticks = sorted({L for lengths, _ in curves.values() for L in lengths})
    right.set_xticks(ticks, [f"{L}\n{L // block}x" for L in ticks])
    right.minorticks_off()
    right.set_ylim(-0.03, 1.03)
    right.set_xlabel("characters read (dashed: the 64 trained on)")
    right.set_ylabel("passkey exact match")
    right.set_title("Retrieving five digits past the training length (line: mean of 3 seeds;\ndots: each seed;"
                    " learned has no positions past 64)", fontsize=9)
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    save(fig, path)


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plots_dir_flag(parser, "summary.png and summary.md")
    args = parser.parse_args()
    losses = tuned_losses()
    block, curves = passkey_curves()
    if not losses or not curves:
        raise UserError(f"{SWEEP} or {PASSKEY} holds none of the seven encodings")
    plots = Path(args.plots_dir)
    text = (f"# The summary\n\nThe numbers of the README's summary figure (summary.png), from {SWEEP} with each"
            f" encoding's records and from {PASSKEY} (exact match pooled over the 11 depths, all seeds, then each);"
            f" written by `{command_line()}`.\n\n{table(losses, block, curves)}\n")
    write_text(plots / "summary.md", text)
    plot(losses, block, curves, plots / "summary.png")
    print(text)
    print(f"wrote {plots / 'summary.md'} and summary.png")


if __name__ == "__main__":
    run_cli(main)
