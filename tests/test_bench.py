"""bench.py: the FLOP count it divides by, and a short run of the whole command."""

import json
import statistics

import pytest

from conftest import run
from study.bench import flops_per_step, middle_half, nanogpt_step_ms, paired_ratios
from model import GPTConfig


def test_flops_per_step_counts_matmuls_and_attention():
    # CPU config by hand: per token forward 2 * (4 layers * 12 * 128^2 + 128 * 65) weights' FLOPs
    # plus 4 layers * 4 * 64 * 128 for attention = 1,720,576; x3 for backward, x 12 * 64 tokens
    mc = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    assert flops_per_step(mc, batch_size=12) == 3 * 1_720_576 * 12 * 64
    assert flops_per_step(mc, batch_size=12, grad_accum=2) == 2 * flops_per_step(mc, batch_size=12)


def test_ratios_are_paired_by_round():
    # twin runs as fast as learned, but a 3x slow spell covers round 2 for everyone and twin's turn
    # in round 1: its paired ratios (3, 1, 1) have the median 1.0; the ratio of medians says 3.0
    times = {"learned": [10.0, 30.0, 10.0], "rope": [10.5, 31.5, 10.5], "twin": [30.0, 30.0, 10.0]}
    ratios = paired_ratios(times, "learned")
    assert ratios["learned"] == [1.0, 1.0, 1.0]
    assert ratios["rope"] == pytest.approx([1.05, 1.05, 1.05])
    assert ratios["twin"] == [3.0, 1.0, 1.0] and statistics.median(ratios["twin"]) == 1.0
    assert statistics.median(times["twin"]) / statistics.median(times["learned"]) == 3.0
    assert middle_half([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 4.0)
    assert middle_half([1.0, 2.0]) == (1.25, 1.75)
    assert middle_half([1.1]) == (1.1, 1.1)


def test_bench_reports_every_encoding_and_same_first_block(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    proc = run("study.bench", "--data-dir", data_dir, "--pos-encodings", "rope,learned,t5", "--steps", 2, "--rounds", 2,
               "--warmup", 1, "--sample-tokens", 80, "--sample-repeats", 1, "--json", out)
    result = json.loads(out.read_text())
    training = result["training"]["float32"]  # the default dtype only
    assert set(result["training"]) == {"float32"}
    assert set(training) == set(result["sampling"]) == {"rope", "learned", "t5"}
    # a bias that needs a gradient cannot use the fused kernel
    assert {e: r["sdpa_kernel"] for e, r in training.items()} == {"rope": "flash", "learned": "flash", "t5": "math"}
    assert training["learned"]["relative_to_learned"] == 1.0
    for enc, r in training.items():
        assert r["ms_per_iter"] > 0 and 0 < r["mfu"] < 1.5, (enc, r)
        paired = [a / b for a, b in zip(r["ms_by_round"], training["learned"]["ms_by_round"])]
        assert r["relative_to_learned_by_round"] == pytest.approx(paired)
        assert r["relative_to_learned"] == pytest.approx(sum(paired) / 2)  # the median of two rounds
        assert r["relative_to_float32"] is None
        assert f"{r['ms_per_iter']:.2f}" in proc.stdout
    assert len(result["matmul_peak_by_round"]["float32"]) == 2 and result["matmul_peak_gflops"]["float32"] > 0
    # 80 new characters cross a cut of the 64-character context: cached and uncached still agree
    assert all(r["same_first_block"] for r in result["sampling"].values())
    assert 0 <= result["other_processes_cpu_share"] <= 1


def test_bench_times_each_dtype_against_its_own_peak(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    run("study.bench", "--data-dir", data_dir, "--pos-encodings", "learned", "--dtypes", "float32,bfloat16",
        "--steps", 1, "--rounds", 2, "--warmup", 1, "--no-sampling", "--json", out)
    result = json.loads(out.read_text())
    assert set(result["matmul_peak_gflops"]) == set(result["training"]) == {"float32", "bfloat16"}
    for dtype, by_encoding in result["training"].items():
        r = by_encoding["learned"]
        # each round's MFU is against that round's peak of the same dtype
        mfu = [flops / (ms / 1000) / 1e9 / peak for flops, ms, peak in
               zip([result["flops_per_step"]] * 2, r["ms_by_round"], result["matmul_peak_by_round"][dtype])]
        assert r["mfu"] == pytest.approx(statistics.median(mfu))
    bf16, f32 = result["training"]["bfloat16"]["learned"], result["training"]["float32"]["learned"]
    assert bf16["relative_to_float32"] == pytest.approx(statistics.median(
        [a / b for a, b in zip(bf16["ms_by_round"], f32["ms_by_round"])]))


def test_bench_refuses_an_unknown_dtype(data_dir):
    proc = run("study.bench", "--data-dir", data_dir, "--dtypes", "float16", check=False)
    assert proc.returncode == 2 and "--dtypes takes some of float32, bfloat16, got 'float16'" in proc.stderr


def test_nanogpt_step_times_skip_the_first_iterations():
    log = "\n".join(f"iter {i}: loss 2.0000, time {t}ms, mfu -100.00%" for i, t in enumerate([900, *[30] * 12, 2000]))
    assert nanogpt_step_ms(log) == 30.0  # iterations 10-13: the median skips the one with an evaluation
