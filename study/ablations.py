"""
Why RoPE breaks past its training length: the inference-time ablations, judged seed by seed
against the predictions written down before their numbers existed.

  python -m study.ablations --plots-dir plots/rope_break     # reads its extrapolation.json

Reads the extrapolation.json that study.evaluate (or study.compare / study.sweep with
--extrapolate --ablations) wrote, and writes <plots-dir>/ablations.md: the predictions, the
outcome per explanation, and per variant a table of every seed at every length past training.

What a cell says. At positions >= block_size of windows of length L, a run read plainly loses
`plain`, read through its own sliding window `window` (the baseline: the same model never shown
more context than in training), and read with an ablation `ablated`. The plain reading's excess
over the window is what breaks; the share of it an ablation closes is

    share closed = (plain - ablated) / (plain - window)

(100%: the ablation reads as well as the window; above 100%: better; below 0: worse than plain).
"""

import argparse
from pathlib import Path

from common import ArgumentParser, UserError, command_line, read_json, run_cli, write_text
from study.evaluate import is_ablation_key, method_label, method_of, variant_of
from study.flags import add_plots_dir_flag
from study.runs import seed_of, variant_parts

# Fixed before any Shakespeare run was read with an ablation (after the passkey study's exploratory
# reading, where the two clamps disagree). A plain reading is *broken* at a length when it loses at
# least MIN_EXCESS more than its sliding window there. In one seed an ablation *repairs* a run when it
# closes at least REPAIR of the excess at every length where the run is broken, and loses at most
# MIN_EXCESS more than the window where it is not; a seed broken at no length has nothing to repair (not
# judged). An ablation repairs a variant when it repairs every seed, and fails it when it repairs none;
# anything between leaves the prediction that needs it undecided.
REPAIR, MIN_EXCESS = 0.5, 0.01
# The clamp that tests "unseen distances" is w = 63: every distance beyond the training length is
# read as the longest one training showed, and reads inside it are unchanged. w = 32 also changes the reads
# inside 64 (distances 33-63), so it is reported, not judged. The predictions are for a training length of 64.
JUDGED_CLAMP, JUDGED_BLOCK = "clamp-63", 64
ROLES = {"rope": "RoPE", "rope-rope_fraction=0.25": "25% p-RoPE", "none": "none", "t5": "T5"}  # by run name
JUDGED = ("RoPE", "25% p-RoPE", "none")  # the variants the predictions name (T5 is reported beside them)
# (the two hypotheses were first named "unseen rotation angles" and "attention spread over more keys than
# training showed"; the clamp tests distances, not angles pair by pair, and each now has one name in every file)
PREDICTIONS = {
    "unseen distances":
        "the clamp (w = 63) repairs RoPE and 25% p-RoPE, and log scaling repairs neither",
    "crowding":
        "log scaling repairs RoPE, 25% p-RoPE and none, and the clamp (w = 63) repairs neither RoPE nor 25% p-RoPE"
        " (both repairing is undecided)",
}


