"""plot_bias.py: the bias curves it draws are the encodings' own, distance by distance."""

import json

import pytest
import torch

from conftest import TINY_FLAGS, run
from model import GPT, GPTConfig, alibi_slopes, t5_bucket
from study.plot_bias import bias_by_distance

SMALL = dict(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32)


def test_alibi_curve_is_minus_slope_times_distance():
    curve = bias_by_distance(GPT(GPTConfig(**SMALL, pos_encoding="alibi")), 40)
    assert curve.shape == (2, 41)
    for h, slope in enumerate(alibi_slopes(2)):
        torch.testing.assert_close(curve[h], -slope * torch.arange(41.0))


def test_t5_curve_reads_the_bucket_of_each_distance_including_untrained_ones():
    model = GPT(GPTConfig(**SMALL, pos_encoding="t5"), seed=1)
    curve = bias_by_distance(model, 200)
    table = model.transformer.pos.relative_attention_bias.weight
    torch.testing.assert_close(curve, table[t5_bucket(torch.arange(201))].T)


def test_an_encoding_without_a_bias_is_refused():
    with pytest.raises(Exception, match="adds no bias"):
        bias_by_distance(GPT(GPTConfig(**SMALL, pos_encoding="rope")), 10)


def test_command_line_writes_the_plot_and_fires_learned_constants(data_dir, tmp_path):
    for enc in ("t5", "fire"):
        run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, "--pos-encoding", enc, *TINY_FLAGS)
    proc = run("study.plot_bias", tmp_path / "t5_seed1337", tmp_path / "fire_seed1337", "--max-distance", 63,
               "--plots-dir", tmp_path / "plots")
    rows = json.loads((tmp_path / "plots" / "learned_bias.json").read_text())
    assert (tmp_path / "plots" / "learned_bias.png").stat().st_size > 0
    assert [r["encoding"] for r in rows] == ["t5", "fire"]
    assert len(rows[0]["bias"]) == 2 and len(rows[0]["bias"][0]) == 64
    assert rows[1]["c"] != pytest.approx(0.1, abs=1e-7)  # trained: c moved off its starting value
    assert len(rows[1]["bias_at_block"][0]) == 16 and "L = " in proc.stdout
