"""
Why RoPE cannot use what lies past its training length: the mechanism study's readings (study/studies.py)
judged against the predictions fixed before any of them was read (study/ablations.py).

  python -m study.mechanism --plots-dir plots/mechanism    # reads passkey/, copy/, windowed*/, loss_readings/

Reads the retrieval.json that study.compare wrote for each task (the runs read with every reading and their
far-key attention mass) and for the windowed hybrids (windowed/ and windowed_copy/, read with nope-mask), and the
extrapolation.json of the loss readings (loss_readings/, seed 1337), and writes <plots-dir>/mechanism.md (the
hypotheses and predictions; per task and reading the near cells and all cells, seed by seed, the far-key mass
and each reading's outcome; the verdicts; which layers carry the far key in the windowed hybrids; the loss),
far_mass.md (the far-key mass per layer and head) and mechanism.png (the near cells' exact match per reading,
seeds as dots). It measures nothing.

A cell's outcome, as study/ablations.py defines it: a reading restores a cell of one seed at one length when
its exact match there is at least RESTORE of the plain reading's at the training length on the same cell in
that seed; it restores a variant's near cells when it restores every one it counts for in every seed, fails
them when it restores none in any seed, and is mixed otherwise. A clamp at w counts for a cell only where w
is at least the distance the cell's answer needs.
"""

import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import ArgumentParser, UserError, command_line, read_json, run_cli, write_text  # noqa: E402
from study.ablations import (FAILS, HYPOTHESES, JUDGED_FROM, LOSS_PREDICTION, NOPE_DROPS, NOPE_KEEPS,  # noqa: E402
                             RESTORE, RESTORES, TASK_OUTCOMES, TASK_PREDICTIONS, WINDOWED_PREDICTIONS, per_seed,
                             repairs, variant_table)
from study.flags import add_plots_dir_flag  # noqa: E402
from study.plot import save  # noqa: E402
from study.retrieval import cell_accuracy, headline_cells, near_cells  # noqa: E402
from study.runs import seed_of, variant_of_run, variant_parts  # noqa: E402
from tasks import PASSKEY_DIGITS  # noqa: E402

TASKS = ("passkey", "copy")
WINDOWED_FOLDERS = {"passkey": "windowed", "copy": "windowed_copy"}  # the windowed variants of each task
JUDGED_AT = (2, 4)  # the multiples of the training length the predictions are for
LOSS_READINGS = ("mask", "mask-sink", "rope-mask", "clamp-16", "clamp-32", "clamp-48", "clamp-56", "clamp-63")
ORDER = ("none", "truncate", "mask", "mask-sink", "rope-mask", "clamp-16", "clamp-32", "clamp-48", "clamp-56",
         "clamp-63", "count-1", "count-8", "offset-2", "offset-8", "temp-1.5", "temp-2", "log-scale")


# --- what a reading says about one variant --------------------------------------------


def needed_distance(task, cell, length):
    """How far back the answer of `cell` lies at `length`, counting the character before its source (the
    passkey's opening '#', the one before the copied string), as study/ablations.py defines it."""
    if task == "passkey":
        room = length + 1 - 2 * PASSKEY_DIGITS - 3  # the filler's characters (tasks.passkey)
        return room - round(float(cell.split()[-1]) * room) + 7
    return int(cell.split()[-1]) + 1


def clamp_of(method, block):
    """The distance a reading clamps at (clamp-w: w; the count and offset readings: block - 1), else None."""
    kind, _, value = method.partition("-")
    if kind == "clamp":
        return int(value)
    return block - 1 if kind in ("count", "offset") else None


def counted(results, method, length):
    """Which cells are the near cells `method` is judged on at `length` (a boolean per cell)."""
    task, cells, block = results["task"], results["cells"], results["block_size"]
    near = near_cells(task, cells)
    w = clamp_of(method, block)
    return near if w is None else near & np.array([needed_distance(task, c, length) <= w for c in cells])


def outcome(results, row, plain, length):
    """(verdict, per-seed note) of `row` at `length` against the plain reading at the training length:
    "restores", "fails", "mixed" or "n/a" (the length not read, or no near cell counted)."""
    got = row["results"].get(str(length))
    cells = counted(results, row["method"], length)
    if got is None or isinstance(got, str) or not cells.any():
        return "n/a", ""
    reference = cell_accuracy(plain["results"][str(results["block_size"])])[:, cells]
    restored = cell_accuracy(got)[:, cells] >= RESTORE * reference - 1e-9  # (seeds, counted cells; 72 of 90: 80%)
    verdict = RESTORES if restored.all() else FAILS if not restored.any() else "mixed"
    return verdict, "/".join(map(str, restored.sum(1))) + f" of {cells.sum()}" if verdict == "mixed" else ""


