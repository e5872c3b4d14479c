"""
Do the task findings survive a longer training length? The task models trained at several lengths L, each
read at 1x, 2x, 4x and 8x its own L (study/studies.py's train_length study), told apart by absolute length
and by ratio, with each run's effective context.

  python -m study.train_length --plots-dir plots/train_length   # reads <task>-L<L>/retrieval.json there

Reads the retrieval.json study.compare wrote for each task and training length, and each run's record
(summary.json, metrics.csv: out/<group>/<run>, else records/<group>/<run>), and writes <plots-dir>/lengths.md
and three figures: exact match against the reading length in characters (one panel per encoding, one line per
training length, seeds as dots), the same against reading length / training length, and the effective
context against the training length (log-log, with the line "effective context = training length"). Where an
encoding's lines coincide against the ratio, it generalizes by ratio; where they coincide against characters,
by absolute length. A steps check (<task>-L<L>-<steps>-steps/: a variant trained at L for another length's
budget) gets a table beside that variant's runs at every length. It measures nothing.

- **not learned**: a run whose final val exact match at L (its training's own val set) is below CONTROL; its
  readings past L are shown but not ranked.
- **still improving**: a run that set a new best val loss in one of its last IMPROVING evaluations.
- **effective context** at a threshold: the largest reading length such that every reading length up to it
  scores at least the threshold (pooled over the cells held at L); "< L" where the run misses it at L, and
  ">= 8L" where it holds at every length read. At 80% (YaRN's passkey context) and at 20% (PI's k_max).
"""

import argparse
import re
import statistics
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import ArgumentParser, UserError, command_line, read_json, run_cli, write_text  # noqa: E402
from study.analysis import IMPROVING  # noqa: E402
from study.flags import add_plots_dir_flag  # noqa: E402
from study.plot import save  # noqa: E402
from study.report import run_still_improving  # noqa: E402
from study.retrieval import headline_cells, pooled  # noqa: E402
from study.runs import COLORS, variant_of_run, variant_parts  # noqa: E402
from study.studies import LENGTH_ENCODINGS, TASK_STEPS  # noqa: E402

CONTROL = 0.95  # the positive control: final val exact match at the training length
THRESHOLDS = (0.8, 0.2)  # effective context: YaRN's passkey threshold, PI's k_max one
FOLDER = re.compile(r"^(passkey|copy|recall)-L(\d+)$")
# <task>-L<L>-<steps>-steps: a budget's pilot (records/pilots/) or a steps check (under --plots-dir)
AT_STEPS = re.compile(r"^(passkey|copy|recall)-L(\d+)-(\d+)-steps$")
MULTIPLES = (1, 2, 4)  # the budgets tried at another length: these multiples of the budget at 64
RIVALS = ("alibi", "t5", "fire")  # RoPE and one of these must pass the control for a budget to be chosen
# The rung at 64 is the task studies' own runs and readings (the windowed hybrid's are the mechanism study's),
# so that 64 is read from the same records as every other finding about it, not retrained (the repository's
# committed files, wherever --plots-dir points).
REPO = Path(__file__).resolve().parent.parent
AT_64 = {"passkey": ("plots/passkey/retrieval.json", "plots/mechanism/windowed/retrieval.json"),
         "copy": ("plots/copy/retrieval.json",)}
METHODS = ("none", "ntk", "yarn-b8", "yarn-b32")  # the readings this study compares: plain, NTK and YaRN
# the study's variants as run folders name them, the window written as a share of the training length
VARIANTS = [v.replace(":", "-") for v in (*LENGTH_ENCODINGS.split(","), "rope:nope_every=2:rope_window=L/2")]


def record(run):
    """A run's folder: as written (out/<group>/<run>), else its committed record (records/<group>/<run> in the
    repository)."""
    path = Path(run)
    if (path / "summary.json").exists():
        return path
    committed = REPO / "records" / Path(*path.parts[-2:])
    if not (committed / "summary.json").exists():
        raise UserError(f"neither {path} nor {committed} holds a finished run (summary.json)")
    return committed


def improving(run):
    """Whether the run (or its record) is still improving at its last step (analysis.still_improving)."""
    return run_still_improving(record(run))


def effective(scores, lengths, block, threshold):
    """The effective context (in characters) of one run: its scores at the reading lengths; 0 where it misses
    the threshold at the training length, and the longest length read where it never does (then '>=')."""
    reach = 0
    for L in lengths:
        if scores[L] < threshold:
            break
        reach = L
    return reach


