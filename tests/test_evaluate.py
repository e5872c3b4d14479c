"""evaluate.py (length extrapolation) and plot_rope.py (RoPE's decay and wavelengths), on tiny runs."""

import argparse
import json
import math
import shutil
import statistics

import numpy as np
import pytest
import torch

from common import UserError, load_checkpoint, load_tokens
from conftest import TINY, TINY_FLAGS, run
from study.evaluate import (build_model, eval_windows, evaluate_runs, format_table, inside_table, parse_factor,
                            write_outputs)
from study.plot_rope import decay_bound, wavelengths

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BLOCK = TINY["block_size"]  # 16


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Two seeds of rope (to be averaged) and one learned run, trained for a few steps."""
    out = tmp_path_factory.mktemp("runs")
    for enc, seed in (("rope", 1337), ("rope", 1), ("learned", 1337)):
        run("train.py", "--pos-encoding", enc, "--seed", seed, "--data-dir", data_dir, "--out-dir", out, *TINY_FLAGS)
    return out


@pytest.fixture(scope="module")
def results(runs):
    dirs = [runs / "rope_seed1337", runs / "rope_seed1", runs / "learned_seed1337"]
    return evaluate_runs(dirs, lengths=[BLOCK, 2 * BLOCK, 4 * BLOCK], progress=False)


def rows(results):
    return {row["name"]: {r["length"]: r for r in row["results"]} for row in results["rows"]}


# --- windows ------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens, length", [(2000, 16), (2000, 64), (1000, 999), (101, 10), (100, 10)])
def test_windows_are_non_overlapping_and_tile_the_split(n_tokens, length):
    tokens = torch.arange(n_tokens)  # token value = its index in the split
    w = eval_windows(tokens, length)
    n = (n_tokens - 1) // length
    assert w.shape == (n, length + 1)
    assert w[:, 0].tolist() == [i * length for i in range(n)]  # window i starts at i * L
    # the predicted tokens are 1 .. n*L, each exactly once, in order: no overlap, no gap
    assert w[:, 1:].flatten().tolist() == list(range(1, n * length + 1))
    assert n_tokens - 1 - n * length < length  # only a partial window is left over
    assert torch.equal(w, eval_windows(tokens, length))  # deterministic


def test_max_windows_takes_an_evenly_spread_subset():
    tokens = torch.arange(1601)  # 100 windows of 16
    w = eval_windows(tokens, 16, max_windows=5)
    starts = w[:, 0].tolist()
    assert len(starts) == 5 and starts[0] == 0 and starts[-1] == 99 * 16 and starts == sorted(set(starts))
    assert torch.equal(eval_windows(tokens, 16, max_windows=500), eval_windows(tokens, 16))
    with pytest.raises(UserError, match="too few"):
        eval_windows(torch.arange(16), 16)


# --- evaluation ---------------------------------------------------------------


def test_every_model_is_evaluated_on_the_same_windows_covering_the_split(results, data_dir):
    n_val = len(load_tokens(data_dir, "val"))
    assert results["val_tokens"] == n_val and results["block_size"] == BLOCK
    for w in results["windows"]:
        assert w["count"] == (n_val - 1) // w["length"] and w["predicted_tokens"] == w["count"] * w["length"]
    counts = {w["length"]: w["count"] for w in results["windows"]}
    for row in results["rows"]:
        assert [r["length"] for r in row["results"]] == [16, 32, 64]
        assert all(r["n_windows"] == counts[r["length"]] for r in row["results"])


def test_rows_and_the_loss_matches_the_models_own_loss(results, runs, data_dir):
    assert [row["name"] for row in results["rows"]] == [
        "rope", "rope+linear", "rope+ntk", "rope+dynamic-ntk", "rope+yarn-b32", "rope+yarn-b8", "rope+sliding",
        "learned", "learned+sliding"]
    # recompute one number independently, with the model's own mean cross-entropy
    ckpt = load_checkpoint(runs / "rope_seed1" / "ckpt.pt")
    w = eval_windows(load_tokens(data_dir, "val"), 32)
    with torch.no_grad():
        loss = build_model(ckpt, "cpu")(w[:, :-1], w[:, 1:])[1].item()
    assert rows(results)["rope"][32]["run_losses"][1] == pytest.approx(loss, abs=1e-5)


def test_learned_is_na_past_its_table_with_a_reason(results):
    learned = rows(results)["learned"]
    assert learned[16]["loss"] > 0 and math.isfinite(learned[16]["loss"])
    for length in (32, 64):
        assert learned[length]["loss"] is None
        assert learned[length]["reason"] == "learned table has 16 positions"
    table = format_table(results)
    assert "n/a" in table and "learned table has 16 positions" in table
    # its sliding window reads any length
    sliding = rows(results)["learned+sliding"]
    assert sliding[16]["loss"] == learned[16]["loss"] and sliding[64]["past"] > 0


def test_rope_scaling_is_the_unscaled_model_at_factor_one(results, runs):
    r = rows(results)
    # auto factor: s = L / block_size, so 1 at 1x and the same loss, bit for bit
    for variant in ("rope+linear", "rope+ntk", "rope+yarn-b32", "rope+yarn-b8"):
        assert r[variant][16]["factor"] == 1.0 and r[variant][64]["factor"] == 4.0
        assert r[variant][16]["run_losses"] == r["rope"][16]["run_losses"]
        assert r[variant][64]["loss"] != r["rope"][64]["loss"]  # and scaling really acts past 1x
    # a fixed factor of 1 is the unscaled model at every length, past the training length too
    fixed = rows(evaluate_runs([runs / "rope_seed1337"], lengths=[64], scaling_factor=1.0, progress=False))
    assert fixed["rope+linear"][64]["loss"] == fixed["rope+ntk"][64]["loss"] == fixed["rope"][64]["loss"]


def test_loss_by_position_has_one_value_per_position_and_averages_to_the_loss(results):
    for row in results["rows"]:
        for r in row["results"]:
            if r["loss"] is not None:
                assert len(r["loss_by_position"]) == r["length"]
                assert statistics.mean(r["loss_by_position"]) == pytest.approx(r["loss"], rel=1e-9)
                # the first character is predicted from no context: harder than the average one
                assert r["loss_by_position"][0] > r["loss"]


def test_the_inside_table_averages_the_positions_from_the_stride_to_the_training_length(results):
    block, s = results["block_size"], results["sliding_stride"]
    first = results["rows"][0]
    line = inside_table(results)[1]
    assert line.startswith(first["label"] + " ") and f"positions {s}-{block - 1}" in inside_table(results)[0]
    assert line.split()[-len(first["results"]):] == [f"{statistics.mean(r['loss_by_position'][s:block]):.4f}"
                                                    for r in first["results"]]
    assert inside_table(results)[0] in format_table(results)


def test_seeds_are_averaged_with_their_std(results):
    r = rows(results)["rope"][32]
    assert len(r["run_losses"]) == 2 and r["run_losses"][0] != r["run_losses"][1]
    assert r["loss"] == pytest.approx(statistics.mean(r["run_losses"]))
    assert r["std"] == pytest.approx(statistics.stdev(r["run_losses"]))
    assert rows(results)["learned"][16]["std"] is None  # one seed: no spread


def test_write_outputs(results, tmp_path):
    png, by_pos, _, js = write_outputs(results, tmp_path / "plots")
    assert png.name == "extrapolation.png" and by_pos.name == "loss_by_position.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and by_pos.read_bytes()[:8] == PNG_MAGIC
    assert json.loads(js.read_text()) == json.loads(json.dumps(results))


def test_cli_default_lengths_and_outputs(runs, data_dir, tmp_path):
    proc = run("study.evaluate", runs, "--data-dir", data_dir, "--max-windows", 20, "--rope-scaling", "none,ntk",
               "--plots-dir", tmp_path, "--out-json", tmp_path / "x.json", "--no-progress")
    assert "n/a: learned table has 16 positions" in proc.stdout
    out = json.loads((tmp_path / "x.json").read_text())
    assert out["lengths"] == [16, 32, 64, 128]  # 1x, 2x, 4x, 8x the block size
    n_val = len(load_tokens(data_dir, "val"))
    assert [w["count"] for w in out["windows"]] == [min(20, (n_val - 1) // L) for L in (16, 32, 64, 128)]
    assert [row["name"] for row in out["rows"]] == ["rope", "rope+ntk", "rope+sliding", "learned", "learned+sliding"]
    assert len(out["rows"][0]["runs"]) == 2  # both rope seeds found under the folder
    for name in ("extrapolation.png", "loss_by_position.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC

    proc = run("study.evaluate", runs, "--rope-scaling", "longrope", "--data-dir", data_dir, check=False)
    assert proc.returncode == 2 and "unknown rope scaling longrope" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("study.evaluate", runs, "--rope-scaling", "yarn", "--yarn-beta", "1", "--data-dir", data_dir, check=False)
    assert proc.returncode == 2 and "YaRN needs 0 <= alpha < beta, got alpha 1 and beta 1" in proc.stderr


def test_user_errors(runs, data_dir, tmp_path):
    with pytest.raises(UserError, match="too few"):
        evaluate_runs([runs / "learned_seed1337"], lengths=[10_000], data_dir=data_dir, progress=False)
    with pytest.raises(UserError, match="missing/config.json .*is this a run directory written by train.py"):
        evaluate_runs([runs / "missing"], progress=False)
    record = tmp_path / "record"  # a run's record: everything but its checkpoint
    shutil.copytree(runs / "learned_seed1337", record, ignore=shutil.ignore_patterns("*.pt"))
    with pytest.raises(UserError, match="no checkpoint at .*record/ckpt.pt"):
        evaluate_runs([record], data_dir=data_dir, progress=False)


def test_scaling_factor_flag():
    assert parse_factor("auto") is None and parse_factor("2.5") == 2.5
    for text, message in [("0", "must be positive, got 0"), ("nan", "must be a finite number, got nan"),
                          ("inf", "must be a finite number, got inf"), ("0.5", r"a number >= 1 \(it extends"),
                          ("two", "takes 'auto' or a number >= 1: invalid float value: 'two'")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_factor(text)


# --- plot_rope.py ---------------------------------------------------------------


def test_decay_bound_is_one_at_distance_zero_and_decays():
    d = 32
    bound = decay_bound(np.arange(8 * 64 + 1), d)
    assert bound[0] == pytest.approx(1.0) and (bound <= 1 + 1e-12).all()
    assert decay_bound([0], d, relative=False)[0] == pytest.approx((d / 2 + 1) / 2)  # mean of 1 .. d/2
    assert bound[1] < bound[0] and bound[256:].mean() < bound[64:128].mean() < bound[1:32].mean()
    # the RoFormer formula written out, at a few distances
    for m in (1, 7, 100):
        theta = [10000 ** (-2 * k / d) for k in range(d // 2)]
        s = [abs(sum(complex(math.cos(m * t), math.sin(m * t)) for t in theta[:j])) for j in range(1, d // 2 + 1)]
        assert decay_bound([m], d, relative=False)[0] == pytest.approx(sum(s) / (d / 2))


def test_wavelengths_follow_the_formula():
    for d, theta in ((32, 10000.0), (8, 500.0)):
        expected = [2 * math.pi * theta ** (2 * i / d) for i in range(d // 2)]
        assert wavelengths(d, theta) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(UserError):
        wavelengths(7)


def test_plot_rope_cli(runs, tmp_path):
    proc = run("study.plot_rope", "--from-run", runs / "rope_seed1337", "--plots-dir", tmp_path)
    assert "head dim 16" in proc.stdout and "block size 16" in proc.stdout  # n_embd 32 / 2 heads
    assert (tmp_path / "rope_decay.png").read_bytes()[:8] == PNG_MAGIC


def test_figures_are_redrawn_from_the_json_alone(results, tmp_path):
    *_, md, js = write_outputs(results, tmp_path / "first")
    proc = run("study.evaluate", "--from-json", js, "--plots-dir", tmp_path / "again")
    assert proc.stdout.startswith(format_table(json.loads(js.read_text())))  # the same table, no checkpoint read
    for name in ("extrapolation.png", "loss_by_position.png"):
        assert (tmp_path / "again" / name).read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "again" / "extrapolation.md").read_text() == md.read_text()  # the tables, written again
    (tmp_path / "bad.json").write_text("[1, 2]")
    proc = run("study.evaluate", "--from-json", tmp_path / "bad.json", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("is not the extrapolation.json that study.evaluate writes")


def test_the_ablations_read_each_run_where_they_apply(runs, data_dir, tmp_path):
    run("train.py", "--pos-encoding", "t5", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS)
    dirs = [runs / "rope_seed1337", runs / "learned_seed1337", tmp_path / "t5_seed1337"]
    out = evaluate_runs(dirs, lengths=[BLOCK, 4 * BLOCK], scalings=["none"], progress=False,
                        ablations=("log-scale", "clamp-32", "clamp-63", "yarn-no-temperature"))
    names = [row["name"] for row in out["rows"]]
    assert names == ["rope", "rope+log-scale", "rope+clamp-32", "rope+clamp-63", "rope+yarn-b32-no-temperature",
                     "rope+yarn-b8-no-temperature", "rope+sliding", "learned", "learned+log-scale", "learned+sliding",
                     "t5", "t5+log-scale", "t5+clamp-32", "t5+clamp-63", "t5+sliding"]
    by = rows(out)
    for name in ("rope+log-scale", "rope+clamp-32", "rope+yarn-b8-no-temperature", "t5+clamp-32"):
        # inside the training length each ablation is the plain model: log factor 1, no distance past 32 (or
        # 16), YaRN at s = 1
        assert by[name][BLOCK]["loss"] == pytest.approx(by[name.split("+")[0]][BLOCK]["loss"], rel=1e-6), name
    assert by["rope+clamp-32"][4 * BLOCK]["loss"] != pytest.approx(by["rope"][4 * BLOCK]["loss"], rel=1e-6)
    labels = {row["name"]: row["label"] for row in out["rows"]}
    assert labels["t5+clamp-63"] == "T5 bias + clamp at 63" and labels["rope+log-scale"] == "RoPE + log scaling (n=16)"
    assert "no temperature" in labels["rope+yarn-b32-no-temperature"]
    png, *_ = write_outputs(out, tmp_path / "plots")
    assert png.read_bytes()[:8] == PNG_MAGIC
    proc = run("study.evaluate", tmp_path / "t5_seed1337", "--ablations", "clamp-7", check=False)
    assert proc.returncode == 2 and "--ablations takes some of log-scale, clamp-16, clamp-32" in proc.stderr
