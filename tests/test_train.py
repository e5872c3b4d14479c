"""train.py internals: learning-rate schedule, batches, config validation."""

import argparse
import math
import platform
import shutil
import subprocess
import sys

import pytest
import torch

from common import UserError, positive
from conftest import ENV, ROOT
from train import Batches
from train_config import TrainConfig, learning_rate


def test_learning_rate_schedule():
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=2000)
    assert learning_rate(cfg, 0) == pytest.approx(1e-3 / 101)
    assert learning_rate(cfg, 99) == pytest.approx(1e-3 * 100 / 101)
    assert learning_rate(cfg, 100) == pytest.approx(1e-3)
    assert learning_rate(cfg, 1050) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way through the cosine
    assert learning_rate(cfg, 2000) == pytest.approx(1e-4)
    lrs = [learning_rate(cfg, i) for i in range(100, 2001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # decays monotonically after warm-up


def test_batches_are_seeded_windows_of_the_data(data_dir):
    a = Batches(data_dir, block_size=16, batch_size=4, seed=7, device="cpu")
    b = Batches(data_dir, block_size=16, batch_size=4, seed=7, device="cpu")
    for _ in range(3):
        (xa, ya), (xb, yb) = a.step_batches(1)[0], b.step_batches(1)[0]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == (4, 16) and torch.equal(xa[:, 1:], ya[:, :-1])  # targets are inputs shifted by one
    other = Batches(data_dir, block_size=16, batch_size=4, seed=8, device="cpu")
    assert not torch.equal(other.step_batches(1)[0][0], Batches(data_dir, 16, 4, 7, "cpu").step_batches(1)[0][0])


def test_evaluation_text_is_the_same_for_every_seed_and_covers_the_val_split(data_dir):
    a = Batches(data_dir, block_size=16, batch_size=4, seed=7, device="cpu")
    b = Batches(data_dir, block_size=16, batch_size=5, seed=8, device="cpu")
    assert a.eval_text.fingerprint == b.eval_text.fingerprint
    for split in ("train", "val", "test"):
        assert torch.equal(torch.cat([x for x, _ in a.eval_batches(split)]), torch.cat([x for x, _ in b.eval_batches(split)]))
    # val and test: every token after the first predicted exactly once, in order
    for split in ("val", "test"):
        tokens, n = a.data[split], (len(a.data[split]) - 1) // 16
        y = torch.cat([y for _, y in a.eval_batches(split)])
        assert torch.equal(y.flatten(), tokens[1:n * 16 + 1])
    # train: as many windows as val, real slices of the train split, spread over all of it
    x, y = (torch.cat(t) for t in zip(*a.eval_batches("train")))
    assert len(x) == len(a.eval_text.windows["val"]) and torch.equal(x[:, 1:], y[:, :-1])
    train = a.data["train"]
    assert torch.equal(x[0], train[:16]) and torch.equal(y[-1], train[len(train) - 1 - (len(train) - 1) % 16 - 15:
                                                                         len(train) - (len(train) - 1) % 16])
    # another block size is other text: another fingerprint
    assert Batches(data_dir, 8, 4, 7, "cpu").eval_text.fingerprint != a.eval_text.fingerprint


def test_block_size_larger_than_a_split_is_a_clear_error(data_dir):
    with pytest.raises(UserError, match="val split has .* fewer than block_size"):
        Batches(data_dir, block_size=5_000, batch_size=4, seed=0, device="cpu")


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_layer=0), "n_layer must be at least 1"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(max_iters=-1), "must not be negative"),
    (dict(learning_rate=float("nan")), "learning_rate must be a finite number, got nan"),
    (dict(grad_clip=float("inf")), "grad_clip must be a finite number, got inf"),
    (dict(beta2=1.0), r"beta1 and beta2 must be in \[0, 1\), got 0.9 and 1.0"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**kwargs)


def test_positive_flags():
    assert positive(int)("3") == 3 and positive(int)("1" + "0" * 400) == 10 ** 400  # too big for a float
    assert positive(float)("0.5") == 0.5
    for kind, text, message in [(int, "0", "must be positive, got 0"), (float, "-1e-9", "must be positive"),
                                (float, "nan", "must be a finite number, got nan"),
                                (float, "-inf", "must be a finite number, got -inf"), (int, "2.5", "invalid int value")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            positive(kind)(text)


def test_model_config_errors_become_user_errors():
    with pytest.raises(UserError, match="divisible"):
        TrainConfig(n_embd=100, n_head=3).model_config(65)
    with pytest.raises(UserError, match="rope_theta must be greater than 1, got 1.0"):
        TrainConfig(rope_theta=1.0).model_config(65)
    assert TrainConfig(pos_encoding="learned", rope_theta=1.0).model_config(65).pos_encoding == "learned"  # not RoPE's
    assert TrainConfig(pos_encoding="learned").model_config(65).pos_encoding == "learned"
    assert math.isclose(TrainConfig().model_config(65).rope_theta, 10000.0)


def test_default_run_name():
    assert TrainConfig(pos_encoding="none", seed=3).run_name == "none_seed3"


def test_data_files_out_of_step_with_meta_are_refused(data_dir, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    with open(copy / "val.bin", "r+b") as f:
        f.truncate(100)  # as if prepare_shakespeare.py had been interrupted
    with pytest.raises(UserError, match="val.bin has 50 tokens, meta.json says"):
        Batches(copy, block_size=16, batch_size=4, seed=0, device="cpu")


FAULTS_PER_ROUND = """
import ctypes, resource, sys
sys.path.insert(0, {root!r})
from common import keep_freed_memory
kept = keep_freed_memory() if {keep} else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
SIZE = 24 << 20
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per_round = []
for _ in range(6):
    before = faults()
    blocks = [libc.malloc(SIZE) for _ in range(3)]  # like a step's activations: 72 MB alive at once...
    for block in blocks:
        ctypes.memset(block, 1, SIZE)  # (written, as a forward pass writes them)
    for block in blocks:
        libc.free(block)  # ...then all freed
    per_round.append(faults() - before)
print(kept, *per_round[2:])  # after 2 rounds the heap has its working size
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's settings are glibc's")
def test_keep_freed_memory_reuses_freed_memory_instead_of_faulting_it_in_again():
    """By default glibc hands 72 MB freed at the top of its heap back to the OS (it trims above
    at most 64 MB), so every round faults it in again: 18,400 pages here, or a few dozen 2 MB pages
    where transparent huge pages are always on. Kept, later rounds reuse it and fault in nothing.

    Raw malloc and free, the calls PyTorch's CPU allocator makes, rather than training steps: where
    the small allocations of a step land decides whether glibc's defaults trim, so the steps' own
    fault counts ranged from 0 to 7,000 per step here and made a test on them flaky. BENCHMARKS.md
    has what keeping freed memory does to the steps."""
    faults = {}
    for keep in (False, True):
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND.format(root=str(ROOT), keep=keep)],
                             capture_output=True, text=True, env=ENV, check=True).stdout.split()
        assert out[0] == ("True" if keep else "None")  # glibc took both settings
        faults[keep] = [int(n) for n in out[1:]]
    assert min(faults[False]) > 0, faults  # by default every round faults...
    assert sum(faults[True]) < min(faults[False]), faults  # ...kept, all rounds together fault less than one
