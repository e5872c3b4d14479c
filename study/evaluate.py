"""
Length extrapolation: can a model trained on block_size characters read more? The val loss of
trained runs at longer context lengths, beside the baseline every extension method must beat:
the same model reading only its last block_size characters (a sliding window).

  python -m study.evaluate out/shakespeare_char_cpu                 # every run under it; 1x, 2x, 4x, 8x the block size
  python -m study.evaluate out/x/rope_seed1337 out/x/learned_seed1337 --lengths 64,128,256,512
  python -m study.evaluate out/x --rope-scaling none,yarn --yarn-beta 32,8

For an eval length L the val split is cut into non-overlapping windows of L + 1 tokens
(window i starts at token i*L; the last, partial window is dropped): the model reads the
first L tokens and predicts the last L, so every val token after the first is predicted
exactly once, and every model is measured on the same windows. Two numbers per length:
  whole window   the mean loss over all L positions (early positions have little context)
  past training  the mean over positions >= block_size: the part that actually extrapolates
and the mean loss at each position (loss_by_position.png).

Sliding-window baseline ("<variant>, sliding window"): the same targets, where each
prediction past position block_size sees its last block_size - s + 1 .. block_size
characters instead of the whole window (windows of block_size with stride s, each scoring
its last s positions; s = --sliding-stride, default block_size / 4, where the
per-position loss is flat). Positions before block_size are read as in the window.

RoPE runs are also evaluated with context-extension methods applied to the unchanged weights,
each with factor s = L / block_size (or --rope-scaling-factor):
  linear       position interpolation (Chen et al. 2023): positions divided by s
  ntk          NTK-aware scaling: base theta * s^(d/(d-2))
  dynamic-ntk  NTK with the factor of each position p: the smallest power of two >= (p+1) /
               block_size (1 inside the training length; steps of 2, where Peng et al. use
               s = (p+1) / block_size itself, and a KV cache would keep keys rotated with older bases). A causal model's loss at p depends only
               on tokens <= p, so this row is assembled exactly from static NTK passes at
               s = 1, 2, 4, ...
  yarn         NTK-by-parts + temperature (Peng et al. 2023), one row per --yarn-beta: a pair
               making r turns over block_size positions is interpolated fully if r < alpha, left
               alone if r > beta, ramped in between; q and k times 0.1 ln(s) + 1
A learned position table has no vectors past the training length: reported as n/a (its
sliding window is not). Seeds of one variant are averaged (mean ± std over seeds).

--ablations reads every run also with the inference-time ablations that apply to its encoding
(B = block_size, the training length; READINGS below):
  log-scale            query i's logits q.k/sqrt(d) times max(1, ln(i+1) / ln B), before any
                       additive bias (every encoding; the plain model inside B)
  clamp-16 ... -63     every distance beyond w scored as w: RoPE as ReRoPE (q_i.R(min(i-j, w))k_j),
                       T5 with the bucket of w (w = 16, 32, 48, 56, 63). w = B - 1 is the plain model
                       inside B; a smaller w also changes the reads there (see the 1x column)
  yarn-no-temperature  YaRN's ramp without its temperature, one row per --yarn-beta (RoPE)
  truncate             the model reads only the last B characters (study.retrieval; the loss's is the
                       sliding window row, which every run gets)
  mask, mask-sink      keys B or more back not attended in any layer (mask-sink: the first token kept)
  rope-mask            keys B or more back not attended in the RoPE layers of a RoPE/NoPE hybrid only
  nope-mask            keys B or more back not attended in a RoPE/NoPE hybrid's NoPE layers only (windowed
                       or not: whether the layers without position carry what lies far back)
  count-1, count-8     the clamp at B - 1 with only the K nearest keys beyond it in view (none: the K
                       nearest, unclamped); RoPE, T5 and none
  offset-2, offset-8   the clamp at B - 1 with the clamped keys' logits lowered by b (RoPE, T5)
  temp-1.5, temp-2     every logit times tau, before any additive bias (RoPE, T5 and none)

Each run is measured with its best-val checkpoint (ckpt.pt), the weights sample.py uses.
Writes <plots-dir>/extrapolation.png, loss_by_position.png, extrapolation.json and extrapolation.md (the
tables it prints; --from-json writes the figures and extrapolation.md again from the JSON alone).

Cost: every (run, method, length) pass covers the whole val split (~56k predicted tokens),
and the sliding window, which always covers the whole split, block_size / s of them. For the
CPU config's rope, learned and none at 3 seeds and 1x-8x, 140 s on 2 cores (measured);
--max-windows N evaluates an evenly spread subset of N windows per length instead.
"""

import argparse
import math
import re
import statistics
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from study.analysis import paired, verdict  # noqa: E402
from common import (UserError, announce_dtype, autocast, build_model, comma_list,  # noqa: E402
                    digest, eval_windows, load_meta, load_tokens, pick_device, positive, run_cli,
                    write_json, write_text)
from study.flags import measure_parser  # noqa: E402
from study.plot import by_family, encoding_styles, legend_below, length_axis, redraw, save  # noqa: E402
from study.runs import Runs, find_runs  # noqa: E402

