"""
What the learned attention biases learned: the bias each head adds to a score, against the
distance between query and key, for trained T5 and FIRE models beside ALiBi's fixed lines,
out to 8x the training length.

  python -m study.plot_bias                                   # the seed-1337 ALiBi, T5 and FIRE runs of the CPU config
  python -m study.plot_bias out/shakespeare_char_cpu/t5_seed1338 --max-distance 1024

Writes <plots-dir>/learned_bias.png (one panel per run, one line per head), learned_bias.json
(the curves, and FIRE's learned c and threshold L) and learned_bias.md (a table of both);
--from-json learned_bias.json writes the figure and the table again, without the checkpoints. The bias is read off the encoding itself
(attn_bias) for a query at position max_distance, so every distance 0 .. max_distance is drawn;
a T5 bucket or a FIRE input that training never reached is drawn all the same, past the dashed line.
FIRE's bias also depends on the query's position once that passes L: a query at the last training
position is drawn dotted beside it.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import (ArgumentParser, UserError, atomic_write, build_model, load_checkpoint, positive,  # noqa: E402
                    read_json, run_cli, write_json, write_text)
from study.runs import LABELS, read_config  # noqa: E402
from study.flags import add_plots_dir_flag  # noqa: E402

BIASED = ("alibi", "t5", "fire")  # the encodings that add a bias to the scores
DEFAULT_RUNS = [f"out/shakespeare_char_cpu/{enc}_seed1337" for enc in BIASED]


@torch.inference_mode()
def bias_by_distance(model, query):
    """(n_head, query + 1): the bias a query at position `query` adds to the key `distance` back,
    for distance = 0 .. query."""
    bias = model.transformer.pos.attn_bias(range(query, query + 1), range(0, query + 1))
    if bias is None:
        raise UserError(f"{model.config.pos_encoding} adds no bias to the attention scores; pass ALiBi, T5 or FIRE runs")
    return bias[0, :, 0, :].flip(-1).float()  # keys 0 .. query -> distances query .. 0, reversed


def read_biases(run_dirs, max_distance):
    out = []
    for run_dir in run_dirs:
        config = read_config(run_dir)
        model = build_model(load_checkpoint(Path(run_dir) / "ckpt.pt"))
        block = config["block_size"]
        row = {"run": str(run_dir), "encoding": config["pos_encoding"], "block_size": block,
               "bias": bias_by_distance(model, max_distance).tolist()}
        if config["pos_encoding"] == "fire":
            fire = model.transformer.pos
            row["c"] = fire.c.item()
            row["L"] = abs(fire.L_multiplier.item() * fire.init_L)
            row["bias_at_block"] = bias_by_distance(model, block - 1).tolist()
        out.append(row)
    return out


def plot_biases(rows, path):
    fig, axes = plt.subplots(1, len(rows), figsize=(4.6 * len(rows), 4.2), dpi=120, squeeze=False)
    for ax, row in zip(axes[0], rows):
        bias = np.array(row["bias"])
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(bias)))
        for h, (values, color) in enumerate(zip(bias, colors)):
            ax.plot(np.arange(len(values)), values, color=color, linewidth=1.2, label=f"head {h}")
            if "bias_at_block" in row:
                near = np.array(row["bias_at_block"][h])
                ax.plot(np.arange(len(near)), near, color=color, linewidth=1.2, linestyle=":")
        ax.axvline(row["block_size"] - 1, color="gray", linestyle="--", linewidth=1,
                   label=f"longest distance in training ({row['block_size'] - 1})")
        title = f"{LABELS.get(row['encoding'], row['encoding'])} ({Path(row['run']).name})"
        if row["encoding"] == "fire":
            title += f"\nlearned c = {row['c']:.3g}, L = {row['L']:.0f}; dotted: query at {row['block_size'] - 1}"
        elif row["encoding"] == "alibi":
            title += "\nfixed: -slope x distance"
        ax.set_title(title, fontsize=9)
        ax.set_xscale("symlog", linthresh=16)
        ax.set_xlim(0, bias.shape[1] - 1)
        ax.set_xlabel("distance from query to key (characters; linear to 16, then log)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("bias added to the attention score")
    fig.suptitle("Learned attention biases per head, for a query at position "
                 f"{len(rows[0]['bias'][0]) - 1}", fontsize=11)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def best_runs(sweep_json):
    """The run at each variant's best rate in a study.sweep lr_sweep.json, for the encodings with a bias."""
    rows = read_json(sweep_json, "rerun the sweep (python -m study.sweep) to write it")
    try:
        runs = [r["runs"][f"{r['best_rate']:g}"] for r in rows if r["encoding"] in BIASED]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{sweep_json} is not an lr_sweep.json that names its runs at their best rates (rerun the"
                        f" sweep to write one)") from None
    if not runs:
        raise UserError(f"{sweep_json} has no {', '.join(BIASED)} variant")
    return runs


