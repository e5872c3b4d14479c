"""--dtype: what auto means, the dtype a run records, old records, mixed tables, and bfloat16's logits."""

import json

import pytest
import torch

import common
from common import UserError, autocast, cpu_bf16_note, resolve_dtype
from conftest import TINY_FLAGS, run
from model import GPT, POS_ENCODINGS, GPTConfig
from study.runs import group_variants, read_config, run_dtype
from train_config import saved_provenance

PROVENANCE = {"eval_version": 2, "data_sha256": "abc", "eval_text": "0123456789abcdef"}  # from before dtypes


def test_auto_is_float32_on_a_cpu_and_bfloat16_on_cuda():
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "mps") == "float32"
    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == "bfloat16"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16" and resolve_dtype("float32", "cuda") == "float32"
    with pytest.raises(UserError, match="unknown dtype 'float16'; use auto, float32, bfloat16"):
        resolve_dtype("float16", "cpu")


@pytest.mark.parametrize("encoding", list(POS_ENCODINGS))
def test_bfloat16_logits_match_float32_within_tolerance(encoding):
    """bfloat16 keeps 8 significant bits (0.4% per rounding): on a small model with weights 10x
    their initial scale (logits of std about 1.2), autocast's logits stay within 10% of the logits'
    std of float32's everywhere (measured: 2-7%), and the loss within 0.005 nats (measured: <= 0.002)."""
    model = GPT(GPTConfig(pos_encoding=encoding, n_layer=2, n_head=4, n_embd=32, block_size=16), seed=1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(10)
    x = torch.randint(0, 65, (4, 16), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, 1)
    logits32, loss32 = model(x, y)
    with autocast("bfloat16", "cpu"):
        logits16, loss16 = model(x, y)
    assert logits32.dtype == torch.float32 and logits16.dtype == torch.bfloat16  # autocast did run
    assert loss16.dtype == torch.float32  # the loss stays float32
    diff = (logits16.float() - logits32).abs().max().item()
    assert 0 < diff < 0.1 * logits32.std().item()
    assert abs(loss16.item() - loss32.item()) < 0.005


def test_a_run_records_its_resolved_dtype_and_refuses_another(data_dir, tmp_path):
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--max-iters", 10)
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--max-iters", 10,
        "--dtype", "bfloat16", "--run-name", "bf16")
    f32, bf16 = tmp_path / "rope_seed1337", tmp_path / "bf16"
    for run_dir, dtype in ((f32, "float32"), (bf16, "bfloat16")):
        config = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        assert config["provenance"]["dtype"] == summary["provenance"]["dtype"] == run_dtype(run_dir) == dtype
    assert json.loads((f32 / "config.json").read_text())["dtype"] == "auto"  # the request, as given
    # the same run in another precision is not the same run: refused with the reason, in one line
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--max-iters", 10,
               "--dtype", "bfloat16", "--resume", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "holds a run trained in float32, not bfloat16 (--dtype bfloat16); --dtype float32 reuses" in proc.stderr
    # and a table of the two is refused
    with pytest.raises(UserError, match=r"different precisions \(bfloat16 and float32; see --dtype\)"):
        group_variants([read_config(f32), {**read_config(bf16), "seed": 2}])
    # --dtype auto on a CPU is float32: the float32 run is continued, not refused
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--max-iters", 10,
        "--dtype", "float32", "--resume")


def test_a_record_without_a_dtype_reads_as_the_default_of_its_device(tmp_path):
    """Records from before --dtype: float32 on a CPU, bfloat16 autocast on CUDA, as they ran."""
    config = {"device": "auto", "provenance": PROVENANCE}
    (tmp_path / "summary.json").write_text(json.dumps({"device": "cpu"}))
    assert saved_provenance(config, tmp_path) == {**PROVENANCE, "dtype": "float32"}
    (tmp_path / "summary.json").write_text(json.dumps({"device": "cuda:0"}))
    assert saved_provenance(config, tmp_path)["dtype"] == "bfloat16"
    (tmp_path / "summary.json").unlink()  # unfinished: the config's device
    assert saved_provenance({**config, "device": "cuda"}, tmp_path)["dtype"] == "bfloat16"
    assert saved_provenance({**config, "device": "cpu"}, tmp_path)["dtype"] == "float32"
    # a recorded dtype is kept; a run with no provenance has none to fill
    assert saved_provenance({"provenance": {**PROVENANCE, "dtype": "bfloat16"}}, tmp_path)["dtype"] == "bfloat16"
    assert saved_provenance({"device": "cpu"}, tmp_path) is None