SCALINGS = ("none", "linear", "ntk", "dynamic-ntk", "yarn")
SCALING_LABELS = {"linear": "PI", "ntk": "NTK", "dynamic-ntk": "dynamic NTK", "yarn": "YaRN"}
# inference-time ablations (why RoPE breaks; see the module's doc): log-length scaling of the logits (any
# encoding), a clamp of the distance at w (RoPE as ReRoPE, T5 with the bucket of w), YaRN's ramp alone (RoPE)
CLAMPS = (16, 32, 48, 56, 63)
ABLATIONS = ("log-scale", *(f"clamp-{w}" for w in CLAMPS), "yarn-no-temperature", "truncate", "mask", "mask-sink",
             "rope-mask", "nope-mask", "count-1", "count-8", "offset-2", "offset-8", "temp-1.5", "temp-2")
READ_BY = ("rope", "t5", "none")  # the encodings the readings of the mechanism study apply to (besides log-scale)
YARN_ALPHA, YARN_BETAS = 1.0, (32.0, 8.0)  # the paper's alpha and beta (set for Llama's 4096), and beta for 64
MARKERS = {"none": "o", "linear": "s", "ntk": "^", "dynamic-ntk": "v", "sliding": "x", "log": "d", "clamp": "<",
           "mask": ">", "rope": "p", "nope": "P", "count": "h", "offset": "H", "temp": "*", "truncate": "X"}
YARN_MARKERS = ("D", "P", "*", "h")  # one per --yarn-beta
DEFAULT_MULTIPLES = (1, 2, 4, 8)
PANELS_PER_ROW = 4  # the length figure wraps: a study with many variants read with the ablations has many panels
BATCH_TOKENS = 16384  # tokens per forward pass: 32 windows at 512, attention scores ~130 MB per layer


# --- one model ----------------------------------------------------------------


def position_limit(model):
    """Why the model cannot read windows longer than its limit, or (None, None) if it can."""
    max_len = model.transformer.pos.max_len
    if max_len is None:
        return None, None
    return max_len, f"{model.config.pos_encoding} table has {max_len} positions"


