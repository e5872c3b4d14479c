"""The scripts as a user runs them: prepare -> train -> sample -> plot -> compare, and their errors."""

import csv
import shlex
import json
import re

import pytest
import torch

from study.analysis import real_word_shares, words
from common import build_model, eval_windows, load_tokens
from conftest import ROOT, TINY_FLAGS, TINY_GROUP, make_corpus, run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A corpus prepared with the CLI and two short training runs, each in a new interpreter exactly as a
    user starts it (the other tests run the scripts in the test process)."""
    ws = tmp_path_factory.mktemp("ws")
    (ws / "input.txt").write_text(make_corpus())
    run("prepare_shakespeare.py", "--input", ws / "input.txt", "--out-dir", ws / "data", fresh=True)
    for enc in ("rope", "learned"):
        run("train.py", "--pos-encoding", enc, "--data-dir", ws / "data", "--out-dir", ws / "out", *TINY_FLAGS,
            fresh=True)
    return ws


def test_train_writes_config_metrics_checkpoint_summary(workspace):
    run_dir = workspace / "out" / "rope_seed1337"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["pos_encoding"] == "rope" and config["n_embd"] == 32 and config["max_iters"] == 30
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "train_loss", "val_loss", "lr", "tokens", "elapsed_s", "train_s"]
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30]
    train_s = [float(r["train_s"]) for r in rows]  # training steps only: below the wall time, growing
    assert train_s[0] == 0 and all(a < b for a, b in zip(train_s, train_s[1:]))
    assert all(t < float(r["elapsed_s"]) for t, r in zip(train_s, rows))
    assert [int(r["tokens"]) for r in rows] == [0, 10 * 8 * 16, 20 * 8 * 16, 30 * 8 * 16]
    losses = [float(r["val_loss"]) for r in rows]
    vocab = json.loads((workspace / "data" / "meta.json").read_text())["vocab_size"]
    assert abs(losses[0] - torch.log(torch.tensor(float(vocab))).item()) < 0.3  # starts near uniform
    assert losses[-1] < losses[0] - 0.5  # and learns
    ckpt = torch.load(run_dir / "ckpt.pt", weights_only=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert ckpt["val_loss"] == summary["best_val_loss"] == min(losses)
    assert ckpt["step"] == summary["best_step"] == [int(r["step"]) for r in rows][losses.index(min(losses))]
    assert ckpt["model_args"]["pos_encoding"] == "rope" and len(ckpt["vocab"]) == vocab
    assert not any("wpe" in k for k in ckpt["model"])
    # the held-out test split, scored once at the end with the best weights: every test token once
    test = eval_windows(load_tokens(workspace / "data", "test"), 16)
    with torch.no_grad():
        expected = build_model(ckpt)(test[:, :-1], test[:, 1:])[1].item()
    assert summary["best_test_loss"] == pytest.approx(expected, abs=1e-5)
    assert config["provenance"] == summary["provenance"] and config["provenance"]["eval_version"] == 2


def test_same_seed_gives_same_batches_and_shared_weights_across_encodings(workspace):
    """Step-0 losses are evaluated on the same windows with the same shared weights; only the
    position signal differs, so rope and learned start within a hair of each other."""
    first = {}
    for enc in ("rope", "learned"):
        with open(workspace / "out" / f"{enc}_seed1337" / "metrics.csv", newline="") as f:
            first[enc] = next(csv.DictReader(f))
    assert abs(float(first["rope"]["val_loss"]) - float(first["learned"]["val_loss"])) < 0.05


def test_rerun_reproduces_losses_exactly(workspace, tmp_path):
    run("train.py", "--pos-encoding", "rope", "--data-dir", workspace / "data", "--out-dir", tmp_path, *TINY_FLAGS)

    def losses(path):
        with open(path, newline="") as f:
            return [(r["train_loss"], r["val_loss"]) for r in csv.DictReader(f)]
    assert losses(tmp_path / "rope_seed1337" / "metrics.csv") == losses(
        workspace / "out" / "rope_seed1337" / "metrics.csv")


def test_sample_from_newline(workspace):
    run_dir = workspace / "out" / "rope_seed1337"
    proc = run("sample.py", "--out-dir", run_dir, "--num-samples", 2, "--max-new-tokens", 50, "--seed", 1)
    samples = (run_dir / "samples.txt").read_text().rstrip("\n").split("\n" + "-" * 40 + "\n")
    assert len(samples) == 2
    assert all(s.startswith("\n") and len(s) == 51 for s in samples)
    allowed = set(json.loads((workspace / "data" / "meta.json").read_text())["chars"])
    assert set("".join(samples)) <= allowed
    assert samples[0] in proc.stdout
    again = run("sample.py", "--out-dir", run_dir, "--num-samples", 2, "--max-new-tokens", 50, "--seed", 1)
    assert again.stdout == proc.stdout  # seeded


def test_sample_prompt_from_file(workspace, tmp_path):
    (tmp_path / "prompt.txt").write_text("ROMEO:")
    run_dir = workspace / "out" / "learned_seed1337"
    run("sample.py", "--out-dir", run_dir, "--start", f"FILE:{tmp_path / 'prompt.txt'}", "--num-samples", 1,
        "--max-new-tokens", 30)
    text = (run_dir / "samples.txt").read_text()
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) >= 6 + 30 - 1


def test_plot_writes_both_figures(workspace, tmp_path):
    proc = run("study.plot", workspace / "out", "--plots-dir", tmp_path)
    for name in ("train_loss.png", "val_loss.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
        assert f"wrote {tmp_path / name}" in proc.stdout


def test_compare_trains_plots_tabulates_and_reuses(workspace, tmp_path):
    args = ["--data-dir", workspace / "data", "--out-dir", tmp_path / "out", "--plots-dir", tmp_path / "plots",
            "--pos-encodings", "rope,none", "--sample-tokens", 40, *TINY_FLAGS]
    proc = run("study.compare", *args)
    results = (tmp_path / "plots" / "results.md").read_text()
    rows = [ln for ln in results.splitlines() if ln.startswith("| RoPE |") or ln.startswith("| none |")][:2]
    assert rows[0].startswith("| RoPE | 26,112 |") and rows[1].startswith("| none | 26,112 |")
    summary = json.loads((tmp_path / "out" / TINY_GROUP / "rope_seed1337" / "summary.json").read_text())
    assert f"| {summary['best_val_loss']:.4f} |" in rows[0]
    samples = (tmp_path / "plots" / "samples.md").read_text()
    assert "## RoPE (seed 1337)" in samples and "## none (seed 1337)" in samples and "## learned" not in samples
    for name in ("train_loss.png", "val_loss.png", "val_loss_seconds.png"):
        assert (tmp_path / "plots" / name).read_bytes().startswith(PNG_MAGIC)
    assert "total wall time" in proc.stdout
    # the paired table (one seed: no interval, no ranking) and the real-word shares from 20 samples
    assert "| RoPE − none | " in results and "(1 seed) |" in results and "| not decided / not decided |" in results
    kept = json.loads((tmp_path / "out" / TINY_GROUP / "rope_seed1337" / "samples.json").read_text())
    assert kept["settings"]["top_k"] is None and len(kept["samples"]) == 20
    assert all(len(t) == 40 for t in kept["samples"]) and kept["samples"][0].strip() in samples
    vocabulary = set(words((workspace / "input.txt").read_text()[:int(20_000 * 0.9)]))
    shares = real_word_shares(kept["samples"], vocabulary)
    assert f"| RoPE | {shares['real']:.3f} | {shares['real_long']:.3f} |" in results
    assert summary["provenance"]["eval_text"] in results
    again = run("study.compare", *args)
    assert again.stdout.count("finished earlier, reusing it") == 2
    # a changed config is never mistaken for a finished run: refused, or retrained with --overwrite
    refused = run("study.compare", *args, "--max-iters=20", "--pos-encodings", "none", check=False)
    assert refused.returncode == 2 and "holds a run of 30 steps, not fewer than --max-iters 20" in refused.stderr
    assert refused.stderr.rstrip().endswith("--overwrite retrains it, --out-dir elsewhere keeps both")
    changed = run("study.compare", *args, "--max-iters=20", "--pos-encodings", "none", "--overwrite")
    assert "reusing" not in changed.stdout
    none_dir = tmp_path / "out" / TINY_GROUP / "none_seed1337"
    assert json.loads((none_dir / "config.json").read_text())["max_iters"] == 20
    # a finished run evaluated another way (here: by an older evaluation) is not reused as if it were new
    rope_config = tmp_path / "out" / TINY_GROUP / "rope_seed1337" / "config.json"
    rope_config.write_text(rope_config.read_text().replace('"eval_version": 2', '"eval_version": 1'))
    refused = run("study.compare", *args, check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "evaluated by another version of the evaluation or on other text (provenance.eval_version)" in refused.stderr
    retrained = run("study.compare", *args, "--pos-encodings", "rope", "--overwrite")
    assert "reusing" not in retrained.stdout and '"eval_version": 2' in rope_config.read_text()


def test_seeds_if_undecided_go_to_the_variants_of_undecided_pairs_only(workspace, tmp_path):
    args = ["--data-dir", workspace / "data", "--out-dir", tmp_path / "out", "--plots-dir", tmp_path / "plots",
            "--pos-encodings", "rope,none", "--sample-tokens", 10, *TINY_FLAGS]
    run("study.compare", *args, "--seeds", "1,2")
    results = (tmp_path / "plots" / "results.md").read_text()
    undecided = "| not decided" in results or "not decided |" in results
    proc = run("study.compare", *args, "--seeds", "1,2", "--seeds-if-undecided", "3")
    trained = sorted(p.name for p in (tmp_path / "out" / TINY_GROUP).iterdir())
    if undecided:  # both variants of the one pair get seed 3
        assert trained == ["none_seed1", "none_seed2", "none_seed3", "rope_seed1", "rope_seed2", "rope_seed3"]
        assert "2 variant(s) in pairs the seeds do not decide: 1 more seed(s) each" in proc.stdout
        assert "| RoPE − none | " in (tmp_path / "plots" / "results.md").read_text()
    else:
        assert trained == ["none_seed1", "none_seed2", "rope_seed1", "rope_seed2"]
        assert "0 variant(s)" in proc.stdout


def test_compare_defaults_write_under_out_of_the_working_directory(workspace, tmp_path):
    run("study.compare", ROOT / "config" / "shakespeare_char_cpu.toml", "--data-dir", workspace / "data",
        "--plots-dir", tmp_path / "plots", "--pos-encodings", "none", "--sample-tokens", 10, *TINY_FLAGS, cwd=tmp_path)
    assert (tmp_path / "out" / TINY_GROUP / "none_seed1337" / "summary.json").exists()
    assert "## none" in (tmp_path / "plots" / "samples.md").read_text()


def test_compare_jobs_train_side_by_side_to_the_same_numbers(workspace, tmp_path):
    common = ["--data-dir", workspace / "data", "--sample-tokens", 10, *TINY_FLAGS]
    par = ["--out-dir", tmp_path / "par", "--plots-dir", tmp_path / "pp"]
    run("study.compare", *common, *par, "--pos-encodings", "none", "--seeds", "2")  # reused below
    parallel = run("study.compare", *common, *par, "--pos-encodings", "rope,none", "--seeds", "1,2,2", "--jobs", 3)
    assert "none_seed2: finished earlier, reusing it" in parallel.stdout
    assert "training 3 runs, 3 at a time with 1 torch thread(s) each" in parallel.stdout
    run("study.compare", *common, "--out-dir", tmp_path / "seq", "--plots-dir", tmp_path / "sp",
        "--pos-encodings", "rope,none", "--seeds", "1,2")
    for name in ("rope_seed1", "rope_seed2", "none_seed1", "none_seed2"):
        rows = {}
        for mode in ("par", "seq"):
            with open(tmp_path / mode / TINY_GROUP / name / "metrics.csv", newline="") as f:
                rows[mode] = list(csv.DictReader(f))
        assert [int(r["step"]) for r in rows["par"]] == [0, 10, 20, 30]
        for key in ("train_loss", "val_loss"):
            par_losses, seq_losses = ([float(r[key]) for r in rows[mode]] for mode in ("par", "seq"))
            assert par_losses == pytest.approx(seq_losses, abs=1e-6), (name, key)

    def loss_columns(plots):  # best, its step, final train, val and test loss (mean ± std of 2 seeds)
        lines = (tmp_path / plots / "results.md").read_text().splitlines()
        return [ln.split("|")[3:8] for ln in lines if ln.startswith(("| RoPE |", "| none |"))][:2]
    assert len(loss_columns("pp")) == 2 and loss_columns("pp") == loss_columns("sp")


# --- errors: one line on stderr, exit code 2, no traceback ---------------------

def assert_clear_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_unknown_pos_encoding(workspace):
    proc = run("train.py", "--pos-encoding", "fourier", "--data-dir", workspace / "data", check=False)
    assert_clear_error(proc, "invalid choice: 'fourier'", "'rope'")


def test_missing_prepared_data(tmp_path):
    proc = run("train.py", "--data-dir", tmp_path / "nothing", "--out-dir", tmp_path, *TINY_FLAGS, check=False)
    assert_clear_error(proc, "prepared data not found", "run `python prepare_shakespeare.py` first")


def test_prompt_outside_vocabulary(workspace):
    proc = run("sample.py", "--out-dir", workspace / "out" / "rope_seed1337", "--start", "ROMEO: 7€", check=False)
    assert_clear_error(proc, "outside the model's vocabulary", "'7'", "'€'")


def test_missing_checkpoint(tmp_path):
    proc = run("sample.py", "--out-dir", tmp_path, check=False)
    assert_clear_error(proc, "no checkpoint at")


def test_mid_config_trains_with_a_constant_learning_rate_and_no_dropout(workspace, tmp_path):
    """config/shakespeare_char_mid.toml's own code path, shrunk: every key of the file is valid, and
    the schedule it sets (what lets its val curves turn) is really constant after the warm-up."""
    run("train.py", ROOT / "config" / "shakespeare_char_mid.toml", "--data-dir", workspace / "data", "--out-dir",
        tmp_path, "--n-layer=1", "--n-head=2", "--n-embd=32", "--block-size=16", "--batch-size=4",
        "--max-iters=6", "--eval-interval=2", "--warmup-iters=2", "--no-progress")
    config = json.loads((tmp_path / "rope_seed1337" / "config.json").read_text())
    assert (config["dropout"], config["learning_rate"], config["min_lr"], config["eval_interval"]) == (0.0, 1e-3, 1e-3, 2)
    metrics = (tmp_path / "rope_seed1337" / "metrics.csv").read_text().splitlines()[1:]
    assert [float(line.split(",")[3]) for line in metrics][1:] == [1e-3] * 3  # steps 2, 4, 6


def test_config_file_is_data_with_checked_keys_and_types(workspace, tmp_path):
    bad_key = tmp_path / "bad_key.toml"
    bad_key.write_text("n_layers = 4\n")
    assert_clear_error(run("train.py", bad_key, check=False), "unknown key 'n_layers'")
    bad_type = tmp_path / "bad_type.toml"
    bad_type.write_text('n_layer = "four"\n')
    assert_clear_error(run("train.py", bad_type, check=False), "n_layer must be int, got 'four'")
    code = tmp_path / "code.toml"
    code.write_text("import os\n")
    assert_clear_error(run("train.py", code, check=False), "not valid TOML")
    # a valid file supplies defaults, flags override them
    good = tmp_path / "good.toml"
    good.write_text("weight_decay = 0.05\nmax_iters = 5\nrope_theta = 500\n")
    run("train.py", good, "--data-dir", workspace / "data", "--out-dir", tmp_path / "o", *TINY_FLAGS)
    config = json.loads((tmp_path / "o" / "rope_seed1337" / "config.json").read_text())
    assert config["weight_decay"] == 0.05 and config["rope_theta"] == 500.0  # from the file (int accepted as float)
    assert config["max_iters"] == 30  # the flag wins


def test_compare_extrapolate_writes_the_study(workspace, tmp_path):
    args = ["--data-dir", workspace / "data", "--out-dir", tmp_path / "out", "--plots-dir", tmp_path / "plots",
            "--pos-encodings", "rope,learned", "--seeds", "1,2", "--sample-tokens", 20, "--extrapolate", *TINY_FLAGS]
    run("study.compare", *args)
    for name in ("extrapolation.png", "loss_by_position.png", "rope_decay.png", "train_loss.png",
                 "attention_distance.png", "copy_probe.png"):
        assert (tmp_path / "plots" / name).read_bytes().startswith(PNG_MAGIC), name
    results = (tmp_path / "plots" / "results.md").read_text()
    assert "## Length extrapolation" in results and "n/a" in results  # learned past its table
    assert "## How far back the models read" in results and "| learned | whole 2n | " in results
    probes = json.loads((tmp_path / "plots" / "probes.json").read_text())
    assert [row["label"] for row in probes["rows"]] == ["RoPE", "learned"] and probes["periods"] == [16, 32, 48, 96, 192]
    study = json.loads((tmp_path / "plots" / "extrapolation.json").read_text())
    assert study  # written by evaluate.py's write_outputs
    proc = run("study.probes", "--from-json", tmp_path / "plots" / "probes.json", "--plots-dir", tmp_path / "again")
    assert "| learned | whole 2n | " in proc.stdout  # the tables again, from the JSON alone
    for name in ("attention_distance.png", "copy_probe.png"):
        assert (tmp_path / "again" / name).read_bytes().startswith(PNG_MAGIC), name
    rows = [ln for ln in results.splitlines() if ln.startswith("| RoPE |")][:1]
    assert " ± " in rows[0] and rows[0].rstrip().endswith("| 2 |")  # mean ± std of 2 seeds


def test_printed_train_commands_are_the_runs_the_study_then_reuses(tmp_path):
    """compare --print-commands: one train.py command per unfinished run, which any scheduler can run;
    the study itself then trains nothing and writes its report from their records."""
    ws = tmp_path
    (ws / "input.txt").write_text(make_corpus())
    run("prepare_shakespeare.py", "--input", ws / "input.txt", "--out-dir", ws / "data")
    flags = ["--pos-encodings", "rope,alibi:learning_rate=0.002", "--seeds", "1,2", "--data-dir", ws / "data",
             "--out-dir", ws / "out", "--plots-dir", ws / "plots", *TINY_FLAGS]
    printed = run("study.compare", *flags, "--print-commands")
    commands = printed.stdout.splitlines()
    assert len(commands) == 4 and all(c.startswith("python train.py ") for c in commands)
    assert "4 of 4 runs to train" in printed.stderr
    assert "--pos-encoding alibi" in commands[2] and "--learning-rate 0.002" in commands[2]
    for line in commands[:3]:  # a scheduler runs them; one is left undone
        run("train.py", *shlex.split(line)[2:])
    assert run("study.compare", *flags, "--print-commands").stdout.splitlines() == commands[3:]
    run("train.py", *shlex.split(commands[3])[2:])
    report = run("study.compare", *flags)
    assert report.stdout.count("finished earlier, reusing it") == 4 and "training" not in report.stdout
    assert (ws / "plots" / "results.md").exists()


def test_the_study_entry_point_lists_studies_and_keeps_a_quick_look_out_of_plots():
    from study.studies import STUDIES
    listing = run("study", "--help", fresh=True).stdout  # python -m study, a new interpreter
    for name in STUDIES:
        assert f"  {name} " in listing
    assert run("study", "baseline", "--print-commands").stdout.splitlines()[-1] == "python -m study baseline"
    quick = run("study", "encodings", "--seeds", "1337", "--print-commands").stdout.splitlines()
    assert quick[-1] == "python -m study encodings --seeds 1337"  # after the runs not finished here (12 at most)
    assert 1 <= len(quick) <= 13 and all(line.startswith("python train.py ") for line in quick[:-1])
    commands = run("study", "lr_sweep", "--seeds", "1337", "--print-commands").stdout.splitlines()
    assert commands == ["python -m study.sweep config/shakespeare_char_cpu.toml --pos-encodings"
                        " all,sinusoidal:sinusoidal_scale=false,rope:nope_every=2,rope:nope_every=4,fire:fire_L=16"
                        " --seeds 1337 --jobs 1 --plots-dir out/plots/lr_sweep"]
    finetune = STUDIES["passkey"].commands(plots_dir="out/plots/passkey")[1]  # the task's fine-tunes, after it
    assert finetune[:4] == ["study.finetune", "config/shakespeare_char_cpu.toml", "--task", "passkey"]
    assert finetune[-2:] == ["--plots-dir", "out/plots/passkey/finetune"]
    seeds = finetune[finetune.index("--seeds"):finetune.index("--more-seeds") + 2]
    assert seeds == ["--seeds", "1337", "--more-seeds", "1338,1339"]
    quick = STUDIES["passkey"].commands("7", plots_dir="out/plots/passkey")[1]  # a quick look: its seed, no more
    assert quick[quick.index("--seeds"):quick.index("--more-seeds") + 2] == ["--seeds", "7", "--more-seeds", ""]
    proc = run("study", "nope", check=False)
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr


@pytest.mark.parametrize("command", ["train.py", "study.compare"])
def test_help_prints_every_setting_including_one_whose_text_has_a_percent_sign(command):
    text = run(command, "--help").stdout  # argparse %-formats help texts: a bare % would crash it
    assert "(i + 1) % nope_every == 0" in " ".join(text.split()) and "--fire-L" in text


def test_a_study_has_one_name_its_folder_and_its_make_target():
    from study.studies import STUDIES
    assert {name: s.plots_dir for name, s in STUDIES.items()} == {name: f"plots/{name}" for name in STUDIES}
    makefile = (ROOT / "Makefile").read_text()
    targets = re.search(r"^STUDIES\s*:=(.*)$", makefile, re.M).group(1).split()
    assert sorted(targets) == sorted(STUDIES)
    listing = run("study", "--help").stdout.split("studies:")[-1]
    assert len(re.findall(r"->\s+plots/", listing)) == len(STUDIES)
