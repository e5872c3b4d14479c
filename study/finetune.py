"""
Short fine-tunes at a longer context, as the context-extension papers evaluate their methods:
a RoPE model trained on block_size characters is trained a little more on windows `factor`
times longer, with each RoPE scaling, and read at the new length and beyond.

  python -m study.finetune config/shakespeare_char_cpu.toml --seeds 1337                # 4x: 64 -> 256
  python -m study.finetune config/shakespeare_char_cpu.toml --seeds 1337 --more-seeds 1338,1339  # then 3 seeds for the 2 best

For each seed, the RoPE run of the study (<out-dir>/<config>/rope_seed<seed>, trained first if
missing) starts every fine-tune (`train.py --init-from`: its best weights, a new optimizer).
Pinned for all: 200 steps, 20 of linear warm-up then a constant 1e-4, batch_size windows of the
new length. Methods (each with factor s = --factor):
  none      plain RoPE: the control, what the fine-tune alone gives
  linear    position interpolation (Chen et al. 2023)
  ntk       NTK-aware base, theta * s^(d/(d-2))
  yarn-bB   YaRN with alpha 1 and beta B (yarn-b32: the paper's; yarn-b8: scaled to 64 characters)
A reference at another budget: RoPE trained from scratch at the new length with the config's schedule
(--scratch-seeds). Each model is read with its best-val checkpoint; the baseline is the
unchanged model reading only its last block_size characters (evaluate.py's sliding window).

Runs go to <out-dir>/<config>_finetune/. Writes <plots-dir>/finetune.md, finetune.png, finetune.json.

With --task (and the task study's budget flags, so that its RoPE runs are the ones fine-tuned), the
fine-tunes train on the task at the new length and are read by what they retrieve (study.retrieval)
at the old length, the new one and twice that; --more-seeds goes to the methods with the highest
exact match at the new length. Runs go to <out-dir>/<config>-<task>_finetune/; writes study.retrieval's
retrieval.md, retrieval.png and retrieval.json into <plots-dir>.

  python -m study.finetune config/shakespeare_char_cpu.toml --task passkey --batch-size 32 \\
      --max-iters 2000 --lr-decay-iters 2000 --scratch-seeds '' --plots-dir out/plots/passkey/finetune
"""

import re
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common import (UserError, announce_dtype, atomic_write, autocast, build_model, comma_list,  # noqa: E402
                    command_line, eval_windows, load_checkpoint, load_tokens, pick_device, positive, run_cli,
                    write_json, write_text)
from study.analysis import paired, verdict  # noqa: E402
from study.training import make_configs, parse_seeds, train_runs  # noqa: E402
from study.evaluate import default_stride, loss_by_position, sliding_baseline, sliding_window_losses  # noqa: E402
from study.retrieval import pooled, retrieval_runs  # noqa: E402
from study.retrieval import report as retrieval_report  # noqa: E402
from study.retrieval import write_outputs as write_retrieval_outputs  # noqa: E402
from study.runs import run_dtype  # noqa: E402
from train_config import add_config_flags, build_parser, config_from_args  # noqa: E402

FINETUNE = dict(max_iters=200, warmup_iters=20, learning_rate=1e-4, min_lr=1e-4, lr_decay_iters=0, eval_interval=50)
METHODS = ("none", "linear", "ntk", "yarn-b32", "yarn-b8")
METHOD_LABELS = {"none": "plain RoPE", "linear": "PI", "ntk": "NTK"}


def method_settings(method, factor):
    """TrainConfig settings of a fine-tune method."""
    if method == "none":
        return {"rope_scaling": "none", "rope_scaling_factor": 1.0}
    if method in ("linear", "ntk"):
        return {"rope_scaling": method, "rope_scaling_factor": float(factor)}
    m = re.fullmatch(r"yarn-b(\d+(?:\.\d+)?)", method)
    if m:
        return {"rope_scaling": "yarn", "rope_scaling_factor": float(factor), "yarn_alpha": 1.0,
                "yarn_beta": float(m.group(1))}
    raise UserError(f"unknown fine-tune method {method!r}; choose from none, linear, ntk, yarn-bB (B: YaRN's beta)")


