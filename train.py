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
import math
import time
import tomllib
import typing
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common import UserError, load_meta, load_tokens, pick_device, run_cli, save_checkpoint, write_json
from model import GPT, POS_ENCODINGS, GPTConfig


def option(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # data and output
    data_dir: str = option("data/shakespeare_char", "prepared data (from prepare_shakespeare.py)")
    out_dir: str = option("out", "runs are written to OUT_DIR/RUN_NAME")
    run_name: str = option("", "run directory name (default: <pos-encoding>_seed<seed>)")
    # model
    pos_encoding: str = option("rope", "positional encoding: " + ", ".join(POS_ENCODINGS))
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads per block")
    n_embd: int = option(128, "embedding width")
    block_size: int = option(64, "context length in characters")
    dropout: float = option(0.0, "dropout probability (0 for small data / short runs)")
    bias: bool = option(False, "biases in Linear and LayerNorm layers")
    rope_theta: float = option(10000.0, "RoPE base theta (only for --pos-encoding rope)")
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
    eval_interval: int = option(250, "evaluate train and val loss every this many steps")
    eval_iters: int = option(200, "batches per evaluation and split")
    # system
    seed: int = option(1337, "seeds data order, initial weights and dropout")
    device: str = option("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    compile: bool = option(False, "torch.compile the model (pays off only on long runs)")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps",
                     "eval_interval", "eval_iters"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_iters < 0 or self.warmup_iters < 0 or self.lr_decay_iters < 0:
            raise UserError("max_iters, warmup_iters and lr_decay_iters must not be negative")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.run_name:
            self.run_name = f"{self.pos_encoding}_seed{self.seed}"

    def model_config(self, vocab_size):
        try:
            return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                             n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=self.bias,
                             pos_encoding=self.pos_encoding, rope_theta=self.rope_theta)
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


def add_config_flags(parser, exclude=()):
    """One --flag-with-dashes per TrainConfig field. Defaults are suppressed so that
    only the flags a user typed override the config file."""
    for f in fields(TrainConfig):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        kwargs = dict(default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {f.default!r})")
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif f.name == "pos_encoding":
            parser.add_argument(flag, choices=list(POS_ENCODINGS), **kwargs)
        else:
            parser.add_argument(flag, type=f.type, metavar=f.name.upper(), **kwargs)


def config_from_args(args, **overrides):
    values = read_config_file(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k in FIELD_TYPES})
    values.update(overrides)
    return TrainConfig(**values)


# -----------------------------------------------------------------------------
# data


class Batches:
    """Random training windows and fixed evaluation windows.

    Training windows come from their own numpy generator seeded by `seed`, so the
    order of batches is the same for every model and every rerun. Evaluation uses
    one fixed set of windows per split (again seeded), so every evaluation of every
    model is measured on exactly the same text."""

    def __init__(self, data_dir, block_size, batch_size, eval_iters, seed, device):
        self.data = {s: load_tokens(data_dir, s) for s in ("train", "val")}
        for split, tokens in self.data.items():
            if len(tokens) <= block_size:
                raise UserError(
                    f"the {split} split has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1};"
                    f" use a smaller --block-size or more text"
                )
        self.block_size, self.batch_size, self.device = block_size, batch_size, device
        self.rng = np.random.default_rng(seed)
        self.offsets = torch.arange(block_size + 1)
        self.eval_starts = {
            s: np.random.default_rng([seed, i]).integers(0, len(d) - block_size, eval_iters * batch_size)
            for i, (s, d) in enumerate(self.data.items())
        }

    def _windows(self, split, starts):
        # one gather instead of a Python loop of slices: (B, block_size + 1)
        w = self.data[split][torch.from_numpy(starts)[:, None] + self.offsets]
        x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
        if self.device.startswith("cuda"):
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def train_batch(self):
        starts = self.rng.integers(0, len(self.data["train"]) - self.block_size, self.batch_size)
        return self._windows("train", starts)

    def eval_batches(self, split):
        starts = self.eval_starts[split]
        for i in range(0, len(starts), self.batch_size):
            yield self._windows(split, starts[i:i + self.batch_size])


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


