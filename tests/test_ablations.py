"""study/ablations.py: the share of the break an ablation closes, and the verdict of the predictions,
on hand-made extrapolation results (the shape study.evaluate writes)."""

import pytest

from common import UserError, write_json
from conftest import run
from study.ablations import per_seed, report, repairs, role_of, share_closed, verdict

SEEDS = ("1337", "1338")
LENGTHS = (128, 256, 512)
# losses past 64 per seed, exactly representable: the plain reading 0.5 above its window
BROKEN, WINDOW = [2.0, 2.0], [1.5, 1.5]
FIXED, HALF, UNFIXED = [1.5, 1.5], [1.75, 1.75], [1.9375, 1.9375]


def row(variant, encoding, method, past, runs=None):
    """A row of extrapolation.json: `past` is {length: [loss past 64 per seed]}; 64 has nothing past."""
    name = variant + ("" if method == "none" else f"+{method}")
    return {"name": name, "label": name if method in ("none", "sliding") else f"{variant} + {method}",
            "encoding": encoding, "rope_scaling": "sliding" if method == "sliding" else "none",
            "runs": runs or [f"out/x/{variant}_seed{s}" for s in SEEDS],
            "results": [{"length": 64, "run_past": None}] + [{"length": L, "run_past": past[L]} for L in past]}


def variant(name, encoding, plain, window, **ablated):
    """Rows of one variant: each reading's loss past 64 the same at every length, per seed."""
    rows = [row(name, encoding, "none", {L: plain for L in LENGTHS}),
            row(name, encoding, "sliding", {L: window for L in LENGTHS})]
    rows += [row(name, encoding, key.replace("_", "-"), {L: losses for L in LENGTHS}) for key, losses in ablated.items()]
    return rows


def results(*groups, block=64):
    return {"block_size": block, "rows": [r for g in groups for r in g]}


def study(rope_clamp, rope_log, p_clamp, p_log, none_log, none_plain=BROKEN):
    return results(variant("rope-lr=0.004", "rope", BROKEN, WINDOW, log_scale=rope_log, clamp_63=rope_clamp,
                           clamp_32=FIXED),
                   variant("rope-rope_fraction=0.25-lr=0.004", "rope", BROKEN, WINDOW, log_scale=p_log, clamp_63=p_clamp),
                   variant("rope-nope_every=2-lr=0.004", "rope", BROKEN, WINDOW, log_scale=FIXED),
                   variant("none-lr=0.002", "none", none_plain, WINDOW, log_scale=none_log),
                   variant("t5-lr=0.004", "t5", BROKEN, WINDOW, log_scale=UNFIXED, clamp_63=FIXED))


def test_the_share_closed_is_measured_from_the_plain_reading_to_the_window():
    assert share_closed(2.0, 2.0, 1.5) == 0  # the ablation reads as plainly
    assert share_closed(2.0, 1.5, 1.5) == 1  # as well as the window
    assert share_closed(2.0, 1.75, 1.5) == 0.5
    assert share_closed(2.0, 2.25, 1.5) == -0.5  # worse than plain


@pytest.mark.parametrize("name, role", [
    ("rope", "RoPE"), ("rope-lr=0.004", "RoPE"), ("rope-lr=1e-05", "RoPE"), ("none-lr=0.002", "none"),
    ("rope-rope_fraction=0.25-lr=0.004", "25% p-RoPE"), ("t5", "T5"), ("rope-rope_fraction=0.5", None),
    ("rope-rope_theta=100", None), ("rope-nope_every=2-lr=0.004", None), ("fire-fire_L=16", None),
    ("rope-dropout=0.2", None)])
def test_a_variant_s_role_is_its_name_without_the_learning_rate(name, role):
    assert role_of(name) == role


def test_closing_half_the_excess_at_every_broken_length_is_a_repair():
    v = per_seed(study(HALF, UNFIXED, FIXED, UNFIXED, UNFIXED))["rope-lr=0.004"]
    assert repairs(v, "clamp-63") == [True, True] and repairs(v, "log-scale") == [False, False]
    assert repairs(v, "yarn-b8-no-temperature") is None  # not read with it
    v["readings"]["clamp-63"][512] = [1.75, 1.76]  # seed 1338 closes 48% at 8x only
    assert repairs(v, "clamp-63") == [True, False]


def test_a_seed_that_does_not_break_has_nothing_to_repair_and_must_not_be_broken_by_the_ablation():
    v = per_seed(study(FIXED, UNFIXED, FIXED, UNFIXED, FIXED, none_plain=[1.505, 2.0]))["none-lr=0.002"]
    assert repairs(v, "log-scale") == [None, True]  # seed 1337 is within 0.01 of its window everywhere
    v["readings"]["none"][128] = [2.0, 2.0]  # both seeds broken at 2x only...
    v["readings"]["none"][256] = v["readings"]["none"][512] = [1.5, 1.5]
    v["readings"]["log-scale"][512] = [1.5, 1.6]  # ...where seed 1338's log scaling breaks 8x instead
    assert repairs(v, "log-scale") == [True, False]


