"""
Runs and their variants: which runs belong together, and what to call them.

A run is one training (out/<group>/<name>/). Runs that differ only in the seed form a
*variant*: an encoding plus any settings in which it differs from the others, such as a
learning rate or sinusoidal without its sqrt(d) scale. Tables and plots show one line per
variant, averaged over its seeds, and label it by the settings that tell it apart
("sinusoidal, no √d scale", "RoPE, lr 0.002").

On the command line (study.compare, study.sweep) a variant is written ENCODING[:KEY=VALUE...],
KEY a train.py setting with underscores: "rope", "sinusoidal:sinusoidal_scale=false",
"rope:rope_theta=1000:learning_rate=0.002".
"""

import json
import math
import re
from pathlib import Path

from common import UserError, load_checkpoint, read_json
from model import POS_ENCODINGS
from train_config import TrainConfig, config_json, saved_provenance

# The reference article's colours: RoPE blue, learned orange, none green.
COLORS = {"rope": "tab:blue", "learned": "tab:orange", "none": "tab:green",
          "sinusoidal": "tab:red", "alibi": "tab:purple", "t5": "tab:brown", "fire": "tab:pink"}
LABELS = {"rope": "RoPE", "learned": "learned", "none": "none", "sinusoidal": "sinusoidal", "alibi": "ALiBi",
          "t5": "T5 bias", "fire": "FIRE"}

# not part of a variant (a fine-tune's init_from names its seed's run; the dtype a run resolved to is in
# its provenance, which every run of a table must share)
PER_SEED = ("seed", "run_name", "out_dir", "data_dir", "progress", "device", "compile", "dtype", "provenance",
            "init_from")
SHORT = {"learning_rate": "lr"}  # in run names and labels
DEFAULTS = config_json(TrainConfig())
ENCODING_OPTIONS = {o for cls in POS_ENCODINGS.values() for o in cls.options}  # rope_theta, fire_L, ...


def format_value(value):
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def shown(config, key):
    """Whether `key` is worth naming: min_lr is not when it is learning_rate / 10 (the sweep's
    rule), lr_decay_iters not when the rate is constant (min_lr = learning_rate ignores it)."""
    lr, min_lr = config.get("learning_rate"), config.get("min_lr")
    if lr is None or min_lr is None or key not in ("min_lr", "lr_decay_iters"):
        return True
    return not math.isclose(min_lr, lr / 10 if key == "min_lr" else lr)


def describe(key, value):
    if key == "sinusoidal_scale":
        return "√d scale" if value else "no √d scale"
    if key == "rope_fraction":
        return f"{value:.0%} of pairs rotate"
    if key == "rope_theta":
        return f"base {value:g}"
    if key == "nope_every":
        return "RoPE in every layer" if value == 0 else f"RoPE/NoPE hybrid, NoPE every {value} layers"
    if key == "fire_L":
        return f"L starts at {value:g}"
    return f"{SHORT.get(key, key)} {format_value(value)}"


# --- variants on the command line ------------------------------------------------


def parse_variants(text, field_types):
    """'all,sinusoidal:sinusoidal_scale=false' -> [(encoding, {key: value}), ...], no repeats.
    'all' is every registered encoding; field_types maps train.py's settings to their types."""
    variants = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        enc, *settings = entry.split(":")
        if enc != "all" and enc not in POS_ENCODINGS:
            raise UserError(f"unknown encoding {enc!r} in {entry!r}; choose from {', '.join(POS_ENCODINGS)} or 'all'")
        overrides = dict(parse_setting(s, entry, field_types) for s in settings)
        for e in (POS_ENCODINGS if enc == "all" else [enc]):
            ignored = sorted(overrides.keys() & options_not_read(e))
            if ignored:  # it would change the run's name but not the model
                raise UserError(f"{entry!r}: {e} does not read {', '.join(ignored)}")
            if (e, overrides) not in variants:
                variants.append((e, overrides))
    if not variants:
        raise UserError(f"no encodings given ({text!r}); choose from {', '.join(POS_ENCODINGS)} or 'all'")
    return variants


