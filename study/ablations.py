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

    closed = (plain - ablated) / (plain - window)

(100%: the ablation reads as well as the window; above 100%: better; below 0: worse than plain).
"""

import argparse
import re
from pathlib import Path

from common import ArgumentParser, UserError, command_line, read_json, run_cli, write_text
from study.evaluate import method_of, variant_of
from study.flags import add_plots_dir_flag

# Fixed before the runs. In one seed an ablation *repairs* a run when it closes at least half of the
# plain reading's excess over the sliding window at every length past training (2x, 4x and 8x). It
# repairs a variant when it repairs every seed; some seeds only leaves that variant undecided.
REPAIR = 0.5
# The clamp that tests "unseen rotation angles" is w = 63: every distance beyond the training length
# is read as the longest one training showed, and reads inside the training length are unchanged.
# w = 32 also changes the reads inside it (distances 33-63), so it is reported, not judged.
JUDGED_CLAMP = "clamp-63"
ROLES = ("RoPE", "25% p-RoPE", "none", "T5")  # the variants the predictions name
PREDICTIONS = (
    ("unseen rotation angles",
     "the clamp (w = 63) repairs RoPE and 25% p-RoPE, and log scaling repairs neither"),
    ("attention spread over more keys than training showed",
     "log scaling repairs RoPE, 25% p-RoPE and none, and the clamp (w = 63) repairs neither RoPE nor 25% p-RoPE"),
)
UNDECIDED = "both, neither, or a repair in some seeds only: undecided"
COLUMNS = {"log-scale": "log scaling", "clamp-63": "clamp at 63", "clamp-32": "clamp at 32",
           "yarn-b32-no-temperature": "YaRN β=32, no temperature", "yarn-b8-no-temperature": "YaRN β=8, no temperature",
           "yarn-b32": "YaRN β=32", "yarn-b8": "YaRN β=8"}


def role_of(row):
    """Which of ROLES a plain row reads (by its run names, which carry every setting that differs), or None."""
    name = variant_of(row)
    if row["encoding"] == "rope":
        if "rope_fraction=0.25" in name and "nope_every" not in name and "rope_theta" not in name:
            return "25% p-RoPE"
        if not re.search(r"rope_fraction|nope_every|rope_theta", name):
            return "RoPE"
        return None
    return {"none": "none", "t5": "T5"}.get(row["encoding"])


def seed_of(run):
    match = re.search(r"_seed(\d+)$", str(run).rstrip("/"))
    return match.group(1) if match else str(run)


def per_seed(results):
    """{variant: {"label", "role", "seeds", "readings": {key: {length: [loss past block per run]}}}},
    for every variant read with at least one ablation; readings hold "none" (plain) and "sliding"."""
    block = results["block_size"]
    variants = {}
    for row in results["rows"]:
        v = variants.setdefault(variant_of(row), {"readings": {}})
        if method_of(row) == "none":
            v.update(label=row["label"], role=role_of(row), seeds=[seed_of(r) for r in row["runs"]])
        v["readings"][method_of(row)] = {r["length"]: r["run_past"] for r in row["results"]
                                         if r["length"] > block and r.get("run_past")}
    return {name: v for name, v in variants.items()
            if "label" in v and "sliding" in v["readings"] and set(v["readings"]) - {"none", "sliding"}}


def closed(plain, ablated, window):
    """The share of the plain reading's excess over the window that the ablation closes (None: no excess)."""
    return None if plain <= window else (plain - ablated) / (plain - window)


def repairs(variant, key):
    """For each seed, whether `key` repairs it (None where the variant was not read with it)."""
    readings = variant["readings"]
    if key not in readings:
        return None
    plain, window = readings["none"], readings["sliding"]
    out = []
    for i in range(len(variant["seeds"])):
        shares = [closed(plain[L][i], readings[key][L][i], window[L][i]) for L in plain]
        out.append(all(s is None or s >= REPAIR for s in shares))
    return out