def context_text(reach, lengths, block):
    if reach == 0:
        return f"< {block}"
    return f"≥ {reach}" if reach == lengths[-1] else str(reach)


def variant(run, block):
    """A run's variant, named the same at every training length: its folder name without the seed, a window
    of half the training length written L/2."""
    return variant_of_run(run).replace(f"rope_window={block // 2}", "rope_window=L/2")


def runs_of(results):
    """Per variant read plainly: (label, variant, encoding, method, [run paths], {length: per-seed exact match
    over the cells held at the training length}), and the same for RoPE's readings with NTK and YaRN."""
    cells, block = headline_cells(results), results["block_size"]
    out = []
    for row in results["rows"]:
        scores = {int(L): (None if isinstance(v, str) else pooled(v, cells)) for L, v in row["results"].items()}
        label = row["label"].replace(f"rope_window {block // 2}", "rope_window L/2")
        out.append((label, variant(row["runs"][0], block), row["encoding"], row["method"], row["runs"], scores))
    return out


def at_64(files):
    """The rung at 64 from the task studies' retrieval.json files: the rows of this study's variants and
    readings, the first file's where two hold the same one; None where a file is missing."""
    def key(row):
        return variant(row["runs"][0], 64), row["method"]

    merged = None
    for path in map(Path, files):
        if not path.exists():
            return None
        results = read_json(path, "rerun its study")
        if merged is None:
            merged = {**results, "rows": []}
        elif (results["lengths"], results["cells"]) != (merged["lengths"], merged["cells"]):
            raise UserError(f"{path} reads other lengths or cells than {files[0]}: rerun both studies")
        held = {key(r) for r in merged["rows"]}
        merged["rows"] += [r for r in results["rows"] if r["method"] in METHODS and key(r)[0] in VARIANTS
                           and key(r) not in held]
    return merged


def readings(plots_dir, pattern):
    """{(task, numbers...): retrieval.json} of every folder under plots_dir whose name matches `pattern` (the task,
    then the numbers it names) and that holds a retrieval.json."""
    found = {}
    for folder in sorted(Path(plots_dir).iterdir()):
        match = pattern.match(folder.name)
        if match and (folder / "retrieval.json").exists():
            task, *numbers = match.groups()
            found[(task, *map(int, numbers))] = read_json(folder / "retrieval.json", "rerun the study")
    return found


def load_steps(plots_dir):
    """{(task, training length, steps): retrieval.json} of every <task>-L<L>-<steps>-steps/ folder under plots_dir:
    variants trained at L for another length's budget (studies.py's STEPS_CHECKS)."""
    return readings(plots_dir, AT_STEPS)


def steps_rows(found, checks, task):
    """The readings of the steps checks of `task`, each beside its variant's plain rows at every training length:
    [retrieval.json with only those rows], by training length, then steps."""
    def name(row, results):  # the variant without the steps that name a check's runs
        parts = variant_parts(variant(row["runs"][0], results["block_size"]))
        return "-".join(p for p in parts if p.partition("=")[0] not in ("max_iters", "lr_decay_iters"))

    def plain(results, wanted):
        return {**results, "rows": [r for r in results["rows"] if r["method"] == "none" and name(r, results) in wanted]}

    checked = [results for (t, _, _), results in checks.items() if t == task]
    wanted = {name(r, results) for results in checked for r in results["rows"]}
    readings = [plain(results, wanted) for (t, _), results in found.items() if t == task]
    readings = [results for results in readings + [plain(c, wanted) for c in checked] if results["rows"]]

    def steps(results):
        return read_json(record(results["rows"][0]["runs"][0]) / "config.json", "retrain the run")["max_iters"]
    return sorted(readings, key=lambda results: (results["block_size"], steps(results)))


def load(plots_dir):
    """{(task, training length): retrieval.json} of every <task>-L<L>/ folder under plots_dir, and for each such
    task the rung at 64 from the task studies' committed readings (at_64), where they exist."""
    found = readings(plots_dir, FOLDER)
    if not found:
        raise UserError(f"no <task>-L<length>/retrieval.json under {plots_dir}: run python -m study train_length"
                        f" first")
    for task in {t for t, _ in found} - {t for t, L in found if L == 64}:
        rung = at_64([REPO / f for f in AT_64.get(task, ())])
        if rung:
            found[task, 64] = rung
    return dict(sorted(found.items()))