def seed_exact(row, length, cells):
    """Each seed's exact match (a share) pooled over `cells` at `length`; None where not read."""
    got = row["results"].get(str(length))
    if got is None or isinstance(got, str) or not cells.any():
        return None
    right, total = np.array(got, dtype=float)[:, cells].sum(1).T
    return right / total


def percents(shares):
    """Each seed's share as a whole percentage, '100/98/95'; n/a for None (not read)."""
    return "n/a" if shares is None else "/".join(f"{100 * x:.0f}" for x in shares)


def pooled_exact(row, length, cells):
    """Each seed's exact match (%) pooled over `cells` at `length`, '100/98/95'; n/a where not read."""
    return percents(seed_exact(row, length, cells))


def far_mass(row, length, over="near"):
    """(layers, heads) attention mass on keys the training length or more back at the answer positions of the
    near cells (or all), the mean over seeds; None where it was not measured."""
    got = (row.get("far_mass") or {}).get(str(length))
    if not got:
        return None
    return np.mean([np.array(s[over]["sum"]) / s[over]["positions"] for s in got], 0)


def by_variant(results):
    """{variant label: {method: row}} in the order of the rows; a variant is the runs its plain reading reads."""
    out, names = {}, {}
    for row in results["rows"]:
        key = tuple(row["runs"])
        if row["method"] == "none":
            names[key] = row["label"]
        out.setdefault(key, {})[row["method"]] = row
    return {names[key]: rows for key, rows in out.items()}


def seeds_of(rows):
    """A variant's seeds, as its plain reading names its runs: '1337/1338/1339'."""
    return "/".join(seed_of(run) for run in rows["none"]["runs"])


def task_seeds(results):
    """The seeds of a task's readings, as its first row names its runs: '1337/1338/1339'."""
    return "/".join(seed_of(run) for run in results["rows"][0]["runs"])


def windowed(rows):
    """Whether a variant was trained with rope_window (its runs' folder names carry their settings)."""
    return any(part.startswith("rope_window=") for part in variant_parts(variant_of_run(rows["none"]["runs"][0]))[1:])


def judged(rows):
    """Whether the predictions are about this variant: RoPE (hybrids included, not the windowed ones) and T5."""
    return rows["none"]["encoding"] in ("rope", "t5") and not windowed(rows)


def prediction_keys(key):
    """'clamp-16, clamp-32, clamp-48' -> its readings; 'rope-mask (hybrids)' -> ['rope-mask']."""
    return [k.split(" (")[0] for k in key.split(", ")]


def definite(prediction):
    return RESTORES if prediction == RESTORES else FAILS if prediction.startswith(FAILS) else None


def verdicts(results, rows):
    """{hypothesis: (verdict, why)} for one judged variant on one task, by TASK_PREDICTIONS and the order of
    TASK_OUTCOMES: the control first, then each definite prediction against the outcome at 2x and 4x."""
    block, plain = results["block_size"], rows["none"]
    lengths = [m * block for m in JUDGED_AT if m * block in results["lengths"]]
    control = [outcome(results, rows["truncate"], plain, L)[0] for L in lengths] if "truncate" in rows else []
    if not control or any(c != RESTORES for c in control):
        return {h: ("not judged", "the control (truncation) does not restore") for h in HYPOTHESES}
    out = {}
    for h in HYPOTHESES:
        against, open_ = [], []
        for key, predicted in TASK_PREDICTIONS.items():
            want = definite(predicted[h])
            for method in prediction_keys(key):
                if want is None or method not in rows:
                    continue
                for L in lengths:
                    got = outcome(results, rows[method], plain, L)[0]
                    if got in (RESTORES, FAILS) and got != want:
                        against.append(f"{method} at {L // block}x {got}")
                    elif got == "mixed":
                        open_.append(f"{method} at {L // block}x mixed")
        # TASK_OUTCOMES' last rule: a mixed reading the hypothesis needs leaves it undecided, whatever else
        out[h] = ("undecided", "; ".join(open_[:3])) if open_ else \
            ("refuted", "; ".join(against[:3])) if against else ("supported", "")
    return out


# --- the report ---------------------------------------------------------------------


