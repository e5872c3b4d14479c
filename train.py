"""
Train a character-level GPT with a chosen positional encoding.

  python train.py --pos-encoding rope                       # CPU "baby" setting (the defaults)
  python train.py config/shakespeare_char.toml --pos-encoding learned --max-iters 8000

A config file (TOML, parsed, never executed) supplies defaults; flags override it (train_config.py
defines every setting). Each run writes out/<run-name>/: config.json, metrics.csv, ckpt.pt (best
val loss), summary.json.

Fairness: with the same --seed every encoding sees the same batches in the same order
and starts from the same weights for every parameter the models share.
"""

import csv
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common import (SPLITS, UserError, announce_dtype, autocast, keep_freed_memory, load_checkpoint, load_meta,
                    load_tokens, pick_device, resolve_dtype, run_cli, run_lock, save_checkpoint, write_json,
                    write_text)
from model import GPT
from tasks import TaskBatches
from train_config import (FINISHED_FILES, EvalText, TrainConfig, add_config_flags, build_parser,
                          config_from_args, learning_rate, metrics_before, prepare_run_dir, provenance)

# -----------------------------------------------------------------------------
# data

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


def make_batches(cfg, device):
    """The training batches and the fixed evaluation text of a run's task."""
    if cfg.task == "shakespeare":
        return Batches(cfg.data_dir, cfg.block_size, cfg.batch_size, cfg.seed, device)
    return TaskBatches(cfg.task, cfg.data_dir, cfg.block_size, cfg.batch_size, cfg.seed, device)


# -----------------------------------------------------------------------------
# training

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
        if sys.stderr.isatty():  # a hint for a person at a terminal: a pipe (a scheduler's log, a test, or
            # study.compare stopping the runs beside one that failed) gets the error lines alone
            print("\nCtrl-C: saving a checkpoint after this step (press again to abort without saving)",
                  file=sys.stderr)

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
        self.batches = make_batches(cfg, device)
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


@dataclass
class Run:
    """A run in progress: what train() carries from its start, through its steps, to its summary."""
    cfg: TrainConfig
    trainer: Trainer
    dir: Path
    vocab: list
    prov: dict
    t_start: float
    master: bool  # only torchrun's rank 0 logs and writes files
    best: dict = field(default_factory=lambda: {"val_loss": float("inf"), "step": -1})
    train_time: float = 0.0  # seconds spent in training steps, evaluation excluded
    eval_time: float = 0.0  # seconds spent evaluating (train, val and test)
    last: dict = field(default_factory=dict)  # the latest evaluation, as metrics.csv logs it

    @property
    def fields(self):
        return METRIC_FIELDS + (["val_exact"] if self.cfg.task != "shakespeare" else [])

    def save_last(self):
        """last.pt: everything --resume needs to continue exactly from here."""
        if self.master:
            save_checkpoint(self.dir / "last.pt", {
                "trainer": self.trainer.state_dict(), "best": self.best, "train_time": self.train_time,
                "eval_time": self.eval_time, "vocab": self.vocab, "elapsed_s": time.time() - self.t_start,
                "config": asdict(self.cfg)})

    def evaluate(self, it, writer):
        """Evaluate before step `it`, log the row, keep the best weights in ckpt.pt and the state in last.pt."""
        t0 = time.perf_counter()
        losses = self.trainer.evaluate()
        self.eval_time += time.perf_counter() - t0
        check_finite(losses["val"], it, "val loss", self.dir)
        tokens_per_step = self.cfg.batch_size * self.cfg.block_size * self.cfg.gradient_accumulation_steps
        self.last = {"step": it, "train_loss": losses["train"], "val_loss": losses["val"],
                     "lr": learning_rate(self.cfg, it), "tokens": it * tokens_per_step,
                     "elapsed_s": round(time.time() - self.t_start, 3), "train_s": round(self.train_time, 3),
                     **({"val_exact": losses["val_exact"]} if "val_exact" in losses else {})}
        writer.writerow(self.last)
        if losses["val"] < self.best["val_loss"]:
            self.best = {"val_loss": losses["val"], "step": it}
            save_checkpoint(self.dir / "ckpt.pt", {
                "model_args": asdict(self.trainer.model_config), "model": self.trainer.model.state_dict(),
                "vocab": self.vocab, "step": it, "val_loss": losses["val"], "config": asdict(self.cfg)})
        self.save_last()  # the state before step `it`, after its evaluation
        return losses


def train(cfg: TrainConfig, resume=False, overwrite=False, bar_position=None):
    """Train one model; returns the summary dict also written to summary.json (None on torchrun
    ranks other than 0). bar_position: the progress bar's line when several runs train side by
    side (compare.py --jobs). The run directory is held for the whole run: a second process
    started into it is refused instead of interleaving its files with this one's."""
    master = int(os.environ.get("RANK", "0")) == 0  # only rank 0 writes
    with run_lock(Path(cfg.out_dir) / cfg.run_name) if master else nullcontext():
        run = start(cfg, resume, overwrite)
        loop(run, bar_position)
        return finish(run)


