"""study.mechanism: which cells a reading is judged on, its outcome per the one definition of 'restores', and
the verdicts the predictions give, on hand-made counts whose answers are known."""

import json

import numpy as np

from conftest import ROOT, run
from study.ablations import HYPOTHESES, WINDOWED_PREDICTIONS
from study.mechanism import counted, needed_distance, nope_outcome, outcome, verdicts, within_beyond

CELLS = ["string of 8", "string of 16", "string of 32", "string of 64", "string of 128"]
SEEDS = ["x/rope_seed1", "x/rope_seed2"]


def counts(*percent):
    """Per seed, [right, total] of 100 examples in each cell (a cell a length does not hold: [0, 0])."""
    return [[[p, 100] if p is not None else [0, 0] for p in seed] for seed in percent]


def row(method, **by_length):
    return {"label": "RoPE" if method == "none" else f"RoPE + {method}", "encoding": "rope", "method": method,
            "runs": SEEDS, "results": {str(L): v for L, v in ((int(k[1:]), v) for k, v in by_length.items())}}


def results(*rows):
    return {"task": "copy", "block_size": 64, "lengths": [64, 128, 256], "cells": CELLS, "rows": list(rows)}


PLAIN = row("none", L64=counts([100, 90, 80, None, None], [100, 100, 90, None, None]),
            L128=counts([0, 0, 0, 0, None], [0, 0, 0, 0, None]), L256=counts([0] * 5, [0] * 5))


def everywhere(a, b):
    """The same per-seed near-cell values at 128 and 256 (the cells past them at 0), the plain ones at 64."""
    return dict(L64=PLAIN["results"]["64"], L128=counts([a[0], a[1], 0, 0, None], [b[0], b[1], 0, 0, None]),
                L256=counts([a[0], a[1], 0, 0, 0], [b[0], b[1], 0, 0, 0]))


def test_the_distance_an_answer_needs_and_the_cells_a_clamp_counts_for():
    assert needed_distance("passkey", "depth 1", 64) == 7  # the key 6 before "=", its "#" one more
    assert needed_distance("passkey", "depth 0.8", 256) == 56 and needed_distance("copy", "string of 16", 512) == 17
    r = results(PLAIN)
    assert counted(r, "clamp-16", 128).tolist() == [True, False, False, False, False]  # a string of 16 needs 17
    assert counted(r, "clamp-32", 128).tolist() == [True, True, False, False, False]  # near: strings of 8 and 16
    assert counted(r, "mask", 128).tolist() == counted(r, "count-8", 128).tolist() == [True, True, False, False, False]


def test_restores_is_80_percent_of_the_plain_reading_at_64_cell_by_cell_and_seed_by_seed():
    r = results(PLAIN)
    # seed 1's plain near cells at 64: 100, 90; 80% of them: 80, 72
    assert outcome(r, row("mask", **everywhere([80, 72], [80, 80])), PLAIN, 128) == ("restores", "")
    assert outcome(r, row("mask", **everywhere([79, 100], [100, 100])), PLAIN, 128) == ("mixed", "1/2 of 2")
    assert outcome(r, row("mask", **everywhere([10, 10], [0, 79])), PLAIN, 256) == ("fails", "")
    assert outcome(r, row("mask", L128="not read past 4x"), PLAIN, 128) == ("n/a", "")