def test_a_length_a_reading_lacks_is_not_judged():
    groups = study(FIXED, UNFIXED, FIXED, UNFIXED, UNFIXED)
    clamp = next(r for r in groups["rows"] if r["name"] == "rope-lr=0.004+clamp-63")
    clamp["results"][-1]["run_past"] = None  # n/a at 512
    v = per_seed(groups)["rope-lr=0.004"]
    assert repairs(v, "clamp-63") == [None, None]
    assert "| 1337 | 512 | +0.5000 | 12% | n/a | 100% |" in report(groups, "cmd")  # log, clamp 63, clamp 32
    assert verdict(per_seed(groups), 64)[0] is None


@pytest.mark.parametrize("rope_clamp, rope_log, p_clamp, p_log, none_log, expected", [
    (FIXED, UNFIXED, FIXED, UNFIXED, UNFIXED, "unseen distances"),
    (UNFIXED, FIXED, UNFIXED, FIXED, FIXED, "crowding"),
    (FIXED, FIXED, FIXED, FIXED, FIXED, None),  # both repair: undecided
    (UNFIXED, UNFIXED, UNFIXED, UNFIXED, UNFIXED, None),  # neither
    (FIXED, UNFIXED, [1.5, 1.9375], UNFIXED, UNFIXED, None),  # the clamp repairs one seed of p-RoPE only
    (UNFIXED, FIXED, UNFIXED, FIXED, UNFIXED, None),  # log scaling does not repair none
])
def test_the_verdict_follows_the_predictions(rope_clamp, rope_log, p_clamp, p_log, none_log, expected):
    supported, lines = verdict(per_seed(study(rope_clamp, rope_log, p_clamp, p_log, none_log)), 64)
    assert supported == expected
    assert sum("**supported**" in line for line in lines) == (expected is not None)
    assert ("**undecided**" in lines[-1]) == (expected is None)


def test_none_that_never_broke_cannot_support_spread():
    unbroken = study(UNFIXED, FIXED, UNFIXED, FIXED, [3.0, 3.0], none_plain=[1.5, 1.5])
    assert verdict(per_seed(unbroken), 64)[0] is None


def test_what_is_not_read_is_not_judged():
    assert verdict(per_seed(results(variant("none", "none", BROKEN, WINDOW, log_scale=FIXED))), 64)[1] == [
        "- not judged: no RoPE, 25% p-RoPE among the variants read with the ablations"]
    only_log = study(FIXED, UNFIXED, FIXED, UNFIXED, UNFIXED)
    only_log["rows"] = [r for r in only_log["rows"] if not r["name"].startswith("rope-rope_fraction=0.25-lr=0.004+clamp")]
    assert verdict(per_seed(only_log), 64)[1] == ["- not judged: not read: 25% p-RoPE with clamp-63"]
    assert verdict(per_seed(only_log), 128)[1] == [
        "- not judged: the predictions are for models trained on 64 characters"]


def test_bad_results_are_one_line_errors(tmp_path):
    two = study(FIXED, UNFIXED, FIXED, UNFIXED, UNFIXED)
    two["rows"] += variant("rope", "rope", BROKEN, WINDOW, log_scale=FIXED)
    with pytest.raises(UserError, match=r"more than one variant is RoPE \(rope-lr=0.004, rope\)"):
        per_seed(two)
    swapped = study(FIXED, UNFIXED, FIXED, UNFIXED, UNFIXED)
    swapped["rows"][2]["runs"] = swapped["rows"][2]["runs"][::-1]
    with pytest.raises(UserError, match="rope-lr=0.004\\+log-scale lists other seeds"):
        per_seed(swapped)
    with pytest.raises(UserError, match="no variant read with an ablation"):
        report(results(variant("rope", "rope", BROKEN, WINDOW)), "cmd")
    write_json(tmp_path / "extrapolation.json", {"rows": []})  # no block_size
    proc = run("study.ablations", "--plots-dir", tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is not the extrapolation.json" in proc.stderr
    proc = run("study.ablations", "--plots-dir", tmp_path / "nothing", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot read" in proc.stderr


def test_the_report_shows_each_seed_and_length(tmp_path):
    text = report(study(HALF, UNFIXED, FIXED, UNFIXED, UNFIXED), "python -m study rope_break")
    assert "| 1338 | 512 | +0.5000 | 12% | 50% | 100% |" in text  # log scaling, clamp 63, clamp 32
    assert "log-scale repairs 0 of 2 seeds; clamp-63 repairs 2 of 2 seeds." in text
    assert "## rope-nope_every=2-lr=0.004\n" in text and "## none-lr=0.002 (named in the predictions)" in text
    assert "**unseen distances** is supported if" in text and "python -m study rope_break" in text
    no_break = study(HALF, UNFIXED, FIXED, UNFIXED, UNFIXED, none_plain=[1.5, 2.0])
    assert "| 1337 | 128 | +0.0000 | no break (+0.438) |" in report(no_break, "cmd")
    write_json(tmp_path / "extrapolation.json", study(HALF, UNFIXED, FIXED, UNFIXED, UNFIXED))
    run("study.ablations", "--plots-dir", tmp_path)
    written = (tmp_path / "ablations.md").read_text()
    assert written.startswith("# Why RoPE breaks") and "python -m study.ablations --plots-dir" in written