def predictions_table():
    lines = ["| reading | " + " | ".join(HYPOTHESES) + " |", "|---|" + "---|" * len(HYPOTHESES)]
    for key, predicted in TASK_PREDICTIONS.items():
        lines.append(f"| {key} | " + " | ".join(predicted[h] for h in HYPOTHESES) + " |")
    return "\n".join(lines)


def layers(mass):
    """'0.01/0.20/0.45/0.02': per layer, the largest mass of its heads; – where not measured."""
    return "–" if mass is None else "/".join(f"{m:.2f}" for m in mass.max(1))


def task_table(results):
    """Per variant and reading: the near cells' exact match per seed at each length, the outcome at 2x and
    4x, all cells' exact match at those lengths, and the far-key mass over the near cells at 2x and 4x."""
    block, lengths = results["block_size"], results["lengths"]
    judged_at = [m * block for m in JUDGED_AT]
    held = headline_cells(results)
    head = (["variant", "reading"] + [f"near {L} ({L // block}x)" for L in lengths]
            + [f"outcome {L // block}x" for L in judged_at] + [f"all {L // block}x" for L in judged_at]
            + [f"far mass {L // block}x (max head per layer)" for L in judged_at])
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for variant, rows in by_variant(results).items():
        plain = rows["none"]
        for method in (m for m in ORDER if m in rows):
            row = rows[method]
            near = [pooled_exact(row, L, counted(results, method, L)) for L in lengths]
            verdicts_ = [" ".join(outcome(results, row, plain, L)).strip() if method != "none" else "–"
                         for L in judged_at]
            every = [pooled_exact(row, L, held) for L in judged_at]
            mass = [layers(far_mass(row, L)) for L in judged_at]
            lines.append(f"| {variant} | {reading_name(row)} | " + " | ".join(near + verdicts_ + every + mass) + " |")
    return "\n".join(lines)


def reading_name(row):
    return "plain" if row["method"] == "none" else row["label"].split(" + ", 1)[1]


def verdict_table(tasks):
    lines = ["| task | variant | seeds | " + " | ".join(HYPOTHESES) + " |", "|---|---|---|" + "---|" * len(HYPOTHESES)]
    for task, results in tasks.items():
        for variant, rows in by_variant(results).items():
            if not judged(rows):
                continue
            v = verdicts(results, rows)
            lines.append(f"| {task} | {variant} | {seeds_of(rows)} | " + " | ".join(
                f"**{v[h][0]}**" + (f" ({v[h][1]})" if v[h][1] else "") for h in HYPOTHESES) + " |")
    return "\n".join(lines)


def far_mass_tables(tasks):
    """far_mass.md: per task, variant, reading and length, the far-key mass over the near cells per layer,
    each cell its heads' values (mean over seeds)."""
    out = ["# The attention mass on far keys, per layer and head", "",
           "At the answer positions of the near cells, each head's attention weight on the keys the training length"
           " or more back (keys it never saw that far in training), the mean over the answer positions and over"
           " the seeds; in each cell head 1/head 2/..., a column per layer. Written by study.mechanism from"
           " retrieval.json.", ""]
    for task, results in tasks.items():
        block = results["block_size"]
        out += [f"## {task}", "", "| variant | reading | length | " + " | ".join(
            f"layer {i + 1}" for i in range(_layers(results))) + " |", "|---|---|---:|" + "---|" * _layers(results)]
        for variant, rows in by_variant(results).items():
            for method in (m for m in ORDER if m in rows):
                for m in JUDGED_AT:
                    mass = far_mass(rows[method], m * block)
                    if mass is not None:
                        out.append(f"| {variant} | {reading_name(rows[method])} | {m * block} | " + " | ".join(
                            "/".join(f"{x:.2f}" for x in heads) for heads in mass) + " |")
        out.append("")
    return "\n".join(out)


def _layers(results):
    for row in results["rows"]:
        for got in (row.get("far_mass") or {}).values():
            if got:
                return len(got[0]["near"]["sum"])
    return 0