# --- Why RoPE cannot use what lies past its training length: the readings on the tasks (study.mechanism) -----
# Fixed before any task run was read with these readings: the commit that adds them holds no number of
# theirs. Each hypothesis has one name, used the same way in every file:
HYPOTHESES = {
    "unseen distances":
        "past 64 a query meets keys at distances (rotation angles, T5 buckets) training never showed, and what"
        " the model makes of them disturbs even an answer that lies near",
    "crowding":
        "past 64 a query sees more keys than training ever showed it; together the far keys draw attention away"
        " from the near answer, whatever their distances",
    "rarely trained last distances":
        "training shows distance d in 64 - d places of a window, distance 63 in one (the last query, the first"
        " key): a clamp at 63 puts every far key at the distance the model knows least, and fails for that",
}
# One definition of "restores", shared by every file (study.mechanism judges with it): a reading restores a
# cell of one seed at one length when its exact match there is at least RESTORE of the plain reading's at the
# training length on the same cell (passkey depth, copy string length) in that seed. A reading restores a
# variant's near cells at a length when it restores every near cell it counts for in every seed, and fails
# them when it restores none of them in any seed; anything between is mixed, and a mixed outcome decides
# nothing. The near cells: the passkey at depths 0.8-1.0 and the copy's strings of 8 and 16, whose answers
# lie at most 60 characters back up to 4x. A clamp at w counts for a cell only where w is at least the
# distance its answer needs (below it the clamp moves the answer itself): the passkey's (1 - depth) * room +
# 7 (room = L - 12, the filler's length), the copy's string length + 1.
RESTORE = 0.8
# What each hypothesis predicts for the near cells at 2x and 4x, reading by reading (RoPE, both RoPE/NoPE
# hybrids, T5 with the bucket of w as its clamp; "none" is read with the readings that do not clamp)
RESTORES, FAILS = "restores", "fails"
TASK_PREDICTIONS = {
    "truncate": dict.fromkeys(HYPOTHESES, RESTORES),  # the positive control: an ordinary training example
    "mask": dict.fromkeys(HYPOTHESES, RESTORES),  # no key beyond 63, and no more keys than in training
    "mask-sink": {"unseen distances": "restores, unless one key at an unseen distance is enough to disturb",
                  "crowding": RESTORES, "rarely trained last distances": RESTORES},
    "clamp-16, clamp-32, clamp-48": {"unseen distances": RESTORES, "crowding": FAILS,
                                     "rarely trained last distances": RESTORES},
    "clamp-56, clamp-63": {"unseen distances": RESTORES, "crowding": FAILS,
                           "rarely trained last distances": FAILS},
    "count-1, count-8": {"unseen distances": RESTORES, "crowding": RESTORES,
                         "rarely trained last distances": FAILS},
    "offset-8": dict.fromkeys(HYPOTHESES, RESTORES),  # the far keys pushed down: tells whether they draw attention
    "offset-2": {"unseen distances": RESTORES, "crowding": "between clamp-63 and offset-8",
                 "rarely trained last distances": "between clamp-63 and offset-8"},
    "rope-mask (hybrids)": {"unseen distances": RESTORES, "crowding": FAILS + " (the NoPE layers still see every key)",
                            "rarely trained last distances": RESTORES},
    "temp-1.5, temp-2": {"unseen distances": FAILS + " (what is off is sharpened too)",
                         "crowding": "restores, or moves toward it", "rarely trained last distances": "no prediction"},
}
TASK_OUTCOMES = (  # how the outcomes decide, read in this order
    "truncation fails in some seed: the positive control fails, and no other reading is judged",
    "masking fails while truncation restores: something besides far keys breaks the model (positions past 63 as"
    " such, or the first token: mask-sink), and none of the three is supported",
    "a clamp at 16-48 restores, count-1 restores and rope-mask restores: unseen distances is supported, crowding"
    " refuted; clamp-63 then tells whether rarely trained last distances adds to it",
    "clamps fail at every w while count-1, count-8 (or temperature) and masking restore: crowding is supported,"
    " unseen distances refuted",
    "clamps at 16-48 restore, clamp-63 and the counts fail: rarely trained last distances is supported",
    "any other pattern, or a mixed reading among those a hypothesis needs: that hypothesis is undecided",
)
# Which layers carry what lies far back in the windowed hybrids (RoPE layers in a window of 32, NoPE layers seeing
# every key), read with nope-mask: keys 64 or more back hidden from the NoPE layers too, so that no layer sees that
# far (stacked windows still could: two windows of 32 and two of 64 reach some 190 characters). Judged per seed at
# 2x, 4x and 8x against the plain reading at the same length, on two groups of the task's cells: *within*, whose
# answer needs nothing 64 or more back, and *beyond*, whose answer needs something that far; a seed is judged
# only where its plain reading finds at least JUDGED_FROM of the beyond cells' keys.
NOPE_KEEPS, NOPE_DROPS, JUDGED_FROM = 0.8, 0.2, 0.5
WINDOWED_PREDICTIONS = {
    "the NoPE layers carry it": f"nope-mask keeps less than {NOPE_DROPS:.0%} of the plain exact match on the beyond"
                                f" cells in every judged seed, and at least {NOPE_KEEPS:.0%} on the within cells",
    "the windowed RoPE layers relay it": f"nope-mask keeps at least {NOPE_KEEPS:.0%} of the plain exact match on the"
                                         f" beyond cells in every judged seed",
    "neither alone": "anything between, or seeds that disagree: undecided",
}
# The Shakespeare loss (1 seed of each of plots/rope_break's runs): its prediction is that it cannot decide.
# The loss needs only the last 2-10 characters (plots/encodings, the attention distances), so every reading
# that hides the far keys or makes them harmless repairs it under all three hypotheses: truncation (the
# sliding window), masking and the clamps at 16-63 alike. What it adds is whether a reading costs anything
# near: a clamp below 63 moves distances the loss does use.
LOSS_PREDICTION = ("every reading that hides the far keys or neutralises them repairs the loss under all three"
                   " hypotheses: the loss cannot tell them apart")


