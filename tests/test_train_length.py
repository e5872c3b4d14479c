"""study.train_length: the effective context, the budget ladder and the tables, on hand-made records whose
answers are known."""

import json

import pytest

from common import UserError
from study import train_length as tl
from study.runs import variant_parts


def write_run(folder, encoding, exact, val_losses, wall=100.0, threads=1):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(
        {"pos_encoding": encoding, "final_val_exact": exact, "wall_s": wall, "threads": threads}))
    (folder / "config.json").write_text(json.dumps({"max_iters": 100 * len(val_losses)}))
    rows = ["step,train_loss,val_loss"] + [f"{100 * i},1.0,{v}" for i, v in enumerate(val_losses)]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_effective_context_is_the_last_length_before_the_first_miss():
    lengths = [64, 128, 256, 512]
    assert tl.effective({64: 0.9, 128: 0.85, 256: 0.5, 512: 0.9}, lengths, 64, 0.8) == 128  # not 512: a gap ends it
    assert tl.effective({64: 0.7, 128: 0.9, 256: 0.9, 512: 0.9}, lengths, 64, 0.8) == 0
    assert tl.context_text(0, lengths, 64) == "< 64"
    assert tl.context_text(512, lengths, 64) == "≥ 512"  # held at every length read: a lower bound
    assert tl.context_text(128, lengths, 64) == "128"


def pilots_at(**exact):
    return {e: tl.Pilot(x, False, 100.0, 1) for e, x in exact.items()}


@pytest.mark.parametrize("runs, verdict", [
    (dict(rope=0.99, alibi=0.10, t5=0.96), "passes"),
    (dict(rope=0.94, t5=0.99), "fails"),  # RoPE misses: the rung fails whatever the others do
    (dict(rope=0.99, alibi=0.1, t5=0.8, fire=0.7), "fails"),
    (dict(rope=0.99, alibi=0.1), "undecided"),  # T5 and FIRE not trained yet
    (dict(rope=0.95, fire=0.95), "passes"),  # the control is >= 95%
])
def test_a_rung_passes_when_rope_and_one_rival_reach_the_control(runs, verdict):
    assert tl.rung(pilots_at(**runs)) == verdict


def test_the_budget_is_the_smallest_passing_multiple_and_waits_for_an_undecided_one():
    fail = pilots_at(rope=0.99, alibi=0.1, t5=0.8, fire=0.7)
    ok = pilots_at(rope=0.99, t5=0.97)
    assert tl.budget({2000: fail, 4000: ok, 8000: ok}, "passkey") == "**4000 steps** (2x)"
    assert tl.budget({2000: fail}, "passkey") == "not decided: 4000 steps (2x) not trained yet"
    assert tl.budget({6000: fail, 12000: fail, 24000: fail}, "copy").startswith("none: every multiple up to 4x")


def test_budgets_report_reads_the_pilot_folders(tmp_path):
    root = tmp_path / "pilots"
    improving = [2.0, 1.5, 1.2, 1.0, 0.9]  # a new best at its last evaluation
    flat = [2.0, 1.0, 1.1, 1.2, 1.3]
    write_run(root / "passkey-L128-2000-steps" / "rope_seed1337", "rope", 0.985, improving, wall=2379)
    write_run(root / "passkey-L128-2000-steps" / "alibi_seed1337", "alibi", 0.132, flat, wall=1553)
    write_run(root / "passkey-L32-2000-steps" / "rope_seed1337", "rope", 1.0, flat, wall=811)
    write_run(root / "passkey-L32-2000-steps" / "t5_seed1337", "t5", 0.97, flat, wall=811)
    write_run(root / "copy-2000-steps" / "rope_seed1337", "rope", 1.0, flat)  # no length: not a budget pilot
    text = tl.budgets_report(tl.pilots(root), "cmd")
    rows = [line for line in text.splitlines() if line.startswith("| passkey")]
    assert [r.split(" | ")[1] for r in rows] == ["32", "128"]  # by length, not by name
    assert "| 98.5% (still improving) | 13.2% | n/a | n/a | undecided | 1553-2379 (1) |" in rows[1]
    assert "| 100.0% | n/a | 97.0% | n/a | passes | 811 (1) |" in rows[0]  # one wall time is not a range
    assert "- passkey at 32: **2000 steps** (1x)" in text
    assert "- passkey at 128: not decided: 2000 steps (1x) needs T5, FIRE or ALiBi trained" in text