def verdict(variants):
    """(name of the explanation the outcome supports, or None, and one line per prediction)."""
    by_role = {v["role"]: v for v in variants.values() if v["role"]}
    missing = [r for r in ROLES if r not in by_role]
    if missing:
        return None, [f"not judged: no {', '.join(missing)} among the runs read with the ablations"]

    def every(role, key):
        r = repairs(by_role[role], key)
        return r is not None and all(r)

    def none_of(role, key):
        r = repairs(by_role[role], key)
        return r is not None and not any(r)

    angles = all(every(r, JUDGED_CLAMP) and none_of(r, "log-scale") for r in ("RoPE", "25% p-RoPE"))
    spread = (all(every(r, "log-scale") for r in ("RoPE", "25% p-RoPE", "none"))
              and all(none_of(r, JUDGED_CLAMP) for r in ("RoPE", "25% p-RoPE")))
    supported = PREDICTIONS[0][0] if angles else PREDICTIONS[1][0] if spread else None  # (never both)
    lines = [f"- **{name}** is supported if {rule}: "
             + ("**supported**." if name == supported else "not supported.") for name, rule in PREDICTIONS]
    lines.append(f"- Otherwise ({UNDECIDED}): " + ("**undecided**." if supported is None else "not the case."))
    return supported, lines


def fmt_share(share):
    return "no excess" if share is None else f"{share:.0%}"


def variant_table(v):
    """Markdown: one row per seed and length; the plain excess, then each reading's share closed."""
    readings = v["readings"]
    keys = [k for k in COLUMNS if k in readings]
    lines = ["| seed | L | plain − window | " + " | ".join(COLUMNS[k] for k in keys) + " |",
             "|---|---:|---:|" + "---:|" * len(keys)]
    for i, seed in enumerate(v["seeds"]):
        for L in readings["none"]:
            plain, window = readings["none"][L][i], readings["sliding"][L][i]
            cells = [fmt_share(closed(plain, readings[k][L][i], window)) for k in keys]
            lines.append(f"| {seed} | {L} | {plain - window:+.4f} | " + " | ".join(cells) + " |")
    judged = [k for k in keys if k in ("log-scale", JUDGED_CLAMP)]
    summary = [f"{COLUMNS[k]} repairs {sum(repairs(v, k))} of {len(v['seeds'])} seeds" for k in judged]
    return "\n".join(lines) + ("\n\n" + "; ".join(summary) + "." if summary else "")


def report(results, command):
    """ablations.md's text."""
    variants = per_seed(results)
    block = results["block_size"]
    _, lines = verdict(variants)
    out = [
        "# Why RoPE breaks past its training length: the ablations, seed by seed",
        "",
        f"Models trained on {block} characters, read on the val split at every length past that; each cell is"
        f" the share of the plain reading's excess loss (positions ≥ {block}, over the same model's own sliding"
        f" window of {block}) that the ablation closes: 100% reads as well as the window, 0% as plainly,"
        f" below 0 worse. Written from extrapolation.json by `{command}`.",
        "",
        "## The predictions (fixed before the runs) and the outcome",
        "",
        f"An ablation repairs a seed when it closes at least {REPAIR:.0%} of the excess at every length past"
        f" {block}, and a variant when it repairs every seed. The clamp judged is w = 63 (ReRoPE: no distance"
        f" beyond those training showed, reads inside {block} unchanged); w = 32 also changes reads inside"
        f" {block} and is reported only.",
        "",
        *lines,
    ]
    for v in variants.values():
        role = f" ({v['role']} in the predictions)" if v["role"] else " (not in the predictions)"
        out += ["", f"## {v['label']}{role}", "", variant_table(v)]
    return "\n".join(out) + "\n"


def write(results, plots_dir, command):
    path, text = Path(plots_dir) / "ablations.md", report(results, command)
    write_text(path, text)
    return path, text


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plots_dir_flag(parser, "ablations.md (from the extrapolation.json there)")
    parser.add_argument("--results", default=None, metavar="FILE",
                        help="the extrapolation.json to read (default: <plots-dir>/extrapolation.json)")
    args = parser.parse_args()
    source = Path(args.results or Path(args.plots_dir) / "extrapolation.json")
    results = read_json(source, "run study.evaluate (or the study) with --ablations first")
    if not isinstance(results, dict) or "rows" not in results:
        raise UserError(f"{source} is not the extrapolation.json that study.evaluate writes")
    path, text = write(results, args.plots_dir, command_line())
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
