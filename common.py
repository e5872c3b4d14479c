"""Small pieces shared by the scripts: user-facing errors, atomic files, data and checkpoints."""

import argparse
import csv
import ctypes
import functools
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from model import GPT, POS_ENCODINGS, GPTConfig

CPU_CONFIG = "config/shakespeare_char_cpu.toml"  # the default of study.compare and study.bench


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr, exit code 2, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage block), exit code 2, and every
    --flag-name is also accepted as --flag_name, as nanoGPT users type it (--max_iters=3000)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"prog": program_name(), **kwargs})  # "study.compare", not "compare.py"

    def error(self, message):
        raise UserError(f"{message} (see --help)")

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self._dashed(a) for a in args], namespace)

    def _dashed(self, arg):
        """--max_iters=3 -> --max-iters=3; --compile=False -> --no-compile (nanoGPT's forms)."""
        name, eq, value = arg.partition("=")
        dashed = name.replace("_", "-")
        if not arg.startswith("--") or dashed not in self._option_string_actions:
            return arg
        action = self._option_string_actions[dashed]
        if eq and isinstance(action, argparse.BooleanOptionalAction) and value.lower() in ("true", "false"):
            return dashed if value.lower() == "true" else "--no-" + dashed[2:]
        return dashed + eq + value


def parse_encodings(text):
    """'rope,learned' -> ['rope', 'learned']; 'all' -> every registered encoding."""
    encodings = list(POS_ENCODINGS) if text == "all" else [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in encodings if e not in POS_ENCODINGS]
    if unknown or not encodings:
        raise UserError(f"unknown encoding(s) {', '.join(unknown) or '(none given)'}; choose from"
                        f" {', '.join(POS_ENCODINGS)} or 'all'")
    return encodings


def program_name():
    """This program as its messages name it: "study.compare" for a module run with -m (the entry point
    "python -m study" is "study"), "train.py" for a script."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name.removesuffix(".__main__") if spec is not None else Path(sys.argv[0]).name


def command_line():
    """The command that regenerates what this process writes, as a user types it: the named study's
    when `python -m study NAME` started it (STUDY_COMMAND), else this process's own."""
    own = program_name()
    return os.environ.get("STUDY_COMMAND") or shlex.join(
        ["python", *(["-m", own] if not own.endswith(".py") else [own]), *sys.argv[1:]])


def comma_list(text, flag, kind=str, choices=None):
    """A flag's comma-separated values ("1337, 1338,1337" -> [1337, 1338]) as `kind`, repeats dropped,
    in order; with `choices`, each one of them. Anything else is a one-line UserError naming the flag."""
    names = {int: "integers", float: "numbers", str: "names"}
    try:
        values = list(dict.fromkeys(kind(v.strip()) for v in text.split(",") if v.strip()))
    except ValueError:
        values = None
    if not values or (choices is not None and set(values) - set(choices)):
        what = f"some of {', '.join(map(str, choices))}" if choices is not None else f"comma-separated {names[kind]}"
        raise UserError(f"{flag} takes {what}, got {text!r}")
    return values


def run_cli(main):
    """Run main(); turn a UserError into a one-line message and exit code 2. Output piped into a
    reader that stops early (`| head`) ends the program quietly, as a Unix tool does."""
    try:
        main()
    except UserError as e:
        print(f"{program_name()}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(1)


# --- files --------------------------------------------------------------------


def atomic_write(path, write):
    """Call write(file_object) on a temp file beside `path`, then rename it into place,
    so a crash never leaves a half-written file under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def run_lock(run_dir):
    """Hold run_dir (created if needed) for this process until the block ends: a second
    process asking for it meanwhile gets a UserError. An advisory flock on run_dir/.lock,
    released by the OS when the process dies; where there is no fcntl (Windows), no lock."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        fcntl = None
    try:
        with open(run_dir / ".lock", "w") as f:
            try:
                if fcntl is not None:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{run_dir} is in use by another training process; wait for it to end,"
                                f" or choose another --run-name") from None
            yield
    except BaseException:
        if created and [p.name for p in run_dir.iterdir()] == [".lock"]:  # refused before writing anything
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


