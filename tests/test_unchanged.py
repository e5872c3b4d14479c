"""Training is unchanged by a refactor: a tiny Shakespeare run and a tiny passkey run write the
metrics.csv committed in tests/reference/ (written by the code before train.py was split). Steps,
learning rates, tokens and exact match must match exactly, the losses to 1e-4 relative: a CPU of
another kind rounds float32 differently in the last digits, while a change to the data order, the
initial weights, the schedule or the loss moves them by far more."""

import csv

import pytest

from conftest import ROOT, TINY_FLAGS, run

REFERENCE = ROOT / "tests" / "reference"
EXACT = ("step", "lr", "tokens", "val_exact")
LOSSES = ("train_loss", "val_loss")
RUNS = {"shakespeare": [], "passkey": ["--task", "passkey", "--block-size", "32"]}


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def differences(got, want):
    """Where two metrics.csv files disagree, beyond the tolerances above (timing columns aside)."""
    if [list(r) for r in got[:1]] != [list(r) for r in want[:1]] or len(got) != len(want):
        return ["columns or rows differ"]
    bad = []
    for g, w in zip(got, want):
        bad += [(w["step"], k) for k in EXACT if k in w and g[k] != w[k]]
        bad += [(w["step"], k) for k in LOSSES if float(g[k]) != pytest.approx(float(w[k]), rel=1e-4)]
    return bad


@pytest.mark.parametrize("task", list(RUNS))
def test_a_tiny_run_writes_the_reference_metrics(task, data_dir, tmp_path):
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, "--run-name", "run", *TINY_FLAGS, *RUNS[task])
    assert differences(rows(tmp_path / "run" / "metrics.csv"), rows(REFERENCE / f"{task}_metrics.csv")) == []


def test_differences_catch_a_moved_loss_and_a_changed_rate():
    want = [{"step": "0", "train_loss": "4.0", "val_loss": "4.1", "lr": "0.001", "tokens": "0", "elapsed_s": "1"}]
    assert differences([{**want[0], "elapsed_s": "9", "val_loss": "4.10001"}], want) == []  # timing, rounding
    assert differences([{**want[0], "val_loss": "4.101"}], want) == [("0", "val_loss")]
    assert differences([{**want[0], "lr": "0.002"}], want) == [("0", "lr")]
