"""Every script answers bad input with one line on stderr, exit code 2, no traceback, no damage."""

import shutil

import pytest
import torch

from common import UserError, load_tokens

from conftest import TINY_FLAGS, make_corpus, run


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad")
    run("train.py", "--data-dir", data_dir, "--out-dir", out, *TINY_FLAGS)
    return out / "rope_seed1337"


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("flags, fragments", [
    (["--pos-encoding", "fourier"], ["invalid choice: 'fourier'"]),
    (["--n-embd=30", "--n-head=4"], ["n_embd (30) must be divisible by n_head (4)"]),
    (["--n-embd=30", "--n-head=2"], ["rope needs an even head size", "15"]),
    (["--block-size=5000"], ["val split has", "fewer than block_size + 1 = 5001", "--block-size"]),
    (["--n-layer=two"], ["--n-layer: invalid int value: 'two'"]),
    (["--dropout=1.5"], ["dropout must be in [0, 1)"]),
    (["--gradient-accumulation-steps=0"], ["gradient_accumulation_steps must be at least 1"]),
    (["--seed=-1"], ["seed must not be negative"]),
    (["--grad-clip=-1"], ["grad_clip must not be negative"]),
    (["--learning-rate=nan"], ["learning_rate must be a finite number, got nan"]),
])
def test_train_rejects_bad_settings(data_dir, tmp_path, flags, fragments):
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, *flags, check=False)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "rope_seed1337" / "metrics.csv").exists()


def test_train_config_file_problems(tmp_path):
    assert_one_line_error(run("train.py", tmp_path / "missing.toml", check=False), "missing.toml not found")
    (tmp_path / "c.toml").write_text("block_size = 64.5\n")
    assert_one_line_error(run("train.py", tmp_path / "c.toml", check=False), "block_size must be int, got 64.5")


def test_train_without_prepared_data(tmp_path):
    proc = run("train.py", "--data-dir", tmp_path, "--out-dir", tmp_path, check=False)
    assert_one_line_error(proc, "prepared data not found", "prepare_shakespeare.py")


def test_a_missing_split_is_named_in_one_line(data_dir, tmp_path):
    shutil.copytree(data_dir, tmp_path / "data")
    (tmp_path / "data" / "val.bin").unlink()
    with pytest.raises(UserError, match=r"prepared data not found \(.*val\.bin\); run `python prepare_shakespeare"):
        load_tokens(tmp_path / "data", "train")  # (every split is checked, not only the one read)


def test_resume_after_the_data_was_prepared_from_another_text(tmp_path):
    (tmp_path / "a.txt").write_text(make_corpus())
    run("prepare_shakespeare.py", "--input", tmp_path / "a.txt", "--out-dir", tmp_path / "data")
    run("train.py", "--data-dir", tmp_path / "data", "--out-dir", tmp_path / "out", *TINY_FLAGS)
    (tmp_path / "b.txt").write_text(make_corpus().upper())  # another vocabulary in the same place
    run("prepare_shakespeare.py", "--input", tmp_path / "b.txt", "--out-dir", tmp_path / "data")
    before = (tmp_path / "out" / "rope_seed1337" / "metrics.csv").read_text()
    proc = run("train.py", "--data-dir", tmp_path / "data", "--out-dir", tmp_path / "out", *TINY_FLAGS, "--resume",
               check=False)
    assert_one_line_error(proc, "evaluated by another version of the evaluation or on other text",
                          "provenance.data_sha256")
    assert (tmp_path / "out" / "rope_seed1337" / "metrics.csv").read_text() == before


