"""
What task models (train.py --task) retrieve, at their training length and past it: exact match on
the tasks' fixed evaluation set (tasks.evaluation_set) at 1x, 2x, 4x and 8x the training length,
per cell (the passkey's depth, the distance from a recall query back to its key), per seed, with
95% Wilson intervals. RoPE runs are also read with the static context-extension methods of the
length study (PI, NTK, YaRN; s = L / block size). Dynamic NTK is not a row of its own: read in one
pass, as a model reads a prompt, it sets s from the whole length, which is NTK at s = L / block size.

  python -m study.retrieval out/shakespeare_char_cpu-passkey --plots-dir out/plots/passkey
  python -m study.retrieval RUN_DIR ... --rope-scaling none,ntk --lengths 64,128
  python -m study.retrieval RUN_DIR ... --ablations log-scale,clamp-32   # why RoPE breaks, on a task

Writes <plots-dir>/retrieval.json, retrieval.md (accuracy by length: pooled over seeds with its
Wilson interval, and each seed's), retrieval.png (a heatmap per variant: cell x length, colour =
exact match, the mean over seeds), retrieval_seeds.png (seed by seed, the variants whose seeds
disagree) and retrieval_readings.png (exact match against length, each variant read plainly
beside RoPE's extension methods and the ablations). Each run's counts are also kept in its folder.
"""

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common import (UserError, autocast, build_model, comma_list, digest, load_checkpoint,  # noqa: E402
                    load_meta, load_tokens, pick_device, read_json, run_cli, write_json, write_text)
from study.evaluate import (YARN_ALPHA, YARN_BETAS, ablations_of, add_ablations_flag, auto_factor,  # noqa: E402
                            check_runs, is_ablation_key, methods_of, parse_lengths, position_limit,
                            resolve_data_dir, row_label)
from study.flags import measure_parser  # noqa: E402
from study.plot import length_axis, redraw, save  # noqa: E402
from study.runs import find_runs, group_variants, read_config, variant_labels  # noqa: E402
from tasks import COPY_SIZES, DEPTHS, evaluation_set, to_task_ids, unit_correct, wilson  # noqa: E402

STATIC = ("none", "linear", "ntk", "yarn")  # (dynamic NTK read in one pass is NTK: see above)
DISTANCE_EDGES = (0, 16, 32, 64, 128, 256, 512)  # recall: query-to-key distance bins, the last open-ended
BATCH_TOKENS = 16384
CELL_KIND = {"passkey": "depth", "recall": "distance from query to key", "copy": "string length"}


def cell_labels(task):
    if task == "passkey":
        return [f"depth {d:g}" for d in DEPTHS]
    if task == "recall":
        return [f"distance {a}-{b - 1}" for a, b in zip(DISTANCE_EDGES, DISTANCE_EDGES[1:])] + \
            [f"distance {DISTANCE_EDGES[-1]}+"]
    return [f"string of {m}" for m in COPY_SIZES]


def cell_of(task, where, k):
    """The cell of every unit, (N, units) ints: the passkey's depth is its set's (the k-th of the
    evaluation set: at short lengths two depths can round to one position), recall's its distance,
    the copy's its string length (a length off COPY_SIZES: the next one up)."""
    if task == "passkey":
        return torch.full_like(where, k, dtype=torch.long)
    if task == "recall":
        return torch.bucketize(where.long(), torch.tensor(DISTANCE_EDGES[1:]), right=True)
    return torch.bucketize(where.long(), torch.tensor(COPY_SIZES)).clamp(max=len(COPY_SIZES) - 1)


