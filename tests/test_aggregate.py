"""Multi-seed aggregation on hand-made metrics files: plot bands and the results table."""

import json

import numpy as np
import pytest

from common import UserError
from compare import results_table
from conftest import run
from plot import aggregate, group_by_encoding

CONFIG = {"pos_encoding": "rope", "seed": 1, "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64,
          "batch_size": 12, "dropout": 0.0, "run_name": "x", "out_dir": "out"}


def make_run(root, name, losses, **config):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({**CONFIG, **config}))
    lines = ["step,train_loss,val_loss,lr,tokens,elapsed_s"]
    lines += [f"{i * 10},{loss + 0.1},{loss},0.001,{i * 100},{i}" for i, loss in enumerate(losses)]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run_dir


def test_mean_min_max_over_seeds(tmp_path):
    runs = [make_run(tmp_path, "a", [4.0, 2.0, 1.0], seed=1),
            make_run(tmp_path, "b", [4.0, 3.0, 2.0], seed=2),
            make_run(tmp_path, "c", [4.0, 2.5], seed=3),  # still running: one row short
            make_run(tmp_path, "d", [4.0, 1.0, 0.5], pos_encoding="none", seed=1)]
    groups = group_by_encoding(runs)
    assert list(groups) == ["rope", "none"] and len(groups["rope"]) == 3
    steps, mean, low, high = aggregate([m for _, m in groups["rope"]], "val_loss")
    assert steps.tolist() == [0, 10]  # only the steps every run has reached
    assert np.allclose(mean, [4.0, 2.5]) and np.allclose(low, [4.0, 2.0]) and np.allclose(high, [4.0, 3.0])
    steps, mean, _, _ = aggregate([m for _, m in groups["rope"]], "train_loss")
    assert np.allclose(mean, [4.1, 2.6])


def test_runs_of_different_configs_are_not_averaged(tmp_path):
    runs = [make_run(tmp_path, "a", [4.0, 2.0]), make_run(tmp_path, "b", [4.0, 2.0], n_layer=6, seed=2)]
    with pytest.raises(UserError, match="differ in n_layer"):
        group_by_encoding(runs)
    proc = run("plot.py", tmp_path, "--plots-dir", tmp_path / "plots", check=False)
    assert proc.returncode == 2 and "differ in n_layer" in proc.stderr


def test_half_written_metrics_row_is_ignored(tmp_path):
    run_dir = make_run(tmp_path, "a", [4.0, 2.0])
    with open(run_dir / "metrics.csv", "a") as f:
        f.write("20,1.5")  # a killed run's last line
    (_, metrics), = group_by_encoding([run_dir])["rope"]
    assert metrics["step"].tolist() == [0, 10]


def test_results_table_mean_and_std():
    def summary(best, step, ms):
        return {"n_params": 1000, "best_val_loss": best, "best_step": step, "final_train_loss": best - 0.1,
                "final_val_loss": best + 0.01, "wall_s": 100.0, "ms_per_iter": ms}
    table = results_table({"rope": [summary(1.0, 2000, 30.0), summary(1.2, 1750, 32.0), summary(1.1, 2000, 31.0)],
                           "learned": [summary(1.5, 2000, 29.0)]})
    rope, learned = table.splitlines()[2:]
    # mean ± sample std (n-1): 1.1 ± 0.1
    assert rope.startswith("| RoPE | 1,000 | 1.1000 ± 0.1000 | 1917 ± 144 |") and rope.endswith("| 3 |")
    assert "| 31.0 ± 1.0 |" in rope
    assert learned.startswith("| learned | 1,000 | 1.5000 | 2000 |") and learned.endswith("| 1 |")