def start(cfg, resume, overwrite):
    """The run set up: weights (fresh, --init-from's, or --resume's with the optimizer and step), its
    directory checked (train_config.prepare_run_dir), config.json and the metrics logged so far."""
    t_start = time.time()
    keep_freed_memory()  # no page faults for each step's activations (4-6% faster CPU-config steps)
    meta = load_meta(cfg.data_dir)
    cfg, weights = start_weights(cfg, meta)
    vocab = cfg.vocab(meta)
    trainer = Trainer(cfg, len(vocab), pick_device(cfg.device))
    if weights is not None and not resume:  # (a resumed run has its own weights in last.pt)
        trainer.model.load_state_dict(weights)
    master = trainer.dist.master
    run = Run(cfg, trainer, Path(cfg.out_dir) / cfg.run_name, vocab,
              provenance(cfg, meta, trainer.batches.eval_text, trainer.dist.device), t_start, master)
    continued = master and prepare_run_dir(run.dir, cfg, run.prov, resume, overwrite)
    if master:
        announce_dtype(trainer.dtype, trainer.dist.device)
    rows = []
    if resume:
        state = load_checkpoint(run.dir / "last.pt", trainer.dist.device, kind="training")
        if state["vocab"] != vocab:
            raise UserError(f"{run.dir}/last.pt was trained on another vocabulary than {cfg.data_dir};"
                            f" prepare the same text again or start a new run")
        trainer.load_state_dict(state["trainer"])
        run.best, run.train_time, run.t_start = state["best"], state["train_time"], time.time() - state["elapsed_s"]
        run.eval_time = state.get("eval_time", 0.0)  # (not in a last.pt from before it was kept)
        rows = metrics_before(run.dir / "metrics.csv", trainer.iter)
    if continued:  # the shorter run's summary and samples must not outlive its config.json
        for name in FINISHED_FILES:
            (run.dir / name).unlink(missing_ok=True)
    if master:
        write_json(run.dir / "config.json", {**asdict(cfg), "provenance": run.prov})
        write_text(run.dir / "metrics.csv", ",".join(run.fields) + "\n"
                   + "".join(",".join(r[k] for k in run.fields) + "\n" for r in rows))
    return run


def loop(run, bar_position=None):
    """Step until max_iters, evaluating every eval_interval steps and at the end (rank 0 only)."""
    cfg, trainer = run.cfg, run.trainer
    bar = tqdm(total=cfg.max_iters, initial=trainer.iter, desc=cfg.run_name, dynamic_ncols=True,
               disable=not (cfg.progress and run.master), position=bar_position, leave=bar_position is None)
    postfix = {}  # latest batch loss and evaluated losses, shown on the bar
    metrics_file = open(run.dir / "metrics.csv", "a", newline="") if run.master else nullcontext()
    with StopRequested() as stop, metrics_file:  # (closed however the loop ends)
        writer = csv.DictWriter(metrics_file, fieldnames=run.fields) if run.master else None
        while True:
            it = trainer.iter
            if run.master and (it % cfg.eval_interval == 0 or it == cfg.max_iters):
                losses = run.evaluate(it, writer)
                metrics_file.flush()
                postfix.update(train=f"{losses['train']:.4f}", val=f"{losses['val']:.4f}")
            if it == cfg.max_iters:
                break
            if stop.requested:
                run.save_last()
                bar.close()
                raise UserError(f"stopped by Ctrl-C at step {it}; the same command with --resume continues"
                                f" (study.compare: the same command)")
            t0 = time.perf_counter()
            loss = trainer.step()
            if it % 10 == 0 or it == cfg.max_iters - 1:  # .item() waits for the device: not every step
                check_finite(loss.item(), it, "training loss", run.dir, checked_every=10)
                postfix["loss"] = f"{loss.item():.4f}"
                bar.set_postfix(postfix, refresh=False)
            if trainer.device_type == "cuda":
                torch.cuda.synchronize()
            run.train_time += time.perf_counter() - t0
            bar.update(1)
    bar.close()


def finish(run):
    """The held-out test split scored once, with the final weights and the best-val ones; then
    summary.json. Returns the summary (None on torchrun ranks other than 0)."""
    cfg, trainer = run.cfg, run.trainer
    if run.master:
        t0 = time.perf_counter()
        final = trainer.evaluate(("test",))
        test = {"final": final["test"], "best": final["test"], "final_exact": final.get("test_exact")}
        test["best_exact"] = test["final_exact"]
        if run.best["step"] != run.last["step"]:  # the best-val weights are in ckpt.pt
            trainer.model.load_state_dict(load_checkpoint(run.dir / "ckpt.pt", trainer.dist.device)["model"])
            at_best = trainer.evaluate(("test",))
            test["best"], test["best_exact"] = at_best["test"], at_best.get("test_exact")
        run.eval_time += time.perf_counter() - t0
    trainer.dist.close()
    if not run.master:
        return None
    best, last = run.best, run.last
    summary = {
        "run_name": cfg.run_name, "pos_encoding": cfg.pos_encoding, "seed": cfg.seed,
        "n_params": trainer.model.num_params(), "best_val_loss": best["val_loss"], "best_step": best["step"],
        "best_test_loss": test["best"], "final_train_loss": last["train_loss"], "final_val_loss": last["val_loss"],
        "final_test_loss": test["final"],
        **({"task": cfg.task, "final_val_exact": last["val_exact"], "final_test_exact": test["final_exact"],
            "best_test_exact": test["best_exact"]} if cfg.task != "shakespeare" else {}),
        "wall_s": round(time.time() - run.t_start, 2), "train_s": round(run.train_time, 2),
        "eval_s": round(run.eval_time, 2),
        "ms_per_iter": round(1000 * run.train_time / max(1, cfg.max_iters), 2),
        "device": trainer.dist.device, "processes": trainer.dist.world_size, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "provenance": run.prov,
    }
    write_json(run.dir / "summary.json", summary)
    return summary


class Diverged(UserError):
    """The loss became NaN or infinite."""


def check_finite(value, step, what, run_dir, checked_every=1):
    if not math.isfinite(value):
        when = f"at step {step}" if checked_every == 1 else f"by step {step} (checked every {checked_every} steps)"
        raise Diverged(f"{what} became {value} {when}; stopped. The checkpoints in {run_dir} are from"
                        f" before that; lower --learning-rate or --grad-clip and start again")


def main():
    parser = build_parser(__doc__)
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