def run_table(readings):
    """One row per variant, training length and reading, of each retrieval.json in `readings`: budget, control and
    still improving per seed, exact match at 1x-8x (pooled over the cells held at L: all seeds, then each), both
    effective contexts."""
    head = ["variant", "L", "steps", "control at L (val exact)", "still improving", "1x", "2x", "4x", "8x",
            "effective context ≥ 80% (median; seeds)", "effective context ≥ 20% (median; seeds)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---|---|" + "---:|" * 4 + "---|---|"]
    for results in readings:
        L = results["block_size"]
        for label, _, encoding, method, runs, scores in runs_of(results):
            summaries = [read_json(record(r) / "summary.json", "retrain the run") for r in runs]
            steps = read_json(record(runs[0]) / "config.json", "retrain the run")["max_iters"]
            control = [s["final_val_exact"] for s in summaries]
            learned = [c >= CONTROL for c in control]
            control_text = "/".join(f"{100 * c:.1f}" + ("" if ok else " (not learned)")  # (94.9, not 95)
                                    for c, ok in zip(control, learned))
            still = "/".join("yes" if improving(r) else "no" for r in runs)
            cells = []
            for m in (1, 2, 4, 8):
                s = scores.get(m * L)
                cells.append("n/a" if s is None else f"{100 * s.mean():.1f}% ({'/'.join(f'{100 * x:.0f}' for x in s)})")
            reach = []
            lengths = [x for x in sorted(scores) if scores[x] is not None]
            for t in THRESHOLDS:
                per_seed = [effective({x: scores[x][i] for x in lengths}, lengths, L, t) for i in range(len(runs))]
                median = statistics.median_low(per_seed)
                each = "; ".join(context_text(p, lengths, L) for p in per_seed)
                reach.append(f"{context_text(median, lengths, L)} ({each})")
            lines.append(f"| {label} | {L} | {steps} | {control_text} | {still} | "
                         + " | ".join(cells + reach) + " |")
    return "\n".join(lines)


class Pilot(NamedTuple):
    exact: float  # final val exact match at its training length
    improving: bool  # still improving at its last step
    wall_s: float
    threads: int


def pilots(root):
    """{(task, L): {steps: {encoding: Pilot}}} of the seed-1337 pilot runs under root
    (<task>-L<L>-<steps>-steps/<encoding>_seed1337)."""
    found = {}
    for folder in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        match = AT_STEPS.match(folder.name)
        if not match:
            continue
        task, L, steps = match.group(1), int(match.group(2)), int(match.group(3))
        for run in sorted(folder.glob("*_seed1337")):
            summary = read_json(run / "summary.json", "retrain the pilot")
            found.setdefault((task, L), {}).setdefault(steps, {})[summary["pos_encoding"]] = Pilot(
                summary["final_val_exact"], improving(run), summary["wall_s"], summary["threads"])
    return dict(sorted(found.items()))


def rung(runs):
    """A budget's verdict from its seed-1337 runs: 'passes' where RoPE and one of ALiBi, T5 or FIRE reach the
    control, 'fails' where RoPE misses it or all three others do, else 'undecided' (a run not trained)."""
    passed = {e: run.exact >= CONTROL for e, run in runs.items()}
    if passed.get("rope") is False or all(passed.get(e) is False for e in RIVALS):
        return "fails"
    if passed.get("rope") and any(passed.get(e) for e in RIVALS):
        return "passes"
    return "undecided"


def budget(by_steps, task):
    """The budget a length gets: the smallest multiple of the budget at 64 whose rung passes; None while a
    smaller rung is undecided or none passes yet."""
    for m in MULTIPLES:
        steps = m * TASK_STEPS[task]
        verdict = rung(by_steps.get(steps, {}))
        if verdict == "passes":
            return f"**{steps} steps** ({m}x)"
        if verdict == "undecided":
            return f"not decided: {steps} steps ({m}x) " + (
                "needs T5, FIRE or ALiBi trained" if by_steps.get(steps) else "not trained yet")
    return f"none: every multiple up to {MULTIPLES[-1]}x fails, so this length stops"


