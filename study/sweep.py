"""
Each encoding at its own best learning rate: a sweep, then seeds at each variant's best rate.

  python -m study.sweep       # the CPU config: every encoding and sinusoidal without its sqrt(d)
                              # scale, 3e-4 .. 4e-3, then 3 seeds at the best (python -m study lr_sweep)
  python -m study.sweep --pos-encodings rope,learned --learning-rates 1e-3,2e-3 --seeds 1337

1. Every variant is trained at every --learning-rates value with one seed (--sweep-seed),
   min_lr = rate / 10 as in the config files. A variant whose best final val loss sits at
   the lowest or highest rate gets the next rate beyond it (half or double), until the best
   is inside the range (at most --max-extensions times).
   The sweep's runs train one at a time: one that diverges (NaN loss) counts as the worst
   rate instead of stopping the others.
2. Each variant is trained with --seeds at its best rate (the sweep's run is reused for the
   sweep seed; --jobs applies here), and reported as study.compare reports a study: curves,
   results table, paired differences (with test-split verdicts: the rate was chosen on val),
   real-word shares of samples.

Runs go where study.compare puts them (out/<config name>/<variant>_seed<seed>/), so a run at the
config's own rate is the very run study.compare trains, and neither trains it twice.
Writes the sweep to <plots-dir>/lr_sweep.png and lr_sweep.json, and the study at the best rates
beside them (results.md with the sweep table first, samples.md, loss curves); `python -m study
sweep` writes plots/lr_sweep/.
"""

import math
import time
from pathlib import Path

from common import UserError, comma_list, read_json, run_cli, write_json
from study.compare import add_length_flags, length_options, measure_lengths
from study.report import write_report
from study.samples import collect_samples
from study.training import add_study_flags, make_configs, parse_seeds, train_runs
from study.plot import describe_model, legend_outside, panel_axes, panels_of, plot_runs, save, variant_styles
from study.runs import Runs, group_variants, parse_variants, read_config, variant_labels, variant_name
from train import Diverged
from train_config import FIELD_TYPES, add_config_flags, build_parser, config_from_args

RATES = "3e-4,6e-4,1e-3,2e-3,4e-3"
VARIANTS = "all,sinusoidal:sinusoidal_scale=false"


def parse_rates(text):
    rates = sorted(comma_list(text, "--learning-rates", float))
    if rates[0] <= 0 or not all(map(math.isfinite, rates)):
        raise UserError(f"--learning-rates takes positive finite numbers, got {text!r}")
    return rates


def final_val(cfg):
    """The run's final val loss; inf for a run that diverged (its loss became NaN or infinite)."""
    path = Path(cfg.out_dir) / cfg.run_name / "summary.json"
    return read_json(path, "retrain the run")["final_val_loss"] if path.exists() else math.inf


def train_tolerating_divergence(cfgs, overwrite):
    """Train cfgs one after another; a run that diverges is reported and left as the worst rate
    instead of stopping the sweep (the same command resumes it, and it diverges again)."""
    for cfg in cfgs:
        try:
            train_runs([cfg], overwrite)
        except Diverged as e:
            print(f"{cfg.run_name}: diverged ({e})")


def run_sweep(args, variants, rates, seed):
    """{variant index: {rate: config}}, every variant trained at every rate, edges extended."""
    sweep = {v: {} for v in range(len(variants))}
    todo = [(v, r) for v in sweep for r in rates]
    for extension in range(args.max_extensions + 1):
        cfgs = [make_configs(args, [variants[v]], [seed], [r])[0] for v, r in todo]
        train_tolerating_divergence(cfgs, args.overwrite)
        for (v, r), cfg in zip(todo, cfgs):
            sweep[v][r] = cfg
        todo = []
        for v, by_rate in sweep.items():
            tried = sorted(by_rate)
            best = min(tried, key=lambda r: final_val(by_rate[r]))
            if extension < args.max_extensions and best in (tried[0], tried[-1]):
                todo.append((v, best / 2 if best == tried[0] else best * 2))
                print(f"{variant_name(*variants[v])}: best rate at the edge of the sweep ({best:g}); adding {todo[-1][1]:g}")
        if not todo:
            break
    for v, by_rate in sweep.items():
        best = min(by_rate, key=lambda r: final_val(by_rate[r]))
        if best in (min(by_rate), max(by_rate)):
            print(f"warning: {variant_name(*variants[v])}'s best rate {best:g} is still at the edge of those tried")
    return sweep


def plot_sweep(table, path):
    """Final val loss against learning rate, one line per variant (a panel per family when there are
    many); its best rate circled."""
    fig, panels = panel_axes(panels_of(table, lambda row: row["encoding"]),
                             f"Learning-rate sweep, one seed ({table[0]['seed']}); circles: each variant's best rate\n"
                             f"{table[0]['describe']}", "peak learning rate (log scale; min_lr = rate / 10, cosine decay)")
    for ax, rows, family in panels:
        for row in rows:
            rates = sorted((r for r, loss in row["final_val_loss"].items() if math.isfinite(loss)), key=float)
            losses = [row["final_val_loss"][r] for r in rates]  # a diverged rate has no point
            x = [float(r) for r in rates]
            ax.plot(x, losses, color=row["color"], linestyle=row["linestyle"], marker="o", markersize=4,
                    label=row["label"])
            ax.plot([row["best_rate"]], [min(losses)], "o", markersize=11, markerfacecolor="none", color=row["color"])
        ax.set_xscale("log")
        ax.set_ylabel("final val loss (nats/char, whole val split)")
        legend_outside(ax, family=family)  # (inside, a dozen variants' legend covers curves)
    save(fig, path)