def parse_setting(text, entry, field_types):
    key, eq, value = text.partition("=")
    if not eq or key not in field_types or key in PER_SEED + ("pos_encoding",):
        raise UserError(f"{entry!r}: {text!r} is not KEY=VALUE with KEY a train.py setting such as learning_rate")
    kind = field_types[key]
    try:
        if kind is bool:
            if value.lower() not in ("true", "false"):
                raise ValueError
            return key, value.lower() == "true"
        return key, kind(value)
    except ValueError:
        raise UserError(f"{entry!r}: {key} takes a {kind.__name__}, got {value!r}") from None


def variant_name(encoding, overrides):
    """Directory-name part of a variant: 'rope', 'rope-lr=0.002', 'sinusoidal-sinusoidal_scale=false'."""
    parts = [f"{SHORT.get(k, k)}={format_value(v)}" for k, v in overrides.items() if shown(overrides, k)]
    return "-".join([encoding, *parts])


def variant_parts(name):
    """A variant's directory name (variant_name's) split into its encoding and its settings:
    'rope-nope_every=2-lr=1e-05' -> ['rope', 'nope_every=2', 'lr=1e-05'] (a '-' inside a value stays)."""
    return re.split(r"-(?=[a-z_]+=)", name)


def variant_of_run(run_dir):
    """A run's variant, from its name (<variant>_seed<seed>): its folder name without the seed."""
    return Path(run_dir).name.rsplit("_seed", 1)[0]


def seed_of(run_dir):
    """A run's seed, from its name (<variant>_seed<seed>)."""
    return Path(run_dir).name.rsplit("_seed", 1)[-1]


# --- variants of finished runs ---------------------------------------------------


def find_runs(paths):
    """Run directories (holding metrics.csv and config.json) among `paths`, searched recursively."""
    runs = []
    for p in map(Path, paths):
        if (p / "metrics.csv").is_file():
            runs.append(p)
        elif p.is_dir():
            runs.extend(sorted(m.parent for m in p.rglob("metrics.csv")))
        else:
            raise UserError(f"{p} is not a run directory")
    if not runs:
        raise UserError(f"no runs (metrics.csv) under {', '.join(map(str, paths))}; train some first")
    return runs


def read_config(run_dir):
    """A run's config.json, with the default of every setting added to train.py after the run,
    so that old and new runs of one variant still compare equal."""
    saved = read_json(Path(run_dir) / "config.json", "is this a run directory written by train.py?")
    return {**DEFAULTS, **saved, "provenance": saved_provenance(saved, run_dir)}


def run_dtype(run_dir):
    """The precision a run was trained in, "float32" or "bfloat16": the studies evaluate and sample
    it in the same one."""
    return read_config(run_dir)["provenance"]["dtype"]


def options_not_read(encoding):
    """Settings that only other encodings read (rope_theta for a learned run, say)."""
    return {o for name, cls in POS_ENCODINGS.items() if name != encoding for o in cls.options} - set(
        POS_ENCODINGS[encoding].options)


def variant_key(config):
    """What runs of one variant share: the config without the per-seed keys and the
    settings this encoding does not read."""
    ignore = set(PER_SEED) | options_not_read(config["pos_encoding"])
    return json.dumps({k: v for k, v in sorted(config.items()) if k not in ignore})


def group_variants(configs):
    """{variant key: [indices into configs]}, in the order variants first appear, with the
    variants of one encoding together, encodings in COLORS' order. Runs scored on different
    evaluation text (another block size, corpus or evaluation version) are refused."""
    if any(c.get("provenance") is None for c in configs):
        raise UserError("some of these runs were trained before their evaluation was recorded (no 'provenance' in"
                        " config.json): their numbers are not comparable with new runs; retrain them")
    dtypes = sorted({str(c["provenance"].get("dtype")) for c in configs})  # (read_config fills in old runs')
    if len(dtypes) > 1:
        raise UserError(f"these runs were trained in different precisions ({' and '.join(dtypes)}; see --dtype):"
                        f" compare runs of one dtype only")
    prints = {json.dumps(c.get("provenance"), sort_keys=True) for c in configs}
    if len(prints) > 1:
        raise UserError("these runs were evaluated on different text or by different versions of the evaluation"
                        " (their config.json 'provenance' differs); compare runs of one kind only")
    groups, seeds = {}, {}
    for i, config in enumerate(configs):
        key = variant_key(config)
        if config["seed"] in seeds.setdefault(key, set()):
            raise UserError(f"two runs of one variant have seed {config['seed']} ({config['run_name']} is one):"
                            f" they would be counted twice; leave one out")
        seeds[key].add(config["seed"])
        groups.setdefault(key, []).append(i)
    order = list(COLORS)
    rank = {enc: order.index(enc) if enc in order else len(order) for enc in POS_ENCODINGS}
    return dict(sorted(groups.items(), key=lambda kv: rank[configs[kv[1][0]]["pos_encoding"]]))