def test_bfloat16_on_a_cpu_without_the_instructions_gets_a_note(monkeypatch):
    monkeypatch.setattr(common, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(common.platform, "machine", lambda: "aarch64")  # not judged: it has its own instructions
    assert cpu_bf16_note("bfloat16", "cpu") is None
    monkeypatch.setattr(common.platform, "machine", lambda: "x86_64")
    note = cpu_bf16_note("bfloat16", "cpu")
    assert note.startswith("note: this CPU has no bfloat16 instructions") and "slower than float32" in note
    assert cpu_bf16_note("float32", "cpu") is None and cpu_bf16_note("bfloat16", "cuda") is None
    monkeypatch.setattr(common, "cpu_has_bf16", lambda: True)
    assert cpu_bf16_note("bfloat16", "cpu") is None


def test_a_bad_dtype_is_one_line(data_dir, tmp_path):
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, "--dtype", "half", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "train.py: error: argument --dtype: invalid choice: 'half' (choose from 'auto', 'float32', 'bfloat16')"
        " (see --help)"]
    config = tmp_path / "bad.toml"
    config.write_text('dtype = "half"\n')
    proc = run("train.py", config, "--data-dir", data_dir, "--out-dir", tmp_path, check=False)
    assert proc.returncode == 2 and "dtype must be one of auto, float32, bfloat16, got 'half'" in proc.stderr


def test_parity_pairs_two_dtypes_by_variant_and_seed(data_dir, tmp_path):
    flags = ["--data-dir", data_dir, *TINY_FLAGS, "--max-iters", 10]
    for seed in (1, 2):
        run("train.py", *flags, "--out-dir", tmp_path / "f32", "--seed", seed)
        run("train.py", *flags, "--out-dir", tmp_path / "bf16", "--seed", seed, "--dtype", "bfloat16")
    proc = run("study.bench", "--parity", tmp_path / "bf16", tmp_path / "f32")
    final = {(d, s): json.loads((tmp_path / d / f"rope_seed{s}" / "summary.json").read_text())
             for d in ("f32", "bf16") for s in (1, 2)}
    diffs = [final["bf16", s]["final_val_loss"] - final["f32", s]["final_val_loss"] for s in (1, 2)]
    assert f"| RoPE, bfloat16 − RoPE, float32 | {diffs[0]:+.4f}, {diffs[1]:+.4f} |" in proc.stdout
    assert "| RoPE | 2 | " in proc.stdout  # the verdict row: 2 seeds
    # the same dtype on both sides is not a parity check
    proc = run("study.bench", "--parity", tmp_path / "f32", tmp_path / "f32", check=False)
    assert proc.returncode == 2 and "--parity needs runs of two dtypes" in proc.stderr


def test_an_old_record_without_a_dtype_is_continued_and_tabled_as_float32(data_dir, tmp_path):
    """A CPU run from before --dtype (no dtype in config.json or its provenance) is the float32 run it
    was: --resume continues it, and it tables with new float32 runs."""
    flags = ["--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--max-iters", 10]
    run("train.py", *flags)
    run("train.py", *flags, "--seed", 2)
    old = tmp_path / "rope_seed1337" / "config.json"
    config = json.loads(old.read_text())
    del config["dtype"], config["provenance"]["dtype"]
    old.write_text(json.dumps(config))
    run("train.py", *flags, "--resume")  # refused if it read as another dtype
    assert json.loads(old.read_text())["provenance"]["dtype"] == "float32"  # rewritten by the resumed run
    old.write_text(json.dumps(config))
    configs = [read_config(old.parent), read_config(tmp_path / "rope_seed2")]
    assert len(group_variants(configs)) == 1  # one variant, two seeds: not refused as mixed


def test_the_length_study_evaluates_a_run_in_its_dtype(data_dir, tmp_path):
    from common import build_model, eval_windows, load_checkpoint, load_tokens
    from study.evaluate import evaluate_runs, loss_by_position
    run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--max-iters", 10,
        "--dtype", "bfloat16")
    run_dir = tmp_path / "rope_seed1337"
    result = evaluate_runs([run_dir], lengths=[16], scalings=["none"], progress=False)
    got = next(r for r in result["rows"] if r["rope_scaling"] == "none")["results"][0]["loss"]
    model = build_model(load_checkpoint(run_dir / "ckpt.pt"))
    windows = eval_windows(load_tokens(data_dir, "val"), 16)
    with autocast("bfloat16", "cpu"):
        bf16 = loss_by_position(model, windows).mean().item()
    f32 = loss_by_position(model, windows).mean().item()
    assert got == pytest.approx(bf16, abs=1e-6) and abs(bf16 - f32) > 1e-5