def test_run_table_marks_not_learned_runs_and_gives_each_seeds_effective_context(tmp_path):
    runs = []
    for seed, exact in ((1337, 0.99), (1338, 0.90)):
        run = tmp_path / "out" / "shakespeare_char_cpu-passkey-L32" / f"rope_seed{seed}"
        write_run(run, "rope", exact, [2.0, 1.0, 1.1, 1.2, 1.3])
        runs.append(str(run))

    def counts(a, b):  # per seed: two cells of 10 examples each, a and b right in each seed
        return [[[a, 10], [a, 10]], [[b, 10], [b, 10]]]

    results = {"block_size": 32, "lengths": [32, 64, 128, 256], "cells": ["depth 0.0", "depth 1.0"],
               "rows": [{"label": "RoPE", "encoding": "rope", "method": "none", "runs": runs,
                         "results": {"32": counts(10, 9), "64": counts(9, 10), "128": counts(3, 9),
                                     "256": counts(0, 8)}}]}
    table = tl.run_table([results])
    row = table.splitlines()[2].split(" | ")
    assert row[1:5] == ["32", "500", "99.0/90.0 (not learned)", "no/no"]
    assert row[5:9] == ["95.0% (100/90)", "95.0% (90/100)", "60.0% (30/90)", "40.0% (0/80)"]
    # >= 80%: seed 1337 to 64, seed 1338 at every length read; of two seeds the lower median, a length read
    assert row[9] == "64 (64; ≥ 256)"
    assert row[10].rstrip(" |") == "128 (128; ≥ 256)"


def test_the_rung_at_64_is_the_task_studies_rows_of_this_studys_variants(tmp_path):
    assert tl.variant("out/g/rope-nope_every=2-rope_window=16_seed1338", 32) == "rope-nope_every=2-rope_window=L/2"
    assert tl.variant("out/g/rope-nope_every=2-rope_window=32_seed1337", 64) == "rope-nope_every=2-rope_window=L/2"
    assert tl.variant("out/g/rope-nope_every=2-rope_window=16_seed1337", 64) == "rope-nope_every=2-rope_window=16"

    def row(run, method="none"):
        return {"label": run, "encoding": run.split("-")[0], "method": method, "runs": [f"out/g/{run}_seed1337"],
                "results": {}}

    base = {"block_size": 64, "lengths": [64, 128], "cells": ["depth 0.0"]}
    task = {**base, "rows": [row("rope"), row("rope", "ntk"), row("rope", "clamp-63"), row("learned"), row("alibi")]}
    windowed = {**base, "rows": [row("rope"), row("rope-nope_every=2-rope_window=32")]}
    (tmp_path / "task.json").write_text(json.dumps(task))
    (tmp_path / "windowed.json").write_text(json.dumps(windowed))
    merged = tl.at_64([tmp_path / "task.json", tmp_path / "windowed.json"])
    assert [(r["label"], r["method"]) for r in merged["rows"]] == [
        ("rope", "none"), ("rope", "ntk"), ("alibi", "none"), ("rope-nope_every=2-rope_window=32", "none")]
    assert tl.at_64([tmp_path / "task.json", tmp_path / "missing.json"]) is None  # that study not run: no rung
    (tmp_path / "windowed.json").write_text(json.dumps({**windowed, "lengths": [64, 256]}))
    with pytest.raises(UserError, match="reads other lengths or cells"):
        tl.at_64([tmp_path / "task.json", tmp_path / "windowed.json"])