@torch.inference_mode()
def counts(model, sets, task, n_cells, device, batch_tokens=BATCH_TOKENS):
    """[right, total] per cell over the evaluation examples `sets` (a list of Examples)."""
    out = np.zeros((n_cells, 2), dtype=np.int64)
    for k, examples in enumerate(sets):
        rows = max(1, batch_tokens // examples.tokens.shape[1])
        for i in range(0, len(examples.tokens), rows):
            part = examples[i:i + rows]
            x, y = part.inputs_and_targets()
            logits, _ = model(x.to(device), y.to(device))
            right, cells = unit_correct(logits.float().cpu(), part), cell_of(task, part.where, k)
            np.add.at(out, (cells.flatten().numpy(), 0), right.flatten().numpy().astype(np.int64))
            np.add.at(out, (cells.flatten().numpy(), 1), 1)
    return out


STORED = "retrieval.json"  # in a run's folder: its counts per reading and length, kept with its record


def set_digests(sets):
    """{length: a fingerprint of its evaluation examples}: a stored count is reused only for the same examples."""
    return {str(L): digest(*(t for e in examples for t in (e.tokens, e.targets(), e.unit)))
            for L, examples in sets.items()}


def stored_counts(run_dir, digests):
    """A run's stored counts {reading: {length: [right, total] per cell, or why n/a}} at the lengths whose
    evaluation examples are still the ones it was read on."""
    path = Path(run_dir) / STORED
    if not path.exists():
        return {}
    saved = read_json(path, "delete it to read the run again")
    same = {L for L, d in saved.get("sets", {}).items() if digests.get(L) == d}
    return {reading: {L: c for L, c in by_length.items() if L in same}
            for reading, by_length in saved.get("counts", {}).items()}


def retrieval_runs(run_dirs, lengths=None, scalings=("none",), data_dir=None, device="cpu", progress=True,
                   ablations=(), block_size=None):
    """Exact match of task runs at several lengths, each also read with the RoPE `scalings` and the
    `ablations` that apply to its encoding (study.evaluate's); a JSON-ready dict (see the module's doc).
    Each run's counts are stored in its folder (STORED), so a run read before, or whose record is all
    that is left, is not read again and needs no checkpoint. block_size: the training length the
    lengths are told against, for runs trained on several (study.finetune's); default: the runs' one."""
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise UserError("no runs to evaluate")
    bad = [s for s in scalings if s not in STATIC]
    if bad:
        raise UserError(f"--rope-scaling takes some of {', '.join(STATIC)}, got {', '.join(bad)}")
    scalings = list(dict.fromkeys(["none", *scalings]))  # the plain reading always: the others are read beside it
    t0, device = time.time(), pick_device(device)
    configs = [read_config(r) for r in run_dirs]
    tasks_ = sorted({c.get("task", "shakespeare") for c in configs})
    if tasks_ == ["shakespeare"] or len(tasks_) > 1:
        raise UserError(f"these runs learned {' and '.join(tasks_)}: give runs of one task (train.py --task)")
    task = tasks_[0]
    block = block_size or check_runs(c["block_size"] for c in configs)
    lengths = sorted(set(lengths or [m * block for m in (1, 2, 4, 8)]))
    data_dir = resolve_data_dir((c["data_dir"] for c in configs), data_dir)
    filler = to_task_ids(load_tokens(data_dir, "val"), load_meta(data_dir)["chars"]) if task == "passkey" else None
    sets = {L: evaluation_set(task, L, filler) for L in lengths}  # not the sets training picked ckpt.pt by
    digests = set_digests(sets)
    stored = [stored_counts(r, digests) for r in run_dirs]
    ckpts = {}
    # (what training scored a run on, its eval_text, depends on its block size: not what it is read on here)
    groups = group_variants([{**c, "provenance": {k: v for k, v in c["provenance"].items() if k != "eval_text"}}
                             for c in configs])
    labels = variant_labels(configs, groups)
    n_cells = len(cell_labels(task))

    def read(i, L, method, scaling, extra):
        """Run i's [right, total] per cell at length L, or why it cannot read that length."""
        if i not in ckpts:
            if not (run_dirs[i] / "ckpt.pt").exists():
                raise UserError(f"{run_dirs[i]} has no checkpoint (ckpt.pt) and was never read at length {L} with"
                                f" {method!r}; retrain it, or leave that length or reading out")
            ckpts[i] = load_checkpoint(run_dirs[i] / "ckpt.pt", "cpu")
        # an ablation acts at every length; a scaling only past the training length
        over = dict(extra) if scaling == "none" else {} if L <= block else {
            "rope_scaling": scaling, "rope_scaling_factor": auto_factor(L, block), **extra}
        model = build_model(ckpts[i], device, **over)
        limit, reason = position_limit(model)
        if limit is not None and L > limit:
            return reason
        with autocast(configs[i]["provenance"]["dtype"], device):
            return counts(model, sets[L], task, n_cells, device).tolist()

    rows = []
    bar = tqdm(desc="retrieval", unit="pass", disable=not progress, dynamic_ncols=True)
    for key, idx in groups.items():
        encoding = configs[idx[0]]["pos_encoding"]
        for method, scaling, extra in methods_of(encoding, list(scalings), YARN_BETAS, YARN_ALPHA, ablations, block):
            label = row_label(labels[key], method, scaling, extra, None, block)
            row = {"label": label, "encoding": encoding, "method": method,
                   "runs": [str(run_dirs[i]) for i in idx], "results": {}}
            for L in lengths:
                per_seed = []
                for i in idx:
                    mine = stored[i].setdefault(method, {})
                    if str(L) not in mine:
                        mine[str(L)] = read(i, L, method, scaling, extra)
                        write_json(run_dirs[i] / STORED, {"sets": digests, "counts": stored[i]})
                    bar.update(1)
                    if isinstance(mine[str(L)], str):  # (n/a for one run of a variant is n/a for all)
                        per_seed = mine[str(L)]
                        break
                    per_seed.append(mine[str(L)])
                row["results"][str(L)] = per_seed
            rows.append(row)
    bar.close()
    return {"task": task, "block_size": block, "lengths": lengths, "cells": cell_labels(task),
            "examples_per_cell": len(sets[lengths[0]][0].tokens), "rows": rows,
            "device": device, "elapsed_s": round(time.time() - t0, 1)}


def accuracy_cell(per_seed):
    """'pooled % [Wilson 95%] (seed, seed, ...)' of one row at one length; n/a with the reason."""
    if isinstance(per_seed, str):
        return "n/a"
    seeds = [np.array(c).sum(0) for c in per_seed]  # [right, total] per seed
    right, total = sum(s[0] for s in seeds), sum(s[1] for s in seeds)
    low, high = wilson(int(right), int(total))
    each = "/".join(f"{100 * s[0] / s[1]:.0f}" for s in seeds)
    return f"{100 * right / total:.1f}% [{100 * low:.1f}, {100 * high:.1f}] ({each})"


def format_table(results):
    lengths, block = results["lengths"], results["block_size"]
    lines = ["| variant | " + " | ".join(f"{L} ({L / block:g}x)" for L in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for row in results["rows"]:
        lines.append(f"| {row['label']} | " + " | ".join(accuracy_cell(row["results"][str(L)]) for L in lengths)
                     + " |")
    return "\n".join(lines)


def format_cell_table(results):
    """Each variant read plainly, cell by cell: the mean over seeds and each seed's exact match (in %)."""
    lengths = results["lengths"]
    lines = ["| variant | cell | " + " | ".join(str(L) for L in lengths) + " |", "|---|---|" + "---|" * len(lengths)]
    for row in (r for r in results["rows"] if r["method"] == "none"):
        grids = {L: None if isinstance(row["results"][str(L)], str) else cell_accuracy(row["results"][str(L)])
                 for L in lengths}
        for c, name in enumerate(results["cells"]):
            values = [None if g is None or np.isnan(g[:, c]).all() else g[:, c] for g in grids.values()]
            if all(v is None for v in values):
                continue
            lines.append(f"| {row['label']} | {name} | " + " | ".join(
                "" if v is None else f"{100 * v.mean():.0f} ({'/'.join(f'{100 * x:.0f}' for x in v)})"
                for v in values) + " |")
    return "\n".join(lines)


def report(results):
    n = results["examples_per_cell"]
    per = {"passkey": f"{n} examples at each of 11 depths", "recall": f"{n} examples",
           "copy": f"{n} examples of each string length up to half the length"}[results["task"]]
    unit = {"passkey": "all five digits", "recall": "each query's value", "copy": "the whole string"}[results["task"]]
    return (f"# Retrieval: {results['task']}\n\n"
            f"Exact match ({unit} right, teacher-forced argmax) on the fixed evaluation set ({per} per length;"
            f" its own seed, none of the sets training scored): all seeds pooled with its 95% Wilson interval,"
            f" then each seed's (in %). The interval covers the sampling of examples, not the spread between"
            f" seeds: read the per-seed values for that. Models trained on {results['block_size']} characters."
            f"\n\n{format_table(results)}\n\n## By {CELL_KIND[results['task']]}\n\n"
            f"Each variant read plainly, cell by cell: exact match in %, the mean over seeds, then each seed's;"
            f" blank where a length is n/a or holds no example of that cell.\n\n{format_cell_table(results)}\n")


def cell_accuracy(per_seed):
    """(seeds, cells) exact match of one row at one length, NaN where a cell holds no unit."""
    c = np.array(per_seed, dtype=float)  # (seeds, cells, [right, total])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c[..., 1] > 0, c[..., 0] / c[..., 1], np.nan)


def pooled(per_seed):
    """Each seed's exact match over all its units at one length, (seeds,)."""
    c = np.array(per_seed, dtype=float).sum(1)
    return c[:, 0] / c[:, 1]


SEEDS_DISAGREE = 0.25  # a variant gets a panel per seed when two seeds differ this much in some cell


def disagreeing(row, lengths):
    """Whether the row's seeds differ by SEEDS_DISAGREE or more in some cell at some length."""
    grids = [cell_accuracy(row["results"][str(L)]) for L in lengths if not isinstance(row["results"][str(L)], str)]
    return any(len(g) > 1 and np.nanmax(np.nanmax(g, 0) - np.nanmin(g, 0)) >= SEEDS_DISAGREE for g in grids)


def heatmap(ax, results, row, seed=None):
    """One panel: cell (depth, distance) x length, colour = exact match (the mean over seeds, or one
    seed's); grey where a length is n/a or a cell holds no example."""
    lengths, cells = results["lengths"], results["cells"]
    grid = np.full((len(cells), len(lengths)), np.nan)
    for j, L in enumerate(lengths):
        per_seed = row["results"][str(L)]
        if not isinstance(per_seed, str):
            acc = cell_accuracy(per_seed)
            if seed is not None:
                grid[:, j] = acc[seed]
            else:  # (the mean of the seeds that hold the cell: nanmean warns about the cells none holds)
                held = ~np.isnan(acc)
                grid[:, j] = np.where(held.any(0), np.where(held, acc, 0).sum(0) / np.maximum(held.sum(0), 1), np.nan)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(grid, vmin=0, vmax=1, cmap=cmap, aspect="auto", origin="lower")
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
    ax.set_yticks(range(len(cells)), cells if len(cells) > 1 else [""])
    ax.set_xlabel("length (characters)")
    return image


def grid_figure(n, columns, height):
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 + 2.3 * columns, 0.8 + height * rows), dpi=120,
                             squeeze=False, sharey=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def plot_heatmaps(results, path, columns=5):
    """A heatmap per variant read plainly, the mean over its seeds."""
    rows = [r for r in results["rows"] if r["method"] == "none"]
    tall = len(results["cells"]) > 1
    fig, axes = grid_figure(len(rows), min(columns, len(rows)), 3.4 if tall else 1.6)
    for ax, row in zip(axes.flat, rows):
        image = heatmap(ax, results, row)
        ax.set_title(f"{row['label']} ({len(row['runs'])} seeds)", fontsize=9)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="exact match (mean over seeds)", shrink=0.8)
    fig.suptitle(f"{results['task']}: exact match by length, trained on {results['block_size']} characters"
                 f" (grey: n/a, or no example in that cell)", fontsize=10)
    save(fig, path)


def plot_seed_heatmaps(results, path):
    """A row per variant whose seeds disagree (SEEDS_DISAGREE), a panel per seed; False if none does."""
    rows = [r for r in results["rows"] if r["method"] == "none" and disagreeing(r, results["lengths"])]
    if not rows:
        return False
    seeds = max(len(r["runs"]) for r in rows)
    tall = len(results["cells"]) > 1
    fig, axes = plt.subplots(len(rows), seeds, figsize=(2.4 + 2.3 * seeds, 0.8 + (3.4 if tall else 1.6) * len(rows)),
                             dpi=120, squeeze=False, sharey=True)
    for row, line in zip(rows, axes):
        for k, ax in enumerate(line):
            if k >= len(row["runs"]):
                ax.set_visible(False)
                continue
            image = heatmap(ax, results, row, seed=k)
            ax.set_title(f"{row['label']}: {Path(row['runs'][k]).name.rsplit('_', 1)[-1]}", fontsize=9)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="exact match", shrink=0.8)
    fig.suptitle(f"{results['task']}: the variants whose seeds differ by {SEEDS_DISAGREE:.0%} or more in some cell,"
                 f" seed by seed", fontsize=10)
    save(fig, path)
    return True


