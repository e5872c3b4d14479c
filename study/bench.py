"""
How fast is each positional encoding? Times training steps and sampling on this machine's CPU.

  python -m study.bench                                 # CPU config, all encodings
  python -m study.bench --pos-encodings rope,learned --json bench.json
  python -m study.bench --pos-encodings learned --dtypes float32,bfloat16   # what bfloat16 buys here
  python -m study.bench --vs-nanogpt ../nanoGPT --dtypes float32,bfloat16    # whole runs against nanoGPT's
  python -m study.bench --parity out/bf16 out/shakespeare_char_cpu           # bfloat16 runs minus float32 ones

Training: after a warm-up, rounds of `--steps` optimizer steps per encoding, the encodings
interleaved (rotated each round) so that drift in the machine's speed hits all alike; the
median round gives ms/iter. "vs learned" is paired: each round's time over learned's time in
the same round, median over rounds, with the middle half of those ratios beside it (how far
to trust it). Peak: GFLOP/s of a square float32 matmul (of the fastest size) with the same
thread count, measured again in every round. Model FLOPs per step are counted from the
shapes (see `flops_per_step`); MFU = FLOPs per step / step time / that round's peak, median
over rounds. "attention kernel": the scaled_dot_product_attention kernel a training step runs.
Sampling: `--samples` sequences of `--sample-tokens` characters from "\\n" as one batch,
without (a sliding window) and with the KV cache (a context cut back to half a block when
full), alternately, median of `--sample-repeats`; the two must give the same tokens within
the first block. At the end it reports the share of the CPU that other processes took
meanwhile (from /proc/stat on Linux): above 5%, the figures are skewed.
"""

import argparse
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from common import (CPU_CONFIG, ArgumentParser, UserError, comma_list, cpu_bf16_note, cpu_has_bf16, keep_freed_memory, load_meta,
                    parse_encodings, positive, read_json, run_cli, write_json)
from study.analysis import paired, paired_table
from model import GPT
from study.runs import find_runs, group_variants, read_config, variant_labels
from train import Trainer
from train_config import TrainConfig, read_config_file



def flops_per_step(mc, batch_size, grad_accum=1):
    """Training FLOPs of one optimizer step, counted from the shapes.

    Per token, forward: 2 FLOPs per weight of every matmul (q/k/v, attention output, the two
    MLP layers: 12 C^2 per layer, plus the lm_head's C x vocab), and the attention itself:
    q.k^T and att.v, 2 x 2 x T x C per layer (the full T x T square, as nanoGPT/PaLM count
    it, though causal kernels may skip the masked half). Backward costs twice the forward.
    Element-wise work (LayerNorm, GELU, softmax, RoPE, AdamW) is not counted."""
    C, L, T = mc.n_embd, mc.n_layer, mc.block_size
    matmul_weights = L * 12 * C * C + C * mc.vocab_size
    forward_per_token = 2 * matmul_weights + L * 4 * T * C
    return 3 * forward_per_token * T * batch_size * grad_accum


