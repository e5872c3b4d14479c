import io
import os
import random
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

# Before torch is imported, which reads them once: no GPU, one OpenMP thread, in this process too (the
# scripts under test run in it) and in every process it starts.
os.environ.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")

import matplotlib  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Tiny models gain nothing from threads, and two processes both spinning 2 OpenMP threads on
# 2 cores slow each other down many times over: tests and the scripts they launch use one.
torch.set_num_threads(1)
# Scripts under test see none of the settings that would change what they do: their input
# comes from their arguments only (CI sets SHAKESPEARE_INPUT), no torchrun variables (train.py
# would wait for its peers), no GPU; the processes they start also get glibc's own malloc, untuned.
IGNORED = ("SHAKESPEARE_INPUT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "GLIBC_TUNABLES", "LD_PRELOAD")
ROOT = Path(__file__).resolve().parent.parent
ENV = {**{k: v for k, v in os.environ.items() if k not in IGNORED and not k.startswith("MALLOC_")},
       "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}  # (python -m study.X)
sys.path.insert(0, str(ROOT))

import common  # noqa: E402
from prepare_shakespeare import prepare  # noqa: E402

# A tiny model and schedule: trains in about a second on a CPU.
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=8, max_iters=30, eval_interval=10,
            warmup_iters=5, learning_rate=3e-3, progress=False)
TINY_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "progress"] + ["--no-progress"]
# where a study puts tiny runs: the config's stem, and -L16 as their block size is not the config file's 64
TINY_GROUP = f"shakespeare_char_cpu-L{TINY['block_size']}"


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


def run(script, *args, cwd=ROOT, check=True, fresh=False):
    """Run one of the project's scripts as a user would; returns the CompletedProcess. The script runs
    in this process, as `python script` would run it (its argv, the environment ENV, the working
    directory, its output and exit code captured): a new interpreter would spend most of the suite's
    time importing torch. fresh=True starts a real process, for what needs one (signals, pipes)."""
    args = list(map(str, args))
    proc = (subprocess.run([*command(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV)
            if fresh else run_here(script, args, cwd))
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_here(script, args, cwd):
    """`script` run in this process under __main__ (runpy, as the interpreter does), with everything a
    script may change put back afterwards: argv, environment, working directory, threads, SIGINT, the
    torch RNG, once-per-process notes. Its output is caught at the file descriptors, so the processes it
    starts (python -m study's steps, --jobs workers) are heard too, in the order they wrote."""
    saved = (sys.argv[:], dict(os.environ), os.getcwd(), torch.get_num_threads(), signal.getsignal(signal.SIGINT),
             torch.get_rng_state())
    os.environ.clear()
    os.environ.update(ENV)
    os.chdir(cwd)
    common.announce_dtype.cache_clear()
    code = 0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        streams, fds = (sys.stdout, sys.stderr), (os.dup(1), os.dup(2))
        for stream in streams:
            stream.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout, sys.stderr = (io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), write_through=True)
                                  for fd in (1, 2))
        try:
            with warnings.catch_warnings():
                default_warning_filters()
                sys.argv = [script, *args]
                if script.endswith(".py"):
                    runpy.run_path(str(ROOT / script), run_name="__main__")
                else:
                    runpy.run_module(script, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException as e:  # (a KeyboardInterrupt too: it ends the script, not the suite)
            traceback.print_exc(file=sys.stderr)
            code = 130 if isinstance(e, KeyboardInterrupt) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = streams
            for fd, before in zip((1, 2), fds):
                os.dup2(before, fd)
                os.close(before)
            sys.argv, environ, cwd_before, threads, sigint, rng = saved
            os.environ.clear()
            os.environ.update(environ)
            os.chdir(cwd_before)
            torch.set_num_threads(threads)
            signal.signal(signal.SIGINT, sigint)
            torch.set_rng_state(rng)
            plt.close("all")
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    return subprocess.CompletedProcess([*command(script), *args], code, stdout, stderr)


def default_warning_filters():
    """The warnings a fresh interpreter shows, on its stderr (pytest's own filters and recorder set aside)."""
    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    # (a fresh interpreter has not imported the module it runs yet; this one may have)
    warnings.filterwarnings("ignore", "'study.* found in sys.modules", RuntimeWarning)
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