@torch.no_grad()
def evaluate(model, batches, autocast):
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = []
        for x, y in batches.eval_batches(split):
            with autocast:
                losses.append(model(x, y)[1])
        out[split] = torch.stack(losses).mean().item()
    model.train()
    return out


METRIC_FIELDS = ["step", "train_loss", "val_loss", "lr", "tokens", "elapsed_s"]


def train(cfg: TrainConfig):
    """Train one model; returns the summary dict also written to summary.json."""
    t_start = time.time()
    meta = load_meta(cfg.data_dir)
    model_config = cfg.model_config(meta["vocab_size"])
    device = pick_device(cfg.device)
    device_type = device.split(":")[0]
    run_dir = Path(cfg.out_dir) / cfg.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", asdict(cfg))

    torch.manual_seed(cfg.seed)  # dropout; weights and data have their own seeded generators
    batches = Batches(cfg.data_dir, cfg.block_size, cfg.batch_size, cfg.eval_iters, cfg.seed, device)
    model = GPT(model_config, seed=cfg.seed).to(device)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    step_model = torch.compile(model) if cfg.compile else model
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device_type == "cuda"
                else nullcontext())
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps

    metrics_file = open(run_dir / "metrics.csv", "w", newline="")
    writer = csv.DictWriter(metrics_file, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    best = {"val_loss": float("inf"), "step": -1}
    last = {}
    train_time = 0.0  # seconds spent in training steps, evaluation excluded
    bar = tqdm(total=cfg.max_iters, desc=cfg.run_name, disable=not cfg.progress, dynamic_ncols=True)
    postfix = {}  # latest batch loss and evaluated losses, shown on the bar
    for it in range(cfg.max_iters + 1):
        lr = learning_rate(cfg, it)
        if it % cfg.eval_interval == 0 or it == cfg.max_iters:
            losses = evaluate(model, batches, autocast)
            last = {"step": it, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr,
                    "tokens": it * tokens_per_step, "elapsed_s": round(time.time() - t_start, 3)}
            writer.writerow(last)
            metrics_file.flush()
            postfix.update(train=f"{losses['train']:.4f}", val=f"{losses['val']:.4f}")
            if losses["val"] < best["val_loss"]:
                best = {"val_loss": losses["val"], "step": it}
                save_checkpoint(run_dir / "ckpt.pt", {
                    "model_args": asdict(model_config), "model": model.state_dict(), "vocab": meta["chars"],
                    "step": it, "val_loss": losses["val"], "config": asdict(cfg),
                })
        if it == cfg.max_iters:
            break

        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(cfg.gradient_accumulation_steps):
            x, y = batches.train_batch()
            with autocast:
                _, loss = step_model(x, y)
            (loss / cfg.gradient_accumulation_steps).backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % 10 == 0:
            postfix["loss"] = f"{loss.item():.4f}"
            bar.set_postfix(postfix, refresh=False)
        if device_type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        bar.update(1)
    bar.close()
    metrics_file.close()

    summary = {
        "run_name": cfg.run_name, "pos_encoding": cfg.pos_encoding, "seed": cfg.seed,
        "n_params": model.num_params(), "best_val_loss": best["val_loss"], "best_step": best["step"],
        "final_train_loss": last["train_loss"], "final_val_loss": last["val_loss"],
        "wall_s": round(time.time() - t_start, 2), "train_s": round(train_time, 2),
        "ms_per_iter": round(1000 * train_time / max(1, cfg.max_iters), 2),
        "device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def build_parser(description=__doc__):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="TOML config file whose keys are the flags below, with underscores")
    return parser


def main():
    parser = build_parser()
    add_config_flags(parser)
    cfg = config_from_args(parser.parse_args())
    s = train(cfg)
    print(f"{s['run_name']}: best val loss {s['best_val_loss']:.4f} at step {s['best_step']}, "
          f"final train {s['final_train_loss']:.4f} / val {s['final_val_loss']:.4f}, "
          f"{s['ms_per_iter']:.1f} ms/iter, {s['wall_s']:.0f} s -> {Path(cfg.out_dir) / cfg.run_name}")


if __name__ == "__main__":
    run_cli(main)