def matmul_peak(sizes=(256, 512, 1024, 2048), repeats=5, dtype=torch.float32):
    """Best matmul throughput (GFLOP/s) in `dtype` over a few square sizes, median of repeats."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        t0 = time.perf_counter()
        a @ b  # a first timing, to size the repeats by
        reps = max(1, int(0.2 / (time.perf_counter() - t0)))  # about 0.2 s per timing
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            times.append((time.perf_counter() - t0) / reps)
        best = max(best, 2 * n ** 3 / statistics.median(times) / 1e9)
    return best


def matmul_sizes(dtype=torch.float32, candidates=(256, 512, 1024, 2048)):
    """The square size at which this machine's matmul in `dtype` is fastest (one quick sweep, which
    stops after a size whose measurement took over 4 s: an emulated bfloat16 matmul of 2048 takes
    about 7 s a call)."""
    peaks = {}
    for n in candidates:
        t0 = time.perf_counter()
        peaks[n] = matmul_peak((n,), repeats=3, dtype=dtype)
        if time.perf_counter() - t0 > 4:
            break
    return (max(peaks, key=peaks.get),)


DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def time_training(cfg, units, vocab_size, steps, rounds, warmup, peak_sizes):
    """Seconds per step of each (encoding, dtype) unit in every round, and its median MFU: each
    round also measures every dtype's matmul peak, and a round's step times are divided by that
    round's peak of their dtype, so slow and fast spells of the machine cancel out."""
    trainers = {(enc, dt): Trainer(TrainConfig(**{**vars(cfg), "pos_encoding": enc, "dtype": dt}), vocab_size, "cpu")
                for enc, dt in units}
    for trainer in trainers.values():
        for _ in range(warmup):
            trainer.step()
    kernels = {unit: sdpa_kernel(trainer) for unit, trainer in trainers.items()}
    mc = next(iter(trainers.values())).model_config
    flops = flops_per_step(mc, cfg.batch_size, cfg.gradient_accumulation_steps)
    times, mfu, peaks = {u: [] for u in units}, {u: [] for u in units}, {dt: [] for dt in peak_sizes}
    for r in range(rounds):
        for dt, sizes in peak_sizes.items():
            peaks[dt].append(matmul_peak(sizes, repeats=3, dtype=DTYPE[dt]))
        order = units[r % len(units):] + units[:r % len(units)]
        for unit in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                trainers[unit].step()
            times[unit].append((time.perf_counter() - t0) / steps)
            mfu[unit].append(flops / times[unit][-1] / 1e9 / peaks[unit[1]][-1])
    return times, {u: statistics.median(m) for u, m in mfu.items()}, peaks, mc, flops, kernels


def sdpa_kernel(trainer):
    """Which of scaled_dot_product_attention's CPU kernels a training step runs: "flash" (fused, no
    T x T matrix kept) or "math" (written-out attention). A bias that needs a gradient (T5, FIRE)
    gets the math path; a fixed one (ALiBi) and the causal mask alone get flash."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.step()
    names = {e.key for e in prof.key_averages()}
    kinds = [kind for kind, op in (("flash", "flash_attention"), ("math", "attention_math")) if any(op in n for n in names)]
    return "+".join(kinds) or "other"


def paired_ratios(times, ref):
    """Each encoding's round times over the reference's in the same rounds: a slow spell of the
    machine slows both sides of a ratio, where a ratio of two medians would mix spells."""
    return {enc: [a / b for a, b in zip(t, times[ref])] for enc, t in times.items()}


def middle_half(values):
    """The first and third quartiles (low, high) of values; a single value gives itself twice.
    "inclusive": quartiles within the data's range, as suits a handful of rounds."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def time_sampling(model_config, enc, samples, tokens, repeats=3, seed=0):
    """Seconds to sample with and without the KV cache: the median of `repeats` timings of each,
    taken alternately so that drift in the machine's speed hits both alike."""
    model = GPT(type(model_config)(**{**vars(model_config), "pos_encoding": enc}), seed=seed).eval()
    idx = torch.zeros(samples, 1, dtype=torch.long)  # "\n" is id 0 in the character vocabulary
    out, secs, block = {}, {False: [], True: []}, model_config.block_size
    for use_cache in (False, True):
        model.generate(idx, 2 * model_config.block_size, use_cache=use_cache)  # warm-up, crossing a cut
    for _ in range(repeats):
        for use_cache in (False, True):
            t0 = time.perf_counter()
            out[use_cache] = model.generate(idx, tokens, temperature=0.8, use_cache=use_cache,
                                            generator=torch.Generator().manual_seed(seed))
            secs[use_cache].append(time.perf_counter() - t0)
    no_cache, cache = statistics.median(secs[False]), statistics.median(secs[True])
    return {"no_cache_s": no_cache, "cache_s": cache, "speedup": no_cache / cache,
            # the two contexts differ once the text outgrows one block (model.generate); not before
            "same_first_block": bool(torch.equal(out[False][:, :block + 1], out[True][:, :block + 1]))}


