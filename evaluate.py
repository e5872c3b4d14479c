"""
Length extrapolation: the val loss of trained runs at context lengths longer than the one
they were trained on, with and without RoPE context-extension tricks.

  python evaluate.py out/shakespeare_char_cpu                 # every run under it; 1x, 2x, 4x, 8x the block size
  python evaluate.py out/x/rope_seed1337 out/x/learned_seed1337 --lengths 64,128,256,512
  python evaluate.py out/x --rope-scaling none,linear --rope-scaling-factor 4

For an eval length L the val split is cut into non-overlapping windows of L + 1 tokens
(window i starts at token i*L; the last, partial window is dropped): the model reads the
first L tokens and predicts the last L, so every val token after the first is predicted
exactly once, and every model is measured on the same windows. Besides the mean loss we
keep the mean loss at each position of the window: extrapolation failures show up as a
loss that climbs past the training length.

RoPE runs are also evaluated with position interpolation ("linear": positions divided by
s) and NTK-aware scaling ("ntk": base theta * s^(d/(d-2))), applied at evaluation time to
the unchanged weights; by default s = L / block_size, so at 1x they equal plain RoPE.
A learned position table has no vectors past the training length: reported as n/a.
Several seeds of one encoding are averaged (their std goes to the JSON).

Each run is measured with its best-val checkpoint (ckpt.pt), the weights sample.py uses.
Writes <plots-dir>/extrapolation.png, loss_by_position.png and extrapolation.json.

Cost: every length covers the whole val split, so each (run, variant, length) is one pass
over ~111k tokens. For the CPU config's five encodings (rope as 3 variants) at 1x-8x that
is 25 passes, about 2 CPU-minutes; --max-windows N evaluates an evenly spread subset
of N windows per length instead, for a quick look.
"""

import argparse
import re
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common import (ArgumentParser, UserError, atomic_write, build_model, digest, eval_windows,  # noqa: E402
                    load_checkpoint, load_meta, load_tokens, pick_device, positive, run_cli, write_json)
from plot import variant_styles  # noqa: E402
from runs import COLORS, find_runs, group_variants, read_config, variant_labels  # noqa: E402

SCALINGS = ("none", "linear", "ntk")
SCALING_LABELS = {"linear": "linear (PI)", "ntk": "NTK"}
LINESTYLES = {"linear": (0, (5, 1)), "ntk": (0, (1, 1))}  # RoPE's scalings (plain RoPE: its variant's line)
MARKERS = {"none": "o", "linear": "s", "ntk": "^"}
DEFAULT_MULTIPLES = (1, 2, 4, 8)
BATCH_TOKENS = 16384  # tokens per forward pass: 32 windows at 512, attention scores ~130 MB per layer


# --- one model ----------------------------------------------------------------


def position_limit(model):
    """Why the model cannot read windows longer than its limit, or (None, None) if it can."""
    max_len = model.transformer.pos.max_len
    if max_len is None:
        return None, None
    return max_len, f"{model.config.pos_encoding} table has {max_len} positions"


