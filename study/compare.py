"""
Train one model per positional encoding (same config, seed and data order), then write
the loss plots, a results table and one sample per encoding.

  python -m study.compare                                           # CPU config; rope, learned, none
  python -m study.compare config/shakespeare_char.toml --device cuda  # the GPU setting
  python -m study.compare --pos-encodings rope,none --max-iters 500 --seeds 1,2,3

Runs go to <out-dir>/<config name>/<encoding>_seed<seed>/; a run whose config.json
matches and that has finished (summary.json) is reused, not retrained, and one of a constant
learning rate is continued when the config asks for more steps. Writes plot.py's loss plots
into <plots-dir>, with results.md and samples.md.
"""

import time
from pathlib import Path

from common import comma_list, pick_device, positive, run_cli
from study.evaluate import SCALINGS, ablations_of, add_ablations_flag, evaluate_runs, format_table, write_outputs
from study.plot import plot_runs
from study.plot_rope import plot_rope
from study.probes import format_tables as format_probe_tables
from study.probes import probe_runs
from study.probes import write_outputs as write_probe_outputs
from study.report import write_report
from study.retrieval import STATIC, retrieval_runs
from study.retrieval import report as retrieval_report
from study.retrieval import write_outputs as write_retrieval_outputs
from study.runs import Runs, parse_variants, variant_key
from study.samples import collect_samples
from study.training import (add_study_flags, make_configs, parse_seeds, print_commands, train_runs,
                            undecided_variants)
from train_config import FIELD_TYPES, add_config_flags, build_parser, config_from_args, config_json

ARTICLE_ENCODINGS = ["rope", "learned", "none"]


def add_length_flags(parser):
    """--extrapolate and what it reads the runs with (study.compare, study.sweep)."""
    parser.add_argument("--extrapolate", action="store_true",
                        help="afterwards, evaluate every run at 1x, 2x, 4x, 8x its block size (study.evaluate), run"
                             " the attention-distance and copy probes (study.probes) and draw the RoPE decay picture"
                             " (study.plot_rope); task runs (--task): exact match at those lengths"
                             " (study.retrieval)")
    parser.add_argument("--extrapolate-methods", default=",".join(SCALINGS), metavar="METHODS",
                        help="with --extrapolate: the RoPE context-extension methods rope runs are also read with"
                             " (study.evaluate --rope-scaling): none (plain), linear, ntk, dynamic-ntk, yarn"
                             " (default: all)")
    add_ablations_flag(parser, "with --extrapolate: ")
    parser.add_argument("--far-mass", action="store_true",
                        help="with --extrapolate on task runs (--task): also each reading's attention mass on keys"
                             " block_size or more back at the answer positions, per layer and head (study.retrieval"
                             " --far-mass)")
    parser.add_argument("--readings-up-to", type=positive(float), default=None, metavar="MULTIPLE",
                        help="with --extrapolate on task runs: read the ablations only up to this multiple of the"
                             " training length (study.retrieval --readings-up-to; default: at every length)")


def length_options(args):
    """(methods, ablations) of add_length_flags; a typo is a one-line error."""
    return comma_list(args.extrapolate_methods, "--extrapolate-methods", choices=SCALINGS), ablations_of(args)


