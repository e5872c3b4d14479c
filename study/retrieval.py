"""
What task models (train.py --task) retrieve, at their training length and past it: exact match on
the tasks' fixed evaluation set (tasks.evaluation_set) at 1x, 2x, 4x and 8x the training length,
per cell (the passkey's depth, the distance from a recall query back to its key, the copy's string
length), per seed, with 95% Wilson intervals. RoPE runs are also read with the static
context-extension methods of the length study (PI, NTK, YaRN; s = L / block size). Dynamic NTK is
not a row of its own: read in one pass, as a model reads a prompt, it sets s from the whole length,
which is NTK at s = L / block size.

  python -m study.retrieval out/shakespeare_char_cpu-passkey --plots-dir out/plots/passkey
  python -m study.retrieval RUN_DIR ... --rope-scaling none,ntk --lengths 64,128
  python -m study.retrieval RUN_DIR ... --ablations log-scale,clamp-32   # why RoPE breaks, on a task

Writes <plots-dir>/retrieval.json, retrieval.md (accuracy by length: pooled over seeds with its
Wilson interval, and each seed's), retrieval.png (a heatmap per variant: cell x length, colour =
exact match, the mean over seeds), retrieval_seeds.png (seed by seed, the variants whose seeds
disagree) and retrieval_readings.png (exact match against length, each variant read plainly
beside RoPE's extension methods and the ablations). Each run's counts are also kept in its folder.
"""

import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common import (UserError, autocast, build_model, comma_list, digest, load_meta, load_tokens,  # noqa: E402
                    pick_device, positive, read_json, run_cli, write_json, write_text)
from study.evaluate import (YARN_ALPHA, YARN_BETAS, ablations_of, add_ablations_flag, auto_factor,  # noqa: E402
                            is_ablation_key, methods_of, parse_lengths, position_limit, row_label)
from study.flags import measure_parser  # noqa: E402
from study.plot import length_axis, redraw, save  # noqa: E402
from study.runs import Runs, find_runs, seed_of  # noqa: E402
from model import causal_distance  # noqa: E402
from tasks import DEPTHS, Examples, copy_sizes, evaluation_set, to_task_ids, unit_correct, wilson  # noqa: E402

STATIC = ("none", "linear", "ntk", "yarn")  # (dynamic NTK read in one pass is NTK: see above)
DISTANCE_EDGES = (0, 16, 32, 64, 128, 256, 512)  # recall: query-to-key distance bins, the last open-ended
BATCH_TOKENS = 16384
CELL_KIND = {"passkey": "depth", "recall": "distance from query to key", "copy": "string length"}


def copy_cell_sizes(lengths):
    """The copy's string lengths over all `lengths` (tasks.copy_sizes), shortest first."""
    return sorted({m for L in lengths for m in copy_sizes(L)})


def cell_labels(task, lengths):
    if task == "passkey":
        return [f"depth {d:g}" for d in DEPTHS]
    if task == "recall":
        return [f"distance {a}-{b - 1}" for a, b in zip(DISTANCE_EDGES, DISTANCE_EDGES[1:])] + \
            [f"distance {DISTANCE_EDGES[-1]}+"]
    return [f"string of {m}" for m in copy_cell_sizes(lengths)]


def cell_of(task, where, k, lengths):
    """The cell of every unit, (N, units) ints, among cell_labels(task, lengths): the passkey's depth is
    its set's (the k-th of the evaluation set: at short lengths two depths can round to one position),
    recall's its distance, the copy's its string length."""
    if task == "passkey":
        return torch.full_like(where, k, dtype=torch.long)
    if task == "recall":
        return torch.bucketize(where.long(), torch.tensor(DISTANCE_EDGES[1:]), right=True)
    return torch.searchsorted(torch.tensor(copy_cell_sizes(lengths)), where.long())


def near_cells(task, cells):
    """Which cells are near (a boolean per cell label): the passkey at depths 0.8 to 1, the copy's strings of 8
    and 16. At up to 4x the training length of 64 their answers lie at most 60 characters back."""
    if task == "passkey":
        return np.array([float(c.split()[-1]) >= 0.8 for c in cells])
    if task == "copy":
        return np.array([c in ("string of 8", "string of 16") for c in cells])
    return np.zeros(len(cells), dtype=bool)