def loss_by_position(model, windows, batch_tokens=BATCH_TOKENS, bar=None):
    """Mean cross-entropy at each position 0..L-1 of the windows, float64, shape (L,).
    Its mean is the mean loss over all predicted tokens, since every window has L of them."""
    L = windows.shape[1] - 1
    device = next(model.parameters()).device
    batch = max(1, batch_tokens // L)
    total = torch.zeros(L, dtype=torch.float64)
    with torch.inference_mode():
        for i in range(0, len(windows), batch):
            w = windows[i:i + batch].to(device)
            x, y = w[:, :-1], w[:, 1:]
            _, loss = model(x, y, reduction="none")  # (B, L): the loss at every position
            total += loss.double().sum(0).cpu()
            if bar is not None:
                bar.update(x.numel())
    return total / len(windows)


# --- many runs ----------------------------------------------------------------


def auto_factor(length, block_size):
    """The scaling that maps `length` onto the training length (never below 1: no squeezing)."""
    return max(1.0, length / block_size)


def scalings_of(encoding, scalings):
    """The rope_scaling values a run of `encoding` is evaluated with."""
    return scalings if encoding == "rope" else ["none"]


def row_label(variant_label, scaling, scaling_factor, block_size):
    if scaling == "none":
        return variant_label
    s = f"L/{block_size}" if scaling_factor is None else f"{scaling_factor:g}"
    return f"{variant_label} + {SCALING_LABELS[scaling]} (s={s})"


def check_runs(ckpts):
    """All runs must share the training length: the x axis is in multiples of it."""
    blocks = sorted({c["model_args"]["block_size"] for c in ckpts})
    if len(blocks) > 1:
        raise UserError(f"the runs were trained with different block sizes ({', '.join(map(str, blocks))});"
                        f" evaluate them separately")
    return blocks[0]


def resolve_data_dir(ckpts, run_dirs, data_dir):
    if data_dir is not None:
        return Path(data_dir)
    dirs = {c.get("config", {}).get("data_dir") for c in ckpts}
    if None in dirs or len(dirs) > 1:
        raise UserError(f"the runs do not name one data directory ({', '.join(sorted(map(str, dirs)))});"
                        f" pass --data-dir")
    return Path(dirs.pop())


def evaluate_runs(run_dirs, lengths=None, scalings=SCALINGS, scaling_factor=None, data_dir=None,
                  max_windows=None, device="cpu", batch_tokens=BATCH_TOKENS, progress=True):
    """Evaluate runs at several context lengths; returns a JSON-ready dict (see write_outputs).

    run_dirs: run directories holding ckpt.pt. lengths: eval lengths (default 1x, 2x, 4x, 8x the
    block size). scalings: RoPE variants, any of "none", "linear", "ntk". scaling_factor: None for
    s = L / block_size at each length, or a fixed s. data_dir: default the runs' own. max_windows:
    cap on windows per length (evenly spaced), default all."""
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise UserError("no runs to evaluate")
    t0 = time.time()
    scalings = list(dict.fromkeys(scalings))  # drop repeats, keep the order
    bad = [s for s in scalings if s not in SCALINGS]
    if bad or not scalings:
        raise UserError(f"unknown rope scaling {', '.join(bad) or '(none given)'}; choose from {', '.join(SCALINGS)}")
    if scaling_factor is not None and scaling_factor <= 0:
        raise UserError(f"--rope-scaling-factor must be positive, got {scaling_factor}")
    device = pick_device(device)
    ckpts = [load_checkpoint(r / "ckpt.pt", "cpu") for r in run_dirs]
    block_size = check_runs(ckpts)
    configs = [read_config(r) for r in run_dirs]
    groups = group_variants(configs)  # runs that differ only in the seed are averaged into one row
    labels = variant_labels(configs, groups)
    variant_of = {i: key for key, idx in groups.items() for i in idx}
    lengths = sorted(set(lengths or [m * block_size for m in DEFAULT_MULTIPLES]))
    if lengths[0] < 1:
        raise UserError(f"eval lengths must be positive, got {lengths[0]}")
    data_dir = resolve_data_dir(ckpts, run_dirs, data_dir)
    chars = load_meta(data_dir)["chars"]
    for ckpt, run_dir in zip(ckpts, run_dirs):
        if ckpt["vocab"] != chars:
            raise UserError(f"{run_dir} was trained on another vocabulary than {data_dir}; pass its --data-dir")
    tokens = load_tokens(data_dir, "val")
    windows = {L: eval_windows(tokens, L, max_windows) for L in lengths}  # the same for every model

    # one job per (run, scaling, length). The bar counts predicted tokens: every length covers the
    # whole split, so each job is about the same work, longer windows a bit more (attention).
    jobs = [(i, variant_of[i], scaling, L) for i, c in enumerate(configs)
            for scaling in scalings_of(c["pos_encoding"], scalings) for L in lengths]
    bar = tqdm(total=sum(windows[L][:, 1:].numel() for *_, L in jobs), desc="evaluate", unit="tok",
               unit_scale=True, disable=not progress, dynamic_ncols=True)
    per_run = {}  # (variant, scaling, length) -> [(run index, per-position losses or n/a reason, factor)]
    for i, variant, scaling, L in jobs:
        factor = None
        if scaling != "none":
            factor = auto_factor(L, block_size) if scaling_factor is None else scaling_factor
        scaled = {} if scaling == "none" else {"rope_scaling": scaling, "rope_scaling_factor": float(factor)}
        model = build_model(ckpts[i], device, **scaled)  # RoPE scaling owns no weights: same checkpoint
        limit, reason = position_limit(model)
        if limit is not None and L > limit:
            out = reason
            bar.update(windows[L][:, 1:].numel())
        else:
            out = loss_by_position(model, windows[L], batch_tokens, bar)
        per_run.setdefault((variant, scaling, L), []).append((i, out, factor))
    bar.close()

    # one row per variant and scaling, its seeds averaged; in the variants' order, scalings after
    rows = {}
    order, dashes = list(groups), variant_styles(configs, groups)
    for (variant, scaling, L), items in sorted(per_run.items(), key=lambda kv: (
            order.index(kv[0][0]), SCALINGS.index(kv[0][1]))):
        name = re.sub(r"_seed\d+$", "", run_dirs[items[0][0]].name) + ("" if scaling == "none" else f"+{scaling}")
        row = rows.setdefault((variant, scaling), {
            "name": name, "label": row_label(labels[variant], scaling, scaling_factor, block_size),
            "encoding": configs[items[0][0]]["pos_encoding"], "rope_scaling": scaling,
            # the variants of one encoding: plot.py's dashes; RoPE's scalings: their own
            "linestyle": dashes[variant][1] if scaling == "none" else LINESTYLES[scaling],
            "runs": [str(run_dirs[i]) for i, _, _ in items], "results": []})
        reasons = [out for _, out, _ in items if isinstance(out, str)]
        entry = {"length": L, "multiple": L / block_size, "factor": items[0][2], "n_windows": len(windows[L])}
        if reasons:
            entry.update(loss=None, reason=reasons[0])
        else:
            curves = torch.stack([out for _, out, _ in items])  # (runs, L)
            losses = [c.mean().item() for c in curves]
            entry.update(loss=statistics.mean(losses), std=statistics.stdev(losses) if len(losses) > 1 else None,
                         run_losses=losses, loss_by_position=curves.mean(0).tolist())
        row["results"].append(entry)
    return {
        "block_size": block_size, "lengths": lengths, "scaling_factor": scaling_factor or "auto",
        "data_dir": str(data_dir), "val_tokens": len(tokens),
        "windows": [{"length": L, "count": len(w), "stride": L, "max_windows": max_windows,
                     "predicted_tokens": w[:, 1:].numel(), "sha256": digest(w)} for L, w in windows.items()],
        "rows": list(rows.values()),
        "device": device, "elapsed_s": round(time.time() - t0, 1),
    }


# --- outputs ------------------------------------------------------------------


def format_table(results):
    """Plain-text table: one row per encoding / RoPE variant, one column per eval length."""
    block = results["block_size"]
    header = ["val loss"] + [f"{L} ({L / block:g}x)" for L in results["lengths"]]
    lines, notes = [header], []
    for row in results["rows"]:
        cells = [row["label"]]
        for r in row["results"]:
            if r["loss"] is None:
                cells.append("n/a")
                note = f"n/a: {r['reason']}"
                notes += [note] if note not in notes else []
            else:
                cells.append(f"{r['loss']:.4f}" + (f" ± {r['std']:.4f}" if r["std"] is not None else ""))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]
    windows = ", ".join(f"{w['count']} at {w['length']}" for w in results["windows"])
    return "\n".join(text + notes + [f"(nats/char on the val split's {results['val_tokens']:,} tokens;"
                                     f" windows: {windows}; trained on {block})"])