def role_of(name):
    """Which of ROLES a variant's run name is, whatever its learning rate (else None)."""
    return ROLES.get("-".join(p for p in variant_parts(name) if not p.startswith(("lr=", "min_lr="))))


def per_seed(results):
    """{variant: {"label", "role", "seeds", "labels": {key: column label}, "readings": {key: {length:
    [loss past block per run]}}}} for every variant read with an ablation; readings hold "none" (plain)
    and "sliding", the others in the order of the rows."""
    block, variants = results["block_size"], {}
    for row in results["rows"]:
        seeds = [seed_of(r) for r in row["runs"]]
        v = variants.setdefault(variant_of(row), {"readings": {}, "labels": {}, "seeds": seeds})
        if seeds != v["seeds"]:
            raise UserError(f"{row['name']} lists other seeds than the other readings of {variant_of(row)}")
        key = method_of(row)
        if key == "none":
            v.update(label=row["label"], role=role_of(variant_of(row)))
        elif key != "sliding":
            v["labels"][key] = method_label(row)
        v["readings"][key] = {r["length"]: r["run_past"] for r in row["results"]
                              if r["length"] > block and r.get("run_past") is not None}
    out = {name: v for name, v in variants.items()
           if "label" in v and "sliding" in v["readings"] and any(map(is_ablation_key, v["readings"]))}
    roles = [v["role"] for v in out.values() if v["role"]]
    for role in {r for r in roles if roles.count(r) > 1}:
        raise UserError(f"more than one variant is {role} ({', '.join(n for n, v in out.items() if v['role'] == role)});"
                        f" read one of them")
    return out


def share_closed(plain, ablated, window):
    return (plain - ablated) / (plain - window)


def repairs(variant, key):
    """For each seed: True (`key` repairs it), False (it does not), None (nothing to repair, or a length
    not read); None instead of the list where the variant was not read with `key`."""
    readings = variant["readings"]
    if key not in readings:
        return None
    plain, window, ablated = readings["none"], readings["sliding"], readings[key]
    out = []
    for i in range(len(variant["seeds"])):
        if not plain or any(L not in window or L not in ablated for L in plain):
            out.append(None)
            continue
        broken = [L for L in plain if plain[L][i] - window[L][i] >= MIN_EXCESS]
        out.append(None if not broken else
                   all(share_closed(plain[L][i], ablated[L][i], window[L][i]) >= REPAIR for L in broken)
                   and all(ablated[L][i] - window[L][i] <= MIN_EXCESS for L in plain if L not in broken))
    return out


def verdict(variants, block):
    """(the explanation the outcome supports, or None; one markdown line per prediction)."""
    if block != JUDGED_BLOCK:
        return None, [f"- not judged: the predictions are for models trained on {JUDGED_BLOCK} characters"]
    by_role = {v["role"]: v for v in variants.values() if v["role"]}
    missing = [r for r in JUDGED if r not in by_role]
    unread = [f"{r} with {k}" for r in JUDGED if r in by_role for k in ("log-scale", JUDGED_CLAMP)
              if (r, k) != ("none", JUDGED_CLAMP) and repairs(by_role[r], k) is None]
    if missing or unread:
        return None, [f"- not judged: no {', '.join(missing)} among the variants read with the ablations" if missing
                      else f"- not judged: not read: {', '.join(unread)}"]

    def every(role, key):
        return all(r is True for r in repairs(by_role[role], key))

    def none_of(role, key):
        return all(r is False for r in repairs(by_role[role], key))

    angles = all(every(role, JUDGED_CLAMP) and none_of(role, "log-scale") for role in ("RoPE", "25% p-RoPE"))
    spread = (all(every(role, "log-scale") for role in JUDGED)
              and all(none_of(role, JUDGED_CLAMP) for role in ("RoPE", "25% p-RoPE")))
    names = list(PREDICTIONS)
    supported = names[0] if angles else names[1] if spread else None  # (the two exclude each other)
    lines = [f"- **{name}** is supported if {rule}: " + ("**supported**." if name == supported else "not supported.")
             for name, rule in PREDICTIONS.items()]
    lines.append("- Otherwise (neither, or a repair in some seeds only): "
                 + ("**undecided**." if supported is None else "not the case."))
    return supported, lines