def plot_readings(results, path, columns=4):
    """Exact match against length for every variant read more than one way: the plain reading (black)
    beside RoPE's extension methods, in one panel, and beside the ablations, in another; the line is
    the mean over seeds, the dots each seed."""
    block, lengths = results["block_size"], results["lengths"]
    by_runs = {}
    for row in results["rows"]:
        by_runs.setdefault(tuple(row["runs"]), []).append(row)
    panels = []
    for rows in by_runs.values():
        plain, others = rows[0], rows[1:]
        for title, kind in (("extension methods", False), ("ablations", True)):
            chosen = [r for r in others if is_ablation_key(r["method"]) == kind]
            if chosen:
                panels.append((f"{plain['label']}: {title}", [plain, *chosen]))
    if not panels:
        return False
    fig, axes = grid_figure(len(panels), min(columns, len(panels)), 3.6)
    colors = plt.get_cmap("tab10").colors
    for ax, (title, rows) in zip(axes.flat, panels):
        for k, row in enumerate(rows):
            xs = [L for L in lengths if not isinstance(row["results"][str(L)], str)]
            if not xs:
                continue
            color = "black" if k == 0 else colors[(k - 1) % len(colors)]
            ys = [pooled(row["results"][str(L)]) for L in xs]
            ax.plot(xs, [y.mean() for y in ys], color=color, marker="o", markersize=3,
                    label="plain" if k == 0 else row["label"].split(" + ", 1)[-1])
            for L, y in zip(xs, ys):
                ax.scatter([L] * len(y), y, color=color, s=8, alpha=0.5)
        length_axis(ax, lengths, [str(L) for L in lengths], block, "length (characters)")
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("exact match")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower left", frameon=False)
    fig.suptitle(f"{results['task']}: exact match by length, each variant read plainly (black) and otherwise; line:"
                 f" mean over seeds, dots: each seed (dashed: the training length {block})", fontsize=10)
    save(fig, path)
    return True


