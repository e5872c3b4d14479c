"""
Two probes of how far back a model reads, beside evaluate.py's losses:

  attention distance  per layer and head, the attention-weighted mean distance |i - j| over all
                      query positions i of a window, and the attention entropy (nats), on the val
                      split's windows at 1x and 4x the training length -> attention_distance.png.
                      Uniform causal attention over a window of T gives (T - 1) / 4 and the mean of
                      ln(i + 1): drawn as the reference.
  copy probe          a passage of n val characters followed at once by the same passage (period
                      n); the mean loss on the second copy minus the mean loss on the first, at the
                      passage's characters 2..n (the first character of each copy is left out: nothing
                      announces the repeat). Well below 0 means the model reads the first copy. The
                      join of two passages mid-word costs a few characters of loss by itself, so
                      also against a control: the second copy minus the same passage read after an
                      unrelated one of the same length (0: no copying at all).
                      n in 16, 32, 48 (a copy n back is within a 64-character training window:
                      the positive control) and 96, 192 (beyond it). Two readings: the whole 2n characters at once, and the
                      sliding window of evaluate.py (at most the last block_size characters), which
                      cannot see a copy more than block_size back -> copy_probe.png.

  python -m study.probes out/shakespeare_char_cpu --plots-dir plots

Each run is read with its best-val checkpoint (ckpt.pt); seeds of one variant are averaged
(mean ± std over seeds). Writes <plots-dir>/attention_distance.png, copy_probe.png and probes.json.
"""

import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common import (UserError, announce_dtype, autocast, build_model, eval_windows, load_tokens,  # noqa: E402
                    pick_device, positive, run_cli, write_json)
from study.evaluate import default_stride, position_limit, sliding_window_losses, token_losses  # noqa: E402
from study.flags import measure_parser  # noqa: E402
from study.plot import by_family, encoding_styles, legend_below, length_axis, redraw, save  # noqa: E402
from study.runs import Runs, find_runs  # noqa: E402

MULTIPLES = (1, 4)  # attention at 1x and 4x the training length
PERIODS = (16, 32, 48, 96, 192)
PASSAGES = 100
ATTENTION_WINDOWS = 32  # windows per length for the attention statistics (evenly spread over val)


# --- attention ----------------------------------------------------------------


def attention_stats(model, windows, batch=16):
    """Attention-weighted mean distance and mean entropy per layer and head over all query
    positions of the windows (n, T): two tensors (n_layer, n_head), float64."""
    cfg = model.config
    T = windows.shape[1]
    distance = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).clamp(min=0).float()  # masked keys: weight 0
    sums = torch.zeros(2, cfg.n_layer, cfg.n_head, dtype=torch.float64)

    def grab(module, args):  # called with each attention layer's inputs: recompute its weights
        x, pos_enc, pos, bias = args[:4]
        p = module.attention_weights(x, pos_enc, pos, bias).float().cpu()  # (B, n_head, T, T)
        sums[0, module.layer] += (p * distance).sum(-1).double().sum((0, 2))
        sums[1, module.layer] += -torch.special.xlogy(p, p).sum(-1).double().sum((0, 2))

    hooks = [block.attn.register_forward_pre_hook(grab) for block in model.transformer.h]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for i in range(0, len(windows), batch):
                model(windows[i:i + batch].to(device))
    finally:
        for h in hooks:
            h.remove()
    mean_distance, entropy = sums / (len(windows) * T)
    return mean_distance, entropy


def uniform_reference(T):
    """Mean distance and entropy of uniform causal attention over a window of T."""
    return (T - 1) / 4, float(np.mean(np.log(np.arange(1, T + 1))))


# --- copy probe -----------------------------------------------------------------


def copy_sequences(tokens, n, count=PASSAGES):
    """`count` passages of n tokens, evenly spread over `tokens`, each followed by itself, and the
    control: each passage after the next one (an unrelated passage of the same length). Two (count, 2n)."""
    if len(tokens) < n or count < 2:
        raise UserError(f"the copy probe needs 2 or more passages of {n} tokens; the text has {len(tokens)}")
    starts = torch.linspace(0, len(tokens) - n, count).round().long()
    passages = tokens[starts[:, None] + torch.arange(n)]
    return torch.cat([passages, passages], 1), torch.cat([passages.roll(-1, 0), passages], 1)