def method_label(method):
    if method.startswith("yarn-b"):
        return f"YaRN β={method[6:]}"
    return METHOD_LABELS[method]


def finetune_configs(args, seeds, methods, factor, scratch_seeds):
    """(base RoPE configs, [(method, fine-tune config)], from-scratch configs at the new length)."""
    base = make_configs(args, [("rope", {})], seeds)
    group = f"{Path(base[0].run_name).parent}_finetune"  # (<config>-<task>_finetune for a task)
    block = base[0].block_size * factor
    tunes = [(m, config_from_args(args, pos_encoding="rope", seed=b.seed, block_size=block, **FINETUNE,
                                  **method_settings(m, factor), init_from=str(Path(b.out_dir) / b.run_name),
                                  rope_original_length=b.block_size if m.startswith("yarn") else 0,
                                  run_name=f"{group}/rope-ft{factor}x-{m}_seed{b.seed}"))
             for m in methods for b in base]
    scratch = [config_from_args(args, pos_encoding="rope", seed=s, block_size=block,
                                run_name=f"{group}/rope-block{block}_seed{s}") for s in scratch_seeds]
    return base, tunes, scratch


def curves(run_dir, windows, device):
    """Per-position val loss of a run's best weights on each length's windows, in its precision."""
    model = build_model(load_checkpoint(Path(run_dir) / "ckpt.pt"), device)
    dtype = run_dtype(run_dir)
    announce_dtype(dtype, device)
    with autocast(dtype, device):
        return {L: loss_by_position(model, w) for L, w in windows.items()}


def summarize(values):
    """values: {seed: loss}."""
    xs = list(values.values())
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "runs": {str(k): v for k, v in values.items()}}


def measure(base, tunes, scratch, factor, device, progress=True):
    """Whole-window and past-length means at block, block*factor and 2*block*factor, per row."""
    block = base[0].block_size
    long = block * factor
    lengths = (block, long, 2 * long)
    tokens = load_tokens(base[0].data_dir, "val")
    windows = {L: eval_windows(tokens, L) for L in lengths}
    targets = {L: eval_windows(torch.arange(len(tokens)), L)[:, 1:] for L in lengths}
    # what each row reports: (name, length, first position averaged)
    columns = [("at {b}", block, 0), ("at {l}", long, 0), ("at {l}, positions >= {b}", long, block),
               ("at {L}", 2 * long, 0), ("at {L}, positions >= {l}", 2 * long, long)]
    rows = {}
    bar = tqdm(total=len(base) + len(tunes) + len(scratch), desc="finetune eval", disable=not progress)

    def add(key, label, seed, c):
        row = rows.setdefault(key, {"label": label, "values": [{} for _ in columns]})
        for j, (_, L, start) in enumerate(columns):
            row["values"][j][seed] = c[L][start:].mean().item()

    def add_sliding(key, label, run_dir, seed, c, window):
        """The run reading only its last `window` characters (inference only)."""
        model = build_model(load_checkpoint(run_dir / "ckpt.pt"), device)
        with autocast(run_dtype(run_dir), device):
            sliding = sliding_window_losses(model, tokens, window, default_stride(window))
        add(key, label, seed, {L: sliding_baseline(c[L], sliding, targets[L], window) for L in lengths})

    for cfg in base:
        run_dir = Path(cfg.out_dir) / cfg.run_name
        c = curves(run_dir, windows, device)
        add("plain", f"RoPE trained on {block}, no fine-tune", cfg.seed, c)
        add_sliding("sliding", f"the same, sliding window of {block} (the baseline)", run_dir, cfg.seed, c, block)
        bar.update(1)
    for method, cfg in tunes:
        add(method, f"fine-tuned at {long}: {method_label(method)}", cfg.seed, curves(Path(cfg.out_dir) / cfg.run_name,
                                                                        windows, device))
        bar.update(1)
    for cfg in scratch:
        run_dir = Path(cfg.out_dir) / cfg.run_name
        c = curves(run_dir, windows, device)
        add("scratch", f"RoPE trained from scratch at {long} ({factor}x the tokens of the others)", cfg.seed, c)
        # its own baseline past its training length (the same as it up to `long`)
        add_sliding("scratch-sliding", f"the same, sliding window of {long}", run_dir, cfg.seed, c, long)
        bar.update(1)
    bar.close()
    names = [name.format(b=block, l=long, L=2 * long) for name, _, _ in columns]
    return {"block_size": block, "factor": factor, "finetune": FINETUNE, "columns": names,
            "rows": [{"key": k, "label": r["label"], "seeds": len(r["values"][0]),
                      "cells": [summarize(v) for v in r["values"]]} for k, r in rows.items()]}


