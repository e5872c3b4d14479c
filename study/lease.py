"""
A study inside a short lease of a machine (a GPU lent for minutes): measure first, then train seed by
seed, and archive each seed's run records as soon as it finishes, so that a command cut off at its
time limit still returns every seed it finished.

  python -m study.lease config/shakespeare_char.toml --device cuda --budget-s 520 --archive-dir $OUT \
      --plots-dir plots/gpu
  python -m study.lease --seeds 1 --max-iters 50 --probe-steps 10      # the same path, tiny, on a CPU

1. Probe: the first seed's variants trained side by side for --probe-steps steps (evaluated as often
   as the real runs, into <out-dir>/lease-probe/), then the projected time of one seed's runs.
2. Seed by seed, while the projection fits in what is left of --budget-s: the seed's variants side
   by side (--jobs; default: all of them at once), their samples, then
   <archive-dir>/<config>-seed<seed>.tar.gz with each run's config.json, metrics.csv, summary.json
   and samples.json (never a checkpoint).
3. The report of the seeds trained, as study.compare writes it (loss curves with each minimum
   marked, results.md with paired differences and where each val curve turns, samples.md), into
   --plots-dir, archived as <archive-dir>/<config>-report.tar.gz.
"""

import tarfile
import time
from dataclasses import replace
from pathlib import Path

from common import UserError, pick_device, positive, run_cli
from study.plot import plot_runs
from study.report import write_report
from study.runs import Runs, parse_variants
from study.samples import collect_samples
from study.training import add_study_flags, make_configs, parse_seeds, run_group, train_runs
from train_config import FIELD_TYPES, add_config_flags, build_parser, config_from_args

RECORD_FILES = ("config.json", "metrics.csv", "summary.json", "samples.json")


def archive(path, files, root):
    """A .tar.gz of files, named relative to root; written to a temporary name first, so that a
    cut-off command leaves no half archive under the real one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=str(Path(f).relative_to(root)))
    partial.replace(path)
    print(f"wrote {path}", flush=True)


def records(run_dirs):
    """The record files of runs (what records/ keeps of them)."""
    return [Path(d) / name for d in run_dirs for name in RECORD_FILES if (Path(d) / name).exists()]


def projected_seconds(summary, cfg, probe_cfg):
    """A run's seconds at cfg, from its probe's summary: its fixed cost (start-up, data, compiling),
    the training steps scaled by max_iters, the evaluations by their count (the test split's one
    counted as one more)."""
    evals = lambda c: c.max_iters // c.eval_interval + 2  # noqa: E731  (step 0 .. max_iters, and the test split)
    fixed = summary["wall_s"] - summary["train_s"] - summary["eval_s"]
    return (fixed + summary["train_s"] * cfg.max_iters / probe_cfg.max_iters
            + summary["eval_s"] * evals(cfg) / evals(probe_cfg))


def probe(cfgs, steps, jobs):
    """Seconds one seed's runs take side by side, projected from `steps` steps of each (trained into
    <out-dir>/lease-probe/, evaluated as often as the real runs)."""
    short = [replace(c, max_iters=steps, eval_interval=min(c.eval_interval, steps), run_name=f"lease-probe/{c.run_name}",
                     progress=False) for c in cfgs]
    t0 = time.time()
    summaries = train_runs(short, overwrite=True, jobs=jobs)
    wall = time.time() - t0
    start = wall - max(s["wall_s"] for s in summaries)  # the processes' own start-up
    projected = start + max(projected_seconds(s, c, p) for s, c, p in zip(summaries, cfgs, short))
    ms = ", ".join(f"{s['pos_encoding']} {s['ms_per_iter']:.0f}" for s in summaries)
    print(f"probe: {steps} steps of {len(cfgs)} runs side by side in {wall:.0f} s (ms/step: {ms});"
          f" one seed of {cfgs[0].max_iters} steps: about {projected:.0f} s", flush=True)
    return projected


def main():
    parser = build_parser(__doc__)
    add_study_flags(parser, "rope,learned,none")
    parser.set_defaults(jobs=None)
    parser.add_argument("--seeds", default="1337,1338,1339", help="seeds, trained one after another (default: 1337,"
                                                                   "1338,1339)")
    parser.add_argument("--budget-s", type=positive(float), default=None,
                        help="seconds this command may take in all: a seed whose projected time no longer fits is"
                             " not started (default: no limit)")
    parser.add_argument("--probe-steps", type=int, default=300,
                        help="steps of the timing probe before the seeds (0: no probe, and no budget check)")
    parser.add_argument("--reserve-s", type=float, default=30.0,
                        help="seconds of --budget-s kept for the samples, the report and the archives at the end"
                             " (default: 30)")
    parser.add_argument("--archive-dir", default=None,
                        help="where each seed's records and the report are archived as they finish (default: none)")
    add_config_flags(parser, exclude=("pos_encoding", "run_name", "seed"))
    args = parser.parse_args()
    t0 = time.time()
    variants = parse_variants(args.pos_encodings, FIELD_TYPES)
    seeds = parse_seeds(args.seeds)
    base = config_from_args(args)
    device = pick_device(base.device)
    jobs = args.jobs or len(variants)
    if args.probe_steps < 0 or (args.probe_steps == 0 and args.budget_s):
        raise UserError("--probe-steps must be positive to check --budget-s (0: no probe, no budget)")
    per_seed = probe(make_configs(args, variants, seeds[:1]), args.probe_steps, jobs) if args.probe_steps else 0.0
    name, root, done = run_group(args.config, base), Path(base.out_dir), []  # (the archives: the runs' folder)
    text = base.task == "shakespeare"  # (a task model's samples are not text)
    for seed in seeds:
        left = None if args.budget_s is None else args.budget_s - args.reserve_s - (time.time() - t0)
        if left is not None and per_seed > left:
            print(f"seed {seed}: projected {per_seed:.0f} s, {left:.0f} s left: not started (the same command with"
                  f" --seeds {','.join(map(str, seeds[seeds.index(seed):]))} trains the rest)", flush=True)
            break
        cfgs = make_configs(args, variants, [seed])
        train_runs(cfgs, args.overwrite, jobs)
        run_dirs = [root / c.run_name for c in cfgs]
        if text:
            collect_samples(Runs(run_dirs), args.sample_tokens, base.data_dir, base.progress, device)
        done += run_dirs
        if args.archive_dir:
            archive(Path(args.archive_dir) / f"{name}-seed{seed}.tar.gz", records(run_dirs), root)
    if not done:
        raise UserError("no seed fits in --budget-s: raise it, or train fewer steps")
    study = Runs(done)
    for path in plot_runs(study.run_dirs, args.plots_dir):
        print(f"wrote {path}")
    samples = collect_samples(study, args.sample_tokens, base.data_dir, base.progress, device) if text else None
    write_report(study, args.plots_dir, f"Results: {name}", samples, args.sample_tokens, t0)
    if args.archive_dir:
        plots = Path(args.plots_dir)
        archive(Path(args.archive_dir) / f"{name}-report.tar.gz", [p for p in plots.iterdir() if p.is_file()], plots)
    print(f"total wall time: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    run_cli(main)
