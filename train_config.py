"""
What a run is: its settings (TrainConfig: dataclass defaults < a TOML config file < command-line
flags), the text it is scored on and the rest of its provenance, its learning-rate schedule, and the
rules of its directory (what a finished run's record must match to be reused, resumed or continued).

train.py trains a run; the studies (study/) and the tests import its definition from here, so that
reading or planning runs never needs the training script.
"""

import argparse
import json
import math
import sys
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # before Python 3.11: say so in one line, not with a traceback
    sys.exit(f"error: this project needs Python 3.11 or newer (tomllib); this is Python {sys.version.split()[0]}")

from common import (DTYPES, SPLITS, ArgumentParser, UserError, auto_device, digest, eval_windows, load_meta,
                    load_tokens, pick_device, read_json, read_metrics, resolve_dtype)
from model import POS_ENCODINGS, GPTConfig
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
    rope_window: int = option(0, "RoPE layers attend only to the keys 0 .. w - 1 back, a sliding window; NoPE layers"
                                 " (--nope-every) stay global, as in RNoPE-SWA (0: off; only for rope)")
    fire_L: float = option(512.0, "FIRE's threshold L at initialisation, then learned (the paper's 512 was set for"
                                  " 2048-token training; only for fire)")
    yarn_temperature: bool = option(True, "YaRN's attention temperature; --no-yarn-temperature keeps its ramp alone"
                                          " (only for rope)")
    clamp_distance: int = option(0, "score every distance beyond this as this distance: RoPE as in ReRoPE, T5 with"
                                    " its bucket (0: off; an inference-time ablation; only for rope and t5)")
    log_scale_length: int = option(0, "multiply query i's attention logits by max(1, ln(i + 1) / ln n) for this n,"
                                      " before any additive bias (0: off; an inference-time ablation)")
    clamp_offset: float = option(0.0, "with --clamp-distance, lower the logits of the clamped keys by this (an"
                                      " inference-time ablation; only for rope and t5)")
    logit_scale: float = option(1.0, "multiply every attention logit by this, before any additive bias (a flat"
                                     " temperature; an inference-time ablation)")
    attention_window: int = option(0, "every layer attends only to the keys 0 .. w - 1 back (0: off; an"
                                      " inference-time ablation)")
    attention_sink: bool = option(False, "with a window (--attention-window or --rope-window), the first token"
                                         " stays in view")
    nope_window: int = option(0, "the NoPE layers of a RoPE/NoPE hybrid (--nope-every) attend only to the keys"
                                 " 0 .. w - 1 back (0: off; an inference-time ablation; only for rope)")
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


def build_parser(description):
    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="TOML config file whose keys are the flags below, with underscores")
    return parser


# -----------------------------------------------------------------------------
# what a run is scored on


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
        eval_text = TaskBatches(cfg.task, cfg.data_dir, cfg.block_size, cfg.batch_size, cfg.seed, "cpu").eval_text
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


# -----------------------------------------------------------------------------
# its schedule


def learning_rate(cfg, it):
    """Linear warm-up, then cosine decay from learning_rate to min_lr."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)



# -----------------------------------------------------------------------------
# its directory: what a run found there must match to be reused, resumed or continued


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