def task_results(base, tunes, scratch, factor, device, progress=True):
    """Fine-tunes of task runs (train.py --task): what each retrieves at the old length, the new one and
    twice that (study.retrieval), read as trained; rows labelled as measure() labels them."""
    block = base[0].block_size
    long = block * factor
    named = [*(("plain", f"RoPE trained on {block}, no fine-tune", c) for c in base),
             *((m, f"fine-tuned at {long}: {method_label(m)}", c) for m, c in tunes),
             *(("scratch", f"RoPE trained from scratch at {long}", c) for c in scratch)]
    by_run = {str(Path(c.out_dir) / c.run_name): (key, label) for key, label, c in named}
    results = retrieval_runs(list(by_run), [block, long, 2 * long], data_dir=base[0].data_dir, device=device,
                             progress=progress, block_size=block)  # (--data-dir, not the one the runs recorded)
    for row in results["rows"]:
        row["key"], row["label"] = by_run[row["runs"][0]]
    results.update(factor=factor, finetune=FINETUNE,
                   trained=f"RoPE trained on {block} characters, then fine-tuned {FINETUNE['max_iters']} steps at"
                           f" {long} with each method (1 seed; more for the best, where --more-seeds gave them).")
    return results


def ranked(results, methods, factor):
    """The fine-tune methods, best first: by the val loss past the old length at the new one, or for a
    task by the exact match at the new length."""
    rows = [r for r in results["rows"] if r["key"] in methods]
    if "task" not in results:
        return [r["key"] for r in sorted(rows, key=lambda r: r["cells"][2]["mean"])]
    long = results["block_size"] * factor  # (ties, frequent at 0% and 100%, go to the exact match at twice that)
    return [r["key"] for r in sorted(rows, key=lambda r: (-pooled(r["results"][str(long)]).mean(),
                                                          -pooled(r["results"][str(2 * long)]).mean()))]


def differences(results, column=2):
    """Markdown: each fine-tune minus the sliding-window baseline, paired by seed, in one column."""
    rows = {r["key"]: r for r in results["rows"]}
    base = rows["sliding"]["cells"][column]["runs"]
    lines = [f"| a − the sliding window, {results['columns'][column]} | per seed | mean [95% CI] | same sign |",
             "|---|---|---|---:|"]
    for r in results["rows"]:
        if r["key"] in ("sliding", "plain", "scratch", "scratch-sliding"):
            continue
        d = paired(r["cells"][column]["runs"], base)
        ci = "" if d["ci"] is None else f" [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] ({verdict(d)})"
        lines.append(f"| {r['label']} | {', '.join(f'{x:+.4f}' for x in d['diffs'])} | {d['mean']:+.4f}{ci} |"
                     f" {d['agree']}/{len(d['diffs'])} |")
    return "\n".join(lines)