def test_a_steps_check_is_shown_beside_its_variants_plain_rows_at_every_length(tmp_path):
    def results(block, *runs, method="none"):
        rows = []
        for name, losses in runs:
            run = tmp_path / "out" / f"g{block}" / f"{name}_seed1337"
            if not run.exists():
                write_run(run, name.split("-")[0], 1.0, losses)
            rows.append({"label": name, "encoding": name.split("-")[0], "method": method, "runs": [str(run)],
                         "results": {str(block): [[[10, 10]]]}})
        return {"block_size": block, "lengths": [block], "cells": ["depth 0.0"], "rows": rows}

    five, ten = [1.0] * 5, [1.0] * 10  # 500 and 1000 steps
    found = {("passkey", 32): results(32, ("alibi", five), ("rope", five)),
             ("passkey", 64): results(64, ("alibi", ten), ("t5", ten))}
    found["passkey", 32]["rows"] += results(32, ("alibi", five), method="ntk")["rows"]  # not a plain reading
    checks = {("passkey", 32, 1000): results(32, ("alibi-max_iters=1000-lr_decay_iters=1000", ten)),
              ("passkey", 64, 500): results(64, ("alibi-max_iters=500-lr_decay_iters=500", five))}
    shown = tl.steps_rows(found, checks, "passkey")
    assert [(r["block_size"], [row["label"] for row in r["rows"]]) for r in shown] == [
        (32, ["alibi"]), (32, ["alibi-max_iters=1000-lr_decay_iters=1000"]),
        (64, ["alibi-max_iters=500-lr_decay_iters=500"]), (64, ["alibi"])]  # by length, then steps
    rows = tl.run_table(shown).splitlines()[2:]
    assert [row.split(" | ")[1:3] for row in rows] == [["32", "500"], ["32", "1000"], ["64", "500"], ["64", "1000"]]
    assert tl.steps_rows(found, {}, "passkey") == []


def test_transfer_table_tells_ratio_from_absolute_length():
    import numpy as np

    def run(L, curve):  # one seed's exact match at 1x-8x of L, from curve(reading length)
        lengths = [L, 2 * L, 4 * L, 8 * L]
        return lengths, np.array([[curve(x, L) for x in lengths]])

    data = {("by ratio", "alibi", "alibi"): {L: run(L, lambda x, L: 1.0 / (x / L)) for L in (32, 64)},
            ("by characters", "t5", "t5"): {L: run(L, lambda x, L: 1.0 if x <= 64 else 64 / x) for L in (32, 64)},
            ("flat", "none", "none"): {L: run(L, lambda x, L: 0.98) for L in (32, 64)}}
    rows = {r.split(" | ")[0].lstrip("| "): r for r in tl.transfer_table(data).splitlines()[2:]}
    # by ratio: 2x 50/50, 4x 25/25, 8x 12.5/12.5; at 128 and 256 characters 25 vs 50 and 12.5 vs 25
    assert rows["by ratio"].endswith("| 128: 25 / 50, 256: 12 / 25 (18.8) | 2x: 50 / 50, 4x: 25 / 25, 8x: 12 / 12 (0.0) |"
                                     " by ratio |")
    assert rows["by characters"].split(" | ")[2] == "128: 50 / 50, 256: 25 / 25 (0.0)"
    assert rows["by characters"].endswith("| by absolute length |")
    assert rows["flat"].endswith("| both (the same either way) |")


def test_line_style_follows_the_variants_settings_not_its_label():
    assert tl.style("rope-nope_every=2-rope_window=L/2") == (":", "^")
    assert tl.style("rope-nope_every=4") == ("--", "s")
    assert tl.style("rope") == tl.style("alibi") == ("-", "o")
    assert tl.style("rope-rope_window=32") == (":", "^")
    assert variant_parts("rope-nope_every=2-lr=1e-05") == ["rope", "nope_every=2", "lr=1e-05"]  # a '-' in a value