# --- prepared data ------------------------------------------------------------


SPLITS = ("train", "val", "test")  # prepare_shakespeare.py: the first 90%, the next 5%, the last 5%


def load_meta(data_dir):
    """The vocabulary and sizes written by prepare_shakespeare.py."""
    meta_path = Path(data_dir) / "meta.json"
    missing = [p for p in (meta_path, *(Path(data_dir) / f"{s}.bin" for s in SPLITS)) if not p.exists()]
    if missing:
        raise UserError(
            f"prepared data not found ({missing[0]}); run `python prepare_shakespeare.py` first"
            f" (or pass --data-dir)"
        )
    return read_json(meta_path, "run `python prepare_shakespeare.py` again")


def read_json(path, fix):
    """A JSON file written by this project; a damaged one is a UserError that says how to fix it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); {fix}") from None


def read_metrics(path):
    """Rows of a metrics.csv as dicts of strings, skipping a half-written last line (a killed run)."""
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if None not in r.values() and "" not in r.values()]


def positive(kind):
    """argparse type: a finite number of `kind` that must be > 0."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):  # "nan" and "inf" parse; nan <= 0 is False
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def load_tokens(data_dir, split):
    """A split's token ids as an int64 tensor (tiny Shakespeare is 2 MB: keep it in memory)."""
    expected = load_meta(data_dir)[f"{split}_tokens"]  # (first: it names a missing file in one line)
    tokens = np.fromfile(Path(data_dir) / f"{split}.bin", dtype=np.uint16)
    if len(tokens) != expected:  # e.g. an interrupted prepare_shakespeare.py
        raise UserError(f"{data_dir}/{split}.bin has {len(tokens)} tokens, meta.json says {expected};"
                        f" run `python prepare_shakespeare.py` again")
    return torch.from_numpy(tokens.astype(np.int64))


def eval_windows(tokens, length, max_windows=None, split="val"):
    """Non-overlapping (n, length + 1) windows of `tokens`, window i starting at i * length.

    Consecutive windows share one token (the last target of one is the first input of the
    next), so the targets tile tokens[1 : n*length + 1] exactly once. With max_windows, an
    evenly spaced subset of them (deterministic, still spread over the whole split)."""
    n = (len(tokens) - 1) // length
    if n < 1:
        raise UserError(f"the {split} split has {len(tokens)} tokens, too few for a window of {length} + 1;"
                        f" use a shorter length or more text")
    windows = tokens[:n * length + 1].unfold(0, length + 1, length)  # a view: (n, length + 1)
    if max_windows is not None and max_windows < n:
        windows = windows[torch.linspace(0, n - 1, max_windows).round().long()]
    return windows