def truncated(examples, keep):
    """The examples cut to their last `keep` inputs (as the model reads them then), and which of their
    units, (N, units), had a position before the cut: those the model cannot answer."""
    cut = examples.unit.shape[1] - keep
    if cut <= 0:
        return examples, torch.zeros(examples.where.shape, dtype=torch.bool)
    units = torch.arange(examples.where.shape[1])
    lost = (examples.unit[:, :cut, None] == units).any(1)
    answers = None if examples.answers is None else examples.answers[:, cut:]
    return Examples(examples.tokens[:, cut:], examples.unit[:, cut:], examples.where, answers), lost


def forward_with_far_mass(model, x, y, far):
    """The logits, and each layer's attention mass on keys `far` or more back, (B, layers, heads, T): the
    weights each attention layer applies, recomputed from its inputs (CausalSelfAttention.attention_weights)."""
    masses = []

    def grab(module, args):
        h, pos_enc, pos, bias = args[:4]
        weights = module.attention_weights(h, pos_enc, pos, bias)  # (B, heads, T, T), keys from position 0
        masses.append((weights * (causal_distance(pos, range(pos.stop), weights.device) >= far)).sum(-1))

    hooks = [block.attn.register_forward_pre_hook(grab) for block in model.transformer.h]
    try:
        logits, _ = model(x, y)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, torch.stack(masses, 1)