def budget_table(found):
    """budgets.md: per task, length and rung, each encoding's final val exact match (seed 1337) and the rung's
    verdict, then the budget each length gets."""
    head = ["task", "L", "steps", "x the budget at 64", *(f"{e} (val exact, seed 1337)" for e in ("rope", *RIVALS)),
            "rung", "wall time per run (s; threads)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|" + "---:|" * (1 + len(RIVALS)) + "---|---|"]
    decided = []
    for (task, L), by_steps in found.items():
        for steps, runs in sorted(by_steps.items()):
            cells = [("n/a" if e not in runs else f"{100 * runs[e].exact:.1f}%"
                      + (" (still improving)" if runs[e].improving else "")) for e in ("rope", *RIVALS)]
            walls = [run.wall_s for run in runs.values()]
            wall = "-".join(dict.fromkeys(f"{w:.0f}" for w in (min(walls), max(walls))))  # one value once
            lines.append(f"| {task} | {L} | {steps} | {steps / TASK_STEPS[task]:g} | " + " | ".join(cells)
                         + f" | {rung(runs)} | {wall} ({runs['rope'].threads}) |")
        decided.append(f"- {task} at {L}: {budget(by_steps, task)}")
    return "\n".join(lines), decided


def budgets_report(found, command):
    table, decided = budget_table(found)
    return "\n".join([
        "# The budgets of the training-length study", "",
        f"Each task and training length L trains every encoding and seed for one number of steps: the smallest of"
        f" {', '.join(f'{m}x' for m in MULTIPLES)} the task's budget at 64"
        f" ({', '.join(f'{t} {s}' for t, s in TASK_STEPS.items())})"
        f" at which RoPE and at least one of ALiBi, T5 or FIRE reach the positive control ({CONTROL:.0%} final val"
        f" exact match at L) in seed 1337. The cosine schedule follows the steps, so each rung is a run of its own."
        f" A rung *fails* where RoPE misses the control or all of ALiBi, T5 and FIRE do; an encoding not trained"
        f" at a rung was not needed to decide it. Wall time: pilots trained two at a time on 2 cores, one thread"
        f" each. *Still improving*: a new best val loss in one of the last {IMPROVING} evaluations. Written from"
        f" records/pilots/ by `{command}`.", "",
        table, "", "The budgets:", "", *decided, ""])


def report(found, checks, command):
    tasks = sorted({task for task, _ in found})
    out = ["# Do the task findings survive a longer training length?", "",
           f"Each task trained at several lengths L (4 layers, 4 heads, 128 wide, batch 32, lr 1e-3), 3 seeds, and each"
           f" run read at 1x, 2x, 4x and 8x its own L on the fixed evaluation set (100 examples per cell and length, its"
           f" own seed, filler from the val split), plainly and, for RoPE, with NTK and YaRN (β = 8 and 32 turns per"
           f" training window, so β means other wavelengths at each L). Exact match is pooled over the cells held at L"
           f" (the passkey's 11 depths; the copy's strings up to L/2), all seeds, then each seed's. Control: the final"
           f" val exact match at L of training's own val set, per seed; below {CONTROL:.0%} a run is *not learned* and"
           f" its readings past L are shown, not ranked. *Still improving*: a new best val loss in one of the last"
           f" {IMPROVING} evaluations. Effective context: the largest reading length up to which every length scores at"
           f" least the threshold; '< L' where the run misses it at L, '≥' where it holds at every length read."
           f" The rung at 64 is the task studies' own runs and readings"
           f" ({'; '.join(f'{t}: ' + ', '.join(files) for t, files in AT_64.items() if (t, 64) in found)}),"
           f" not retrained. Written by `{command}`.", ""]
    for task in tasks:
        by_length = {L: r for (t, L), r in found.items() if t == task}
        out += [f"## {task}", "", run_table(by_length.values()), "", f"### {task}: by ratio or by absolute length?", "",
                f"Each variant read plainly, for each two training lengths L1 < L2: the mean exact match over seeds at"
                f" the same reading lengths in characters past both (what an encoding that generalizes by absolute"
                f" length keeps equal) and at the same multiples 2x-8x (what one that generalizes by ratio keeps"
                f" equal), and the mean distance between the two in points. *Closer*: the smaller distance where it is"
                f" less than half the other, else neither; under {AGREE} points on both sides, both"
                f" (the same either way).", "", transfer_table(series(found, task)), ""]
        checked = [(L, steps, results) for (t, L, steps), results in checks.items() if t == task]
        if checked:
            which = "; ".join(f"{', '.join(dict.fromkeys(r['label'] for r in results['rows'] if r['method'] == 'none'))}"
                              f" at {L} for {steps} steps ({steps / TASK_STEPS[task]:g}x the budget at 64)"
                              for L, steps, results in checked)
            out += [f"### {task}: the training length or the steps?", "",
                    f"Each length trains its own budget, so what changes between two lengths may come from the steps."
                    f" Trained at one length for another length's budget, the cosine schedule following the steps:"
                    f" {which}. Each is shown beside the same variant's runs at every training length read (the"
                    f" steps column tells them apart), read plainly.", "",
                    run_table(steps_rows(found, checks, task)), ""]
    return "\n".join(out)