def loss_section(results):
    """The loss: each variant's excess over its sliding window closed by every reading, seed by seed
    (study.ablations' tables), and for which variants LOSS_PREDICTION holds."""
    lines, broken, unbroken = [], [], []
    for v in per_seed(results).values():
        counts, held, judged_any = [], True, False
        for key in (k for k in LOSS_READINGS if k in v["readings"]):
            r = repairs(v, key)
            judged_seeds = [x for x in r if x is not None]
            held &= all(judged_seeds)
            judged_any |= bool(judged_seeds)
            counts.append(f"{v['labels'][key]} repairs {r.count(True)} of {len(judged_seeds)}"
                          + (f" ({r.count(None)} with nothing to repair)" if None in r else ""))
        if not judged_any:
            unbroken.append(v["label"])
        elif not held:
            broken.append(v["label"])
        lines += ["", f"### {v['label']}", "", variant_table(v), "", "; ".join(counts) + "."]
    verdict = ("**holds** for every variant with a break to repair" if not broken else
               "**does not hold** for " + "; ".join(broken) + ": some reading that hides or neutralises the far"
               " keys leaves a seed broken; it holds for the others with a break to repair")
    quiet = f" Nothing to repair (no break past the training length): {'; '.join(unbroken)}." if unbroken else ""
    return [f"The prediction, fixed before these readings: {LOSS_PREDICTION}. It {verdict}.{quiet}", *lines]


def within_beyond(results, length):
    """The task's cells at `length` whose answer needs nothing the training length or more back (within) and
    those whose answer needs something that far (beyond), by needed_distance."""
    block = results["block_size"]
    need = np.array([needed_distance(results["task"], c, length) for c in results["cells"]])
    return need < block, need >= block


def nope_outcome(plain, masked):
    """nope-mask's outcome at one length by WINDOWED_PREDICTIONS, from each seed's exact match (shares) read
    plainly and masked on the within and beyond cells: (outcome, the seeds judged)."""
    carry, relay, neither = WINDOWED_PREDICTIONS  # the outcomes, named as the predictions name them
    judged = plain["beyond"] >= JUDGED_FROM
    if not judged.any():
        return f"not judged (plain finds less than {JUDGED_FROM:.0%} beyond)", 0
    kept = masked["beyond"][judged] / plain["beyond"][judged]
    near = masked["within"][judged] >= NOPE_KEEPS * plain["within"][judged] - 1e-9
    if (kept < NOPE_DROPS).all() and near.all():
        return carry, judged.sum()
    if (kept >= NOPE_KEEPS - 1e-9).all():
        return relay, judged.sum()
    return neither, judged.sum()


def windowed_section(results):
    """The hybrids read with nope-mask: per variant and length past the training length, the within and beyond
    cells plainly and masked, seed by seed, and for the windowed ones the outcome (the predictions are theirs: a
    plain hybrid's RoPE layers see every key)."""
    block = results["block_size"]
    lines = ["| variant | seeds | length | within: plain | within: nope-mask | beyond: plain | beyond: nope-mask |"
             " outcome (seeds judged) |", "|---|---|---:|---|---|---|---|---|"]
    for variant, rows in by_variant(results).items():
        if "nope-mask" not in rows:
            continue
        for L in (int(x) for x in results["lengths"] if int(x) > block):
            cells = dict(zip(("within", "beyond"), within_beyond(results, L)))
            shares = {m: {g: seed_exact(rows[m], L, c) for g, c in cells.items()} for m in ("none", "nope-mask")}
            if any(v is None for got in shares.values() for v in got.values()):
                continue
            verdict, judged_seeds = nope_outcome(shares["none"], shares["nope-mask"]) if windowed(rows) else \
                ("not judged (not windowed)", 0)
            text = [percents(shares[m][g]) for g in cells for m in shares]
            lines.append(f"| {variant} | {seeds_of(rows)} | {L} ({L // block}x) | " + " | ".join(text)
                         + f" | {verdict}" + (f" ({judged_seeds})" if judged_seeds else "") + " |")
    return ["Does what lies far back reach the answer through the NoPE layers? The hybrids read with nope-mask:"
            f" keys {block} or more back hidden from their NoPE layers too (a windowed hybrid's RoPE layers already"
            f" see only their window). Exact match (%) seed by seed on the {results['task']} cells whose answer needs"
            f" nothing {block} or more back (*within*) and those whose answer needs something that far (*beyond*). The"
            " predictions, fixed before this reading:", "",
            *(f"- **{k}**: {v}." for k, v in WINDOWED_PREDICTIONS.items()), "",
            f"A seed is judged where its plain reading finds at least {JUDGED_FROM:.0%} beyond.", "", "\n".join(lines)]