def own_seconds():
    """CPU seconds of this process and of the children it waited for (--vs-nanogpt's runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def busy_seconds():
    """CPU seconds this machine has spent busy since boot, all processes together (Linux), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --- whole processes against nanoGPT ----------------------------------------------

ROOT = Path(__file__).resolve().parent.parent  # the repository
NANOGPT = ("nanoGPT", "float32")  # nanoGPT never autocasts on a CPU
NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py")
# nanoGPT's README recipe for a CPU, which config/shakespeare_char_cpu.toml follows (its other settings,
# rate, schedule, AdamW and gradient clipping, are the two config files' shared values)
NANOGPT_CPU = ("--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
               "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0")


def nanogpt_workdir(nanogpt, data_dir, root):
    """A working directory for nanoGPT's train.py: its code, and this project's prepared train and
    val splits (the same uint16 token files) as its data/shakespeare_char, which it reads relative
    to the working directory along with configurator.py."""
    nanogpt, work = Path(nanogpt), Path(root) / "nanogpt"
    missing = [f for f in NANOGPT_FILES if not (nanogpt / f).is_file()]
    if missing:
        raise UserError(f"--vs-nanogpt: {nanogpt} is not a nanoGPT checkout (no {missing[0]})")
    for f in NANOGPT_FILES:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(nanogpt / f, work / f)
    data = work / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(Path(data_dir) / f"{split}.bin", data / f"{split}.bin")
    # nanoGPT takes the vocabulary size from a pickle; written for it here, never read by this project
    (data / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": load_meta(data_dir)["vocab_size"]}))
    return work


def timed_process(command, cwd):
    """Wall seconds of one process run to its end; a failure is a UserError with its last line."""
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"{Path(command[1]).name} in {cwd} failed ({proc.returncode}): {last}")
    return wall, proc.stdout