def copy_gain(losses, control, n):
    """From losses (count, 2n - 1) at the targets 1 .. 2n-1 of copy_sequences' two tensors: the
    second copy's characters 2..n minus the first copy's (the probe as defined), and minus the
    same characters after the unrelated passage (the control: the join of two passages costs both
    alike, so this difference is the copying alone); then the three means."""
    first, second, after_other = (losses[:, :n - 1].mean().item(), losses[:, n:].mean().item(),
                                  control[:, n:].mean().item())
    return second - first, second - after_other, first, second, after_other


def sliding_losses(model, sequences, block, stride):
    """Loss at every target of each sequence when no prediction sees more than its last `block`
    characters: positions < block as in the sequence, later ones from evaluate.py's sliding window."""
    L = sequences.shape[1] - 1
    head = token_losses(model, sequences[:, :min(L, block) + 1])
    if L <= block:
        return head
    tail = sliding_window_losses(model, sequences, block, stride)[:, block + 1:]
    return torch.cat([head, tail], 1)


# --- many runs ------------------------------------------------------------------


def spread(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def probe_runs(run_dirs, data_dir=None, device="cpu", periods=PERIODS, passages=PASSAGES, multiples=MULTIPLES,
               attention_windows=ATTENTION_WINDOWS, sliding_stride=None, progress=True):
    """Both probes on every run; returns a JSON-ready dict (see write_outputs)."""
    runs = Runs(run_dirs, "runs to probe")
    run_dirs, configs, groups, labels = runs.run_dirs, runs.configs, runs.groups, runs.labels
    t0 = time.time()
    device = pick_device(device)
    ckpts = [runs.checkpoint(i) for i in range(len(run_dirs))]
    block = runs.block_size()
    stride = sliding_stride or default_stride(block)
    tokens = load_tokens(runs.data_dir(data_dir), "val")
    lengths = [m * block for m in multiples]
    windows = {T: eval_windows(tokens, T, attention_windows)[:, :-1] for T in lengths}
    sequences = {n: copy_sequences(tokens, n, passages) for n in periods}

    rows = []
    bar = tqdm(total=len(run_dirs), desc="probes", unit="run", disable=not progress, dynamic_ncols=True)
    for variant, idx in groups.items():
        row = {"label": labels[variant], "encoding": configs[idx[0]]["pos_encoding"],
               "runs": [str(run_dirs[i]) for i in idx], "attention": [], "copy": []}
        per_run = []
        for i in idx:
            announce_dtype(configs[i]["provenance"]["dtype"], device)
            with autocast(configs[i]["provenance"]["dtype"], device):  # as it was trained
                model = build_model(ckpts[i], device)
                limit, reason = position_limit(model)
                att = {T: (reason if limit and T > limit else attention_stats(model, windows[T])) for T in lengths}
                cp = {}
                for n, (seqs, control) in sequences.items():
                    whole = reason if limit and 2 * n - 1 > limit else copy_gain(
                        token_losses(model, seqs), token_losses(model, control), n)
                    cp[n] = (whole, copy_gain(sliding_losses(model, seqs, block, stride),
                                              sliding_losses(model, control, block, stride), n))
            per_run.append((att, cp))
            bar.update(1)
        for T in lengths:
            got = [a[T] for a, _ in per_run]
            entry = {"length": T, "uniform_distance": uniform_reference(T)[0], "uniform_entropy": uniform_reference(T)[1]}
            if isinstance(got[0], str):
                entry["reason"] = got[0]
            else:
                entry["distance"] = [d.tolist() for d, _ in got]  # per run: (n_layer, n_head)
                entry["entropy"] = [e.tolist() for _, e in got]
                entry["layer_distance"] = torch.stack([d for d, _ in got]).mean((0, 2)).tolist()
                entry["layer_entropy"] = torch.stack([e for _, e in got]).mean((0, 2)).tolist()
                entry["distance_mean"], entry["distance_std"] = spread([d.mean().item() for d, _ in got])
            row["attention"].append(entry)
        for n in periods:
            entry = {"period": n}
            for k, reading in enumerate(("whole", "sliding")):
                got = [c[n][k] for _, c in per_run]
                if isinstance(got[0], str):
                    entry[reading] = {"reason": got[0]}
                else:
                    gain, sd = spread([g[0] for g in got])
                    vs_control, vs_control_sd = spread([g[1] for g in got])
                    entry[reading] = {"gain": gain, "std": sd, "vs_control": vs_control, "vs_control_std": vs_control_sd,
                                      "run_gains": [g[0] for g in got], "run_vs_control": [g[1] for g in got],
                                      **{k: statistics.mean(g[j] for g in got)
                                         for j, k in ((2, "first"), (3, "second"), (4, "after_other"))}}
            row["copy"].append(entry)
        rows.append(row)
    bar.close()
    return {"block_size": block, "lengths": lengths, "periods": list(periods), "passages": passages,
            "attention_windows": attention_windows, "sliding_stride": stride, "rows": rows,
            "device": device, "elapsed_s": round(time.time() - t0, 1)}


# --- outputs ------------------------------------------------------------------


def cell(mean, std):
    return f"{mean:+.3f}" + (f" ± {std:.3f}" if std is not None else "")


def format_tables(results):
    """Markdown: attention distance per layer, then the copy probe's gains."""
    lines = ["| variant | " + " | ".join(f"mean distance at {T} (uniform {results['rows'][0]['attention'][k]['uniform_distance']:.1f}),"
                                         f" layers 0..{len(results['rows'][0]['attention'][0].get('layer_distance', [0])) - 1}"
                                         for k, T in enumerate(results["lengths"])) + " |",
             "|---|" + "---|" * len(results["lengths"])]
    for row in results["rows"]:
        cells = []
        for a in row["attention"]:
            cells.append("n/a" if "reason" in a else
                         f"{a['distance_mean']:.1f} ({' / '.join(f'{d:.1f}' for d in a['layer_distance'])})")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    for key, title in (("gain", "second copy − first copy"), ("vs_control", "second copy − the same after another passage")):
        lines += ["", f"Copy probe, {title} (nats/char):", "",
                  "| variant | reading | " + " | ".join(f"n = {n}" for n in results["periods"]) + " |",
                  "|---|---|" + "---|" * len(results["periods"])]
        for row in results["rows"]:
            for reading, name in (("whole", "whole 2n"), ("sliding", f"last {results['block_size']}")):
                cells = ["n/a" if "reason" in c[reading] else cell(c[reading][key], c[reading][f"{key}_std"
                                                                                          if key != "gain" else "std"])
                         for c in row["copy"]]
                lines.append(f"| {row['label']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_attention(results, path):
    """Per length: mean distance and entropy of every head (points), per layer, by encoding."""
    lengths, rows = results["lengths"], results["rows"]
    fig, axes = plt.subplots(2, len(lengths), figsize=(6 * len(lengths), 8), dpi=120, squeeze=False)
    width = 0.8 / max(1, len(rows))
    colors = [color for color, _ in encoding_styles([row["encoding"] for row in rows])]
    for col, T in enumerate(lengths):
        for r_i, (key, name, uniform) in enumerate((("distance", "attention-weighted mean distance (characters)",
                                                    "uniform_distance"),
                                                   ("entropy", "attention entropy (nats)", "uniform_entropy"))):
            ax = axes[r_i][col]
            for k, row in enumerate(rows):
                a = row["attention"][col]
                if "reason" in a:
                    continue
                values = np.array(a[key])  # (runs, layers, heads)
                layers = np.arange(values.shape[1])
                x = layers[None, :, None] + (k - (len(rows) - 1) / 2) * width + np.zeros_like(values)
                ax.scatter(x.ravel(), values.ravel(), s=14, alpha=0.7, color=colors[k],
                           label=f"{row['label']} ({len(values)} seed{'s' * (len(values) > 1)} x heads)")
                ax.plot(layers + (k - (len(rows) - 1) / 2) * width, values.mean((0, 2)), "_", markersize=14,
                        color=colors[k])
            ax.axhline(rows[0]["attention"][col][uniform], color="gray", linestyle="--", linewidth=1,
                       label="uniform causal attention")
            n_layer = max(len(np.array(r["attention"][col][key])[0]) for r in rows if "reason" not in r["attention"][col])
            ax.set_xticks(range(n_layer), [f"layer {i}" for i in range(n_layer)])
            ax.set_ylabel(name)
            ax.set_title(f"windows of {T} ({T / results['block_size']:g}x the training length)", fontsize=10)
            ax.grid(alpha=0.3)
    legend_below(axes[1][0])
    fig.suptitle("How far back each head looks, on val text: one point per head and seed, a bar at the layer's mean"
                 "\n(learned: n/a past its table)", fontsize=10)
    save(fig, path)


def plot_copy(results, path):
    """The copy probe against the period: a column per family of encodings; the top row as defined,
    the bottom row against the control; solid reads all 2n characters, dotted only the last block."""
    block, periods = results["block_size"], results["periods"]
    families = by_family(list(zip(results["rows"], encoding_styles([r["encoding"] for r in results["rows"]]))),
                         lambda item: item[0]["encoding"])
    fig, axes = plt.subplots(2, len(families), figsize=(6.5 * len(families), 8.5), dpi=120, squeeze=False)
    for col, (family, items) in enumerate(families):
        for ax, key, title in ((axes[0][col], "gain", "2nd copy − 1st copy (the probe as defined)"),
                               (axes[1][col], "vs_control", "2nd copy − the same passage after another one")):
            for row, (color, dash) in items:
                for reading in ("whole", "sliding"):
                    done = [(c["period"], c[reading]) for c in row["copy"] if "reason" not in c[reading]]
                    if not done:
                        continue
                    stds = [r["std" if key == "gain" else "vs_control_std"] or 0.0 for _, r in done]
                    ax.errorbar([n for n, _ in done], [r[key] for _, r in done], yerr=stds if any(stds) else None,
                                color=color, linestyle=dash if reading == "whole" else ":", capsize=3,
                                marker="o" if reading == "whole" else "x", alpha=1 if reading == "whole" else 0.7,
                                label=row["label"] if reading == "whole" else None)
            ax.axhline(0, color="black", linewidth=0.8)
            length_axis(ax, periods, [str(n) for n in periods], block, "" if key == "gain" else
                        f"period n: the passage's length (dashed: the training length, {block})")
            ax.set_ylabel("difference in loss (nats/char)")
            ax.set_title(f"{family}\n{title}" if key == "gain" else title, fontsize=10)
        dotted = f"dotted: reading only the last {block}"
        axes[1][col].plot([], [], color="gray", linestyle=":", marker="x", label=dotted)
        legend_below(axes[1][col], last=(dotted,))
    fig.subplots_adjust(hspace=0.25)
    fig.suptitle(f"Copy probe: {results['passages']} val passages of n characters, each followed by itself;"
                 f" below 0 = the model reads the first copy (mean ± std over seeds)", fontsize=10)
    save(fig, path)


def write_outputs(results, plots_dir="plots"):
    plots_dir = Path(plots_dir)
    write_json(plots_dir / "probes.json", results)
    return draw_figures(results, plots_dir) + [plots_dir / "probes.json"]


def draw_figures(results, plots_dir):
    """attention_distance.png and copy_probe.png in plots_dir, from the results alone; their paths."""
    paths = [Path(plots_dir) / "attention_distance.png", Path(plots_dir) / "copy_probe.png"]
    plot_attention(results, paths[0])
    plot_copy(results, paths[1])
    return paths


# --- command line ---------------------------------------------------------------


def main():
    parser = measure_parser(__doc__, "probes.json", "the outputs")
    parser.add_argument("--passages", type=positive(int), default=PASSAGES,
                        help=f"copy-probe passages per period (default: {PASSAGES})")
    parser.add_argument("--attention-windows", type=positive(int), default=ATTENTION_WINDOWS,
                        help=f"val windows per length for the attention statistics (default: {ATTENTION_WINDOWS})")
    args = parser.parse_args()
    if args.from_json:
        return redraw(args.from_json, "probes.json", "study.probes", ("rows", "periods"), format_tables,
                      draw_figures, args.plots_dir)
    results = probe_runs(find_runs(args.runs), args.data_dir, args.device, passages=args.passages,
                         attention_windows=args.attention_windows, progress=args.progress)
    print(format_tables(results))
    for path in write_outputs(results, args.plots_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