def measure_lengths(study, plots_dir, args, data_dir):
    """The length study on a study's runs: val loss at 1x-8x the block size (study.evaluate, with
    add_length_flags' methods and ablations), how far back the models read (study.probes), with
    their figures and JSON in plots_dir, and RoPE's decay picture; returns what write_report's
    tables need."""
    c, plots_dir = study.configs[0], Path(plots_dir)
    methods, ablations = length_options(args)
    t0 = time.time()
    results = evaluate_runs(study.run_dirs, scalings=methods, data_dir=data_dir, device=pick_device(c["device"]),
                            progress=c["progress"], ablations=ablations)
    write_outputs(results, plots_dir)
    plot_rope(c["n_embd"] // c["n_head"], c["rope_theta"], c["block_size"], plots_dir / "rope_decay.png")
    print(format_table(results))
    seconds, t0 = time.time() - t0, time.time()
    probes = probe_runs(study.run_dirs, data_dir=data_dir, device=pick_device(c["device"]), progress=c["progress"])
    write_probe_outputs(probes, plots_dir)
    print(format_probe_tables(probes))
    return {"results": results, "seconds": seconds, "probes": probes, "probe_seconds": time.time() - t0}


def measure_retrieval(study, plots_dir, args, data_dir):
    """--extrapolate for task runs: what they retrieve at 1x-8x the block size (study.retrieval), read with
    add_length_flags' methods (the static ones) and ablations, into plots_dir."""
    c = study.configs[0]
    methods, ablations = length_options(args)
    results = retrieval_runs(study.run_dirs, scalings=[m for m in methods if m in STATIC], data_dir=data_dir,
                             device=pick_device(c["device"]), progress=c["progress"], ablations=ablations,
                             far_mass=args.far_mass, readings_up_to=args.readings_up_to)
    print(retrieval_report(results))
    for path in write_retrieval_outputs(results, plots_dir):
        print(f"wrote {path}")


def main():
    parser = build_parser(__doc__)
    add_study_flags(parser, ",".join(ARTICLE_ENCODINGS))
    parser.add_argument("--seeds", default="1337", help="comma-separated seeds, one run per variant and seed (default: 1337)")
    parser.add_argument("--seeds-if-undecided", default="", metavar="SEEDS",
                        help="more seeds for the variants of every pair whose paired interval (val or test) contains 0"
                             " after --seeds, e.g. 1340,1341 (default: none)")
    add_length_flags(parser)
    parser.add_argument("--print-commands", action="store_true",
                        help="train nothing: print a train.py command for each run not finished yet, to run with any"
                             " scheduler (GNU parallel, a SLURM array, ...); the same command without this flag"
                             " then reuses them and writes the report")
    add_config_flags(parser, exclude=("pos_encoding", "run_name", "seed"))
    args = parser.parse_args()

    variants = parse_variants(args.pos_encodings, FIELD_TYPES)
    seeds = parse_seeds(args.seeds)
    length_options(args)  # (before any training)
    base = config_from_args(args)  # flags over the config file over the defaults, before per-run settings
    device = pick_device(base.device)  # (a device this machine lacks: one line now)
    more = parse_seeds(args.seeds_if_undecided, "--seeds-if-undecided") if args.seeds_if_undecided.strip() else []
    t0 = time.time()
    cfgs = make_configs(args, variants, seeds)
    if args.print_commands:
        then = "the same command without --print-commands writes the report" + (
            " (and first trains the seeds of --seeds-if-undecided that the pairs need)" if more else "")
        return print_commands(cfgs, args.config, args.overwrite, then)
    train_runs(cfgs, args.overwrite, args.jobs)
    study = Runs([Path(cfg.out_dir) / cfg.run_name for cfg in cfgs])
    if more:
        close = undecided_variants(study)
        extra = [cfg for cfg in make_configs(args, variants, more) if variant_key(config_json(cfg)) in close]
        print(f"{len(close)} variant(s) in pairs the seeds do not decide: {len(more)} more seed(s) each")
        train_runs(extra, args.overwrite, args.jobs)
        study = Runs([Path(cfg.out_dir) / cfg.run_name for cfg in cfgs + extra])
    samples = collect_samples(study, args.sample_tokens, base.data_dir, base.progress, device) \
        if base.task == "shakespeare" else None  # (a task model's samples are not text)
    lengths = None
    if args.extrapolate and base.task == "shakespeare":
        lengths = measure_lengths(study, args.plots_dir, args, base.data_dir)
    elif args.extrapolate:
        measure_retrieval(study, args.plots_dir, args, base.data_dir)
    for path in plot_runs(study.run_dirs, args.plots_dir):
        print(f"wrote {path}")
    write_report(study, args.plots_dir, f"Results: {Path(args.config).stem}", samples, args.sample_tokens, t0,
                 lengths=lengths)
    total = time.time() - t0
    print(f"total wall time: {total:.0f} s ({total / 60:.1f} min)")


if __name__ == "__main__":
    run_cli(main)