AGREE = 5  # points of exact match under which two readings count as the same for transfer_table's verdict


def transfer_table(data):
    """Per variant and pair of training lengths: the mean exact match (%) trained at L1 and at L2 at each reading
    length both read in characters past L2, and at each multiple past 1x; the mean |difference| of each; which is
    closer (by ratio, by absolute length, neither, or both where neither moves)."""
    lines = ["| variant | L1 → L2 | same characters: L1 / L2 (mean distance) | same ratio: L1 / L2 (mean distance) |"
             " closer |", "|---|---|---|---|---|"]
    for (label, _, _), by_length in data.items():
        trained = sorted(by_length)
        mean = {L: dict(zip(lengths, values.mean(0))) for L, (lengths, values) in by_length.items()}
        for L1, L2 in zip(trained, trained[1:]):
            chars = [x for x in mean[L1] if x in mean[L2] and x > L2]
            ratios = [m for m in (2, 4, 8) if m * L1 in mean[L1] and m * L2 in mean[L2]]
            pairs = {"chars": [(mean[L1][x], mean[L2][x]) for x in chars],
                     "ratio": [(mean[L1][m * L1], mean[L2][m * L2]) for m in ratios]}
            if not pairs["chars"] or not pairs["ratio"]:
                continue
            gap = {k: 100 * float(np.mean([abs(a - b) for a, b in v])) for k, v in pairs.items()}

            def cell(kind, names):
                each = ", ".join(f"{n}: {100 * a:.0f} / {100 * b:.0f}" for n, (a, b) in zip(names, pairs[kind]))
                return f"{each} ({gap[kind]:.1f})"

            if max(gap.values()) < AGREE:
                closer = "both (the same either way)"
            elif gap["ratio"] < gap["chars"] / 2:
                closer = "by ratio"
            elif gap["chars"] < gap["ratio"] / 2:
                closer = "by absolute length"
            else:
                closer = "neither"
            lines.append(f"| {label} | {L1} → {L2} | {cell('chars', chars)} | "
                         f"{cell('ratio', [f'{m}x' for m in ratios])} | {closer} |")
    return "\n".join(lines)


def series(found, task):
    """{(label, variant, encoding): {training length: (reading lengths, (seeds, lengths) exact match)}} read
    plainly, a variant's label the one at its shortest training length."""
    out, names = {}, {}
    for (t, L), results in found.items():
        if t != task:
            continue
        for label, name, encoding, method, runs, scores in runs_of(results):
            if method != "none":
                continue
            lengths = [x for x in sorted(scores) if scores[x] is not None]
            key = names.setdefault(name, (label, name, encoding))
            out.setdefault(key, {})[L] = (lengths, np.array([scores[x] for x in lengths]).T)
    return out