def sweep_table(args, variants, sweep, seed):
    """One row per variant: its final val loss at each rate, its best rate; labels and styles
    as in the other plots (labels without the rate, which is the x axis here)."""
    firsts = [next(iter(sweep[v].values())) for v in range(len(variants))]
    configs = [read_config(Path(c.out_dir) / c.run_name) for c in firsts]
    for c in configs:  # label by what differs besides the rate
        c["learning_rate"] = c["min_lr"] = None
    groups = group_variants(configs)
    labels, styles = variant_labels(configs, groups), variant_styles(configs, groups)
    key_of = {i: key for key, idx in groups.items() for i in idx}
    rows = []
    for v in range(len(variants)):
        losses = {f"{r:g}": final_val(cfg) for r, cfg in sorted(sweep[v].items())}
        best = min(sweep[v], key=lambda r: final_val(sweep[v][r]))
        color, dash = styles[key_of[v]]
        rows.append({"label": labels[key_of[v]], "encoding": variants[v][0], "settings": variants[v][1],
                     "final_val_loss": losses, "best_rate": best, "seed": seed, "color": color, "linestyle": dash,
                     "runs": {f"{r:g}": str(Path(cfg.out_dir) / cfg.run_name) for r, cfg in sorted(sweep[v].items())},
                     "describe": describe_model([configs[v]]) + f", {firsts[v].max_iters} steps"})
    return rows


def sweep_markdown(table):
    rates = sorted({r for row in table for r in row["final_val_loss"]}, key=float)
    lines = ["| variant | " + " | ".join(f"lr {r}" for r in rates) + " | best rate |",
             "|---|" + "---:|" * (len(rates) + 1)]
    for row in table:
        losses = row["final_val_loss"]
        best = min(losses.values())
        cells = ["" if r not in losses else "diverged" if not math.isfinite(losses[r])
                 else ("**{:.4f}**" if losses[r] == best else "{:.4f}").format(losses[r]) for r in rates]
        edge = " (at the edge)" if row["best_rate"] in (min(map(float, losses)), max(map(float, losses))) else ""
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {row['best_rate']:g}{edge} |")
    return "\n".join(lines)


def main():
    parser = build_parser(__doc__)
    add_study_flags(parser, VARIANTS)
    parser.add_argument("--learning-rates", type=parse_rates, default=parse_rates(RATES),
                        help=f"comma-separated peak learning rates of the sweep (default: {RATES})")
    parser.add_argument("--sweep-seed", type=int, default=1337, help="the seed of the sweep's runs (default: 1337)")
    parser.add_argument("--seeds", default="1337,1338,1339",
                        help="seeds trained at each variant's best rate (default: 1337,1338,1339)")
    parser.add_argument("--max-extensions", type=int, default=3,
                        help="how many times a variant whose best rate is at an edge gets one more rate beyond it"
                             " (default: 3; 0: never)")
    add_length_flags(parser)
    add_config_flags(parser, exclude=("pos_encoding", "run_name", "seed", "learning_rate", "min_lr"))
    args = parser.parse_args()
    if args.max_extensions < 0:
        raise UserError(f"--max-extensions must not be negative, got {args.max_extensions}")
    variants = parse_variants(args.pos_encodings, FIELD_TYPES)
    seeds = parse_seeds(args.seeds)
    length_options(args)  # (before any training)
    t0 = time.time()

    sweep = run_sweep(args, variants, args.learning_rates, args.sweep_seed)
    table = sweep_table(args, variants, sweep, args.sweep_seed)
    plots_dir = Path(args.plots_dir)
    plot_sweep(table, plots_dir / "lr_sweep.png")
    write_json(plots_dir / "lr_sweep.json", [{k: v for k, v in row.items() if k not in ("color", "linestyle")}
                                             for row in table])
    print(sweep_markdown(table))

    best = [cfg for v, row in enumerate(table) for cfg in make_configs(args, [variants[v]], seeds, [row["best_rate"]])]
    train_runs(best, args.overwrite, args.jobs)
    study = Runs([Path(cfg.out_dir) / cfg.run_name for cfg in best])
    intro = (f"## The sweep (seed {args.sweep_seed}; final val loss; best per variant in bold; "
             f"`{plots_dir / 'lr_sweep.png'}`)\n\n{sweep_markdown(table)}\n\n"
             f"## Each variant at its best rate, {len(seeds)} seed(s)\n")
    base = config_from_args(args)
    samples = collect_samples(study, args.sample_tokens, base.data_dir, base.progress)
    for path in plot_runs(study.run_dirs, plots_dir):
        print(f"wrote {path}")
    lengths = measure_lengths(study, plots_dir, args, base.data_dir) if args.extrapolate else None
    write_report(study, plots_dir, f"Learning-rate sweep: {Path(args.config).stem}", samples,
                 args.sample_tokens, t0=t0, intro=intro, lengths=lengths)
    print(f"wrote {plots_dir}/lr_sweep.png, lr_sweep.json and the study at the best rates beside them")


if __name__ == "__main__":
    run_cli(main)
