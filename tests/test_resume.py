"""Crash-safe runs: exact resume after SIGKILL or Ctrl-C, refusing to mix runs, stopping on NaN, torchrun."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ENV, ROOT, TINY_FLAGS, TINY_GROUP, command, run

# Long enough (about 2 s) to be killed part way.
SLOW = [*TINY_FLAGS, "--max-iters=300", "--eval-interval=20", "--n-embd=64"]
# Twice that, for compare.py --jobs: each run must still be going when the Ctrl-C the parent
# passes on reaches it, even on a faster machine
LONGER = "--max-iters=600"


def metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["train_loss"]), float(r["val_loss"]), float(r["lr"]))
                for r in csv.DictReader(f)]


def assert_same_rows(got, want, tol=1e-6):
    assert [r[0] for r in got] == [r[0] for r in want]  # no duplicated or missing rows
    for a, b in zip(got, want):
        assert all(abs(x - y) <= tol for x, y in zip(a[1:], b[1:])), (a, b)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    run("train.py", "--data-dir", data_dir, "--out-dir", out, *SLOW)
    return metrics(out / "rope_seed1337")


def start(data_dir, out, *extra):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--data-dir", str(data_dir),
                             "--out-dir", str(out), *SLOW, *extra], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(run_dir, n, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.csv").exists() and len((run_dir / "metrics.csv").read_text().splitlines()) > n:
            return
        time.sleep(0.005)
    pytest.fail(f"run ended or stalled before {n} metrics rows")


@pytest.mark.parametrize("rows_before_kill", [2, 7])
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(data_dir, tmp_path, reference, rows_before_kill):
    proc = start(data_dir, tmp_path)
    run_dir = tmp_path / "rope_seed1337"
    wait_for_rows(run_dir, rows_before_kill, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists()  # really interrupted
    assert len(metrics(run_dir)) < len(reference)
    resumed = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *SLOW, "--resume")
    assert "best val loss" in resumed.stdout
    assert_same_rows(metrics(run_dir), reference)


def test_ctrl_c_saves_and_resume_continues(data_dir, tmp_path, reference):
    proc = start(data_dir, tmp_path)
    run_dir = tmp_path / "rope_seed1337"
    wait_for_rows(run_dir, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in stderr
    assert "stopped by Ctrl-C at step" in stderr and "--resume" in stderr
    step = int(stderr.split("stopped by Ctrl-C at step ")[1].split(";")[0])
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["trainer"]["iter"] == step
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *SLOW, "--resume")
    assert_same_rows(metrics(run_dir), reference)


def test_a_new_run_never_overwrites_another_silently(data_dir, tmp_path):
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS)
    before = (tmp_path / "rope_seed1337" / "metrics.csv").read_text()
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--max-iters=20", check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "--overwrite" in proc.stderr
    assert (tmp_path / "rope_seed1337" / "metrics.csv").read_text() == before  # untouched
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--max-iters=20", "--overwrite")
    assert metrics(tmp_path / "rope_seed1337")[-1][0] == 20


def test_a_run_moved_under_a_study_s_name_is_reused_by_the_study(data_dir, tmp_path):
    """A run trained on its own (a pilot) and moved where a study keeps the same settings' run is that run:
    its name says where it lives, not what it computed."""
    config = ROOT / "config" / "shakespeare_char_cpu.toml"  # (study.compare's default)
    run("train.py", config, "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--seed", 1,
        "--run-name", "pilot")
    compare = ["study.compare", config, "--pos-encodings", "rope", "--seeds", 1, "--data-dir", data_dir,
               "--out-dir", tmp_path, "--plots-dir", tmp_path / "plots", *TINY_FLAGS]
    study_run = run(*compare, "--print-commands").stdout.split("--run-name ")[1].split()[0]
    (tmp_path / study_run).parent.mkdir()
    (tmp_path / "pilot").rename(tmp_path / study_run)
    assert "finished earlier, reusing it" in run(*compare).stdout


def test_resume_refuses_a_changed_config_or_a_missing_checkpoint(data_dir, tmp_path):
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS)
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--n-layer=3", "--resume",
               check=False)
    assert proc.returncode == 2 and "holds a run with other settings (n_layer)" in proc.stderr
    # a run evaluated by another version of the evaluation is not continued either
    config = tmp_path / "rope_seed1337" / "config.json"
    config.write_text(config.read_text().replace('"eval_version": 2', '"eval_version": 1'))
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--resume", check=False)
    assert proc.returncode == 2 and "evaluated by another version of the evaluation" in proc.stderr
    assert "provenance.eval_version" in proc.stderr and "--overwrite" in proc.stderr
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--run-name=new", "--resume",
               check=False)
    assert proc.returncode == 2 and "no last.pt to resume from" in proc.stderr


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--learning-rate=1e12",
               "--warmup-iters=0", "--grad-clip=0", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "became nan" in proc.stderr or "became inf" in proc.stderr
    ckpt = torch.load(tmp_path / "rope_seed1337" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 0 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(data_dir, tmp_path):
    # 4 micro-batches per step: 2 per rank, so the no_sync path (no all-reduce before the last) runs too
    flags = ["--data-dir", str(data_dir), *TINY_FLAGS, "--gradient-accumulation-steps=4"]
    run("train.py", *flags, "--out-dir", tmp_path / "single")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *flags,
                           "--out-dir", str(tmp_path / "ddp")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    single, ddp = metrics(tmp_path / "single" / "rope_seed1337"), metrics(tmp_path / "ddp" / "rope_seed1337")
    # Same batches, gradients averaged by all-reduce instead of summed in place: equal up to
    # float rounding, which 30 Adam steps amplify a little.
    assert_same_rows(ddp, single, tol=1e-4)
    assert single[-1][2] < single[0][2] - 0.5  # and it trained
    summary = (tmp_path / "ddp" / "rope_seed1337" / "summary.json").read_text()
    assert '"processes": 2' in summary


def compare_cmd(data_dir, out, encodings, jobs):
    return [*command("study.compare"), "--data-dir", str(data_dir), "--out-dir", str(out),
            "--plots-dir", str(out / "plots"), "--pos-encodings", encodings, "--jobs", str(jobs),
            "--sample-tokens", "10", *SLOW]


def test_ctrl_c_stops_compare_jobs_and_the_same_command_resumes(data_dir, tmp_path):
    # compare.py --jobs: Ctrl-C reaches the parent (its workers sit in their own process group);
    # it passes it on, every run saves its state and stops, and the same command finishes them
    cmd = [*compare_cmd(data_dir, tmp_path, "rope,none", jobs=2), LONGER]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dirs = [tmp_path / TINY_GROUP / f"{enc}_seed1337" for enc in ("rope", "none")]
    for run_dir in run_dirs:
        wait_for_rows(run_dir, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in stderr
    assert "study.compare: error: stopped by Ctrl-C; the same command resumes the interrupted runs" in stderr
    for run_dir in run_dirs:
        assert (run_dir / "last.pt").exists() and not (run_dir / "summary.json").exists()
    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("resuming the interrupted run") == 2
    straight = subprocess.run([*compare_cmd(data_dir, tmp_path / "straight", "rope", jobs=1), LONGER], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    assert_same_rows(metrics(run_dirs[0]),  # as if never interrupted
                     metrics(tmp_path / "straight" / TINY_GROUP / "rope_seed1337"))


def test_ctrl_c_while_compare_workers_start_up_stops_them_too(data_dir, tmp_path):
    # a worker ignores SIGINT until it has imported torch and set up (seconds); a Ctrl-C passed on
    # in that time used to be lost, and that run trained to its end
    cmd = [*compare_cmd(data_dir, tmp_path, "rope,none", jobs=2), LONGER]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("training 2 runs, 2 at a time")  # the workers are starting
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in stderr
    assert "study.compare: error: stopped by Ctrl-C; the same command resumes the interrupted runs" in stderr
    for enc in ("rope", "none"):
        assert not (tmp_path / TINY_GROUP / f"{enc}_seed1337" / "summary.json").exists()


def test_a_finished_run_of_a_constant_rate_continues_to_more_steps(data_dir, tmp_path):
    constant = [*TINY_FLAGS, "--min-lr=3e-3"]  # (TINY: a rate of 3e-3 after 5 warm-up steps)
    long = tmp_path / "long" / "rope_seed1337"
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path / "long", *constant, "--max-iters=60")
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *constant, "--max-iters=30")
    run_dir = tmp_path / "rope_seed1337"
    run("sample.py", "--out-dir", run_dir, "--num-samples=1", "--max-new-tokens=5")
    assert (run_dir / "samples.txt").exists()
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *constant, "--max-iters=60", "--resume")
    assert not (run_dir / "samples.txt").exists()  # the shorter run's samples went with it
    assert_same_rows(metrics(run_dir), metrics(long))
    summary, want = (json.loads((d / "summary.json").read_text()) for d in (run_dir, long))
    for key in ("best_val_loss", "best_step", "best_test_loss", "final_val_loss", "final_test_loss"):
        assert summary[key] == pytest.approx(want[key], abs=1e-6), key
    assert torch.load(run_dir / "ckpt.pt", weights_only=True)["step"] == want["best_step"]
    assert json.loads((run_dir / "config.json").read_text())["max_iters"] == 60
    # compare.py continues it too, then reuses it
    cmp = [*constant, "--pos-encodings=rope", "--plots-dir", tmp_path / "plots", "--sample-tokens=20"]
    run("study.compare", "--data-dir", data_dir, "--out-dir", tmp_path / "cmp", *cmp, "--max-iters=30")
    out = run("study.compare", "--data-dir", data_dir, "--out-dir", tmp_path / "cmp", *cmp, "--max-iters=60").stdout
    assert "continuing the finished run to 60 steps" in out
    assert_same_rows(metrics(next((tmp_path / "cmp").glob("*/rope_seed1337"))), metrics(long))
    out = run("study.compare", "--data-dir", data_dir, "--out-dir", tmp_path / "cmp", *cmp, "--max-iters=60").stdout
    assert "finished earlier, reusing it" in out


def test_a_run_is_not_continued_where_its_steps_or_evaluations_would_change(data_dir, tmp_path):
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--max-iters=30")
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--max-iters=60", "--resume",
               check=False)  # cosine decay over max_iters
    assert proc.returncode == 2 and "whose learning rate would change" in proc.stderr
    assert "--min-lr equal to --learning-rate" in proc.stderr
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--max-iters=20", "--resume",
               check=False)
    assert proc.returncode == 2 and "holds a run of 30 steps, not fewer than --max-iters 20" in proc.stderr
    # its last evaluation, at step 25, is one a run of 60 steps does not make
    constant = [*TINY_FLAGS, "--min-lr=3e-3", "--run-name=off_grid"]
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *constant, "--max-iters=25")
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *constant, "--max-iters=60", "--resume",
               check=False)
    assert proc.returncode == 2 and "not a multiple of --eval-interval 10" in proc.stderr
    assert (tmp_path / "off_grid" / "summary.json").exists()  # a refused run keeps its results
    # compare.py says why too (the CPU config it reads by default decays over a fixed 2000 steps: not these)
    decaying = [*TINY_FLAGS, "--lr-decay-iters=0", "--pos-encodings=rope", "--plots-dir", tmp_path / "plots",
                "--sample-tokens=20"]
    run("study.compare", "--data-dir", data_dir, "--out-dir", tmp_path / "cmp", *decaying)
    proc = run("study.compare", "--data-dir", data_dir, "--out-dir", tmp_path / "cmp", *decaying, "--max-iters=60",
               check=False)
    assert proc.returncode == 2 and "whose learning rate would change" in proc.stderr and "--overwrite" in proc.stderr
