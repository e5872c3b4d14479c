import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from threads, and two processes both spinning 2 OpenMP threads on
# 2 cores slow each other down many times over: tests and the scripts they launch use one.
torch.set_num_threads(1)
# Scripts under test see none of the settings that would change what they do: their input
# comes from their arguments only (CI sets SHAKESPEARE_INPUT), no torchrun variables (train.py
# would wait for its peers), no GPU, glibc's own malloc, untuned.
IGNORED = ("SHAKESPEARE_INPUT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "GLIBC_TUNABLES", "LD_PRELOAD")
ROOT = Path(__file__).resolve().parent.parent
ENV = {**{k: v for k, v in os.environ.items() if k not in IGNORED and not k.startswith("MALLOC_")},
       "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}  # (python -m study.X)
sys.path.insert(0, str(ROOT))

from prepare_shakespeare import prepare  # noqa: E402

# A tiny model and schedule: trains in about a second on a CPU.
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=8, max_iters=30, eval_interval=10,
            warmup_iters=5, learning_rate=3e-3, progress=False)
TINY_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "progress"] + ["--no-progress"]


def make_corpus(n_chars=20_000, seed=0):
    """Pseudo-Shakespeare: speaker lines of words from a small lexicon (learnable in a few steps)."""
    rng = random.Random(seed)
    words = "the lord king thou art my good sir what shall we do to him and her love death night".split()
    speakers = ["ROMEO:", "JULIET:", "KING HENRY:", "First Citizen:"]
    lines = []
    while sum(map(len, lines)) < n_chars:
        lines.append(rng.choice(speakers))
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))).capitalize() + ".\n")
    return "\n".join(lines)[:n_chars]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A prepared tiny corpus (train.bin, val.bin, test.bin, meta.json)."""
    root = tmp_path_factory.mktemp("data")
    (root / "input.txt").write_text(make_corpus())
    prepare(root / "prepared", input_path=root / "input.txt")
    return root / "prepared"


def command(script):
    """How a user starts `script`: a top-level file ("train.py") or a module of the study package
    ("study.compare", run with -m from the repository)."""
    return [sys.executable, str(ROOT / script)] if script.endswith(".py") else [sys.executable, "-m", script]


def run(script, *args, cwd=ROOT, check=True):
    """Run one of the project's scripts as a user would; returns the CompletedProcess."""
    proc = subprocess.run([*command(script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
