"""
Train a character-level GPT with a chosen positional encoding.

  python train.py --pos-encoding rope                       # CPU "baby" setting (the defaults)
  python train.py config/shakespeare_char.toml --pos-encoding learned --max-iters 8000

A config file (TOML, parsed, never executed) supplies defaults; flags override it.
Each run writes out/<run-name>/: config.json, metrics.csv, ckpt.pt (best val loss),
summary.json.

Fairness: with the same --seed every encoding sees the same batches in the same order
and starts from the same weights for every parameter the models share.
"""

import argparse
import csv
import json
import math
import os
import signal
import sys
import time
import typing
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # before Python 3.11: say so in one line, not with a traceback
    sys.exit(f"error: this project needs Python 3.11 or newer (tomllib); this is Python {sys.version.split()[0]}")

import numpy as np
import torch
from tqdm import tqdm

from common import (DTYPES, SPLITS, ArgumentParser, UserError, announce_dtype, auto_device, autocast, digest,
                    eval_windows, keep_freed_memory, load_checkpoint, load_meta, load_tokens, pick_device, read_json,
                    read_metrics, resolve_dtype, run_cli, run_lock, save_checkpoint, write_json, write_text)
from model import GPT, POS_ENCODINGS, GPTConfig
from tasks import TASKS, TaskBatches
from tasks import VOCAB as TASK_VOCAB