def format_table(rows):
    """A markdown table, one row per run: its bias at distance 0, at the longest distance in training and at
    the longest drawn, per head, and FIRE's learned c and threshold L."""
    lines = ["| run | bias at distance 0 / longest in training / longest drawn, per head | FIRE's c | FIRE's L |",
             "|---|---|---:|---:|"]
    for row in rows:
        b, name = row["block_size"], f"{LABELS.get(row['encoding'], row['encoding'])} ({Path(row['run']).name})"
        heads = "; ".join(f"{h[0]:+.2f} / {h[b - 1]:+.2f} / {h[-1]:+.2f}" for h in row["bias"])
        fire = f"{row['c']:.3f} | {row['L']:.1f}" if "c" in row else "– | –"
        lines.append(f"| {name} | {heads} (distances 0 / {b - 1} / {len(row['bias'][0]) - 1}) | {fire} |")
    return "\n".join(lines)


def markdown(rows):
    """learned_bias.md: format_table's table."""
    return f"# Learned attention biases (study.plot_bias)\n\n{format_table(rows)}\n"


def write_outputs(rows, plots_dir):
    """learned_bias.png, .json and .md in plots_dir; their paths."""
    path = Path(plots_dir) / "learned_bias.png"
    plot_biases(rows, path)
    write_json(path.with_suffix(".json"), rows)
    write_text(path.with_suffix(".md"), markdown(rows))
    return [path, path.with_suffix(".json"), path.with_suffix(".md")]


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", default=DEFAULT_RUNS,
                        help="run directories of encodings that bias the scores (default: the CPU config's seed-1337"
                             " alibi, t5 and fire runs)")
    parser.add_argument("--max-distance", type=positive(int), default=511,
                        help="the query's position: distances 0 .. this are drawn (default: 511, 8x the CPU block)")
    parser.add_argument("--best-of", metavar="LR_SWEEP_JSON", default=None,
                        help="instead of the runs: the sweep seed's run at the best rate of each variant in this"
                             " lr_sweep.json (study.sweep) whose encoding biases the scores (its run paths are"
                             " relative to where the sweep ran)")
    parser.add_argument("--from-json", default=None, metavar="FILE",
                        help="instead of the runs: the figure and the table again from a learned_bias.json written"
                             " earlier, into --plots-dir (no checkpoints needed)")
    add_plots_dir_flag(parser, "learned_bias.png, .json and .md")
    args = parser.parse_args()
    if sum((args.runs != DEFAULT_RUNS, bool(args.best_of), bool(args.from_json))) > 1:
        raise UserError("give run directories, --best-of or --from-json, only one of them")
    if args.from_json:
        rows = read_json(args.from_json, "rerun study.plot_bias on the runs to write it")
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "bias" in r for r in rows):
            raise UserError(f"{args.from_json} is not the learned_bias.json that study.plot_bias writes")
    else:
        rows = read_biases(best_runs(args.best_of) if args.best_of else args.runs, args.max_distance)
    paths = write_outputs(rows, args.plots_dir)
    print(format_table(rows))
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    run_cli(main)