def cell(plain, ablated, window):
    if plain - window < MIN_EXCESS:
        return f"no break ({ablated - window:+.3f})"
    return f"{round(share_closed(plain, ablated, window), 2) + 0:.0%}"  # (+ 0: no "-0%")


def variant_table(v):
    """Markdown: one row per seed and length; the plain excess, then each reading's share closed."""
    readings, keys = v["readings"], list(v["labels"])
    lines = ["| seed | L | plain − window | " + " | ".join(v["labels"][k] for k in keys) + " |",
             "|---|---:|---:|" + "---:|" * len(keys)]
    for i, seed in enumerate(v["seeds"]):
        for L in (L for L in readings["none"] if L in readings["sliding"]):
            plain, window = readings["none"][L][i], readings["sliding"][L][i]
            cells = [cell(plain, readings[k][L][i], window) if L in readings[k] else "n/a" for k in keys]
            lines.append(f"| {seed} | {L} | {plain - window:+.4f} | " + " | ".join(cells) + " |")
    summary = []
    for key in (k for k in keys if k in ("log-scale", JUDGED_CLAMP)):
        r = repairs(v, key)
        summary.append(f"{v['labels'][key]} repairs {r.count(True)} of {len(r)} seeds"
                       + (f" ({r.count(None)} with nothing to repair)" if None in r else ""))
    return "\n".join(lines) + ("\n\n" + "; ".join(summary) + "." if summary else "")


def report(results, command):
    """ablations.md's text."""
    variants, block = per_seed(results), results["block_size"]
    if not variants:
        raise UserError("the results hold no variant read with an ablation beside its sliding window; read the runs"
                        " with --ablations")
    _, lines = verdict(variants, block)
    out = [
        "# Why RoPE breaks past its training length: the ablations, seed by seed",
        "",
        f"Models trained on {block} characters, read on the val split at every length past that. Each cell is the"
        f" share of the plain reading's excess loss (positions ≥ {block}, over the same model's own sliding window"
        f" of {block}) that the reading closes: 100% reads as well as the window, 0% as plainly, below 0 worse;"
        f" \"no break\" where the plain reading is within {MIN_EXCESS} nats of the window (then the reading's own"
        f" excess). Written from extrapolation.json by `{command}`.",
        "",
        "## The predictions and the outcome",
        "",
        f"Fixed before any of these runs was read with an ablation (after the passkey study's exploratory reading,"
        f" where the two clamps disagree; [study/ablations.py](../../study/ablations.py)). The plain reading is"
        f" broken at a length when it loses at least {MIN_EXCESS} nats more than its window. An ablation repairs"
        f" a seed when it closes at least {REPAIR:.0%} of the excess at every length where the seed is broken, and"
        f" stays within {MIN_EXCESS} of the window where it is not; it repairs a variant when it repairs every"
        f" seed. The clamp judged is w = 63 (ReRoPE: no distance beyond those training showed, reads inside"
        f" {block} unchanged); w = 32 also changes reads inside {block} and is reported, not judged.",
        "",
        *lines,
    ]
    for v in variants.values():
        named = " (named in the predictions)" if v["role"] in JUDGED else ""
        out += ["", f"## {v['label']}{named}", "", variant_table(v)]
    return "\n".join(out) + "\n"


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plots_dir_flag(parser, "ablations.md (from the extrapolation.json there)")
    parser.add_argument("--results", default=None, metavar="FILE",
                        help="the extrapolation.json to read (default: <plots-dir>/extrapolation.json)")
    args = parser.parse_args()
    source = Path(args.results or Path(args.plots_dir) / "extrapolation.json")
    results = read_json(source, "run study.evaluate (or the study) with --ablations first")
    try:
        text = report(results, command_line())
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise UserError(f"{source} is not the extrapolation.json that study.evaluate writes ({type(e).__name__}:"
                        f" {e})") from None
    path = Path(args.plots_dir) / "ablations.md"
    write_text(path, text)
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