def option(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # data and output
    data_dir: str = option("data/shakespeare_char", "prepared data (from prepare_shakespeare.py)")
    out_dir: str = option("out", "runs are written to OUT_DIR/RUN_NAME")
    run_name: str = option("", "run directory name (default: <pos-encoding>_seed<seed>)")
    init_from: str = option("", "fine-tune: start from the best weights (ckpt.pt) of this run directory, with a new"
                                " optimizer; the model's shape must match it; --block-size may grow (not for learned),"
                                " the RoPE settings may change")
    task: str = option("shakespeare", "what the model learns: shakespeare (the next character of the play), or a"
                                      " synthetic task where position decides: " + ", ".join(TASKS) + " (tasks.py;"
                                      " only the answer characters are scored, and exact match is measured)")
    # model
    pos_encoding: str = option("rope", "positional encoding: " + ", ".join(POS_ENCODINGS))
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads per block")
    n_embd: int = option(128, "embedding width")
    block_size: int = option(64, "context length in characters")
    dropout: float = option(0.0, "dropout probability (0 for small data / short runs)")
    bias: bool = option(False, "biases in Linear and LayerNorm layers")
    rope_theta: float = option(10000.0, "RoPE base theta, above 1 (only for --pos-encoding rope)")
    rope_fraction: float = option(1.0, "p-RoPE: the share of each head's channel pairs that rotate, the fastest"
                                       " ones at full RoPE's frequencies; the rest carry no position (only for rope)")
    rope_scaling: str = option("none", "RoPE context extension: none, linear (position interpolation), ntk"
                                       " (NTK-aware base), yarn (NTK-by-parts + temperature); for a fine-tune at a"
                                       " longer --block-size with --init-from (only for rope)")
    rope_scaling_factor: float = option(1.0, "the factor s >= 1 the RoPE scaling extends the context by (only for"
                                             " rope)")
    yarn_alpha: float = option(1.0, "YaRN: pairs making fewer turns than this over the original length are"
                                    " interpolated fully (only for rope)")
    yarn_beta: float = option(32.0, "YaRN: pairs making more turns than this are left alone (only for rope)")
    rope_original_length: int = option(0, "the length the RoPE scaling extends from, YaRN's L (0: the --init-from"
                                          " run's block size, else block_size; only for rope)")
    nope_every: int = option(0, "RoPE/NoPE hybrid: layer i (0-based) carries no position when (i + 1) % nope_every"
                                " == 0, RoPE otherwise (0: RoPE in every layer; only for rope)")
    fire_L: float = option(512.0, "FIRE's threshold L at initialisation, then learned (the paper's 512 was set for"
                                  " 2048-token training; only for fire)")
    yarn_temperature: bool = option(True, "YaRN's attention temperature; --no-yarn-temperature keeps its ramp alone"
                                          " (only for rope)")
    clamp_distance: int = option(0, "score every distance beyond this as this distance: RoPE as in ReRoPE, T5 with"
                                    " its bucket (0: off; an inference-time ablation; only for rope and t5)")
    log_scale_length: int = option(0, "multiply query i's attention logits by max(1, ln(i + 1) / ln n) for this n,"
                                      " before any additive bias (0: off; an inference-time ablation)")
    sinusoidal_scale: bool = option(True, "scale the token embeddings by sqrt(n_embd) before adding the waves, as"
                                          " in the paper (only for --pos-encoding sinusoidal)")
    # optimisation
    batch_size: int = option(12, "sequences per micro-batch")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    max_iters: int = option(2000, "optimizer steps")
    learning_rate: float = option(1e-3, "peak learning rate")
    min_lr: float = option(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = option(100, "linear warm-up steps")
    lr_decay_iters: int = option(0, "steps of cosine decay (0: max_iters)")
    weight_decay: float = option(0.1, "AdamW weight decay, applied to weight matrices and embeddings only")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.99, "AdamW beta2 (0.99: small batches)")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: off)")
    # evaluation
    eval_interval: int = option(250, "evaluate train and val loss every this many steps (on the whole val split)")
    # system
    seed: int = option(1337, "seeds data order, initial weights and dropout")
    device: str = option("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    dtype: str = option("auto", "precision of the matmuls and attention in training, evaluation and sampling:"
                                " auto (bfloat16 autocast on CUDA, float32 elsewhere), float32, bfloat16 (autocast:"
                                " the weights, the optimizer state and the loss stay float32). On a CPU,"
                                " bfloat16 pays only with AVX512-BF16 or AMX instructions (on Linux,"
                                " `grep -o -m1 'avx512_bf16\\|amx_bf16' /proc/cpuinfo` prints one if the CPU has"
                                " them); without them it is emulated, many times slower than float32"
                                " (default: 'auto')")
    compile: bool = option(False, "torch.compile the model (pays off only on long runs)")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self):
        for f in fields(self):  # nan passes every "< 0" check below; inf breaks the schedule
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{f.name} must be a finite number, got {value}")
        for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps",
                     "eval_interval"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_iters < 0 or self.warmup_iters < 0 or self.lr_decay_iters < 0:
            raise UserError("max_iters, warmup_iters and lr_decay_iters must not be negative")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dtype not in DTYPES:
            raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.seed < 0:
            raise UserError(f"seed must not be negative, got {self.seed}")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.learning_rate <= 0 or self.min_lr < 0:
            raise UserError("learning_rate must be positive; min_lr, weight_decay and grad_clip must not be negative")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UserError(f"beta1 and beta2 must be in [0, 1), got {self.beta1} and {self.beta2}")
        if self.task not in ("shakespeare", *TASKS):
            raise UserError(f"task must be shakespeare or one of {', '.join(TASKS)}, got {self.task!r}")
        if not self.run_name:
            task = "" if self.task == "shakespeare" else f"{self.task}-"
            self.run_name = f"{task}{self.pos_encoding}_seed{self.seed}"

    def vocab(self, meta):
        """The characters the model reads and writes: the data's own, or the tasks' 76."""
        return meta["chars"] if self.task == "shakespeare" else TASK_VOCAB

    def batches(self, device):
        """The training batches and the fixed evaluation text of this run's task."""
        if self.task == "shakespeare":
            return Batches(self.data_dir, self.block_size, self.batch_size, self.seed, device)
        return TaskBatches(self.task, self.data_dir, self.block_size, self.batch_size, self.seed, device)

    def model_config(self, vocab_size):
        try:  # every model setting has a TrainConfig field of the same name
            return GPTConfig(vocab_size=vocab_size, **{f.name: getattr(self, f.name) for f in fields(GPTConfig)
                                                       if f.name != "vocab_size"})
        except ValueError as e:
            raise UserError(str(e)) from None


# -----------------------------------------------------------------------------
# configuration: dataclass defaults < config file < command-line flags

FIELD_TYPES = typing.get_type_hints(TrainConfig)


