"""study.lease: a study inside a short lease of a machine, on its CPU code path at a tiny size."""

import tarfile

from conftest import TINY_FLAGS, TINY_GROUP, run


def members(path):
    with tarfile.open(path) as tar:
        return sorted(tar.getnames())


def test_probe_then_seed_by_seed_each_archived_as_it_finishes(data_dir, tmp_path):
    proc = run("study.lease", "--seeds", "1,2", "--pos-encodings", "rope,none", "--probe-steps", 10,
               "--sample-tokens", 20, "--data-dir", data_dir,
               "--out-dir", tmp_path / "out", "--plots-dir", tmp_path / "plots", "--archive-dir", tmp_path / "arch",
               *TINY_FLAGS)
    assert "probe: 10 steps of 2 runs side by side" in proc.stdout and "one seed of 30 steps: about" in proc.stdout
    for seed in (1, 2):
        names = members(tmp_path / "arch" / f"{TINY_GROUP}-seed{seed}.tar.gz")
        assert names == sorted(f"{TINY_GROUP}/{enc}_seed{seed}/{f}" for enc in ("rope", "none")
                               for f in ("config.json", "metrics.csv", "summary.json", "samples.json"))
    report = members(tmp_path / "arch" / f"{TINY_GROUP}-report.tar.gz")
    assert {"results.md", "samples.md", "val_loss.png", "train_loss.png"} <= set(report)
    results = (tmp_path / "plots" / "results.md").read_text()
    assert "| RoPE − none | " in results and results.count(" | 2 |") >= 2  # 2 seeds a variant, paired
    assert not list(tmp_path.glob("arch/*.partial"))


def test_a_seed_that_does_not_fit_the_budget_is_not_started(data_dir, tmp_path):
    # a budget of 30 s is all --reserve-s: whatever the probe measures, no seed fits
    proc = run("study.lease", "--seeds", "1,2", "--pos-encodings", "rope", "--probe-steps", 5, "--budget-s", 30,
               "--data-dir", data_dir,
               "--out-dir", tmp_path / "out", "--plots-dir", tmp_path / "plots", "--archive-dir", tmp_path / "arch",
               *TINY_FLAGS, check=False)
    assert "seed 1: projected" in proc.stdout and "--seeds 1,2 trains the rest" in proc.stdout
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "study.lease: error: no seed fits in --budget-s: raise it, or train fewer steps"]
    assert not (tmp_path / "arch").exists() or not list((tmp_path / "arch").iterdir())


def test_the_projection_scales_steps_and_evaluations_and_keeps_the_fixed_cost():
    from study.lease import projected_seconds
    from train_config import TrainConfig
    summary = {"wall_s": 10.0, "train_s": 4.0, "eval_s": 2.0}  # 4 s of start-up, data and compiling
    probe, real = TrainConfig(max_iters=10, eval_interval=5), TrainConfig(max_iters=100, eval_interval=5)
    # 4 fixed + 4 s x 10 (steps) + 2 s x 22 / 4 (evaluations: steps 0, 5, ..., 100 and the test split)
    assert projected_seconds(summary, real, probe) == 4 + 40 + 11