def report(tasks, loss, command, nope_masked=()):
    """mechanism.md's text; nope_masked: per task, the windowed variants' retrieval.json, its hybrids read with
    nope-mask."""
    out = [
        "# Why RoPE cannot use what lies past its training length: the readings, seed by seed",
        "",
        f"Models trained on {next(iter(tasks.values()))['block_size']} characters (tasks) read past it with"
        f" readings that change what the attention can see or how it scores it, judged against predictions fixed"
        f" before any of them was read ([study/ablations.py](../../study/ablations.py)). Written from the"
        f" retrieval.json of each task and the loss's extrapolation.json (seed 1337) by `{command}`.",
        "",
        "## The hypotheses",
        "",
        *(f"- **{name}**: {text}." for name, text in HYPOTHESES.items()),
        "",
        f"A reading *restores* a cell of one seed when its exact match is at least {RESTORE:.0%} of the plain"
        f" reading's at the training length on the same cell and seed; it restores a variant's near cells at a"
        f" length when it restores every one it counts for in every seed, *fails* them when it restores none in any"
        f" seed, and is *mixed* otherwise (with the cells restored per seed). The near cells: the passkey at depths"
        f" 0.8-1.0, the copy's strings of 8 and 16. A clamp at w (and the count and offset readings, at 63) counts"
        f" only for the cells whose answer lies at most w back.",
        "",
        "## What each hypothesis predicts for the near cells at 2x and 4x",
        "",
        predictions_table(),
        "",
        "How the outcomes decide, in this order:",
        "",
        *(f"{i + 1}. {text}" for i, text in enumerate(TASK_OUTCOMES)),
        "",
        "## The verdicts",
        "",
        "Per task and variant, each hypothesis against the outcomes of the readings it makes a definite"
        " prediction for (restores or fails) at 2x and 4x: undecided where one it needs is mixed (the first such"
        " readings named), else refuted where an outcome is the opposite, supported where every one agrees. RoPE,"
        " the RoPE/NoPE hybrids and T5 are judged; `none` and the windowed variants are read and reported.",
        "",
        verdict_table(tasks),
    ]
    for task, results in tasks.items():
        block = results["block_size"]
        out += ["", f"## {task}: the near cells and all cells per reading", "",
                f"Exact match (%) seed by seed ({task_seeds(results)}): near,"
                f" the near cells the reading counts for; all, the cells held at {block}. The outcome at 2x and"
                f" 4x as defined above. Far mass: per layer, the largest of its heads' attention mass on keys"
                f" {block} or more back at the near cells' answer positions, mean over seeds (per head:"
                f" [far_mass.md](far_mass.md)); – where nothing is that far or it was not measured.",
                "", task_table(results)]
    for task, results in dict(nope_masked).items():
        if any(r["method"] == "nope-mask" for r in results["rows"]):
            out += ["", "## The windowed hybrids: which layers carry the far key" + (f" ({task})" if task != "passkey"
                    else ""), "", *windowed_section(results)]
    if loss is not None:
        out += ["", "## The Shakespeare loss", "", *loss_section(loss)]
    return "\n".join(out) + "\n"


# --- the figure ---------------------------------------------------------------------


SHORT = {"none": "plain", "truncate": "truncated to the last 64", "mask": "far keys masked", "mask-sink":
         "far keys masked, first kept", "rope-mask": "far keys masked in RoPE layers", "count-1": "count: 1 far key",
         "count-8": "count: 8 far keys", "offset-2": "clamp 63, far logits − 2", "offset-8": "clamp 63, far logits − 8",
         "temp-1.5": "logits × 1.5", "temp-2": "logits × 2", "log-scale": "log scaling",
         **{f"clamp-{w}": f"clamp at {w}" for w in (16, 32, 48, 56, 63)}}


MARKERS = ((1, "s", "0.45", 0.0), (2, "o", "tab:blue", -0.3), (4, "^", "tab:red", 0.3))  # length, its marker
SEED_STEP = 0.11  # the vertical step between the seeds of one reading and length