def read_config_file(path):
    """Keys and values of a TOML config file, checked against TrainConfig."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}") from None
    for key, value in values.items():
        if key not in FIELD_TYPES:
            raise UserError(f"{path}: unknown key {key!r}; known keys: {', '.join(FIELD_TYPES)}")
        want = FIELD_TYPES[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            values[key], ok = float(value), True
        if not ok:
            raise UserError(f"{path}: {key} must be {want.__name__}, got {value!r}")
    return values


CHOICES = {"pos_encoding": list(POS_ENCODINGS), "dtype": list(DTYPES)}


def add_config_flags(parser, exclude=()):
    """One --flag-with-dashes per TrainConfig field. Defaults are suppressed so that
    only the flags a user typed override the config file."""
    for f in fields(TrainConfig):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"].replace("%", "%%")  # argparse %-formats help: "(i + 1) % k" would crash --help
        kwargs = dict(default=argparse.SUPPRESS, help=text if "default" in text else f"{text} (default: {f.default!r})")
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif f.name in CHOICES:
            parser.add_argument(flag, choices=CHOICES[f.name], **kwargs)
        else:
            parser.add_argument(flag, type=f.type, metavar=f.name.upper(), **kwargs)


def config_from_args(args, **overrides):
    values = read_config_file(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k in FIELD_TYPES})
    values.update(overrides)
    return TrainConfig(**values)


# -----------------------------------------------------------------------------
# data


EVAL_VERSION = 2  # bump when a change alters what a finished run's numbers mean (see provenance)


class EvalText:
    """The text every run is scored on: the same tokens for every seed and every encoding.

    val: every token of the val split predicted once (non-overlapping windows of block_size,
    as evaluate.py cuts them; the last (len - 1) mod block_size tokens, which fill no window,
    are left out: 25 of the 55,770 at block 64); test: the same over the test split, scored
    only at the end;
    train: as many windows as val, evenly spaced over the train split (a fixed sample: the
    whole split would cost nine times as much per evaluation)."""

    def __init__(self, data, block_size):
        self.windows = {split: eval_windows(data[split], block_size, split=split) for split in ("val", "test")}
        self.windows["train"] = eval_windows(data["train"], block_size, len(self.windows["val"]), "train")
        self.fingerprint = digest(*(self.windows[s] for s in SPLITS))


def provenance(cfg, meta=None, eval_text=None, device=None):
    """What a run's numbers depend on besides its config: the corpus, the evaluation code's
    version, the evaluated text and the precision it ran in (--dtype resolved on `device`, never
    "auto"). A run whose provenance differs is not comparable."""
    meta = meta or load_meta(cfg.data_dir)
    if eval_text is None and cfg.task != "shakespeare":
        eval_text = cfg.batches("cpu").eval_text
    elif eval_text is None:
        eval_text = EvalText({s: load_tokens(cfg.data_dir, s) for s in SPLITS}, cfg.block_size)
    return {"eval_version": EVAL_VERSION, "data_sha256": meta["sha256"], "eval_text": eval_text.fingerprint,
            "dtype": resolve_dtype(cfg.dtype, device or pick_device(cfg.device))}


def saved_provenance(config, run_dir):
    """The provenance in a run's config.json (None if it has none). A run from before the dtype
    was recorded ran as "auto" did then and does now: bfloat16 autocast on CUDA, float32 on
    anything else; its device is summary.json's, else config.json's ("auto": this machine's)."""
    prov = config.get("provenance")
    if prov is None or "dtype" in prov:
        return prov
    summary = Path(run_dir) / "summary.json"
    device = config.get("device", "auto")
    if summary.exists():
        device = read_json(summary, f"remove {summary}").get("device", device)
    return {**prov, "dtype": resolve_dtype("auto", auto_device() if device == "auto" else device)}


class Batches:
    """Random training windows and the fixed evaluation text.

    Each optimizer step draws the starts of all its micro-batches at once from a numpy
    generator seeded by `seed`: the order of batches is the same for every model, every
    rerun and every number of processes (with torchrun, rank r takes its share of the
    step's micro-batches). Evaluation reads `EvalText`, which does not depend on the seed."""

    def __init__(self, data_dir, block_size, batch_size, seed, device):
        self.data = {s: load_tokens(data_dir, s) for s in SPLITS}
        for split, tokens in self.data.items():
            if len(tokens) <= block_size:
                raise UserError(
                    f"the {split} split has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1};"
                    f" use a smaller --block-size or more text"
                )
        self.block_size, self.batch_size, self.device = block_size, batch_size, device
        self.rng = np.random.default_rng(seed)
        self.offsets = torch.arange(block_size + 1)
        self.eval_text = EvalText(self.data, block_size)

    def _to_device(self, w):
        x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
        if self.device.startswith("cuda"):
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def step_batches(self, micro_steps, rank=0, world_size=1):
        """This rank's micro-batches (x, y) for one optimizer step of micro_steps in all."""
        starts = self.rng.integers(0, len(self.data["train"]) - self.block_size, (micro_steps, self.batch_size))
        share = micro_steps // world_size
        # one gather per micro-batch instead of a Python loop of slices: (B, block_size + 1)
        return [self._to_device(self.data["train"][torch.from_numpy(s)[:, None] + self.offsets])
                for s in starts[rank * share:(rank + 1) * share]]

    def eval_batches(self, split, rows=None):
        """The evaluation windows of a split, `rows` at a time (default batch_size)."""
        windows, rows = self.eval_text.windows[split], rows or self.batch_size
        for i in range(0, len(windows), rows):
            yield self._to_device(windows[i:i + rows])


# -----------------------------------------------------------------------------
# training


def learning_rate(cfg, it):
    """Linear warm-up, then cosine decay from learning_rate to min_lr."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


@torch.inference_mode()
def evaluate(model, batches, autocast, splits=("train", "val")):
    """Mean loss per predicted token over the evaluation windows of each split. (Chunks of
    batch_size rows: on a 2-core CPU larger chunks measured slower, their activations no
    longer fit in cache.)"""
    model.eval()
    out = {}
    for split in splits:
        total, count = 0.0, 0
        for x, y in batches.eval_batches(split):
            with autocast:
                total += model(x, y)[1].float() * len(x)
            count += len(x)
        out[split] = (total / count).item()
    model.train()
    return out


class Distributed:
    """torchrun's environment: rank, world size, device; a single process when absent."""

    def __init__(self, device):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world_size > 1
        self.master = self.rank == 0
        self.device = device
        if self.enabled:
            local_rank = int(os.environ["LOCAL_RANK"])
            if device.startswith("cuda"):
                self.device = f"cuda:{local_rank}"
                torch.cuda.set_device(self.device)
            # gloo for CPU tensors, nccl for CUDA ones
            torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")

    def close(self):
        if self.enabled:
            # Together, as torch's docs ask: rank 0 still evaluates after the last step, and a
            # rank that tore gloo down meanwhile once aborted on its way out ("terminate called
            # without an active exception", in 1 of 20 runs of the torchrun test under load).
            # Reached only when the run ended normally: after an error on rank 0 the other ranks
            # wait here until torchrun stops them
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


class StopRequested:
    """First Ctrl-C: finish the current step, save, stop. A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: saving a checkpoint after this step (press again to abort without saving)", file=sys.stderr)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)
        return False


# elapsed_s: wall time since the start; train_s: the part spent in training steps (no evaluation)
METRIC_FIELDS = ["step", "train_loss", "val_loss", "lr", "tokens", "elapsed_s", "train_s"]


class Trainer:
    """Model, optimizer, data and their state: one optimizer step at a time.

    `train()` drives it; bench.py times `step()` alone."""

    def __init__(self, cfg: TrainConfig, vocab_size, device, dist=None):
        self.cfg = cfg
        self.dist = dist or Distributed(device)
        device = self.dist.device
        device_type = device.split(":")[0]
        if cfg.gradient_accumulation_steps % self.dist.world_size:
            raise UserError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be a multiple "
                            f"of the number of processes ({self.dist.world_size})")
        self.model_config = cfg.model_config(vocab_size)
        # dropout: a different stream per process (weights and data have their own seeded generators)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.batches = cfg.batches(device)
        self.model = GPT(self.model_config, seed=cfg.seed).to(device)
        self.optimizer = self.model.configure_optimizer(cfg.weight_decay, cfg.learning_rate,
                                                        (cfg.beta1, cfg.beta2), device_type)
        step_model = self.model
        if self.dist.enabled:
            # forward_sync_buffers=False: our only buffers are RoPE/sinusoid tables, caches that each
            # process grows on demand (so their sizes may differ), not state to keep in sync
            step_model = torch.nn.parallel.DistributedDataParallel(
                step_model, device_ids=[device] if device_type == "cuda" else None, forward_sync_buffers=False)
        self.step_model = torch.compile(step_model) if cfg.compile else step_model
        self.dtype = resolve_dtype(cfg.dtype, device)
        self.autocast = autocast(self.dtype, device)
        self.device_type = device_type
        self.iter = 0  # optimizer steps taken

    def step(self):
        """One optimizer step (all micro-batches of this rank); returns the last micro-batch loss."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.iter)
        micro = self.batches.step_batches(cfg.gradient_accumulation_steps, self.dist.rank, self.dist.world_size)
        for i, (x, y) in enumerate(micro):
            # DDP: all-reduce gradients only after the last micro-batch
            skip_sync = self.dist.enabled and i < len(micro) - 1
            with self.step_model.no_sync() if skip_sync else nullcontext():
                with self.autocast:  # the forward pass only, as torch's autocast docs advise
                    _, loss = self.step_model(x, y)
                (loss / len(micro)).backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.iter += 1
        return loss

    def evaluate(self, splits=("train", "val")):
        """{split: loss} and, for a task, {split_exact: the share of answers exactly right}."""
        if self.cfg.task == "shakespeare":
            return evaluate(self.model, self.batches, self.autocast, splits)
        out = {}
        for split in splits:
            out[split], exact = self.batches.evaluate(self.model, self.autocast, split)
            if split != "train":
                out[f"{split}_exact"] = exact
        return out

    def state_dict(self):
        """Everything needed to continue exactly: weights, optimizer, step, RNG states."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "iter": self.iter,
                "data_rng": json.dumps(self.batches.rng.bit_generator.state),  # JSON: plain data, no pickle
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if self.device_type == "cuda" else torch.empty(0)}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iter = state["iter"]
        self.batches.rng.bit_generator.state = json.loads(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.device_type == "cuda" and state["cuda_rng"].numel():
            torch.cuda.set_rng_state(state["cuda_rng"])


# settings that do not change a run's numbers (on CPU): the dtype a run resolved to and what its data
# held are in its provenance, so a run read from elsewhere (records/, another --data-dir, a folder it was
# moved to from under another name) is the same run
NOT_RESULTS = ("progress", "device", "compile", "dtype", "data_dir", "out_dir", "run_name")


def config_json(cfg):
    """A TrainConfig as its config.json holds it."""
    return json.loads(json.dumps(asdict(cfg)))


def config_differences(run_dir, cfg, prov=None):
    """Keys in which cfg differs from the run in run_dir (None if run_dir holds no run). With
    `prov`, also the keys of the run's provenance that differ from it, as "provenance.KEY"."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    saved = read_json(path, f"remove {run_dir} or choose another --run-name")
    # a setting added since: its default; one removed since (eval_iters): left out, like provenance below
    old = {**config_json(TrainConfig()), **{k: v for k, v in saved.items() if k in FIELD_TYPES}}
    changed = differing_keys(old, config_json(cfg), NOT_RESULTS)
    if prov is not None:  # a run from before provenance was recorded has none: every key differs
        changed += [f"provenance.{k}" for k in differing_keys(saved_provenance(saved, run_dir) or {}, prov, ())]
    return changed


def explain(changed, run_dir, cfg):
    """A sentence on why the run in run_dir cannot be reused or resumed as cfg."""
    settings = [k for k in changed if not k.startswith("provenance.")]
    if settings:
        return f"{run_dir} holds a run with other settings ({', '.join(settings)})"
    if changed == ["provenance.dtype"]:
        saved = read_json(Path(run_dir) / "config.json", f"remove {run_dir}")
        old = saved_provenance(saved, run_dir)["dtype"]
        new = resolve_dtype(cfg.dtype, pick_device(cfg.device))
        return (f"{run_dir} holds a run trained in {old}, not {new} (--dtype {cfg.dtype}); --dtype {old} reuses or"
                f" continues it")
    return (f"{run_dir} holds a run evaluated by another version of the evaluation or on other text"
            f" ({', '.join(changed)}): its numbers are not comparable with new runs")


def differing_keys(a, b, ignore=NOT_RESULTS):
    """Sorted keys whose values differ between two configs (dicts), leaving out `ignore`."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in ignore)


LENGTH_KEYS = {"max_iters", "lr_decay_iters"}  # what a run continued for more steps may change
FINISHED_FILES = ("summary.json", "samples.txt", "samples.json", "retrieval.json")  # what only a finished run has
# (retrieval.json: study.retrieval's counts of a task run)


def why_not_continued(run_dir, cfg, changed):
    """None when cfg is the run in run_dir (which differs from it in `changed`) trained for more
    steps: only its length grew, its last evaluation is one the longer run also makes, and every
    step it ran keeps its learning rate (a constant rate after warm-up, or a decay over a fixed
    lr_decay_iters). Resumed, it is then exactly the run trained that long from the start.
    Otherwise a sentence on why not."""
    if set(changed) - LENGTH_KEYS:
        return explain(changed, run_dir, cfg)
    saved = read_json(Path(run_dir) / "config.json", f"remove {run_dir} or choose another --run-name")
    old = replace(cfg, max_iters=saved["max_iters"], lr_decay_iters=saved.get("lr_decay_iters", 0))
    if cfg.max_iters <= old.max_iters:
        return f"{run_dir} holds a run of {old.max_iters} steps, not fewer than --max-iters {cfg.max_iters}"
    if old.max_iters % cfg.eval_interval:
        return (f"{run_dir} holds a run of {old.max_iters} steps, not a multiple of --eval-interval"
                f" {cfg.eval_interval}: a longer run would not evaluate (nor keep a best checkpoint) at its end")
    if any(learning_rate(old, it) != learning_rate(cfg, it) for it in range(old.max_iters)):
        return (f"{run_dir} holds a run of {old.max_iters} steps whose learning rate would change; a run"
                f" continues for more steps only if its steps keep their rate: a constant rate after warm-up"
                f" (--min-lr equal to --learning-rate), or a decay over a fixed --lr-decay-iters")
    return None


def prepare_run_dir(run_dir, cfg, prov, resume, overwrite):
    """Refuse to mix two runs' results in one directory. Returns True when --resume continues a
    run for more steps."""
    if resume:
        if not (run_dir / "last.pt").exists():
            raise UserError(f"--resume: {run_dir} has no last.pt to resume from; start it without --resume")
        changed = config_differences(run_dir, cfg, prov)
        reason = changed and why_not_continued(run_dir, cfg, changed)
        if reason:
            raise UserError(f"--resume: {reason}; resume with the same settings, or start anew with --overwrite")
        return bool(changed)
    if (run_dir / "metrics.csv").exists() and not overwrite:
        raise UserError(f"{run_dir} already holds a run; --resume to continue it, --overwrite to replace it,"
                        f" or choose another --run-name")
    for name in ("metrics.csv", "ckpt.pt", "last.pt", *FINISHED_FILES):
        (run_dir / name).unlink(missing_ok=True)
    return False


def metrics_before(path, step):
    """Rows of metrics.csv for steps before `step` (a killed run may have left more, or half a line)."""
    return [r for r in read_metrics(path) if int(r["step"]) < step]


SHAPE = ("n_layer", "n_head", "n_embd", "bias", "pos_encoding")  # what --init-from's weights fix


def start_weights(cfg, meta):
    """For --init-from: the weights to start from (the run's best, ckpt.pt), after checking they fit
    cfg, and cfg with YaRN's original length filled in. (cfg, None) without --init-from."""
    if not cfg.init_from:
        return cfg, None
    src = Path(cfg.init_from)
    ckpt = load_checkpoint(src / "ckpt.pt")
    if ckpt["vocab"] != cfg.vocab(meta):
        raise UserError(f"--init-from: {src} was trained on another vocabulary than {cfg.data_dir}")
    args = ckpt["model_args"]
    differ = [f"{k} {args[k]}, not {getattr(cfg, k)}" for k in SHAPE if args[k] != getattr(cfg, k)]
    if differ:
        raise UserError(f"--init-from: {src} has another model ({'; '.join(differ)}); give the same settings")
    if cfg.pos_encoding == "learned" and cfg.block_size != args["block_size"]:
        raise UserError(f"--init-from: {src} has a learned table of {args['block_size']} positions; a fine-tune"
                        f" of it keeps --block-size {args['block_size']}")
    if cfg.rope_scaling == "yarn" and not cfg.rope_original_length:  # the length the source was first trained at
        cfg = replace(cfg, rope_original_length=args.get("rope_original_length") or args["block_size"])
    return cfg, ckpt["model"]


def train(cfg: TrainConfig, resume=False, overwrite=False, bar_position=None):
    """Train one model; returns the summary dict also written to summary.json (None on torchrun
    ranks other than 0). bar_position: the progress bar's line when several runs train side by
    side (compare.py --jobs). The run directory is held for the whole run: a second process
    started into it is refused instead of interleaving its files with this one's."""
    master = int(os.environ.get("RANK", "0")) == 0  # only rank 0 writes
    with run_lock(Path(cfg.out_dir) / cfg.run_name) if master else nullcontext():
        return _train(cfg, resume, overwrite, bar_position)


def _train(cfg, resume, overwrite, bar_position):
    t_start = time.time()
    keep_freed_memory()  # no page faults for each step's activations (4-6% faster CPU-config steps)
    meta = load_meta(cfg.data_dir)
    cfg, weights = start_weights(cfg, meta)
    vocab = cfg.vocab(meta)
    trainer = Trainer(cfg, len(vocab), pick_device(cfg.device))
    fields_ = METRIC_FIELDS + (["val_exact"] if cfg.task != "shakespeare" else [])
    if weights is not None and not resume:  # (a resumed run has its own weights in last.pt)
        trainer.model.load_state_dict(weights)
    dist, model = trainer.dist, trainer.model
    master = dist.master  # only rank 0 logs and writes files
    run_dir = Path(cfg.out_dir) / cfg.run_name
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    best = {"val_loss": float("inf"), "step": -1}
    train_time = 0.0  # seconds spent in training steps, evaluation excluded
    eval_time = 0.0  # seconds spent evaluating (train, val and test)
    rows = []
    prov = provenance(cfg, meta, trainer.batches.eval_text, dist.device)
    continued = master and prepare_run_dir(run_dir, cfg, prov, resume, overwrite)
    if master:
        announce_dtype(trainer.dtype, dist.device)
    if resume:
        state = load_checkpoint(run_dir / "last.pt", trainer.dist.device, kind="training")
        if state["vocab"] != vocab:
            raise UserError(f"{run_dir}/last.pt was trained on another vocabulary than {cfg.data_dir};"
                            f" prepare the same text again or start a new run")
        trainer.load_state_dict(state["trainer"])
        best, train_time, t_start = state["best"], state["train_time"], time.time() - state["elapsed_s"]
        eval_time = state.get("eval_time", 0.0)  # (not in a last.pt from before it was kept)
        rows = metrics_before(run_dir / "metrics.csv", trainer.iter)
    if continued:  # the shorter run's summary and samples must not outlive its config.json
        for name in FINISHED_FILES:
            (run_dir / name).unlink(missing_ok=True)
    if master:
        write_json(run_dir / "config.json", {**asdict(cfg), "provenance": prov})
        write_text(run_dir / "metrics.csv", ",".join(fields_) + "\n"
                   + "".join(",".join(r[k] for k in fields_) + "\n" for r in rows))
        metrics_file = open(run_dir / "metrics.csv", "a", newline="")
        writer = csv.DictWriter(metrics_file, fieldnames=fields_)

    def save_last():
        if master:
            save_checkpoint(run_dir / "last.pt", {
                "trainer": trainer.state_dict(), "best": best, "train_time": train_time, "eval_time": eval_time,
                "vocab": vocab,
                "elapsed_s": time.time() - t_start, "config": asdict(cfg)})

    last = {}
    bar = tqdm(total=cfg.max_iters, initial=trainer.iter, desc=cfg.run_name, dynamic_ncols=True,
               disable=not (cfg.progress and master), position=bar_position, leave=bar_position is None)
    postfix = {}  # latest batch loss and evaluated losses, shown on the bar
    with StopRequested() as stop, metrics_file if master else nullcontext():  # (closed however the loop ends)
        while True:
            it = trainer.iter
            if master and (it % cfg.eval_interval == 0 or it == cfg.max_iters):
                t0 = time.perf_counter()
                losses = trainer.evaluate()
                eval_time += time.perf_counter() - t0
                check_finite(losses["val"], it, "val loss", run_dir)
                last = {"step": it, "train_loss": losses["train"], "val_loss": losses["val"],
                        "lr": learning_rate(cfg, it), "tokens": it * tokens_per_step,
                        "elapsed_s": round(time.time() - t_start, 3), "train_s": round(train_time, 3),
                        **({"val_exact": losses["val_exact"]} if "val_exact" in losses else {})}
                writer.writerow(last)
                metrics_file.flush()
                postfix.update(train=f"{losses['train']:.4f}", val=f"{losses['val']:.4f}")
                if losses["val"] < best["val_loss"]:
                    best = {"val_loss": losses["val"], "step": it}
                    save_checkpoint(run_dir / "ckpt.pt", {
                        "model_args": asdict(trainer.model_config), "model": model.state_dict(),
                        "vocab": vocab, "step": it, "val_loss": losses["val"], "config": asdict(cfg)})
                save_last()  # the state before step `it`, after its evaluation
            if it == cfg.max_iters:
                break
            if stop.requested:
                save_last()
                bar.close()
                raise UserError(f"stopped by Ctrl-C at step {it}; the same command with --resume continues"
                                f" (study.compare: the same command)")

            t0 = time.perf_counter()
            loss = trainer.step()
            if it % 10 == 0 or it == cfg.max_iters - 1:  # .item() waits for the device: not every step
                check_finite(loss.item(), it, "training loss", run_dir, checked_every=10)
                postfix["loss"] = f"{loss.item():.4f}"
                bar.set_postfix(postfix, refresh=False)
            if trainer.device_type == "cuda":
                torch.cuda.synchronize()
            train_time += time.perf_counter() - t0
            bar.update(1)
    bar.close()
    if master:  # the held-out test split, scored once: the final weights and the best-val ones
        t0 = time.perf_counter()
        final = trainer.evaluate(("test",))
        test = {"final": final["test"], "best": final["test"], "final_exact": final.get("test_exact")}
        test["best_exact"] = test["final_exact"]
        if best["step"] != last["step"]:  # the best-val weights are in ckpt.pt
            model.load_state_dict(load_checkpoint(run_dir / "ckpt.pt", dist.device)["model"])
            at_best = trainer.evaluate(("test",))
            test["best"], test["best_exact"] = at_best["test"], at_best.get("test_exact")
        eval_time += time.perf_counter() - t0
    dist.close()
    if not master:
        return None

    summary = {
        "run_name": cfg.run_name, "pos_encoding": cfg.pos_encoding, "seed": cfg.seed,
        "n_params": model.num_params(), "best_val_loss": best["val_loss"], "best_step": best["step"],
        "best_test_loss": test["best"], "final_train_loss": last["train_loss"], "final_val_loss": last["val_loss"],
        "final_test_loss": test["final"],
        **({"task": cfg.task, "final_val_exact": last["val_exact"], "final_test_exact": test["final_exact"],
            "best_test_exact": test["best_exact"]} if cfg.task != "shakespeare" else {}),
        "wall_s": round(time.time() - t_start, 2), "train_s": round(train_time, 2),
        "eval_s": round(eval_time, 2),
        "ms_per_iter": round(1000 * train_time / max(1, cfg.max_iters), 2),
        "device": trainer.dist.device, "processes": dist.world_size, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "provenance": prov,
    }
    write_json(run_dir / "summary.json", summary)
    return summary


class Diverged(UserError):
    """The loss became NaN or infinite."""


def check_finite(value, step, what, run_dir, checked_every=1):
    if not math.isfinite(value):
        when = f"at step {step}" if checked_every == 1 else f"by step {step} (checked every {checked_every} steps)"
        raise Diverged(f"{what} became {value} {when}; stopped. The checkpoints in {run_dir} are from"
                        f" before that; lower --learning-rate or --grad-clip and start again")


def build_parser(description=__doc__):
    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="TOML config file whose keys are the flags below, with underscores")
    return parser


def main():
    parser = build_parser()
    add_config_flags(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT_DIR/RUN_NAME from its last checkpoint (last.pt), exactly;"
                             " with a larger --max-iters, train a finished run longer if its steps keep their"
                             " learning rate (a constant rate after warm-up, or a fixed --lr-decay-iters)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in the same directory")
    args = parser.parse_args()
    cfg = config_from_args(args)
    s = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if s is None:  # a torchrun worker other than rank 0
        return
    print(f"{s['run_name']}: best val loss {s['best_val_loss']:.4f} at step {s['best_step']}, "
          f"final train {s['final_train_loss']:.4f} / val {s['final_val_loss']:.4f}, "
          f"{s['ms_per_iter']:.1f} ms/iter, {s['wall_s']:.0f} s -> {Path(cfg.out_dir) / cfg.run_name}")


if __name__ == "__main__":
    run_cli(main)