def nanogpt_step_ms(stdout):
    """The median of the per-iteration times nanoGPT's train.py logs ("iter N: loss ..., time X ms"),
    after its first 10 (its evaluations fall into the iteration after them: the median skips them)."""
    ms = [float(m) for it, m in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", stdout) if int(it) >= 10]
    return statistics.median(ms) if ms else None


def wall_comparison(args, dtypes):
    """Whole processes, start to exit: this project's train.py (learned, the CPU config at
    --wall-steps steps, in each of `dtypes`) against nanoGPT's train.py on the same recipe (float32:
    nanoGPT never autocasts on a CPU), the programs alternated and their order rotated each round.
    Both evaluate every 250 steps: nanoGPT on 20 random batches of each split, this project on the
    whole val split and as much train text, then test for the final and best weights."""
    n = args.wall_steps
    with tempfile.TemporaryDirectory() as tmp:
        work = nanogpt_workdir(args.vs_nanogpt, args.data_dir, tmp)
        programs = [("train.py", dt) for dt in dtypes] + [NANOGPT]

        def command(program, r):
            if program == NANOGPT:
                return [sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_CPU,
                        f"--max_iters={n}", f"--lr_decay_iters={n}", f"--out_dir={tmp}/nanogpt_out{r}"], work
            dt = program[1]
            return [sys.executable, str(ROOT / "train.py"), str(ROOT / CPU_CONFIG), "--pos-encoding", "learned",
                    "--max-iters", str(n), "--lr-decay-iters", str(n), "--dtype", dt, "--data-dir",
                    str(Path(args.data_dir).resolve()), "--out-dir", tmp, "--run-name", f"{dt}_{r}",
                    "--no-progress"], ROOT

        walls, details = {p: [] for p in programs}, {p: [] for p in programs}
        for r in tqdm(range(args.wall_repeats), desc="rounds", dynamic_ncols=True):
            for program in programs[r % len(programs):] + programs[:r % len(programs)]:
                wall, stdout = timed_process(*command(program, r))
                walls[program].append(wall)
                if program == NANOGPT:
                    details[program].append({"ms_per_step": nanogpt_step_ms(stdout)})
                else:
                    s = read_json(Path(tmp) / f"{program[1]}_{r}" / "summary.json", "rerun")
                    details[program].append({"ms_per_step": s["ms_per_iter"], "train_s": s["train_s"],
                                             "eval_s": s["eval_s"], "rest_s": wall - s["train_s"] - s["eval_s"],
                                             "final_val_loss": s["final_val_loss"]})
    ref = walls[NANOGPT]
    print(f"\nwhole processes, {n} steps, learned, CPU config; median of {args.wall_repeats} alternated runs each")
    print(f"{'program':<20}{'wall s':>8}{'vs nanoGPT':>12}{'ms/step':>9}{'training':>15}{'evaluation':>15}"
          f"{'the rest':>15}{'final val':>11}")
    out = {"steps": n, "repeats": args.wall_repeats, "programs": {}}
    for p in programs:
        wall = statistics.median(walls[p])
        ratio = statistics.median(paired_ratios({"x": walls[p], "ref": ref}, "ref")["x"])
        med = {k: statistics.median(got) if (got := [d[k] for d in details[p] if d[k] is not None]) else None
               for k in details[p][0]}
        name = ", ".join(p)
        out["programs"][name] = {"wall_s": wall, "wall_s_by_round": walls[p], "relative_to_nanogpt": ratio, **med}
        cells = [f"{med[k]:.1f} s ({med[k] / wall:.0%})" if k in med else "-" for k in ("train_s", "eval_s", "rest_s")]
        val = f"{med['final_val_loss']:.4f}" if "final_val_loss" in med else "-"
        step = f"{med['ms_per_step']:.1f}" if med["ms_per_step"] is not None else "-"
        print(f"{name:<20}{wall:>8.1f}{ratio:>11.3f}x{step:>9}" + "".join(f"{c:>15}" for c in cells) + f"{val:>11}")
    print("(ms/step: ours is training time over steps, nanoGPT's the median of its logged iteration times; the"
          " rest: start-up, data, checkpoints)")
    return out


# --- parity of two dtypes ---------------------------------------------------------


def parity(dirs, tolerance=0.01):
    """Markdown: the runs under dirs[0] minus those under dirs[1] (say bfloat16 and float32), paired
    by variant and seed, final val and test loss with 95% intervals; parity holds for a variant when
    both intervals lie within ±tolerance. Each side is one dtype, evaluated in it, on the same text."""
    sides = []
    for d in dirs:
        runs = find_runs([d])
        configs = [read_config(r) for r in runs]
        groups = group_variants(configs)  # one dtype and one evaluated text per side
        summaries = [read_json(r / "summary.json", "finish or retrain the run") for r in runs]
        values = {key: {split: {configs[i]["seed"]: summaries[i][f"final_{split}_loss"] for i in idx}
                        for split in ("val", "test")} for key, idx in groups.items()}
        sides.append((configs[0]["provenance"], values, variant_labels(configs, groups)))
    (prov_a, values_a, labels_a), (prov_b, values_b, _) = sides
    if prov_a["dtype"] == prov_b["dtype"] or {**prov_a, "dtype": 0} != {**prov_b, "dtype": 0}:
        raise UserError("--parity needs runs of two dtypes, otherwise evaluated alike (the same provenance but"
                        f" its dtype); got {prov_a} and {prov_b}")
    keys = [k for k in values_a if k in values_b]
    if not keys:
        raise UserError(f"--parity: no variant has runs under both {dirs[0]} and {dirs[1]}")
    values = {(side, k): v[k] for k in keys for side, v in (("a", values_a), ("b", values_b))}
    labels = {(side, k): f"{labels_a[k]}, {prov['dtype']}" for k in keys
              for side, prov in (("a", prov_a), ("b", prov_b))}
    table = paired_table(values, [(("a", k), ("b", k)) for k in keys], labels)
    lines = [f"| variant | seeds | val and test intervals within ±{tolerance} |", "|---|---:|---|"]
    for k in keys:
        results = [paired(values["a", k][s], values["b", k][s]) for s in ("val", "test")]
        holds = all(r["ci"] and -tolerance <= r["ci"][0] and r["ci"][1] <= tolerance for r in results)
        lines.append(f"| {labels_a[k]} | {len(results[0]['seeds'])} | {'yes' if holds else 'no'} |")
    return table + "\n\n" + "\n".join(lines)


def time_steps(args, cfg, encodings, dtypes, results):
    """The step timing (see the module's docstring): prints its table, fills results."""
    vocab_size = load_meta(args.data_dir)["vocab_size"]
    units = [(enc, dt) for dt in dtypes for enc in encodings]
    peak_sizes = {dt: matmul_sizes(DTYPE[dt]) for dt in dtypes}
    times, mfu, peaks, mc, flops, kernels = time_training(cfg, units, vocab_size, args.steps, args.rounds,
                                                          args.warmup, peak_sizes)
    tokens = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    print(f"{Path(args.config).stem}: {mc.n_layer} layers, {mc.n_embd} wide, block {mc.block_size}, "
          f"batch {cfg.batch_size}; {torch.get_num_threads()} threads, torch {torch.__version__}")
    for dt, p in peaks.items():
        print(f"matmul peak, {dt}: {statistics.median(p):.1f} GFLOP/s (median of {len(p)} rounds,"
              f" {min(p):.0f}-{max(p):.0f})")
    print(f"model: {flops / 1e9:.2f} GFLOP per training step\n")
    print(f"{'encoding':<12}{'dtype':<10}{'ms/iter':>9}{'tokens/s':>11}{'vs learned':>12}{'middle half':>15}"
          f"{'vs float32':>12}{'GFLOP/s':>9}{'MFU':>7}  attention kernel")
    results.update(flops_per_step=flops, matmul_peak_gflops={dt: statistics.median(p) for dt, p in peaks.items()},
                   matmul_peak_by_round=peaks, training={dt: {} for dt in dtypes})
    for enc, dt in units:
        t = times[enc, dt]
        ms = 1000 * statistics.median(t)
        # paired by round: against learned in the same dtype, and against the same encoding in float32
        r = paired_ratios({"x": t, "ref": times["learned", dt]}, "ref")["x"] if ("learned", dt) in times else None
        rel, spread = (statistics.median(r), "{:.3f}-{:.3f}".format(*middle_half(r))) if r else (None, "-")
        f32 = (statistics.median(paired_ratios({"x": t, "ref": times[enc, "float32"]}, "ref")["x"])
               if dt != "float32" and (enc, "float32") in times else None)
        gflops = flops / (ms / 1000) / 1e9
        results["training"][dt][enc] = {
            "ms_per_iter": ms, "ms_by_round": [1000 * x for x in t], "tokens_per_s": tokens / (ms / 1000),
            "relative_to_learned": rel, "relative_to_learned_by_round": r, "relative_to_float32": f32,
            "sdpa_kernel": kernels[enc, dt], "gflops": gflops, "mfu": mfu[enc, dt]}
        print(f"{enc:<12}{dt:<10}{ms:>9.2f}{tokens / (ms / 1000):>11,.0f}{f'{rel:.3f}x' if r else '-':>12}"
              f"{spread:>15}{f'{f32:.3f}x' if f32 else '-':>12}{gflops:>9.1f}{100 * mfu[enc, dt]:>6.0f}%"
              f"  {kernels[enc, dt]}")
    return mc


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=CPU_CONFIG, help=f"TOML config (default: {CPU_CONFIG})")
    parser.add_argument("--pos-encodings", default="all", help="comma-separated encodings or 'all' (default: all)")
    parser.add_argument("--dtypes", default="float32",
                        help="comma-separated dtypes to time, float32 and/or bfloat16 (train.py --dtype); each"
                             " with its own matmul peak (default: float32)")
    parser.add_argument("--data-dir", default="data/shakespeare_char", help="prepared data for the batches")
    parser.add_argument("--steps", type=positive(int), default=10, help="optimizer steps per timed round (default: 10)")
    parser.add_argument("--rounds", type=positive(int), default=15, help="timed rounds per encoding (default: 15)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per encoding first (default: 10)")
    parser.add_argument("--samples", type=positive(int), default=10, help="sequences sampled as one batch (default: 10)")
    parser.add_argument("--sample-tokens", type=positive(int), default=500, help="characters per sample (default: 500)")
    parser.add_argument("--sample-repeats", type=positive(int), default=3,
                        help="timings of each sampling mode; the median is reported (default: 3)")
    parser.add_argument("--no-sampling", action="store_true", help="skip the sampling benchmark")
    parser.add_argument("--vs-nanogpt", metavar="DIR",
                        help="instead of timing steps: whole train.py processes (learned, each of --dtypes) against"
                             " nanoGPT's train.py in DIR (a checkout of karpathy/nanoGPT) on the same recipe, float32,"
                             " alternated; wall time, and where ours goes (training, evaluation, the rest)")
    parser.add_argument("--wall-steps", type=positive(int), default=1000,
                        help="--vs-nanogpt: steps per run, evaluated every 250 as both recipes do (default: 1000)")
    parser.add_argument("--wall-repeats", type=positive(int), default=3,
                        help="--vs-nanogpt: runs of each program; medians are reported (default: 3)")
    parser.add_argument("--parity", nargs=2, metavar=("RUNS_A", "RUNS_B"),
                        help="instead of timing: the runs under RUNS_A minus those under RUNS_B (two dtypes, for"
                             " example out/bf16 and out/shakespeare_char_cpu), paired by variant and seed, final val"
                             " and test loss with 95%% intervals, printed as markdown; nothing is trained")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.parity:
        print(parity(args.parity))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as train.py does
    encodings = parse_encodings(args.pos_encodings)
    dtypes = comma_list(args.dtypes, "--dtypes", choices=DTYPE)
    if "bfloat16" in dtypes and (note := cpu_bf16_note("bfloat16", "cpu")):
        print(note)
    cfg = TrainConfig(**{**read_config_file(args.config), "data_dir": args.data_dir, "progress": False})
    load_meta(args.data_dir)  # no prepared data: one line now

    # CPU time that other processes take during the benchmark skews it; measured, not guessed from
    # the load average (which counts this benchmark's own threads)
    busy0, own0, wall0 = busy_seconds(), own_seconds(), time.perf_counter()
    results = {"config": args.config, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "cpu_bf16_instructions": cpu_has_bf16()}
    if args.vs_nanogpt:
        results["whole_process"] = wall_comparison(args, dtypes)
    else:
        mc = time_steps(args, cfg, encodings, dtypes, results)
        if not args.no_sampling:
            results["sampling"] = {}
            print(f"\nsampling {args.samples} x {args.sample_tokens} characters from '\\n' as one batch (float32):")
            print(f"{'encoding':<12}{'no cache':>10}{'KV cache':>10}{'speed-up':>10}  same first block")
            for enc in encodings:
                r = time_sampling(mc, enc, args.samples, args.sample_tokens, args.sample_repeats)
                results["sampling"][enc] = r
                print(f"{enc:<12}{r['no_cache_s']:>9.2f}s{r['cache_s']:>9.2f}s{r['speedup']:>9.1f}x"
                      f"  {r['same_first_block']}")
    if busy0 is not None:
        other = max(0.0, ((busy_seconds() - busy0) - (own_seconds() - own0)) / (
            (time.perf_counter() - wall0) * (os.cpu_count() or 1)))  # clock ticks round: never below 0
        results["other_processes_cpu_share"] = other
        print(f"\nother processes used {100 * other:.0f}% of the CPU meanwhile"
              + (": they skew these figures" if other > 0.05 else ""))
    if args.json:
        write_json(args.json, results)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    run_cli(main)