def test_the_verdicts_follow_the_predictions():
    def variant(**outcomes):  # each reading restoring (100) or failing (0) the near cells in both seeds
        rows = [PLAIN] + [row(m, **everywhere([100 if ok else 0] * 2, [100 if ok else 0] * 2))
                          for m, ok in outcomes.items()]
        return {r["method"]: r for r in rows}
    rarely = variant(truncate=True, mask=True, **{"clamp-16": True, "clamp-32": True, "clamp-48": True,
                                                   "clamp-56": False, "clamp-63": False, "count-1": False,
                                                   "count-8": False})
    got = verdicts(results(*rarely.values()), rarely)
    assert got["rarely trained last distances"][0] == "supported"
    assert got["unseen distances"] == ("refuted", "clamp-56 at 2x fails; clamp-56 at 4x fails; clamp-63 at 2x fails")
    assert got["crowding"][0] == "refuted"
    no_control = variant(truncate=False, mask=True)
    assert {v for v, _ in verdicts(results(*no_control.values()), no_control).values()} == {"not judged"}
    undecided = variant(truncate=True, mask=True, **{"clamp-63": True})
    undecided["count-1"] = row("count-1", **everywhere([100, 100], [0, 0]))  # one seed restores, one fails
    got = verdicts(results(*undecided.values()), undecided)
    # a mixed reading a hypothesis needs leaves it undecided even where another one contradicts it (clamp-63
    # restoring is the opposite of what crowding and rarely trained last distances predict)
    assert {h: v for h, (v, _) in got.items()} == dict.fromkeys(HYPOTHESES, "undecided")
    assert got["crowding"][1] == "count-1 at 2x mixed; count-1 at 4x mixed"
    assert set(got) == set(HYPOTHESES)


def test_within_and_beyond_split_the_passkey_cells_at_the_training_length():
    depths = [f"depth {d / 10:g}" for d in range(11)]
    r = {"task": "passkey", "block_size": 64, "cells": depths}
    within, beyond = within_beyond(r, 128)  # room 116: depth 0.5 needs 65 characters back, 0.6 needs 53
    assert beyond.tolist() == [True] * 6 + [False] * 5 and within.tolist() == [False] * 6 + [True] * 5
    assert within_beyond(r, 64)[0].all()  # at the training length every answer lies within it
    within, beyond = within_beyond(results(PLAIN), 128)  # the copy: a string of n is copied from n + 1 back
    assert within.tolist() == [True, True, True, False, False] and beyond.tolist() == [False] * 3 + [True] * 2


def test_nope_mask_outcomes_follow_the_windowed_predictions():
    def shares(within, beyond):
        return {"within": np.array(within), "beyond": np.array(beyond)}
    carry, relay, neither = WINDOWED_PREDICTIONS
    plain = shares([1.0, 0.9], [0.9, 0.95])
    # at the edges: 20% of 0.9 is 0.18 (kept below it: carried), 80% of 0.9 is 0.72 (kept at it: within holds,
    # and relayed)
    assert nope_outcome(plain, shares([0.95, 0.72], [0.05, 0.189])) == (carry, 2)
    assert nope_outcome(plain, shares([0.95, 0.8], [0.05, 0.19]))[0] == neither  # 0.19 is 20% of 0.95
    assert nope_outcome(plain, shares([0.95, 0.71], [0.05, 0.1]))[0] == neither  # within below 80%
    assert nope_outcome(plain, shares([1.0, 0.9], [0.72, 0.9])) == (relay, 2)
    assert nope_outcome(plain, shares([1.0, 0.9], [0.71, 0.9]))[0] == neither
    assert nope_outcome(plain, shares([1.0, 0.9], [0.05, 0.9]))[0] == neither  # the seeds disagree
    # a seed whose plain reading finds less than half beyond is not judged
    assert nope_outcome(shares([1.0, 1.0], [0.9, 0.3]), shares([1.0, 1.0], [0.0, 0.3])) == (
        "the NoPE layers carry it", 1)
    assert nope_outcome(shares([1.0, 1.0], [0.1, 0.3]), shares([1.0, 1.0], [0.0, 0.0]))[0].startswith("not judged")