def token_losses(model, windows, batch_tokens=BATCH_TOKENS):
    """Cross-entropy at every position of every window, float64, shape (n_windows, L)."""
    L = windows.shape[1] - 1
    device = next(model.parameters()).device
    batch = max(1, batch_tokens // L)
    out = []
    with torch.inference_mode():
        for i in range(0, len(windows), batch):
            w = windows[i:i + batch].to(device)
            _, loss = model(w[:, :-1], w[:, 1:], reduction="none")  # (B, L): the loss at every position
            out.append(loss.double().cpu())
    return torch.cat(out)


def loss_by_position(model, windows, batch_tokens=BATCH_TOKENS):
    """Mean cross-entropy at each position 0..L-1 of the windows, float64, shape (L,).
    Its mean is the mean loss over all predicted tokens, since every window has L of them."""
    return token_losses(model, windows, batch_tokens).mean(0)


def sliding_window_losses(model, tokens, block, stride, batch_tokens=BATCH_TOKENS):
    """The loss of each token of `tokens` (n,) or (rows, n) predicted from (nearly) its last `block`
    tokens, float64, of the same shape; NaN for the first block - stride + 1, which no window scores.

    Windows of block + 1 tokens start every `stride` tokens; each scores only its last `stride`
    positions, whose contexts hold block - stride + 1 .. block tokens. A last window, flush with
    the end of the text, scores the targets the others left."""
    rows = tokens.view(-1, tokens.shape[-1])
    n = rows.shape[1]
    if n < block + 1:
        raise UserError(f"the text has {n} tokens, too few for a sliding window of {block} + 1")
    if not 1 <= stride <= block:
        raise UserError(f"the sliding-window stride must be in 1..{block}, got {stride}")
    starts = list(range(0, n - block, stride))
    if starts[-1] != n - block - 1:
        starts.append(n - block - 1)
    if len(starts) < 2:
        raise UserError(f"the text has {n} tokens, too few for sliding windows of {block} with stride {stride}")
    starts = torch.tensor(starts)
    windows = rows[:, starts[:, None] + torch.arange(block + 1)]  # (rows, n_windows, block + 1)
    losses = token_losses(model, windows.flatten(0, 1), batch_tokens).view(len(rows), len(starts), block)
    targets = starts[:, None] + torch.arange(1, block + 1)  # position p of a window predicts start + p + 1
    keep = torch.zeros_like(targets, dtype=torch.bool)
    keep[:-1, block - stride:] = True
    keep[-1, block - (starts[-1] - starts[-2]):] = True  # the last: only the targets the others left
    out = torch.full(rows.shape, float("nan"), dtype=torch.float64)
    out[:, targets[keep]] = losses[:, keep]
    return out.view(tokens.shape)


def default_stride(block):
    """The sliding window's default stride: contexts of 3/4 to all of block, where the per-position loss is flat."""
    return max(1, block // 4)


def sliding_baseline(head, sliding, targets, block):
    """Per-position curve of the sliding-window baseline on windows whose targets are `targets`
    (n, L): before position block, `head` (the model's own per-position loss there: the window
    is within its training length); from block on, the mean sliding-window loss of those targets."""
    return torch.cat([head[:min(len(head), block)], sliding[targets[:, block:]].mean(0)])


def dynamic_factor(position, block):
    """Dynamic NTK's factor at a 0-based position: the smallest power of two s with
    s * block >= position + 1 (the tokens read so far), so 1 inside the training length."""
    s = 1
    while s * block < position + 1:
        s *= 2
    return s


# --- many runs ----------------------------------------------------------------


def auto_factor(length, block_size):
    """The scaling that maps `length` onto the training length (never below 1: no squeezing)."""
    return max(1.0, length / block_size)


def ablation_settings(name, encoding, block, hybrid=False, windowed=False):
    """The GPTConfig overrides of ablation `name` (ABLATIONS) for a run of `encoding` trained on `block`
    characters (hybrid: a RoPE/NoPE hybrid; windowed: trained with rope_window), or None where it does not
    apply; "truncate" is no model setting but the length of input the reading keeps (study.retrieval). A
    windowed run's RoPE layers see no distance a clamp would move, so it is read without the clamps, the
    offsets and rope-mask (its window is already that), and its count readings mask without clamping."""
    kind, _, value = name.partition("-")
    clamps = encoding in ("rope", "t5") and not windowed
    if name == "log-scale":
        return {"log_scale_length": block}
    if kind == "clamp" and clamps:
        return {"clamp_distance": int(value)}
    if encoding not in READ_BY:
        return None
    if name == "truncate":
        return {"truncate": block}
    if name in ("mask", "mask-sink"):
        return {"attention_window": block, **({"attention_sink": True} if name == "mask-sink" else {})}
    if name == "rope-mask" and hybrid and not windowed:
        return {"rope_window": block}
    if name == "nope-mask" and hybrid:
        return {"nope_window": block}
    if kind == "count":
        return {**({"clamp_distance": block - 1} if clamps else {}), "attention_window": block + int(value)}
    if kind == "offset" and clamps:
        return {"clamp_distance": block - 1, "clamp_offset": float(value)}
    if kind == "temp":
        return {"logit_scale": float(value)}
    return None


def methods_of(encoding, scalings, yarn_betas, yarn_alpha, ablations=(), block=None, hybrid=False, windowed=False):
    """(row key, rope_scaling, GPTConfig overrides besides the factor) a run of `encoding` is evaluated
    with: RoPE's scalings, then the ablations that apply to the encoding (ablation_settings)."""
    out = [("none", "none", {})]
    if encoding == "rope":
        out = []
        for scaling in scalings:
            if scaling == "yarn":
                out += [(f"yarn-b{b:g}", "yarn", {"yarn_alpha": yarn_alpha, "yarn_beta": b}) for b in yarn_betas]
            else:
                out.append((scaling, scaling, {}))
    for name in ablations:
        if name == "yarn-no-temperature" and encoding == "rope":
            out += [(f"yarn-b{b:g}-no-temperature", "yarn", {"yarn_alpha": yarn_alpha, "yarn_beta": b,
                                                              "yarn_temperature": False}) for b in yarn_betas]
        elif (settings := ablation_settings(name, encoding, block, hybrid, windowed)) is not None:
            out.append((name, "none", settings))
    return out


def add_ablations_flag(parser, when=""):
    """--ablations (study.evaluate, study.retrieval, and study.compare's --extrapolate): `when` says when."""
    parser.add_argument("--ablations", default="", metavar="NAMES",
                        help=f"{when}comma-separated inference-time ablations each run is also read with, where they"
                             " apply: log-scale (query i's logits times max(1, ln(i+1)/ln block)), clamp-32 and"
                             " clamp-63 (distances beyond w scored as w: rope as ReRoPE, t5 with the bucket of w; at"
                             " block 64 clamp-32 also changes reads inside the window), yarn-no-temperature (rope:"
                             " YaRN's ramp alone) (default: none)")


def ablations_of(args):
    """add_ablations_flag's names; a typo is a one-line error."""
    return tuple(comma_list(args.ablations, "--ablations", choices=ABLATIONS)) if args.ablations else ()


def method_of(row):
    """A result row's reading: "none" (plain), "sliding", a RoPE scaling's or an ablation's key."""
    return row["name"].split("+", 1)[1] if "+" in row["name"] else "none"


def ablation_label(key, extra):
    """How a table names an ablation (ablation_settings' `extra`), or None for a scaling."""
    if "log_scale_length" in extra:
        return f"log scaling (n={extra['log_scale_length']})"
    if "truncate" in extra:
        return f"truncated to the last {extra['truncate']}"
    if "logit_scale" in extra:
        return f"logits × {extra['logit_scale']:g}"
    if "rope_window" in extra:
        return f"keys ≥ {extra['rope_window']} back masked in RoPE layers"
    if "nope_window" in extra:
        return f"keys ≥ {extra['nope_window']} back masked in NoPE layers"
    clamp = f"clamp at {extra['clamp_distance']}" if "clamp_distance" in extra else None
    if "attention_window" in extra:
        w = extra["attention_window"]
        if key.startswith("count-"):  # the window keeps K keys beyond the clamp (or beyond B - 1)
            k = int(key.split("-")[1])
            kept = f"{k} key{'s' * (k > 1)} ≥ {w - k} back kept, the rest masked"
            return f"{clamp}, {kept}" if clamp else kept
        return f"keys ≥ {w} back masked" + (", the first kept" if extra.get("attention_sink") else "")
    if "clamp_offset" in extra:
        return f"{clamp}, beyond it logits − {extra['clamp_offset']:g}"
    return clamp


def row_label(variant_label, key, scaling, extra, scaling_factor, block_size):
    ablation = ablation_label(key, extra)
    if ablation:
        return f"{variant_label} + {ablation}"
    if scaling == "none":
        return variant_label
    if scaling == "dynamic-ntk":
        return f"{variant_label} + dynamic NTK (s = 2^k)"
    s = f"L/{block_size}" if scaling_factor is None else f"{scaling_factor:g}"
    what = SCALING_LABELS[scaling]
    if scaling == "yarn":
        what += f" α={extra['yarn_alpha']:g}, β={extra['yarn_beta']:g}" + (
            ", no temperature" if extra.get("yarn_temperature") is False else "")
    return f"{variant_label} + {what} (s={s})"


def summarize(curves, block):
    """Mean ± std over runs of the whole-window and the past-training-length means of per-run curves."""
    whole = [c.mean().item() for c in curves]
    past = [c[block:].mean().item() for c in curves] if len(curves[0]) > block else None

    def spread(xs):
        return statistics.stdev(xs) if xs and len(xs) > 1 else None
    return {"loss": statistics.mean(whole), "std": spread(whole), "run_losses": whole,
            "past": statistics.mean(past) if past else None, "past_std": spread(past), "run_past": past,
            "loss_by_position": torch.stack(curves).mean(0).tolist()}


def evaluate_runs(run_dirs, lengths=None, scalings=SCALINGS, scaling_factor=None, data_dir=None,
                  max_windows=None, device="cpu", batch_tokens=BATCH_TOKENS, progress=True,
                  yarn_betas=YARN_BETAS, yarn_alpha=YARN_ALPHA, sliding_stride=None, ablations=()):
    """Evaluate runs at several context lengths; returns a JSON-ready dict (see write_outputs).

    run_dirs: run directories holding ckpt.pt. lengths: eval lengths (default 1x, 2x, 4x, 8x the
    block size). scalings: RoPE methods, any of SCALINGS. ablations: any of ABLATIONS, each run
    read with those that apply to its encoding. scaling_factor: None for s = L /
    block_size at each length, or a fixed s >= 1. data_dir: default the runs' own. max_windows:
    cap on windows per length (evenly spaced), default all. sliding_stride: default block / 4."""
    runs = Runs(run_dirs, "runs to evaluate")
    run_dirs, configs, groups, labels = runs.run_dirs, runs.configs, runs.groups, runs.labels
    t0 = time.time()
    scalings = list(dict.fromkeys(scalings))  # drop repeats, keep the order
    bad = [s for s in scalings if s not in SCALINGS]
    if bad or not scalings:
        raise UserError(f"unknown rope scaling {', '.join(bad) or '(none given)'}; choose from {', '.join(SCALINGS)}")
    if scaling_factor is not None and not scaling_factor >= 1:
        raise UserError(f"--rope-scaling-factor must be at least 1, got {scaling_factor}")
    if "yarn" in scalings and not (yarn_betas and 0 <= yarn_alpha < min(yarn_betas)):
        raise UserError(f"YaRN needs 0 <= alpha < beta, got alpha {yarn_alpha:g} and beta"
                        f" {', '.join(f'{b:g}' for b in yarn_betas) or '(none)'}")
    device = pick_device(device)
    ckpts = [runs.checkpoint(i) for i in range(len(run_dirs))]
    block = runs.block_size()
    stride = sliding_stride or default_stride(block)
    variant_of_run = {i: runs.variant_of(i) for i in range(len(run_dirs))}  # seeds of a variant: one row
    lengths = sorted(set(lengths or [m * block for m in DEFAULT_MULTIPLES]))
    if lengths[0] < 1:
        raise UserError(f"eval lengths must be positive, got {lengths[0]}")
    data_dir = runs.data_dir(data_dir)
    chars = load_meta(data_dir)["chars"]
    for ckpt, run_dir in zip(ckpts, run_dirs):
        if ckpt["vocab"] != chars:
            raise UserError(f"{run_dir} was trained on another vocabulary than {data_dir}; pass its --data-dir")
    tokens = load_tokens(data_dir, "val")
    windows = {L: eval_windows(tokens, L, max_windows) for L in lengths}  # the same for every model
    # which val token each window position predicts (position p of window i: token i*L + p + 1)
    targets = {L: eval_windows(torch.arange(len(tokens)), L, max_windows)[:, 1:] for L in lengths}

    plan = {}  # (run, length) -> [(row key, rope_scaling, overrides, factor or "dynamic")]
    for i, c in enumerate(configs):
        # a run trained with a RoPE scaling (a fine-tune) is read only as it was trained
        encoding = c["pos_encoding"] if c.get("rope_scaling", "none") == "none" else "rope, scaled"
        for L in lengths:
            plan[i, L] = [(key, scaling, extra, "dynamic" if scaling == "dynamic-ntk" else
                           (scaling_factor or auto_factor(L, block)) if scaling != "none" else None)
                          for key, scaling, extra in methods_of(encoding, scalings, yarn_betas, yarn_alpha,
                                                                ablations, block, c.get("nope_every", 0) > 0,
                                                                c.get("rope_window", 0) > 0)
                          if "truncate" not in extra]  # (the loss's truncation is the sliding window row)
    passes = {}  # (run, length, scaling, overrides, factor) -> per-position losses, or the n/a reason

    def static(i, L, scaling="none", extra=None, factor=None):
        """One pass over the windows of length L; scaled passes at factor 1 are the plain model."""
        if factor == 1.0:
            scaling, extra, factor = "none", None, None
        key = (i, L, scaling, tuple(sorted((extra or {}).items())), factor)
        if key not in passes:
            over = dict(extra or {}) if scaling == "none" else {
                "rope_scaling": scaling, "rope_scaling_factor": float(factor), **(extra or {})}
            model = build_model(ckpts[i], device, **over)  # RoPE scaling owns no weights: same checkpoint
            limit, reason = position_limit(model)
            if limit is not None and L > limit:
                passes[key] = reason
            else:
                passes[key] = loss_by_position(model, windows[L], batch_tokens)
        return passes[key]

    bar = tqdm(total=len(plan), desc="evaluate", unit="pass", disable=not progress, dynamic_ncols=True)
    per_row = {}  # (variant, row key) -> {"meta": ..., length: [per-run curve or reason]}
    for i, c in enumerate(configs):
        announce_dtype(c["provenance"]["dtype"], device)
        with autocast(c["provenance"]["dtype"], device):  # each run in the precision it was trained in
            plain_model = build_model(ckpts[i], device)
            sliding = sliding_window_losses(plain_model, tokens, block, stride, batch_tokens)
            for L in lengths:
                for key, scaling, extra, factor in plan[i, L]:
                    if factor == "dynamic":  # each position from the static pass at its own factor
                        factors = [dynamic_factor(p, block) for p in range(L)]
                        by_factor = {s: static(i, L, "ntk", None, float(s)) for s in sorted(set(factors))}
                        out = torch.stack([by_factor[s][p] for p, s in enumerate(factors)])
                    else:
                        out = static(i, L, scaling, extra, factor)
                    row = per_row.setdefault((variant_of_run[i], key), {"scaling": scaling, "extra": extra, "items": {}})
                    row["items"].setdefault(L, []).append((i, out, factor))
                # the baseline: positions before block as in the window (cut to block: any model reads
                # that), later ones from the sliding window, on the same targets
                head = (loss_by_position(plain_model, windows[L][:, :block + 1], batch_tokens) if L > block
                        else static(i, L))
                curve = sliding_baseline(head, sliding, targets[L], block)
                row = per_row.setdefault((variant_of_run[i], "sliding"), {"scaling": "sliding", "extra": {}, "items": {}})
                row["items"].setdefault(L, []).append((i, curve, None))
                bar.update(1)
    bar.close()

    rows = []
    order = list(groups)
    keys = list(dict.fromkeys(["none"] + [k for enc in ("rope", "t5", "none") for k, *_ in
                                          methods_of(enc, scalings, yarn_betas, yarn_alpha, ablations, block, True)]))
    keys.append("sliding")
    for (variant, key), row in sorted(per_row.items(), key=lambda kv: (order.index(kv[0][0]), keys.index(kv[0][1]))):
        first = groups[variant][0]
        base = re.sub(r"_seed\d+$", "", run_dirs[first].name)
        scaling = row["scaling"]
        label = (f"{labels[variant]}, sliding window ({block})" if key == "sliding" else
                 row_label(labels[variant], key, scaling, row["extra"], scaling_factor, block))
        out = {"name": base + ("" if key == "none" else f"+{key}"), "label": label,
               "encoding": configs[first]["pos_encoding"], "rope_scaling": scaling, "extra": row["extra"],
               "method": key,
               "runs": [str(run_dirs[i]) for i in groups[variant]], "results": []}
        for L, items in row["items"].items():
            factor = items[0][2]
            entry = {"length": L, "multiple": L / block, "factor": factor, "n_windows": len(windows[L])}
            reasons = [o for _, o, _ in items if isinstance(o, str)]
            if reasons:
                entry.update(loss=None, past=None, reason=reasons[0])
            else:
                entry.update(summarize([o for _, o, _ in items], block))
            out["results"].append(entry)
        rows.append(out)
    return {
        "block_size": block, "lengths": lengths, "scaling_factor": scaling_factor or "auto",
        "sliding_stride": stride, "yarn_alpha": yarn_alpha, "yarn_betas": list(yarn_betas),
        "data_dir": str(data_dir), "val_tokens": len(tokens),
        "windows": [{"length": L, "count": len(w), "stride": L, "max_windows": max_windows,
                     "predicted_tokens": w[:, 1:].numel(), "sha256": digest(w)} for L, w in windows.items()],
        "rows": rows,
        "device": device, "elapsed_s": round(time.time() - t0, 1),
    }


# --- outputs ------------------------------------------------------------------


def aligned(lines):
    """Rows of cells as text columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]


def cell(mean, std):
    return "—" if mean is None else f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def format_table(results):
    """Plain-text tables, one row per encoding / RoPE method / baseline, one column per eval length:
    the whole-window mean, the mean over positions past the training length, then over the positions
    inside it that have a full sliding window's context."""
    block = results["block_size"]
    header = [f"{L} ({L / block:g}x)" for L in results["lengths"]]
    notes, text = [], []
    for title, key in (("val loss, whole window", "loss"), (f"val loss at positions >= {block}", "past")):
        lines = [[title] + header]
        for row in results["rows"]:
            cells = [row["label"]]
            for r in row["results"]:
                if r["loss"] is None:
                    cells.append("n/a")
                    note = f"n/a: {r['reason']}"
                    notes += [note] if note not in notes else []
                else:
                    cells.append(cell(r[key], r[f"{key}_std"] if key == "past" else r["std"]))
            lines.append(cells)
        text += aligned(lines) + [""]
    text += inside_table(results)
    text += differences_from_baseline(results)
    windows = ", ".join(f"{w['count']} at {w['length']}" for w in results["windows"])
    return "\n".join(text + notes + [
        f"(nats/char on the val split's {results['val_tokens']:,} tokens; mean ± std over seeds; windows:"
        f" {windows}; trained on {block}; sliding window: stride {results['sliding_stride']}, so"
        f" {block - results['sliding_stride'] + 1}-{block} characters of context)"])


def inside_table(results):
    """Lines of a table: the mean loss over positions s..block_size - 1 (s: the sliding stride), inside the
    training length where the per-position loss is flat: what a longer window costs the positions training
    showed, which a scaled RoPE reads otherwise (from the seeds' mean curve, loss_by_position)."""
    block, s = results["block_size"], results["sliding_stride"]
    lines = [[f"val loss at positions {s}-{block - 1}, mean over seeds"]
             + [f"{L} ({L / block:g}x)" for L in results["lengths"]]]
    for row in results["rows"]:
        means = [None if r["loss"] is None else statistics.mean(r["loss_by_position"][s:block]) for r in row["results"]]
        lines.append([row["label"]] + ["n/a" if m is None else f"{m:.4f}" for m in means])
    return aligned(lines) + [""]


def differences_from_baseline(results):
    """Lines of a table: each row minus its own model's sliding window at positions >= block_size,
    paired by seed (the same runs, in the same order), mean [95% CI] and the verdict."""
    block = results["block_size"]
    baselines = {row["runs"][0]: row for row in results["rows"] if row["rope_scaling"] == "sliding"}
    lengths = [L for L in results["lengths"] if L > block]
    lines = [[f"minus its sliding window, positions >= {block}"] + [f"{L} ({L / block:g}x)" for L in lengths]]
    for row in results["rows"]:
        base = baselines.get(row["runs"][0])
        if row["rope_scaling"] == "sliding" or base is None or len(row["runs"]) < 2:
            continue
        cells = []
        for r, b in zip(row["results"], base["results"]):
            if r["length"] not in lengths:
                continue
            if r["loss"] is None:
                cells.append("n/a")
                continue
            d = paired(dict(enumerate(r["run_past"])), dict(enumerate(b["run_past"])))
            cells.append(f"{d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"
                         + ("" if verdict(d) != "undecided" else " ?"))
        lines.append([row["label"]] + cells)
    if len(lines) == 1 or not lengths:
        return []
    return aligned(lines) + ["(paired by seed, 95% CI; ?: the interval contains 0)", ""]


# RoPE's context-extension methods, told apart by colour and marker (all of them are RoPE: blue would not)
METHOD_COLORS = {"none": "tab:blue", "linear": "tab:red", "ntk": "tab:green", "dynamic-ntk": "tab:olive",
                 "yarn": ("tab:purple", "tab:brown", "tab:pink", "tab:cyan"), "sliding": "black"}
ABLATION_COLORS = {"log-scale": "tab:orange", "clamp-16": "tab:olive", "clamp-32": "tab:cyan", "clamp-48": "tab:blue",
                   "clamp-56": "tab:purple", "clamp-63": "tab:gray", "mask": "tab:green", "mask-sink": "tab:red",
                   "rope-mask": "tab:brown", "nope-mask": "sienna", "count-1": "gold", "count-8": "darkkhaki",
                   "offset-2": "navy", "offset-8": "teal", "temp-1.5": "magenta", "temp-2": "crimson",
                   "truncate": "black"}  # (YaRN's: dashed)


def row_styles(results):
    """{variant: (colour, dash)} of the variants read plainly, as plot.py's loss curves draw them."""
    plain = [r for r in results["rows"] if method_of(r) == "none"]
    return dict(zip(map(variant_of, plain), encoding_styles([r["encoding"] for r in plain])))


def variant_of(row):
    """The run group a row reads: its name without the method ("rope-rope_fraction=0.5+ntk")."""
    return row["name"].split("+")[0]


def method_marker(row, yarn_betas):
    """A reading's marker: one per RoPE method, per YaRN beta and per kind of ablation."""
    if row["rope_scaling"] == "yarn":
        return YARN_MARKERS[list(yarn_betas).index(row["extra"]["yarn_beta"]) % len(YARN_MARKERS)]
    return MARKERS.get(method_of(row).split("-")[0], MARKERS[row["rope_scaling"]])


def method_color(row, yarn_betas):
    key = method_of(row)
    if key in ABLATION_COLORS:
        return ABLATION_COLORS[key]
    color = METHOD_COLORS[row["rope_scaling"]]
    if row["rope_scaling"] == "yarn":
        color = color[list(yarn_betas).index(row["extra"]["yarn_beta"]) % len(color)]
    return color


def past_line(ax, row, block, **kw):
    """One row's loss at positions >= block against the window length, with its std over seeds."""
    done = [r for r in row["results"] if r["length"] > block and r.get("past") is not None]
    if done:
        stds = [r["past_std"] or 0.0 for r in done]
        ax.errorbar([r["length"] for r in done], [r["past"] for r in done], yerr=stds if any(stds) else None,
                    capsize=3, markersize=5, **kw)
    return bool(done)


def is_ablation(row):
    return is_ablation_key(method_of(row))


def is_ablation_key(key):
    """Whether a reading's key (methods_of) is one of the ablations, not a context-extension method."""
    return key in ABLATIONS or key.endswith("-no-temperature")


def panels_of(results):
    """[(title, kind, rows)]: a panel per family of encodings present ("family": each variant read
    plainly, beside its sliding window); if some RoPE variant was read with context-extension
    methods, one of the first such variant's methods ("methods"); and one per variant read with
    the ablations, beside its plain reading and its sliding window ("methods" too)."""
    rows = results["rows"]
    plain = [r for r in rows if method_of(r) == "none"]
    panels = [(title, "family", members) for title, members in by_family(plain, lambda r: r["encoding"])]
    scaled = [r for r in rows if method_of(r) not in ("none", "sliding") and not is_ablation(r)]
    if scaled:
        methods = [r for r in rows if variant_of(r) == variant_of(scaled[0]) and not is_ablation(r)]
        panels.append((f"{methods[0]['label']}, read with each method", "methods", methods))
    for variant in dict.fromkeys(variant_of(r) for r in rows if is_ablation(r)):
        ablated = [r for r in rows if variant_of(r) == variant and (is_ablation(r) or method_of(r) in ("none",
                                                                                                      "sliding"))]
        panels.append((f"{ablated[0]['label']}, read with each ablation", "methods", ablated))
    return panels


def method_label(row):
    if row["rope_scaling"] == "sliding":
        return "sliding window (the baseline)"
    return row["label"].split(" + ", 1)[1] if " + " in row["label"] else "plain"


def plot_extrapolation(results, path):
    """Val loss at positions past the training length against the window length: a panel per family
    of encodings, each variant read plainly (solid) beside its own sliding window (dotted: the
    baseline to beat), and a panel of RoPE's context-extension methods, told apart by colour. The
    whole-window means are in the tables."""
    block, lengths = results["block_size"], results["lengths"]
    sliding = {variant_of(r): r for r in results["rows"] if r["rope_scaling"] == "sliding"}
    panels, styles = panels_of(results), row_styles(results)
    cols = min(len(panels), PANELS_PER_ROW)
    rows_of_panels = math.ceil(len(panels) / cols)
    # one row is 5.2 inches high; each further row 7.5, room for the legends below the row above it
    fig, axes = plt.subplots(rows_of_panels, cols, figsize=(6.2 * cols, 7.5 * rows_of_panels - 2.3), dpi=120,
                             squeeze=False, gridspec_kw={"hspace": 0.85})
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, kind, rows) in zip(axes.flat, panels):
        for row in rows:
            if kind == "methods":
                dash = ":" if row["rope_scaling"] == "sliding" else "--" if method_of(row).endswith("temperature") else "-"
                past_line(ax, row, block, color=method_color(row, results["yarn_betas"]), marker=method_marker(row, results["yarn_betas"]),
                          linestyle=dash, label=method_label(row))
                continue
            color, dash = styles[variant_of(row)]
            if not past_line(ax, row, block, color=color, linestyle=dash, marker=method_marker(row, results["yarn_betas"]),
                             label=row["label"]):  # learned: no vectors past its table
                ax.plot([], [], color=color, linestyle=dash, label=f"{row['label']} (n/a past {block})")
            if variant_of(row) in sliding:
                past_line(ax, sliding[variant_of(row)], block, color=color, linestyle=":", linewidth=1.2,
                          marker="x", alpha=0.8)
        dotted = f"dotted: its sliding window ({block})"
        if kind == "family":
            ax.plot([], [], color="gray", linestyle=":", marker="x", label=dotted)
        length_axis(ax, lengths[1:], [f"{L}\n{L / block:g}x" for L in lengths[1:]], block,
                    "eval window length L (characters)")
        ax.set_xlim(lengths[1] / 1.3, lengths[-1] * 1.3)
        ax.set_ylabel(f"val loss at positions >= {block} (nats/char)")
        ax.set_title(textwrap.fill(title, 60), fontsize=10)  # (a long variant label would run into the next panel)
        legend_below(ax, last=(dotted,))
    fig.suptitle(f"Past the training length: models trained on {block} characters, val loss of the positions"
                 f" >= {block} of windows of length L; mean ± std over seeds", fontsize=10)
    save(fig, path)


def plot_loss_by_position(results, path):
    """A panel per family of encodings, each variant at the longest length it could be evaluated
    at (with a causal model the loss at position p only depends on the p tokens before it, so shorter
    windows show the same curve, cut) beside its sliding window (dotted)."""
    block, longest = results["block_size"], results["lengths"][-1]
    k = max(1, longest // 64)  # a long window leaves few windows per position: a running mean on top
    sliding = {variant_of(r): r for r in results["rows"] if r["rope_scaling"] == "sliding"}
    panels = [panel for panel in panels_of(results) if panel[1] == "family"]
    styles = row_styles(results)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), dpi=120, squeeze=False)
    for ax, (title, _, rows) in zip(axes[0], panels):
        for row in rows:
            for r, dotted in ((row, False), (sliding.get(variant_of(row)), True)):
                done = [x for x in (r or {}).get("results", []) if x["loss"] is not None]
                if not done:
                    continue
                y, (color, dash) = np.array(done[-1]["loss_by_position"]), styles[variant_of(row)]
                n = min(k, len(y))
                smooth = np.convolve(y, np.ones(n) / n, mode="valid")
                short = f" (n/a past {done[-1]['length']})" if done[-1]["length"] < longest else ""
                ax.plot(np.arange(len(smooth)) + (len(y) - len(smooth)) / 2, smooth, color=color,
                        linestyle=":" if dotted else dash, linewidth=1.2 if dotted else 1.6,
                        label=None if dotted else row["label"] + short)
        ax.plot([], [], color="gray", linestyle=":", label=f"dotted: its sliding window ({block})")
        ax.axvline(block, color="gray", linestyle="--", linewidth=1)
        ax.set_xlim(0, longest)
        ax.set_xlabel(f"position in the window (characters before the prediction; dashed: {block})")
        ax.set_ylabel("mean val loss at that position (nats/char)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        legend_below(ax)
    smoothed = f" (running mean over {k} positions)" if k > 1 else ""
    fig.suptitle(f"Val loss by position in a {longest}-character window{smoothed}: past position {block} a model"
                 f" sees more context than in training; its sliding window never does", fontsize=10)
    save(fig, path)


def draw_figures(results, plots_dir):
    """extrapolation.png and loss_by_position.png in plots_dir, from the results alone; their paths."""
    paths = [Path(plots_dir) / "extrapolation.png", Path(plots_dir) / "loss_by_position.png"]
    plot_extrapolation(results, paths[0])
    plot_loss_by_position(results, paths[1])
    return paths


def markdown(results):
    """extrapolation.md: format_table's tables."""
    return f"# Length extrapolation (study.evaluate)\n\n```text\n{format_table(results)}\n```\n"


def write_tables_and_figures(results, plots_dir):
    """extrapolation.md and the figures in plots_dir, from the results alone (what --from-json writes again);
    their paths."""
    path = Path(plots_dir) / "extrapolation.md"
    write_text(path, markdown(results))
    return draw_figures(results, plots_dir) + [path]


def write_outputs(results, plots_dir="plots", json_path=None):
    """Write the tables, the figures and the JSON (default <plots_dir>/extrapolation.json); returns their paths."""
    json_path = Path(json_path) if json_path else Path(plots_dir) / "extrapolation.json"
    write_json(json_path, results)
    return write_tables_and_figures(results, plots_dir) + [json_path]


# --- command line -------------------------------------------------------------


def parse_lengths(text):
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated integers, got {text!r}") from None
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"takes positive integers, got {text!r}")
    return lengths


