"""study/ablations.py: the share of the break an ablation closes, and the verdict of the predictions,
on hand-made extrapolation results (the shape study.evaluate writes)."""

import pytest

from conftest import run
from common import write_json
from study.ablations import closed, per_seed, report, repairs, verdict

SEEDS = ("1337", "1338")
LENGTHS = (128, 256, 512)


def row(variant, encoding, method, past):
    """A row of extrapolation.json: `past` is {length: [loss past 64 per seed]}; 64 carries nothing past."""
    name = variant + ("" if method == "none" else f"+{method}")
    return {"name": name, "label": name, "encoding": encoding, "runs": [f"out/x/{variant}_seed{s}" for s in SEEDS],
            "results": [{"length": 64, "run_past": None}] + [{"length": L, "run_past": past[L]} for L in LENGTHS]}


def variant(name, encoding, plain, window, **ablated):
    """Rows of one variant: each reading's loss past 64 the same at every length, per seed."""
    rows = [row(name, encoding, "none", {L: plain for L in LENGTHS}),
            row(name, encoding, "sliding", {L: window for L in LENGTHS})]
    rows += [row(name, encoding, key.replace("_", "-"), {L: losses for L in LENGTHS}) for key, losses in ablated.items()]
    return rows


def results(*groups):
    return {"block_size": 64, "rows": [r for g in groups for r in g]}


def test_the_share_closed_is_measured_from_the_plain_reading_to_the_window():
    assert closed(2.0, 2.0, 1.6) == 0  # the ablation reads as plainly
    assert closed(2.0, 1.6, 1.6) == 1  # as well as the window
    assert closed(2.0, 1.8, 1.6) == pytest.approx(0.5)
    assert closed(2.0, 2.2, 1.6) == pytest.approx(-0.5)  # worse than plain
    assert closed(1.6, 1.5, 1.6) is None  # no excess: nothing to repair


BROKEN, WINDOW = [2.0, 2.0], [1.6, 1.6]
FIXED, HALF, UNFIXED = [1.6, 1.6], [1.8, 1.8], [1.99, 1.99]


def study(rope_clamp, rope_log, p_clamp, p_log, none_log):
    return results(variant("rope-lr=0.004", "rope", BROKEN, WINDOW, log_scale=rope_log, clamp_63=rope_clamp,
                           clamp_32=FIXED),
                   variant("rope-rope_fraction=0.25-lr=0.004", "rope", BROKEN, WINDOW, log_scale=p_log, clamp_63=p_clamp),
                   variant("rope-nope_every=2-lr=0.004", "rope", BROKEN, WINDOW, log_scale=FIXED),
                   variant("none", "none", BROKEN, WINDOW, log_scale=none_log),
                   variant("t5-lr=0.004", "t5", BROKEN, WINDOW, log_scale=UNFIXED, clamp_63=FIXED))


def test_the_variants_are_found_by_role_and_the_hybrid_is_not_one():
    roles = {name: v["role"] for name, v in per_seed(study(FIXED, UNFIXED, FIXED, UNFIXED, UNFIXED)).items()}
    assert roles == {"rope-lr=0.004": "RoPE", "rope-rope_fraction=0.25-lr=0.004": "25% p-RoPE",
                     "rope-nope_every=2-lr=0.004": None, "none": "none", "t5-lr=0.004": "T5"}


def test_closing_half_the_excess_at_every_length_is_a_repair():
    v = per_seed(study(HALF, UNFIXED, FIXED, UNFIXED, UNFIXED))["rope-lr=0.004"]
    assert repairs(v, "clamp-63") == [True, True] and repairs(v, "log-scale") == [False, False]
    assert repairs(v, "yarn-b8-no-temperature") is None  # not read with it
    v["readings"]["clamp-63"][512] = [1.8, 1.81]  # seed 1338 closes 47.5% at 8x only
    assert repairs(v, "clamp-63") == [True, False]


@pytest.mark.parametrize("rope_clamp, rope_log, p_clamp, p_log, none_log, expected", [
    (FIXED, UNFIXED, FIXED, UNFIXED, UNFIXED, "unseen rotation angles"),
    (UNFIXED, FIXED, UNFIXED, FIXED, FIXED, "attention spread over more keys than training showed"),
    (FIXED, FIXED, FIXED, FIXED, FIXED, None),  # both repair: undecided
    (UNFIXED, UNFIXED, UNFIXED, UNFIXED, UNFIXED, None),  # neither
    (FIXED, UNFIXED, [1.6, 1.99], UNFIXED, UNFIXED, None),  # the clamp repairs one seed of p-RoPE only
    (UNFIXED, FIXED, UNFIXED, FIXED, UNFIXED, None),  # log scaling does not repair none
])
def test_the_verdict_follows_the_predictions(rope_clamp, rope_log, p_clamp, p_log, none_log, expected):
    supported, lines = verdict(per_seed(study(rope_clamp, rope_log, p_clamp, p_log, none_log)))
    assert supported == expected
    assert sum("**supported**" in line for line in lines) == (expected is not None)
    assert ("**undecided**" in lines[-1]) == (expected is None)


def test_without_a_named_variant_nothing_is_judged():
    supported, lines = verdict(per_seed(results(variant("none", "none", BROKEN, WINDOW, log_scale=FIXED))))
    assert supported is None and lines == ["not judged: no RoPE, 25% p-RoPE, T5 among the runs read with the ablations"]


def test_the_report_shows_each_seed_and_length(tmp_path):
    text = report(study(HALF, UNFIXED, FIXED, UNFIXED, UNFIXED), "python -m study rope_break")
    assert "| 1338 | 512 | +0.4000 | 3% | 50% | 100% |" in text  # log scaling, clamp 63, clamp 32
    assert "log scaling repairs 0 of 2 seeds; clamp at 63 repairs 2 of 2 seeds." in text
    assert "## rope-nope_every=2-lr=0.004 (not in the predictions)" in text
    assert "**unseen rotation angles** is supported if" in text and "python -m study rope_break" in text
    write_json(tmp_path / "extrapolation.json", study(HALF, UNFIXED, FIXED, UNFIXED, UNFIXED))
    run("study.ablations", "--plots-dir", tmp_path)
    assert (tmp_path / "ablations.md").read_text().startswith("# Why RoPE breaks")
    assert "python -m study.ablations --plots-dir" in (tmp_path / "ablations.md").read_text()
    proc = run("study.ablations", "--plots-dir", tmp_path / "nothing", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot read" in proc.stderr