def plot(tasks, path):
    """A row of panels per task, a panel per variant: the near cells' exact match of each reading at 1x (squares,
    what the reading costs where nothing is unseen), 2x (circles) and 4x (triangles), each seed a dot; shaded
    where it is below 80% of the plain reading at the training length (the mean over seeds: the restore line,
    which the tables apply cell by cell and seed by seed). The seeds of one reading and length sit one above
    the other in seed order, so seeds that agree do not hide each other."""
    rows_of = {task: by_variant(results) for task, results in tasks.items()}
    columns = max(len(v) for v in rows_of.values())
    fig, axes = plt.subplots(len(tasks), columns, figsize=(max(1.9 * columns + 1.6, 6.0), 7.2 * len(tasks)), dpi=110,
                             squeeze=False, sharex=True)
    for r, (task, variants) in enumerate(rows_of.items()):
        results, block = tasks[task], tasks[task]["block_size"]
        methods = [m for m in ORDER if any(m in rows for rows in variants.values())]
        for c in range(columns):
            ax = axes[r, c]
            if c >= len(variants):
                ax.set_visible(False)
                continue
            variant, rows = list(variants.items())[c]
            plain = pooled_exact(rows["none"], block, near_cells(task, results["cells"]))
            ax.axvspan(0, RESTORE * np.mean([float(x) for x in plain.split("/")]) / 100, color="0.92", zorder=0)
            for y, method in enumerate(methods):
                for m, marker, color, dy in MARKERS:
                    xs = seed_exact(rows[method], m * block, counted(results, method, m * block)) \
                        if method in rows else None
                    if xs is not None:
                        # each seed a little lower than the one before: seeds that agree stay apart (3 seeds
                        # span 2 * SEED_STEP; more share that span)
                        step = SEED_STEP * 2 / max(2, len(xs) - 1)
                        ys = [y + dy + step * (i - (len(xs) - 1) / 2) for i in range(len(xs))]
                        ax.scatter(xs, ys, marker=marker, color=color, s=10, alpha=0.75)
            ax.set_yticks(range(len(methods)), [SHORT.get(m, m) for m in methods] if c == 0 else [], fontsize=7)
            ax.set_ylim(len(methods) - 0.5, -0.5)
            ax.set_xlim(-0.04, 1.04)
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(alpha=0.3, axis="x")
            ax.set_title(textwrap.fill(variant.replace("RoPE, RoPE/NoPE", "RoPE/NoPE"), 24), fontsize=8)
        seeds = task_seeds(results)
        axes[r, 0].set_ylabel(f"{task} (seed{'s' * ('/' in seeds)} {seeds})", fontsize=10)
    for ax in axes[-1]:
        ax.set_xlabel("exact match", fontsize=7)
    handles = [plt.Line2D([], [], marker=mk, color=col, linestyle="none", label=f"{m}x the training length")
               for m, mk, col, _ in MARKERS]
    fig.legend(handles=handles, loc="lower center", ncol=len(MARKERS), fontsize=8, frameon=False)
    near = {"passkey": "the passkey at depths 0.8-1", "copy": "the copy's strings of 8 and 16"}
    fig.suptitle(textwrap.fill(f"Near cells' exact match per reading ({', '.join(near[t] for t in tasks)}), each seed"
                               f" a dot, seeds in order from the top; grey: below 80% of the plain reading at the"
                               f" training length; a clamp counts only the cells whose answer lies within it", 90),
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    save(fig, path)


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plots_dir_flag(parser, "mechanism.md, far_mass.md and mechanism.png (from passkey/, copy/, windowed/,"
                               " windowed_copy/ and loss_readings/ there)")
    args = parser.parse_args()
    plots = Path(args.plots_dir)
    tasks = {t: read_json(plots / t / "retrieval.json", "run the mechanism study first (python -m study mechanism)")
             for t in TASKS if (plots / t / "retrieval.json").exists()}
    if not tasks:
        raise UserError(f"no {' or '.join(f'{t}/retrieval.json' for t in TASKS)} under {plots}: run python -m study"
                        f" mechanism first")
    loss_path = plots / "loss_readings" / "extrapolation.json"
    loss = read_json(loss_path, "rerun the study") if loss_path.exists() else None
    nope_masked = {task: read_json(plots / folder / "retrieval.json", "rerun the study")
                   for task, folder in WINDOWED_FOLDERS.items() if (plots / folder / "retrieval.json").exists()}
    for task, results in nope_masked.items():
        if results["task"] != task:
            raise UserError(f"{plots / WINDOWED_FOLDERS[task] / 'retrieval.json'} holds the {results['task']} task's"
                            f" runs, not the {task}'s: rerun the study")
    text = report(tasks, loss, command_line(), nope_masked)
    write_text(plots / "mechanism.md", text)
    write_text(plots / "far_mass.md", far_mass_tables(tasks))
    plot(tasks, plots / "mechanism.png")
    print(text)
    print(f"wrote {plots / 'mechanism.md'}, far_mass.md and mechanism.png")


if __name__ == "__main__":
    run_cli(main)