@torch.inference_mode()
def counts(model, sets, task, lengths, device, batch_tokens=BATCH_TOKENS, truncate=0, far=0):
    """{cell label: [right, total]} over the evaluation examples `sets` (a list of Examples), among the
    cells of cell_labels(task, lengths). truncate: the model reads only the last `truncate` inputs of each
    example (a unit reaching before them counts as wrong). far: also the attention mass on keys `far` or
    more back at the answer positions, per layer and head, summed over the near cells' answer positions
    and over all cells', with their counts: ({...}, {"near": {"sum": [[...]], "positions": n}, "all": ...});
    with no example longer than `far`, None."""
    labels = cell_labels(task, lengths)
    near = torch.from_numpy(near_cells(task, labels))
    out = np.zeros((len(labels), 2), dtype=np.int64)
    reads_far = bool(far) and sets[0].tokens.shape[1] - 1 > far
    if reads_far:
        shape = (len(model.transformer.h), model.config.n_head)  # (layers, heads)
        mass = {k: [torch.zeros(shape, dtype=torch.float64), 0] for k in ("near", "all")}
    for k, examples in enumerate(sets):
        rows = max(1, batch_tokens // examples.tokens.shape[1])
        for i in range(0, len(examples.tokens), rows):
            part, lost = truncated(examples[i:i + rows], truncate) if truncate else (examples[i:i + rows], None)
            x, y = part.inputs_and_targets()
            if reads_far:
                logits, weights = forward_with_far_mass(model, x.to(device), y.to(device), far)
            else:
                logits, _ = model(x.to(device), y.to(device))
            right, cells = unit_correct(logits.float().cpu(), part), cell_of(task, part.where, k, lengths)
            if lost is not None:
                right = right[:, :lost.shape[1]] if right.shape[1] >= lost.shape[1] else \
                    torch.cat([right, torch.ones(len(right), lost.shape[1] - right.shape[1], dtype=torch.bool)], 1)
                right &= ~lost
            np.add.at(out, (cells.flatten().numpy(), 0), right.flatten().numpy().astype(np.int64))
            np.add.at(out, (cells.flatten().numpy(), 1), 1)
            if reads_far:  # each answer position's cell: its unit's
                answer = part.unit >= 0
                cell = cells.gather(1, part.unit.clamp(min=0))
                for key, chosen in (("near", answer & near[cell]), ("all", answer)):
                    mass[key][0] += weights.double().cpu().permute(1, 2, 0, 3)[..., chosen].sum(-1)
                    mass[key][1] += int(chosen.sum())
    got = {label: c for label, c in zip(labels, out.tolist()) if c[1]}
    if not reads_far:
        return got, None
    return got, {key: {"sum": total.tolist(), "positions": n} for key, (total, n) in mass.items()}


STORED = "retrieval.json"  # in a run's folder: its counts per reading and length, kept with its record
STORED_VERSION = 1  # raised whenever the counting changes, so that no count of the old way is reused


class StoredCounts:
    """A task run's counts kept in its folder (STORED), one entry per reading and length, each with
    what it depends on: the evaluation examples (their digest) and the reading's settings. An entry is
    reused while these are the same and the run's checkpoint is (its summary's best step and val
    loss); an unfinished run, whose checkpoint still changes, stores nothing."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / STORED
        summary = Path(run_dir) / "summary.json"
        self.checkpoint = None
        if summary.exists():
            done = read_json(summary, "retrain the run")
            self.checkpoint = {"best_step": done.get("best_step"), "best_val_loss": done.get("best_val_loss")}
        saved = read_json(self.path, "delete it to read the run again") if self.path.exists() else {}
        same = self.checkpoint is not None and saved.get("version") == STORED_VERSION and \
            saved.get("checkpoint") == self.checkpoint
        self.entries = saved.get("entries", {}) if same else {}

    def get(self, key, depends, far=False):
        """The stored entry of `key` ({"counts": its counts or why n/a, "device", and with `far` its
        "far_mass"}), if it was counted under `depends` (and with the far-key mass where asked); else None."""
        entry = self.entries.get(key)
        if entry is None or entry["depends"] != depends or far and "far_mass" not in entry:
            return None
        return entry

    def put(self, key, depends, counts, device, far=False, far_mass=None):
        """Keep `key`'s counts, and with `far` its far-key mass (None where no key is that far)."""
        self.entries[key] = {"depends": depends, "counts": counts, "device": device,
                             **({"far_mass": far_mass} if far else {})}
        if self.checkpoint is not None:
            write_json(self.path, {"version": STORED_VERSION, "checkpoint": self.checkpoint, "entries": self.entries})


def examples_digest(examples):
    """A fingerprint of one length's evaluation examples, their answers and cells."""
    return digest(*(t for e in examples for t in (e.tokens, e.targets(), e.unit, e.where)))


def retrieval_runs(run_dirs, lengths=None, scalings=("none",), data_dir=None, device="cpu", progress=True,
                   ablations=(), block_size=None, far_mass=False, readings_up_to=None):
    """Exact match of task runs at several lengths, each also read with the RoPE `scalings` and the
    `ablations` that apply to its encoding (study.evaluate's); a JSON-ready dict (see the module's doc).
    Each run's counts are kept in its folder (StoredCounts), so a run read before, or whose record is
    all that is left, is not read again and needs no checkpoint. block_size: the training length the
    lengths are told against, for runs trained on several (study.finetune's); default: the runs' one.
    far_mass: also the plain reading's and each ablation's attention mass on keys block_size or more back at the
    answer positions (counts' far), per seed, layer and head, in a row's "far_mass" (None where no key is that
    far). readings_up_to: read the ablations only up to this multiple of the training length (n/a past it)."""
    runs = Runs(run_dirs, "runs to read", across_lengths=block_size is not None)
    run_dirs, configs, groups, labels = runs.run_dirs, runs.configs, runs.groups, runs.labels
    bad = [s for s in scalings if s not in STATIC]
    if bad:
        raise UserError(f"--rope-scaling takes some of {', '.join(STATIC)}, got {', '.join(bad)}")
    scalings = list(dict.fromkeys(["none", *scalings]))  # the plain reading always: the others are read beside it
    t0, device = time.time(), pick_device(device)
    tasks_ = sorted({c.get("task", "shakespeare") for c in configs})
    if tasks_ == ["shakespeare"] or len(tasks_) > 1:
        raise UserError(f"these runs learned {' and '.join(tasks_)}: give runs of one task (train.py --task)")
    task = tasks_[0]
    block = block_size or runs.block_size()
    lengths = sorted(set(lengths or [m * block for m in (1, 2, 4, 8)]))
    data_dir = runs.data_dir(data_dir)
    filler = to_task_ids(load_tokens(data_dir, "val"), load_meta(data_dir)["chars"]) if task == "passkey" else None
    sets = {L: evaluation_set(task, L, filler) for L in lengths}  # not the sets training picked ckpt.pt by
    digests = {L: examples_digest(examples) for L, examples in sets.items()}
    stored = [StoredCounts(r) for r in run_dirs]
    cells = cell_labels(task, lengths)
    devices = set()

    def read(i, L, method, over, far):
        """Run i's ({cell: [right, total]}, far-key mass or None) at length L read with the settings `over`,
        or (why it cannot read it, None)."""
        if not (run_dirs[i] / "ckpt.pt").exists():
            raise UserError(f"{run_dirs[i]} has no checkpoint (ckpt.pt) and was never read at length {L} with"
                            f" {method!r}{' and its far-key mass' if far else ''}; retrain it, or leave that"
                            f" length or reading out")
        settings = {k: v for k, v in over.items() if k != "truncate"}  # (truncation cuts the input, not the model)
        model = build_model(runs.checkpoint(i), device, **settings)
        limit, reason = position_limit(model)
        if limit is not None and L > min(limit, over.get("truncate", L)):
            return reason, None
        with autocast(configs[i]["provenance"]["dtype"], device):
            return counts(model, sets[L], task, lengths, device, truncate=over.get("truncate", 0),
                          far=block if far else 0)

    rows = []
    bar = tqdm(desc="retrieval", unit="pass", disable=not progress, dynamic_ncols=True)
    for key, idx in groups.items():
        encoding = configs[idx[0]]["pos_encoding"]
        hybrid, windowed = (configs[idx[0]].get(k, 0) > 0 for k in ("nope_every", "rope_window"))
        for method, scaling, extra in methods_of(encoding, list(scalings), YARN_BETAS, YARN_ALPHA, ablations, block,
                                                 hybrid, windowed):
            label = row_label(labels[key], method, scaling, extra, None, block)
            row = {"label": label, "encoding": encoding, "method": method,
                   "runs": [str(run_dirs[i]) for i in idx], "results": {}, **({"far_mass": {}} if far_mass else {})}
            ablation = is_ablation_key(method)
            for L in lengths:
                if ablation and readings_up_to and L > readings_up_to * block:
                    row["results"][str(L)] = f"not read past {readings_up_to:g}x"
                    if far_mass:
                        row["far_mass"][str(L)] = None
                    continue
                far = far_mass and (ablation or method == "none")  # (not the context-extension methods)
                # an ablation acts at every length; a scaling only past the training length
                over = dict(extra) if scaling == "none" else {} if L <= block else {
                    "rope_scaling": scaling, "rope_scaling_factor": auto_factor(L, block), **extra}
                depends = {"examples": digests[L], "settings": over}
                entry, per_seed, masses = f"{method} at {L}", [], []
                for i in idx:
                    kept = stored[i].get(entry, depends, far)
                    if kept is None:
                        got, mass = read(i, L, method, over, far)
                        before = stored[i].get(entry, depends)  # (counted before without the mass: kept)
                        if before is not None and before["counts"] != got:  # (another thread count, say)
                            print(f"note: {run_dirs[i]}: {entry} now counts {got}, not the {before['counts']}"
                                  f" counted before on {before['device']}, which are kept", flush=True)
                            got = before["counts"]
                        stored[i].put(entry, depends, got, device, far, mass)
                        kept = stored[i].entries[entry]
                    devices.add(kept["device"])
                    bar.update(1)
                    if isinstance(kept["counts"], str):  # (n/a for one run of a variant is n/a for all)
                        per_seed = kept["counts"]
                        break
                    per_seed.append([kept["counts"].get(c, [0, 0]) for c in cells])
                    masses.append(kept.get("far_mass"))
                row["results"][str(L)] = per_seed
                if far_mass:
                    row["far_mass"][str(L)] = None if isinstance(per_seed, str) or not far or masses[0] is None \
                        else masses
            rows.append(row)
    bar.close()
    return {"task": task, "block_size": block, "lengths": lengths, "cells": cells,
            "examples_per_cell": len(sets[lengths[0]][0].tokens), "rows": rows,
            "device": ", ".join(sorted(devices)), "elapsed_s": round(time.time() - t0, 1)}


def headline_cells(results):
    """The cells the headline pools at every length: those holding examples at the training length (all
    of the passkey's depths; the copy's strings up to half the training length), so that each length
    pools the same cells and a longer copy does not pass for a drop."""
    at = str(results["block_size"] if results["block_size"] in results["lengths"] else results["lengths"][0])
    held = np.zeros(len(results["cells"]), dtype=bool)
    for row in results["rows"]:
        if not isinstance(row["results"][at], str):
            held |= np.array(row["results"][at], dtype=float)[..., 1].sum(0) > 0
    return held


def pooled_counts(per_seed, cells):
    """Each seed's [right, total] over the `cells` (a boolean mask) at one length, (seeds, 2)."""
    return np.array(per_seed, dtype=float)[:, cells].sum(1)


def pooled(per_seed, cells=None):
    """Each seed's exact match over its units in `cells` (default: all) at one length, (seeds,)."""
    c = pooled_counts(per_seed, slice(None) if cells is None else cells)
    return c[:, 0] / c[:, 1]


def accuracy_cell(per_seed, cells):
    """'pooled % [Wilson 95%] (seed, seed, ...)' of one row at one length over `cells`; n/a with the reason."""
    if isinstance(per_seed, str):
        return "n/a"
    seeds = pooled_counts(per_seed, cells)
    right, total = seeds.sum(0)
    low, high = wilson(int(right), int(total))
    each = "/".join(f"{100 * r / t:.0f}" for r, t in seeds)
    return f"{100 * right / total:.1f}% [{100 * low:.1f}, {100 * high:.1f}] ({each})"


def format_table(results):
    lengths, block, cells = results["lengths"], results["block_size"], headline_cells(results)
    lines = ["| variant | " + " | ".join(f"{L} ({L / block:g}x)" for L in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for row in results["rows"]:
        lines.append(f"| {row['label']} | " + " | ".join(accuracy_cell(row["results"][str(L)], cells)
                                                          for L in lengths) + " |")
    return "\n".join(lines)


def format_cell_table(results):
    """Each variant read plainly, cell by cell: the mean over seeds and each seed's exact match (in %)."""
    lengths, block = results["lengths"], results["block_size"]
    lines = ["| variant | cell | " + " | ".join(f"{L} ({L / block:g}x)" for L in lengths) + " |",
             "|---|---|" + "---|" * len(lengths)]
    for row in (r for r in results["rows"] if r["method"] == "none"):
        grids = [row["results"][str(L)] if isinstance(row["results"][str(L)], str)
                 else cell_accuracy(row["results"][str(L)]) for L in lengths]
        for c, name in enumerate(results["cells"]):
            values = ["n/a" if isinstance(g, str) else "–" if np.isnan(g[:, c]).all() else
                      f"{100 * np.nanmean(g[:, c]):.0f} ({'/'.join(f'{100 * x:.0f}' for x in g[:, c])})"
                      for g in grids]
            if any(v not in ("n/a", "–") for v in values):
                lines.append(f"| {row['label']} | {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def seed_names(results):
    """'1337/1338/1339': the seeds of the runs in the order their values are listed (the first row's)."""
    return "/".join(seed_of(r) for r in results["rows"][0]["runs"])


def report(results):
    n = results["examples_per_cell"]
    per = {"passkey": f"{n} examples at each of 11 depths", "recall": f"{n} examples",
           "copy": f"{n} examples of each string length (8, 16, 32, ... up to half the length)"}[results["task"]]
    unit = {"passkey": "all five digits", "recall": "each query's value", "copy": "the whole string"}[results["task"]]
    pooled_over = {"passkey": "all depths", "recall": "the distances a query takes at the training length",
                   "copy": "the strings the copy is evaluated on at the training length (those up to half of"
                           " it), so that each length pools the same ones; the longer strings are in the table"
                           " by string length"}[results["task"]]
    trained = results.get("trained", f"Models trained on {results['block_size']} characters.")
    return (f"# Retrieval: {results['task']}\n\n"
            f"Exact match ({unit} right, teacher-forced argmax) on the fixed evaluation set ({per} per length;"
            f" its own seed, none of the sets training scored), pooled over {pooled_over}: all seeds pooled with"
            f" its 95% Wilson interval, then each seed's (in %, seeds {seed_names(results)} where a variant has"
            f" them all). The interval covers the sampling of examples, not the spread between seeds: read the"
            f" per-seed values for that. {trained} Counted on {results['device']}."
            f"\n\n{format_table(results)}\n\n## By {CELL_KIND[results['task']]}\n\n"
            f"Each variant read plainly, cell by cell: exact match in %, the mean over seeds, then each seed's;"
            f" n/a where the model cannot read that length, – where the length holds no example of that cell."
            f"\n\n{format_cell_table(results)}\n")


def cell_accuracy(per_seed):
    """(seeds, cells) exact match of one row at one length, NaN where a cell holds no unit."""
    c = np.array(per_seed, dtype=float)  # (seeds, cells, [right, total])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c[..., 1] > 0, c[..., 0] / c[..., 1], np.nan)


SEEDS_DISAGREE = 0.3  # seeds further apart than this in a cell: its pooled colour is a mean no seed reached


def disagreeing(row, lengths):
    """Whether the row's seeds differ by more than SEEDS_DISAGREE in some cell at some length."""
    for L in lengths:
        if isinstance(row["results"][str(L)], str):
            continue
        g = cell_accuracy(row["results"][str(L)])
        g = g[:, ~np.isnan(g).all(0)]  # (the cells that length holds)
        if len(g) > 1 and g.size and (np.nanmax(g, 0) - np.nanmin(g, 0) > SEEDS_DISAGREE).any():
            return True
    return False


def heatmap(ax, results, row, seed=None):
    """One panel: cell (depth, distance, string length) x length, colour = exact match (the mean over
    seeds, or one seed's); grey where a length is n/a or a cell holds no example; the training length
    marked by a dashed line after its column. A pooled cell whose seeds lie more than SEEDS_DISAGREE
    apart is outlined in red and shows each seed's value (in %): its colour is a mean no model reached."""
    lengths, cells = results["lengths"], results["cells"]
    grid = np.full((len(cells), len(lengths)), np.nan)
    split = []  # (cell, length column, each seed's exact match)
    for j, L in enumerate(lengths):
        per_seed = row["results"][str(L)]
        if not isinstance(per_seed, str):
            acc = cell_accuracy(per_seed)
            if seed is not None:
                grid[:, j] = acc[seed]
                continue
            held = ~np.isnan(acc).all(0)  # (a cell holds examples for every seed or for none)
            grid[held, j] = acc[:, held].mean(0)
            split += [(c, j, acc[:, c]) for c in np.flatnonzero(held) if np.ptp(acc[:, c]) > SEEDS_DISAGREE]
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(grid, vmin=0, vmax=1, cmap=cmap, aspect="auto", origin="lower")
    for c, j, values in split:
        ax.add_patch(plt.Rectangle((j - 0.46, c - 0.42), 0.92, 0.84, fill=False, edgecolor="red", linewidth=1.2))
        ax.text(j, c, "/".join(f"{100 * v:.0f}" for v in values), ha="center", va="center", fontsize=5.5,
                color="white" if grid[c, j] < 0.6 else "black")
    if results["block_size"] in lengths:
        ax.axvline(lengths.index(results["block_size"]) + 0.5, color="white", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
    ax.set_yticks(range(len(cells)), cells if len(cells) > 1 else [""])
    ax.set_xlabel("length (characters)")
    return image


def panel_grid(rows, columns, panel_height):
    """A figure of rows x columns panels sized for their titles, with y labels only on the left column."""
    return plt.subplots(rows, columns, figsize=(1.2 + 2.6 * columns, 1.0 + panel_height * rows), dpi=120,
                        squeeze=False, sharey=True, layout="constrained")


def seeds_of(row):
    return f"{len(row['runs'])} seed{'s' * (len(row['runs']) > 1)}"


def plot_heatmaps(results, path, columns=5):
    """A heatmap per variant read plainly, the mean over its seeds."""
    rows = [r for r in results["rows"] if r["method"] == "none"]
    columns = min(columns, len(rows))
    fig, axes = panel_grid(-(-len(rows) // columns), columns, 0.3 * len(results["cells"]) + 1.4)
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    for ax, row in zip(axes.flat, rows):
        image = heatmap(ax, results, row)
        ax.set_title(textwrap.fill(f"{row['label']} ({seeds_of(row)})", 30), fontsize=8)
    fig.colorbar(image, ax=axes, label="exact match (mean over seeds)", shrink=0.6)
    fig.suptitle(f"{results['task']}: exact match by length, trained on {results['block_size']} characters"
                 f" (dashed); grey: n/a, or no example in that cell; red outline: seeds more than"
                 f" {100 * SEEDS_DISAGREE:.0f} points apart, each seed's % printed", fontsize=10)
    save(fig, path)


def plot_seed_heatmaps(results, path):
    """A row per variant whose seeds disagree (SEEDS_DISAGREE), a panel per seed; False if none does."""
    rows = [r for r in results["rows"] if r["method"] == "none" and disagreeing(r, results["lengths"])]
    if not rows:
        return False
    seeds = max(len(r["runs"]) for r in rows)
    fig, axes = panel_grid(len(rows), seeds, 0.3 * len(results["cells"]) + 1.4)
    for row, line in zip(rows, axes):
        for k, ax in enumerate(line):
            if k >= len(row["runs"]):
                ax.set_visible(False)
                continue
            image = heatmap(ax, results, row, seed=k)
            ax.set_title(textwrap.fill(f"{row['label']}, seed {seed_of(row['runs'][k])}", 34), fontsize=8)
    fig.colorbar(image, ax=axes, label="exact match", shrink=0.6 if len(rows) < 4 else 0.3)
    fig.suptitle(f"{results['task']}: seed by seed, every variant whose seeds differ by more than"
                 f" {100 * SEEDS_DISAGREE:.0f} points in some cell", fontsize=10)
    save(fig, path)
    return True


def plot_readings(results, path, columns=4):
    """Exact match against length for every variant read more than one way: the plain reading (black)
    beside RoPE's extension methods, in one panel, and beside the ablations, in another; the line is
    the mean over seeds, the dots each seed (pooled over the headline's cells)."""
    block, lengths, cells = results["block_size"], results["lengths"], headline_cells(results)
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
    columns = min(columns, len(panels))
    fig, axes = panel_grid(-(-len(panels) // columns), columns, 3.4 + 0.17 * max(len(rows) for _, rows in panels))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    colors = plt.get_cmap("tab10").colors
    for ax, (title, rows) in zip(axes.flat, panels):
        for k, row in enumerate(rows):
            xs = [L for L in lengths if not isinstance(row["results"][str(L)], str)]
            if not xs:
                continue
            color = "black" if k == 0 else colors[(k - 1) % len(colors)]
            ys = [pooled(row["results"][str(L)], cells) for L in xs]
            ax.plot(xs, [y.mean() for y in ys], color=color, marker="o", markersize=3,
                    label="plain" if k == 0 else row["label"].split(" + ", 1)[-1])
            shift = 2 ** (0.04 * (k - (len(rows) - 1) / 2))  # (each reading's seed dots a little apart)
            for L, y in zip(xs, ys):
                ax.scatter([L * shift] * len(y), y, color=color, s=8, alpha=0.5)
        length_axis(ax, lengths, [str(L) for L in lengths], block, "length (characters)")
        ax.set_xlim(lengths[0] / 1.25, lengths[-1] * 1.25)
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("exact match")
        ax.set_title(textwrap.fill(title, 40), fontsize=8)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)  # (below: covers no line)
    fig.suptitle(f"{results['task']}: exact match by length, each variant read plainly (black) and otherwise; line:"
                 f" mean over seeds, dots: each seed; dashed: the training length {block}", fontsize=10)
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
    parser.add_argument("--far-mass", action="store_true",
                        help="also the plain reading's and each ablation's attention mass on keys block_size or more"
                             " back at the answer positions, per layer and head, over the near cells and over all"
                             " (needs the checkpoints of runs not read so before)")
    parser.add_argument("--readings-up-to", type=positive(float), default=None, metavar="MULTIPLE",
                        help="read the ablations only up to this multiple of the training length (default: at"
                             " every length)")
    args = parser.parse_args()
    if args.from_json:
        return redraw(args.from_json, "retrieval.json", "study.retrieval", ("rows", "lengths", "task"), report,
                      draw_figures, args.plots_dir)
    scalings = comma_list(args.rope_scaling, "--rope-scaling", choices=STATIC)
    results = retrieval_runs(find_runs(args.runs), args.lengths, scalings, args.data_dir, args.device, args.progress,
                             ablations_of(args), far_mass=args.far_mass, readings_up_to=args.readings_up_to)
    print(report(results))
    for path in write_outputs(results, args.plots_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