def variant_labels(configs, groups):
    """{variant key: label}: the encoding's name plus the settings in which its variant differs
    from the others (each setting compared only among encodings that read it). An encoding's own
    option is named only where it is not train.py's default: plain RoPE beside a hybrid is "RoPE",
    not "RoPE in every layer". A training setting (the rate, the steps) is named on every variant
    when it differs, as its default is the config file's, which a run does not record."""
    firsts = {key: configs[idx[0]] for key, idx in groups.items()}
    keys = sorted({k for c in firsts.values() for k in c} - set(PER_SEED) - {"pos_encoding"})
    labels = {}
    for key, config in firsts.items():
        enc, parts = config["pos_encoding"], []
        for k in keys:
            readers = [c for c in firsts.values() if k not in options_not_read(c["pos_encoding"])]
            if k in options_not_read(enc) or len({json.dumps(c.get(k)) for c in readers}) < 2:
                continue
            if k in ENCODING_OPTIONS and config[k] == DEFAULTS[k]:
                continue
            if shown(config, k):
                parts.append(describe(k, config[k]))
        labels[key] = ", ".join([LABELS.get(enc, enc), *parts])
    return labels


# --- runs read back for measuring and reporting ---------------------------------


class Runs:
    """Finished runs read back, the one way the study modules read them: their configs (read_config),
    grouped into variants, runs that differ only in the seed (group_variants), and labelled
    (variant_labels); their one training length and data directory; their summaries and best-val
    checkpoints (ckpt.pt), read when first asked for.

    across_lengths: runs trained at several lengths (study.finetune's fine-tunes beside their
    sources) were scored on different text in training; they are grouped without it."""

    def __init__(self, run_dirs, what="runs", across_lengths=False):
        self.run_dirs = [Path(d) for d in run_dirs]
        if not self.run_dirs:
            raise UserError(f"no {what}")
        self.configs = [read_config(d) for d in self.run_dirs]
        grouped = self.configs if not across_lengths else [
            {**c, "provenance": {k: v for k, v in c["provenance"].items() if k != "eval_text"}} for c in self.configs]
        self.groups = group_variants(grouped)  # variant key -> indices of its runs
        self.labels = variant_labels(self.configs, self.groups)
        self._checkpoints, self._summaries = {}, None

    def block_size(self):
        """The training length all the runs share (a length axis is in multiples of it)."""
        blocks = sorted({c["block_size"] for c in self.configs})
        if len(blocks) > 1:
            raise UserError(f"the runs were trained with different block sizes ({', '.join(map(str, blocks))});"
                            f" read them separately")
        return blocks[0]

    def data_dir(self, given=None):
        """`given` (--data-dir), or else the one data directory the runs were trained on."""
        if given is not None:
            return Path(given)
        dirs = {c.get("data_dir") for c in self.configs}
        if None in dirs or len(dirs) > 1:
            raise UserError(f"the runs do not name one data directory ({', '.join(sorted(map(str, dirs)))});"
                            f" pass --data-dir")
        return Path(dirs.pop())

    def checkpoint(self, i):
        """Run i's best-val checkpoint, on the CPU (loaded once)."""
        if i not in self._checkpoints:
            self._checkpoints[i] = load_checkpoint(self.run_dirs[i] / "ckpt.pt", "cpu")
        return self._checkpoints[i]

    @property
    def summaries(self):
        if self._summaries is None:
            self._summaries = [read_json(d / "summary.json", "retrain the run") for d in self.run_dirs]
        return self._summaries

    def variant_of(self, i):
        return next(key for key, idx in self.groups.items() if i in idx)

    def encoding(self, key):
        return self.configs[self.groups[key][0]]["pos_encoding"]

    def runs(self, key):
        """The summaries of a variant's runs."""
        return [self.summaries[i] for i in self.groups[key]]

    def per_seed(self, key, field):
        return {s["seed"]: s[field] for s in self.runs(key)}
