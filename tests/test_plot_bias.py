"""plot_bias.py: the bias curves it draws are the encodings' own, distance by distance."""

import json

import pytest
import torch

from common import UserError, write_json
from conftest import TINY_FLAGS, run
from model import GPT, GPTConfig, alibi_slopes, t5_bucket
from study.plot_bias import best_runs, bias_by_distance

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
    assert len(rows[1]["bias_at_block"][0]) == 16
    table = (tmp_path / "plots" / "learned_bias.md").read_text()
    assert f"| {rows[1]['c']:.3f} | {rows[1]['L']:.1f} |" in table and table.count("(distances 0 / 15 / 63)") == 2
    again = run("study.plot_bias", "--from-json", tmp_path / "plots" / "learned_bias.json", "--plots-dir", tmp_path / "again")
    assert (tmp_path / "again" / "learned_bias.md").read_text() == table and "FIRE's c" in again.stdout  # no checkpoint
    assert (tmp_path / "again" / "learned_bias.png").read_bytes() == (tmp_path / "plots" / "learned_bias.png").read_bytes()


def test_best_of_a_sweep_takes_each_biased_variants_run_at_its_best_rate(tmp_path):
    rows = [{"encoding": "rope", "best_rate": 0.004, "runs": {"0.004": "out/x/rope-lr=0.004_seed1337"}},
            {"encoding": "fire", "best_rate": 0.002, "runs": {"0.001": "out/x/fire-fire_L=16_seed1337",
                                                              "0.002": "out/x/fire-fire_L=16-lr=0.002_seed1337"}}]
    write_json(tmp_path / "lr_sweep.json", rows)
    assert best_runs(tmp_path / "lr_sweep.json") == ["out/x/fire-fire_L=16-lr=0.002_seed1337"]
    write_json(tmp_path / "lr_sweep.json", rows[:1])
    with pytest.raises(UserError, match="has no alibi, t5, fire variant"):
        best_runs(tmp_path / "lr_sweep.json")
    for bad in ([{"encoding": "fire", "best_rate": 0.002}],  # a sweep that did not name its runs
                [{**rows[1], "best_rate": 0.004}],  # its best rate not among them
                [{"best_rate": 0.002}], {"rows": []}):
        write_json(tmp_path / "lr_sweep.json", bad)
        with pytest.raises(UserError, match="is not an lr_sweep.json that names its runs"):
            best_runs(tmp_path / "lr_sweep.json")
    proc = run("study.plot_bias", "out/x/t5_seed1337", "--best-of", tmp_path / "lr_sweep.json", check=False)
    assert proc.returncode == 2 and "give run directories, --best-of or --from-json, only one of them" in proc.stderr