def format_table(results):
    lines = ["| val loss | seeds | " + " | ".join(results["columns"]) + " |",
             "|---|---|" + "---|" * len(results["columns"])]
    for row in results["rows"]:
        cells = [f"{c['mean']:.4f}" + (f" ± {c['std']:.4f}" if c["std"] is not None else "") for c in row["cells"]]
        lines.append(f"| {row['label']} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, path):
    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=120)
    cols = results["columns"]
    width = 0.8 / len(results["rows"])
    for k, row in enumerate(results["rows"]):
        x = [j + (k - (len(results["rows"]) - 1) / 2) * width for j in range(len(cols))]
        ax.bar(x, [c["mean"] for c in row["cells"]], width, yerr=[c["std"] or 0 for c in row["cells"]],
               capsize=2, label=f"{row['label']} ({row['seeds']} seed{'s' * (row['seeds'] > 1)})",
               hatch="//" if row["key"].endswith("sliding") else None, edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(cols)), [c.replace(", ", "\n") for c in cols])
    lows = [c["mean"] for r in results["rows"] for c in r["cells"]]
    ax.set_ylim(min(lows) - 0.05, min(max(lows) + 0.05, min(lows) + 1.0))
    ax.set_ylabel("val loss (nats/char)")
    ax.set_title(f"Short fine-tunes at {results['factor']}x the training length ({results['finetune']['max_iters']}"
                 f" steps at {results['finetune']['learning_rate']:g})\nval loss, mean ± std over seeds; hatched: the"
                 f" baseline to beat", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def main():
    parser = build_parser(__doc__)
    parser.add_argument("--seeds", default="1337", help="comma-separated seeds of the RoPE runs to fine-tune"
                                                        " (default: 1337)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated fine-tune methods (default: {','.join(METHODS)})")
    parser.add_argument("--factor", type=positive(int), default=4,
                        help="the new length is the training length times this (default: 4)")
    parser.add_argument("--more-seeds", default="", metavar="SEEDS",
                        help="then these seeds too for the --best methods (ranked by the loss at the new length past"
                             " the old one; with --task by the exact match at the new length), e.g. 1338,1339"
                             " (default: none)")
    parser.add_argument("--best", type=positive(int), default=2, help="how many methods get --more-seeds (default: 2)")
    parser.add_argument("--scratch-seeds", default="1337",
                        help="seeds of RoPE trained from scratch at the new length, or '' for none (default: 1337)")
    parser.add_argument("--plots-dir", default="out/plots/finetune",
                        help="where to write the outputs (default: out/plots/finetune)")
    parser.add_argument("--overwrite", action="store_true", help="retrain runs that hold other settings")
    add_config_flags(parser, exclude=("pos_encoding", "run_name", "seed", "init_from"))
    args = parser.parse_args()
    if not args.config:
        raise UserError("give the config of the runs to fine-tune, e.g. config/shakespeare_char_cpu.toml")
    methods = comma_list(args.methods, "--methods")
    for m in methods:
        method_settings(m, args.factor)  # unknown names: one line, before any training
    t0 = time.time()
    scratch_seeds = parse_seeds(args.scratch_seeds, "--scratch-seeds") if args.scratch_seeds.strip() else []
    base, tunes, scratch = finetune_configs(args, parse_seeds(args.seeds), methods, args.factor, scratch_seeds)
    train_runs(base, args.overwrite)
    train_runs([cfg for _, cfg in tunes] + scratch, args.overwrite)
    device = pick_device(base[0].device)
    task = base[0].task != "shakespeare"
    read = task_results if task else measure
    results = read(base, tunes, scratch, args.factor, device, base[0].progress)
    if args.more_seeds.strip():
        best = ranked(results, methods, args.factor)[:args.best]
        print(f"the {len(best)} best at {args.factor}x the training length: {', '.join(best)};"
              f" {args.more_seeds} for them")
        more = parse_seeds(args.more_seeds, "--more-seeds")
        more_base, more_tunes, _ = finetune_configs(args, more, best, args.factor, [])
        train_runs(more_base, args.overwrite)
        train_runs([cfg for _, cfg in more_tunes], args.overwrite)
        results = read(base + more_base, tunes + more_tunes, scratch, args.factor, device, base[0].progress)
        results["best"] = best
    results["wall_s"] = round(time.time() - t0, 1)
    plots = Path(args.plots_dir)
    if task:  # what the fine-tuned models retrieve: study.retrieval's report, figures and JSON
        print(retrieval_report(results))
        for path in write_retrieval_outputs(results, plots):
            print(f"wrote {path}")
        return
    table = format_table(results) + "\n\n" + differences(results)
    command = command_line()
    write_text(plots / "finetune.md", f"# Short fine-tunes at {args.factor}x the training length\n\n{table}\n\n"
               f"Val loss (nats/char) on non-overlapping windows of the val split; mean ± std over seeds."
               f" Regenerate with `{command}`.\n")
    write_json(plots / "finetune.json", results)
    plot(results, plots / "finetune.png")
    print(table)
    print(f"wrote {plots}/finetune.md, finetune.png, finetune.json")


if __name__ == "__main__":
    run_cli(main)