def plot_lengths(found, task, path, ratio):
    """A panel per encoding: exact match against the reading length (in characters, or / L), a line per
    training length (the mean over seeds), each seed a dot."""
    data = series(found, task)
    columns = min(4, len(data))
    rows = -(-len(data) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), dpi=110, squeeze=False,
                             sharey=True, layout="constrained")
    for ax in axes.flat[len(data):]:
        ax.set_visible(False)
    trained = sorted({L for (t, L) in found if t == task})
    shades = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(trained)))
    ticks = sorted({x / (L if ratio else 1) for by_length in data.values() for L, (xs, _) in by_length.items()
                    for x in xs})
    for ax, ((label, _, encoding), by_length) in zip(axes.flat, data.items()):
        for L, (lengths, values) in sorted(by_length.items()):
            color = shades[trained.index(L)]
            x = np.array(lengths) / (L if ratio else 1)
            ax.plot(x, values.mean(0), color=color, marker="o", markersize=3)
            for seed in values:
                ax.scatter(x, seed, color=color, s=10, alpha=0.5)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{t:g}x" if ratio else f"{t:g}" for t in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(label, fontsize=9, color=COLORS.get(encoding, "black"))
        ax.set_xlabel("reading length / training length" if ratio else "reading length (characters)")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("exact match")
    handles = [plt.Line2D([], [], color=shades[i], marker="o", markersize=3, label=f"trained at {L}")
               for i, L in enumerate(trained)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(trained), fontsize=8, frameon=False)
    what = "reading length / training length: lines that coincide generalize by ratio" if ratio else \
        "reading length in characters: lines that coincide generalize by absolute length"
    fig.suptitle(f"{task}: exact match against the {what}; line: mean over seeds, dots: each seed", fontsize=10)
    save(fig, path)


def style(name):
    """(line style, marker) from a variant's settings (its name: encoding-setting=value-...), telling the RoPE
    family apart where it shares RoPE's colour."""
    settings = {part.partition("=")[0] for part in variant_parts(name)[1:]}
    if "rope_window" in settings:
        return ":", "^"
    return ("--", "s") if "nope_every" in settings else ("-", "o")


def plot_context(found, task, path, threshold=THRESHOLDS[0]):
    """Effective context (median over seeds) against the training length, a line per encoding, log-log, with
    the line 'effective context = training length'; open markers where it holds at every length read (a lower
    bound), a marker at half the training length where it misses at 1x."""
    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=110)
    trained = sorted({L for (t, L) in found if t == task})
    for (label, name, encoding), by_length in series(found, task).items():
        xs, ys, bound = [], [], []
        for L, (lengths, values) in sorted(by_length.items()):
            reach = statistics.median_low(effective(dict(zip(lengths, seed)), lengths, L, threshold) for seed in values)
            xs.append(L)
            ys.append(reach if reach else L / 2)
            bound.append(reach == lengths[-1])
        color, (line, marker) = COLORS.get(encoding), style(name)
        ax.plot(xs, ys, color=color, linestyle=line, marker=marker, label=label, zorder=3)
        ax.scatter([x for x, b in zip(xs, bound) if b], [y for y, b in zip(ys, bound) if b], s=150,
                   facecolors="none", edgecolors=color, zorder=3)
    # wide and pale, behind the encodings, so that a line lying on it stays visible
    ax.plot(trained, trained, color="lightgray", linewidth=6, label="effective context = training length", zorder=1)
    ax.scatter([], [], s=150, facecolors="none", edgecolors="gray", label="circled: holds at every length read (8x),"
               " a lower bound")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(trained, [str(L) for L in trained])
    ax.set_xlabel("training length (characters)")
    ax.set_ylabel(f"effective context at ≥ {threshold:.0%} (characters)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"{task}: effective context (median over seeds); plotted at L/2 where it misses at L", fontsize=9)
    save(fig, path)


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plots_dir_flag(parser, "lengths.md and the figures (from the <task>-L<L>/retrieval.json there) and"
                               " budgets.md")
    parser.add_argument("--pilots", default="records/pilots",
                        help="where the seed-1337 pilots that chose each length's budget are, as"
                             " <task>-L<L>-<steps>-steps/<encoding>_seed1337 (default: records/pilots)")
    parser.add_argument("--budgets-only", action="store_true",
                        help="write only budgets.md (before any length's runs are read)")
    args = parser.parse_args()
    plots = Path(args.plots_dir)
    write_text(plots / "budgets.md", budgets_report(pilots(args.pilots), command_line()))
    print(f"wrote {plots / 'budgets.md'}")
    if args.budgets_only:
        return
    found = load(plots)
    text = report(found, load_steps(plots), command_line())
    write_text(plots / "lengths.md", text)
    for task in sorted({t for t, _ in found}):
        plot_lengths(found, task, plots / f"{task}_by_characters.png", ratio=False)
        plot_lengths(found, task, plots / f"{task}_by_ratio.png", ratio=True)
        plot_context(found, task, plots / f"{task}_effective_context.png")
    print(text)
    print(f"wrote {plots / 'lengths.md'} and the figures")


if __name__ == "__main__":
    run_cli(main)