def write_outputs(results, plots_dir):
    plots_dir = Path(plots_dir)
    write_json(plots_dir / "retrieval.json", results)
    write_text(plots_dir / "retrieval.md", report(results))
    return draw_figures(results, plots_dir) + [plots_dir / "retrieval.json", plots_dir / "retrieval.md"]


def draw_figures(results, plots_dir):
    """retrieval.png, and where they have something to show retrieval_seeds.png and retrieval_readings.png."""
    plots_dir = Path(plots_dir)
    plot_heatmaps(results, plots_dir / "retrieval.png")
    drawn = [plots_dir / "retrieval.png"]
    for name, draw in (("retrieval_seeds.png", plot_seed_heatmaps), ("retrieval_readings.png", plot_readings)):
        if draw(results, plots_dir / name):
            drawn.append(plots_dir / name)
        else:
            (plots_dir / name).unlink(missing_ok=True)  # (a figure of an earlier run would outlive its data)
    return drawn


def main():
    parser = measure_parser(__doc__, "retrieval.json", "retrieval.json, retrieval.md and retrieval.png",
                            "task run directories (train.py --task)")
    parser.add_argument("--lengths", type=parse_lengths, default=None,
                        help="comma-separated lengths (default: 1x,2x,4x,8x the training block size)")
    parser.add_argument("--rope-scaling", default="none",
                        help=f"comma-separated methods RoPE runs are also read with, beside the plain reading:"
                             f" {', '.join(STATIC)} (default: none)")
    add_ablations_flag(parser)
    args = parser.parse_args()
    if args.from_json:
        return redraw(args.from_json, "retrieval.json", "study.retrieval", ("rows", "lengths", "task"), report,
                      draw_figures, args.plots_dir)
    scalings = comma_list(args.rope_scaling, "--rope-scaling", choices=STATIC)
    results = retrieval_runs(find_runs(args.runs), args.lengths, scalings, args.data_dir, args.device, args.progress,
                             ablations_of(args))
    print(report(results))
    for path in write_outputs(results, args.plots_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
