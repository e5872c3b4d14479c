"""
How fast is each positional encoding? Times training steps and sampling on this machine's CPU.

  python bench.py                                 # CPU config, all encodings
  python bench.py --pos-encodings rope,learned --json bench.json

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
import statistics
import time
from pathlib import Path

import torch

from common import (CPU_CONFIG, ArgumentParser, keep_freed_memory, load_meta, parse_encodings, positive, run_cli,
                    write_json)
from model import GPT
from train import TrainConfig, Trainer, read_config_file



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


def matmul_peak(sizes=(256, 512, 1024, 2048), repeats=5):
    """Best float32 matmul throughput (GFLOP/s) over a few square sizes, median of repeats."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2):
            a @ b  # warm-up
        reps = max(3, int(2e9 / (2 * n ** 3)))  # at least about 2 GFLOP per timing
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            times.append((time.perf_counter() - t0) / reps)
        best = max(best, 2 * n ** 3 / statistics.median(times) / 1e9)
    return best


def matmul_sizes(candidates=(256, 512, 1024, 2048)):
    """The square size at which this machine's matmul is fastest (one quick sweep)."""
    return (max(candidates, key=lambda n: matmul_peak((n,), repeats=3)),)


def time_training(cfg, encodings, vocab_size, steps, rounds, warmup, peak_sizes):
    """Seconds per step of each encoding in every round, and its median MFU: each round also
    measures the matmul peak, and a round's step times are divided by that round's peak, so slow
    and fast spells of the machine cancel out."""
    trainers = {enc: Trainer(TrainConfig(**{**vars(cfg), "pos_encoding": enc}), vocab_size, "cpu")
                for enc in encodings}
    for trainer in trainers.values():
        for _ in range(warmup):
            trainer.step()
    kernels = {enc: sdpa_kernel(trainer) for enc, trainer in trainers.items()}
    mc = next(iter(trainers.values())).model_config
    flops = flops_per_step(mc, cfg.batch_size, cfg.gradient_accumulation_steps)
    times, mfu, peaks = {enc: [] for enc in encodings}, {enc: [] for enc in encodings}, []
    for r in range(rounds):
        peaks.append(matmul_peak(peak_sizes, repeats=3))
        order = encodings[r % len(encodings):] + encodings[:r % len(encodings)]
        for enc in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                trainers[enc].step()
            times[enc].append((time.perf_counter() - t0) / steps)
            mfu[enc].append(flops / times[enc][-1] / 1e9 / peaks[-1])
    return times, {enc: statistics.median(m) for enc, m in mfu.items()}, peaks, mc, flops, kernels


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


def busy_seconds():
    """CPU seconds this machine has spent busy since boot, all processes together (Linux), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=CPU_CONFIG, help=f"TOML config (default: {CPU_CONFIG})")
    parser.add_argument("--pos-encodings", default="all", help="comma-separated encodings or 'all' (default: all)")
    parser.add_argument("--data-dir", default="data/shakespeare_char", help="prepared data for the batches")
    parser.add_argument("--steps", type=positive(int), default=10, help="optimizer steps per timed round (default: 10)")
    parser.add_argument("--rounds", type=positive(int), default=15, help="timed rounds per encoding (default: 15)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per encoding first (default: 10)")
    parser.add_argument("--samples", type=positive(int), default=10, help="sequences sampled as one batch (default: 10)")
    parser.add_argument("--sample-tokens", type=positive(int), default=500, help="characters per sample (default: 500)")
    parser.add_argument("--sample-repeats", type=positive(int), default=3,
                        help="timings of each sampling mode; the median is reported (default: 3)")
    parser.add_argument("--no-sampling", action="store_true", help="skip the sampling benchmark")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as train.py does
    encodings = parse_encodings(args.pos_encodings)
    cfg = TrainConfig(**{**read_config_file(args.config), "data_dir": args.data_dir, "progress": False})
    vocab_size = load_meta(args.data_dir)["vocab_size"]

    # CPU time that other processes take during the benchmark skews it; measured, not guessed from
    # the load average (which counts this benchmark's own threads)
    busy0, own0, wall0 = busy_seconds(), time.process_time(), time.perf_counter()
    peak_sizes = matmul_sizes()
    times, mfu, peaks, mc, flops, kernels = time_training(cfg, encodings, vocab_size, args.steps, args.rounds, args.warmup,
                                                 peak_sizes)
    ms = {enc: 1000 * statistics.median(t) for enc, t in times.items()}
    ratios = paired_ratios(times, "learned") if "learned" in times else {}
    peak = statistics.median(peaks)
    tokens = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps

    print(f"{Path(args.config).stem}: {mc.n_layer} layers, {mc.n_embd} wide, block {mc.block_size}, "
          f"batch {cfg.batch_size}; {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matmul peak: {peak:.1f} GFLOP/s (float32; median of {len(peaks)} rounds, {min(peaks):.0f}-{max(peaks):.0f});"
          f" model: {flops / 1e9:.2f} GFLOP per training step\n")
    print(f"{'encoding':<12}{'ms/iter':>9}{'tokens/s':>11}{'vs learned':>12}{'middle half':>15}{'GFLOP/s':>9}"
          f"{'MFU':>7}  attention kernel")
    results = {"config": args.config, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "matmul_peak_gflops": peak, "matmul_peak_by_round": peaks, "flops_per_step": flops,
               "training": {}, "sampling": {}}
    for enc in encodings:
        gflops = flops / (ms[enc] / 1000) / 1e9
        r = ratios.get(enc)  # None without learned
        rel, spread = (statistics.median(r), "{:.3f}-{:.3f}".format(*middle_half(r))) if r else (None, "-")
        results["training"][enc] = {"ms_per_iter": ms[enc], "ms_by_round": [1000 * t for t in times[enc]],
                                    "tokens_per_s": tokens / (ms[enc] / 1000), "relative_to_learned": rel,
                                    "sdpa_kernel": kernels[enc],
                                    "relative_to_learned_by_round": r, "gflops": gflops, "mfu": mfu[enc]}
        print(f"{enc:<12}{ms[enc]:>9.2f}{tokens / (ms[enc] / 1000):>11,.0f}"
              f"{f'{rel:.3f}x' if r else '-':>12}{spread:>15}{gflops:>9.1f}{100 * mfu[enc]:>6.0f}%  {kernels[enc]}")

    if not args.no_sampling:
        print(f"\nsampling {args.samples} x {args.sample_tokens} characters from '\\n' as one batch:")
        print(f"{'encoding':<12}{'no cache':>10}{'KV cache':>10}{'speed-up':>10}  same first block")
        for enc in encodings:
            r = time_sampling(mc, enc, args.samples, args.sample_tokens, args.sample_repeats)
            results["sampling"][enc] = r
            print(f"{enc:<12}{r['no_cache_s']:>9.2f}s{r['cache_s']:>9.2f}s{r['speedup']:>9.1f}x  {r['same_first_block']}")
    if busy0 is not None:
        other = max(0.0, ((busy_seconds() - busy0) - (time.process_time() - own0)) / (
            (time.perf_counter() - wall0) * (os.cpu_count() or 1)))  # clock ticks round: never below 0
        results["other_processes_cpu_share"] = other
        print(f"\nother processes used {100 * other:.0f}% of the CPU meanwhile"
              + (": they skew these figures" if other > 0.05 else ""))
    if args.json:
        write_json(args.json, results)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    run_cli(main)