@pytest.mark.parametrize("flags, fragments", [
    (["--start", ""], ["the prompt is empty"]),
    (["--start", "ROMEO: 7"], ["outside the model's vocabulary", "'7'"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens: must be positive, got 0"]),
    (["--temperature", "-1"], ["--temperature: must be positive, got -1"]),
    (["--temperature", "nan"], ["--temperature: must be a finite number, got nan"]),
    (["--top-k", "0"], ["--top-k: must be positive, got 0"]),
    (["--num-samples", "-2"], ["--num-samples: must be positive"]),
    (["--start", "FILE:/nonexistent/prompt.txt"], ["prompt file /nonexistent/prompt.txt not found"]),
    (["--start", "C:\\Users\\"], ["cannot read the escapes in --start"]),
])
def test_sample_rejects_bad_arguments(trained, flags, fragments):
    proc = run("sample.py", "--out-dir", trained, *flags, check=False)
    assert_one_line_error(proc, *fragments)
    assert not (trained / "samples.txt").exists()


def test_sample_with_missing_truncated_or_foreign_checkpoint(trained, tmp_path):
    assert_one_line_error(run("sample.py", "--out-dir", tmp_path, check=False), "no checkpoint at")
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (trained / "ckpt.pt").read_bytes()
    (broken / "ckpt.pt").write_bytes(data[:len(data) // 2])
    assert_one_line_error(run("sample.py", "--out-dir", broken, check=False), "not a readable checkpoint")
    (broken / "ckpt.pt").write_text("hello")
    assert_one_line_error(run("sample.py", "--out-dir", broken, check=False), "not a readable checkpoint")
    torch.save({"weights": torch.zeros(2)}, broken / "ckpt.pt")
    assert_one_line_error(run("sample.py", "--out-dir", broken, check=False), "not a checkpoint written by train.py")


def test_prepare_and_plot_errors(data_dir, tmp_path):
    assert_one_line_error(run("prepare_shakespeare.py", "--input", tmp_path / "none.txt", "--out-dir", tmp_path,
                              check=False), "does not exist")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc" * 10)
    assert_one_line_error(run("prepare_shakespeare.py", "--input", tmp_path / "bin.txt", "--out-dir", tmp_path,
                              check=False), "not UTF-8 text")
    assert_one_line_error(run("study.plot", tmp_path / "empty", check=False), "is not a run directory")
    assert_one_line_error(run("study.compare", "--pos-encodings", "rope,bogus", check=False), "unknown encoding 'bogus'")
    assert_one_line_error(run("study.compare", "--seeds", "1,x", check=False), "--seeds takes comma-separated integers")
    assert_one_line_error(run("study.compare", "--extrapolate-methods", "ntk,bogus", check=False),
                          "--extrapolate-methods takes some of none, linear, ntk, dynamic-ntk, yarn")
    # an error inside a worker process (compare.py --jobs) reaches the user as the same one line
    too_long = run("study.compare", "--data-dir", data_dir, "--out-dir", tmp_path, "--plots-dir", tmp_path,
                   "--pos-encodings", "rope,none", *TINY_FLAGS, "--block-size", 5000, check=False)
    assert_one_line_error(too_long, "the val split has 1000 tokens, too few for a window of 5000 + 1")
    diverging = run("study.compare", "--data-dir", data_dir, "--out-dir", tmp_path, "--plots-dir", tmp_path,
                    "--pos-encodings", "rope,none", "--jobs", 2, *TINY_FLAGS, "--learning-rate", 1e9, check=False)
    assert_one_line_error(diverging, "loss became", "lower --learning-rate")
    if not torch.cuda.is_available():  # (with CUDA, --jobs trains runs side by side on the GPU)
        assert_one_line_error(run("study.compare", "--jobs", 2, "--device", "cuda", check=False),
                              "device 'cuda' is not available")


@pytest.mark.parametrize("script", ["train.py", "sample.py", "study.evaluate", "study.compare", "study.sweep"])
@pytest.mark.parametrize("device, fragments", [
    ("banana", ["unknown device 'banana'; use auto, cpu, cuda, cuda:N or mps"]),
    ("cuda:x", ["unknown device 'cuda:x'"]),
    ("cuda", ["device 'cuda' is not available", "--device cpu"]),
    ("mps", ["device 'mps' is not available (Apple-silicon GPUs only)"]),
])
def test_a_device_this_machine_lacks_is_one_line_naming_it(data_dir, trained, tmp_path, script, device, fragments):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = {"sample.py": ["--out-dir", trained], "study.evaluate": [trained, "--plots-dir", tmp_path]}.get(
        script, ["--data-dir", data_dir, "--out-dir", tmp_path, "--plots-dir", tmp_path, *TINY_FLAGS])
    if script == "train.py":
        args = args[:4] + args[6:]  # no --plots-dir
    proc = run(script, *args, "--device", device, check=False)
    assert_one_line_error(proc, *fragments)
    assert "checkpoint" not in proc.stderr  # never blames a good checkpoint
    assert not list(tmp_path.rglob("metrics.csv"))  # nothing trained


def test_nanogpt_spellings_of_flags_are_accepted(data_dir, tmp_path):
    flags = [f.replace("-", "_").replace("__", "--", 1) for f in TINY_FLAGS]  # --max_iters=30, --no_progress, ...
    assert "--max_iters=30" in flags
    run("train.py", f"--data_dir={data_dir}", f"--out_dir={tmp_path}", *flags, "--max_iters=10", "--eval_interval", "5")
    assert (tmp_path / "rope_seed1337" / "metrics.csv").read_text().count("\n") == 4  # header + steps 0, 5, 10
    proc = run("train.py", "--max_banana=3", check=False)
    assert_one_line_error(proc, "unrecognized arguments: --max_banana=3")


def test_a_second_process_in_the_same_run_directory_is_refused(data_dir, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    (tmp_path / "rope_seed1337").mkdir()
    with open(tmp_path / "rope_seed1337" / ".lock", "w") as held:  # as a first train.py holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--overwrite", check=False)
    assert_one_line_error(proc, "rope_seed1337 is in use by another training process")
    assert not (tmp_path / "rope_seed1337" / "metrics.csv").exists()
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS)  # released: trains


def test_comma_lists_are_parsed_alike():
    from common import UserError, comma_list
    assert comma_list(" 3, 1,3 ,", "--seeds", int) == [3, 1]  # order kept, repeats and blanks dropped
    assert comma_list("2e-3,1e-3", "--learning-rates", float) == [0.002, 0.001]
    assert comma_list("ntk,none", "--extrapolate-methods", choices=("none", "ntk")) == ["ntk", "none"]
    for text, args, message in (("1,x", (int,), "--flag takes comma-separated integers, got '1,x'"),
                                (" , ", (int,), "--flag takes comma-separated integers, got ' , '"),
                                ("a,c", (str, ("a", "b")), "--flag takes some of a, b, got 'a,c'")):
        with pytest.raises(UserError) as e:
            comma_list(text, "--flag", *args)
        assert str(e.value) == message