def parse_factor(text):
    """--rope-scaling-factor: None for 'auto', else a number >= 1."""
    if text == "auto":
        return None
    try:
        value = positive(float)(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"takes 'auto' or a number >= 1: {e}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"takes 'auto' or a number >= 1 (it extends the context), got {text}")
    return value


def parse_betas(text):
    try:
        betas = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated numbers, got {text!r}") from None
    if not betas:
        raise argparse.ArgumentTypeError("takes at least one number")
    return betas


def main():
    parser = measure_parser(__doc__, "extrapolation.json", "the PNG files")
    parser.add_argument("--lengths", type=parse_lengths, default=None,
                        help="comma-separated eval lengths (default: 1x,2x,4x,8x the training block size)")
    parser.add_argument("--rope-scaling", default=",".join(SCALINGS),
                        help="comma-separated methods rope runs are evaluated with: none (plain RoPE), linear"
                             " (position interpolation), ntk, dynamic-ntk, yarn (default: all)")
    add_ablations_flag(parser)
    parser.add_argument("--rope-scaling-factor", type=parse_factor, default=None, metavar="F",
                        help="scaling factor s >= 1 of the static methods, or 'auto' for s = length / block size at"
                             " each length (default: auto)")
    parser.add_argument("--yarn-beta", type=parse_betas, default=list(YARN_BETAS), metavar="B[,B...]",
                        help="YaRN's beta, one yarn row each: pairs making more turns than beta over the training"
                             f" length are left alone (default: {','.join(f'{b:g}' for b in YARN_BETAS)}: the"
                             " paper's, set for 4096 tokens, and one for 64)")
    parser.add_argument("--yarn-alpha", type=float, default=YARN_ALPHA,
                        help=f"YaRN's alpha: pairs making fewer turns are interpolated fully (default: {YARN_ALPHA:g})")
    parser.add_argument("--sliding-stride", type=positive(int), default=None, metavar="S",
                        help="the sliding-window baseline's stride: each window of block size scores its last S"
                             " positions (default: block size / 4)")
    parser.add_argument("--max-windows", type=positive(int), default=None,
                        help="evaluate at most this many evenly spaced windows per length (default: all of them,"
                             " i.e. the whole val split)")
    parser.add_argument("--out-json", default=None, help="results file (default: <plots-dir>/extrapolation.json)")
    args = parser.parse_args()
    if args.from_json:
        return redraw(args.from_json, "extrapolation.json", "study.evaluate", ("rows", "lengths"), format_table,
                      write_tables_and_figures, args.plots_dir)
    scalings = [s.strip() for s in args.rope_scaling.split(",") if s.strip()]
    results = evaluate_runs(find_runs(args.runs), args.lengths, scalings, args.rope_scaling_factor, args.data_dir,
                            args.max_windows, args.device, progress=args.progress, yarn_betas=args.yarn_beta,
                            yarn_alpha=args.yarn_alpha, sliding_stride=args.sliding_stride,
                            ablations=ablations_of(args))
    print(format_table(results))
    for path in write_outputs(results, args.plots_dir, args.out_json):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