def style(row):
    """Colour by encoding (plot.py's), line style by variant or RoPE scaling, marker by scaling."""
    scaling = row["rope_scaling"]
    return dict(color=COLORS.get(row["encoding"]), linestyle=row["linestyle"], marker=MARKERS[scaling])


def plot_extrapolation(results, path):
    block, lengths = results["block_size"], results["lengths"]
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=120)
    for row in results["rows"]:
        done = [r for r in row["results"] if r["loss"] is not None]
        if not done:
            continue
        missing = len(done) < len(row["results"])
        ax.errorbar([r["length"] for r in done], [r["loss"] for r in done], capsize=3, markersize=5,
                    yerr=[r["std"] or 0.0 for r in done] if any(r["std"] for r in done) else None,
                    label=row["label"] + (f" (n/a past {done[-1]['length']})" if missing else ""), **style(row))
    ax.axvline(block, color="gray", linestyle="--", linewidth=1, label=f"training length ({block})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{L}\n{L / block:g}x" for L in lengths])
    ax.minorticks_off()
    ax.set_xlabel("eval context length (characters)")
    ax.set_ylabel("val loss (cross-entropy, nats/char)")
    ax.set_title("Length extrapolation: val loss vs eval context length\n"
                 f"mean over non-overlapping windows of the val split; models trained on {block} characters",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: lines cross everywhere
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def plot_loss_by_position(results, path):
    """Each row at the longest length it could be evaluated at: with a causal model the loss at
    position p only depends on the p tokens before it, so shorter windows show the same curve, cut."""
    block, longest = results["block_size"], results["lengths"][-1]
    # a long window leaves few windows per position: draw the raw curve faintly and a running mean on top
    k = max(1, longest // 64)
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=120)
    for row in results["rows"]:
        done = [r for r in row["results"] if r["loss"] is not None]
        if not done:
            continue
        r, kw = done[-1], {key: v for key, v in style(row).items() if key != "marker"}
        y = np.array(r["loss_by_position"])
        ax.plot(y, linewidth=0.6, alpha=0.25, color=kw["color"])
        smooth = np.convolve(y, np.ones(min(k, len(y))) / min(k, len(y)), mode="valid")
        short = f" (window {r['length']}: n/a beyond)" if r["length"] < longest else ""
        ax.plot(np.arange(len(smooth)) + (len(y) - len(smooth)) / 2, smooth, linewidth=1.5,
                label=row["label"] + short, **kw)
    ax.axvline(block, color="gray", linestyle="--", linewidth=1, label=f"training length ({block})")
    ax.set_xlim(0, longest)
    ax.set_xlabel("position in the window (characters of context before the prediction)")
    ax.set_ylabel("mean val loss at that position (nats/char)")
    smoothed = f"; bold: running mean over {k} positions" if k > 1 else ""
    ax.set_title(f"Val loss by position in a {longest}-character window{smoothed}\n"
                 f"past position {block} the models see more context than in training", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: lines cross everywhere
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def write_outputs(results, plots_dir="plots", json_path=None):
    """Write extrapolation.png, loss_by_position.png and the JSON (default <plots_dir>/extrapolation.json);
    returns their paths."""
    plots_dir = Path(plots_dir)
    paths = [plots_dir / "extrapolation.png", plots_dir / "loss_by_position.png",
             Path(json_path) if json_path else plots_dir / "extrapolation.json"]
    plot_extrapolation(results, paths[0])
    plot_loss_by_position(results, paths[1])
    write_json(paths[2], results)
    return paths


# --- command line -------------------------------------------------------------


def parse_lengths(text):
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated integers, got {text!r}") from None
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"takes positive integers, got {text!r}")
    return lengths


def parse_factor(text):
    """--rope-scaling-factor: None for 'auto', else a positive number."""
    if text == "auto":
        return None
    try:
        return positive(float)(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"takes 'auto' or a positive number: {e}") from None


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", default=["out"],
                        help="run directories, or folders to search for them (default: out)")
    parser.add_argument("--lengths", type=parse_lengths, default=None,
                        help="comma-separated eval lengths (default: 1x,2x,4x,8x the training block size)")
    parser.add_argument("--rope-scaling", default=",".join(SCALINGS),
                        help="comma-separated variants rope runs are evaluated as: none (plain RoPE), linear"
                             " (position interpolation), ntk (default: all three)")
    parser.add_argument("--rope-scaling-factor", type=parse_factor, default=None, metavar="F",
                        help="scaling factor s, or 'auto' for s = length / block size at each length (default: auto)")
    parser.add_argument("--data-dir", default=None, help="prepared data (default: the one the runs were trained on)")
    parser.add_argument("--max-windows", type=positive(int), default=None,
                        help="evaluate at most this many evenly spaced windows per length (default: all of them,"
                             " i.e. the whole val split)")
    parser.add_argument("--plots-dir", default="plots", help="where to write the PNG files (default: plots)")
    parser.add_argument("--out-json", default=None, help="results file (default: <plots-dir>/extrapolation.json)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps (default: auto)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    args = parser.parse_args()

    scalings = [s.strip() for s in args.rope_scaling.split(",") if s.strip()]
    results = evaluate_runs(find_runs(args.runs), args.lengths, scalings, args.rope_scaling_factor, args.data_dir,
                            args.max_windows, args.device, progress=args.progress)
    print(format_table(results))
    for path in write_outputs(results, args.plots_dir, args.out_json):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