def digest(*tensors):
    """A short fingerprint of token tensors, so results can be checked to come from the same text."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Vocab:
    """Character <-> id mapping; ids are positions in the sorted character list."""

    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text):
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise UserError(
                "prompt has characters outside the model's vocabulary: "
                + " ".join(repr(c) for c in unknown)
            )
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


# --- devices and checkpoints --------------------------------------------------


def pick_device(name="auto"):
    """The device to run on: `name` if this machine has it, else a one-line UserError."""
    kind, _, index = name.partition(":")
    if name == "auto":
        return auto_device()
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise UserError(f"device {name!r} is not available ({why}); use --device cpu or auto")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise UserError(f"device {name!r} is not available: this machine has {torch.cuda.device_count()} GPU(s)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {name!r} is not available (Apple-silicon GPUs only); use --device cpu or auto")
    return name


def auto_device():
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


DTYPES = ("auto", "float32", "bfloat16")  # --dtype


def resolve_dtype(dtype, device):
    """What --dtype means on `device`: "auto" is bfloat16 autocast on CUDA (as nanoGPT) and
    float32 elsewhere; a CPU runs bfloat16 only when asked to (see cpu_bf16_note)."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def autocast(dtype, device):
    """The context every forward pass runs in. bfloat16: torch's autocast, so matmuls and attention
    run in bfloat16 while the weights and the optimizer state stay float32 and the loss is computed
    in float32; the residual stream stays float32 too (float32 embeddings plus the layers' outputs),
    so LayerNorm sees float32, and RoPE rotates in float32 itself. float32: nothing."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def cpu_has_bf16():
    """Whether this x86 CPU has bfloat16 matmul instructions (AVX512-BF16 or AMX), which torch's CPU
    kernels use; without them bfloat16 is emulated. (torch.cpu's checks are private: False if gone.)"""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cpu_bf16_note(dtype, device):
    """A one-line warning when bfloat16 is asked of an x86 CPU that lacks the instructions, else None
    (other CPUs, such as ARM ones with their own bfloat16 instructions, are not judged)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    if dtype != "bfloat16" or device != "cpu" or not x86 or cpu_has_bf16():
        return None
    return (f"note: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX; torch sees"
            f" {torch.backends.cpu.get_cpu_capability()}), so bfloat16 is emulated and many times slower than"
            f" float32 (16-28x on the CPU this project was measured on; BENCHMARKS.md)")


@functools.cache
def announce_dtype(dtype, device):
    """Print cpu_bf16_note's warning to stderr, once per process and setting."""
    if note := cpu_bf16_note(dtype, device):
        print(note, file=sys.stderr)


def keep_freed_memory():
    """Ask glibc's malloc to keep the memory that freed tensors give back, instead of returning
    it to the OS. Affects the whole process; returns True if the C library took both settings
    (glibc), False elsewhere (then nothing changes).

    PyTorch's CPU tensors come straight from malloc (posix_memalign), with no cache of their own.
    A training step frees some MB of activations, and by default glibc often hands the top of its
    heap back to the OS (trimming), so the next step faults those pages in again and the kernel
    zeroes each one: hundreds to thousands of page faults per step of the CPU config, a few
    percent of its time (BENCHMARKS.md, "Speed history"). The cost: the process keeps its peak memory until it exits."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError, TypeError):  # not glibc: no mallopt (macOS), no CDLL(None) (Windows)
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    # trim only above 1 GiB free; serve blocks up to 32 MB (the most glibc allows) from the heap,
    # not from fresh mmaps that are unmapped again on free
    trim_ok = mallopt(M_TRIM_THRESHOLD, 1 << 30)
    mmap_ok = mallopt(M_MMAP_THRESHOLD, 32 << 20)
    return bool(trim_ok and mmap_ok)


def save_checkpoint(path, ckpt):
    atomic_write(path, lambda f: torch.save(ckpt, f))


CHECKPOINT_KEYS = {"model": {"model_args", "model", "vocab"},  # ckpt.pt: the best weights, for sampling
                   "training": {"trainer", "best", "train_time", "vocab", "config"}}  # last.pt: to resume


def load_checkpoint(path, device="cpu", kind="model"):
    """Load a checkpoint written by train.py. weights_only=True: a checkpoint is data,
    never code, so loading a file from elsewhere cannot run anything."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; train first with `python train.py` or check --out-dir")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}); retrain or restore it") from e
    if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS[kind] <= ckpt.keys():
        raise UserError(f"{path} is not a checkpoint written by train.py")
    return ckpt


def build_model(ckpt, device="cpu", **overrides):
    """The model of a checkpoint (ckpt.pt) in eval mode; `overrides` change GPTConfig fields
    that own no weights (e.g. rope_scaling)."""
    try:
        model = GPT(GPTConfig(**{**ckpt["model_args"], **overrides}))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"the checkpoint does not fit this version of model.py ({str(e).splitlines()[0][:150]})")
    return model.to(device).eval()