def test_the_report_and_figure_are_written_from_the_json(tmp_path):
    r = results(PLAIN, row("truncate", **everywhere([100, 100], [100, 100])), row("clamp-63", **everywhere([0, 0], [0, 0])))
    for task in ("copy",):
        (tmp_path / task).mkdir()
        (tmp_path / task / "retrieval.json").write_text(json.dumps(r))
    proc = run("study.mechanism", "--plots-dir", tmp_path)
    text = (tmp_path / "mechanism.md").read_text()
    assert "| copy | RoPE | 1/2 | **refuted** (clamp-63 at 2x fails; clamp-63 at 4x fails) |" in text
    assert "| RoPE | clamp-63 | 95/100 | 0/0 | 0/0 | fails | fails | 0/0 | 0/0 | – | – |" in text
    assert (tmp_path / "mechanism.png").read_bytes()[:4] == b"\x89PNG" and "wrote" in proc.stdout
    proc = run("study.mechanism", "--plots-dir", tmp_path / "none", check=False)
    assert proc.returncode == 2 and "run python -m study mechanism first" in proc.stderr


def test_each_task_s_windowed_variants_get_their_own_nope_mask_section(tmp_path):
    def windowed(task, method, seeds, **by_length):
        runs = [f"x/rope-nope_every=2-rope_window=32_seed{s}" for s in seeds]
        return {**row(method, **by_length), "runs": runs, "label": "windowed k = 2" + (method != "none") * " + m"}

    def write(folder, task, cells, *rows):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "retrieval.json").write_text(json.dumps(
            {"task": task, "block_size": 64, "lengths": [64, 128], "cells": cells, "rows": list(rows)}))
    write("copy", "copy", CELLS, PLAIN)
    # the copy at 128: strings of 8, 16 and 32 lie within 64, the string of 64 (65 back) beyond; two seeds
    write("windowed_copy", "copy", CELLS,
          windowed("copy", "none", (1, 2), L128=counts([100, 100, 100, 90, None], [100, 100, 90, 80, None])),
          windowed("copy", "nope-mask", (1, 2), L128=counts([100, 100, 100, 0, None], [100, 100, 90, 10, None])))
    # the passkey at 128: depth 0 needs 123 characters back (beyond), depth 1 needs 7 (within); three seeds
    write("windowed", "passkey", ["depth 0", "depth 1"],
          windowed("passkey", "none", (1, 2, 3), L128=counts([90, 100], [100, 100], [100, 100])),
          windowed("passkey", "nope-mask", (1, 2, 3), L128=counts([90, 100], [100, 100], [100, 100])))
    run("study.mechanism", "--plots-dir", tmp_path)
    text = (tmp_path / "mechanism.md").read_text()
    passkey = text.index("## The windowed hybrids: which layers carry the far key\n")
    copy = text.index("## The windowed hybrids: which layers carry the far key (copy)\n")
    assert passkey < copy
    assert "on the passkey cells whose answer needs" in text[passkey:copy]
    assert "| windowed k = 2 | 1/2/3 | 128 (2x) | 100/100/100 | 100/100/100 | 90/100/100 | 90/100/100 |" \
           " the windowed RoPE layers relay it (3) |" in text[passkey:copy]
    assert "on the copy cells whose answer needs nothing 64 or more back" in text[copy:]
    assert "| windowed k = 2 | 1/2 | 128 (2x) | 100/97 | 100/97 | 90/80 | 0/10 | the NoPE layers carry it (2) |" \
           in text[copy:]
    # a folder holding another task's runs is refused with one line
    (tmp_path / "windowed" / "retrieval.json").replace(tmp_path / "windowed_copy" / "retrieval.json")
    proc = run("study.mechanism", "--plots-dir", tmp_path, check=False)
    assert proc.returncode == 2 and "holds the passkey task's runs, not the copy's" in proc.stderr


def test_the_committed_mechanism_tables_regenerate_from_their_json(tmp_path):
    committed = ROOT / "plots" / "mechanism"
    for name in ("passkey/retrieval.json", "copy/retrieval.json", "windowed/retrieval.json",
                 "windowed_copy/retrieval.json", "loss_readings/extrapolation.json"):
        if (committed / name).exists():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text((committed / name).read_text())
    run("study.mechanism", "--plots-dir", tmp_path)
    for name in ("mechanism.md", "far_mass.md"):
        regenerated = (tmp_path / name).read_text().splitlines()
        assert regenerated[3:] == (committed / name).read_text().splitlines()[3:], name  # (the command line differs)
