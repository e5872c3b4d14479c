"""
Plot train and val loss curves of finished runs, one line per positional encoding.

  python plot.py                                   # every run under out/
  python plot.py out/compare/rope_seed1337 out/compare/learned_seed1337 --plots-dir plots

Writes <plots-dir>/train_loss.png and val_loss.png. Several runs of one encoding
(different seeds) are drawn as their mean with a shaded min-max band.
"""

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import ArgumentParser, UserError, atomic_write, read_json, read_metrics, run_cli  # noqa: E402
from train import NOT_RESULTS, differing_keys  # noqa: E402

# The reference article's colours: RoPE blue, learned orange, none green.
COLORS = {"rope": "tab:blue", "learned": "tab:orange", "none": "tab:green",
          "sinusoidal": "tab:red", "alibi": "tab:purple"}
LABELS = {"rope": "RoPE", "learned": "learned", "none": "none", "sinusoidal": "sinusoidal", "alibi": "ALiBi"}


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


def read_run(run_dir):
    config = read_json(run_dir / "config.json", "is this a run directory written by train.py?")
    rows = [{k: float(v) for k, v in row.items()} for row in read_metrics(run_dir / "metrics.csv")]
    if not rows:
        raise UserError(f"{run_dir}/metrics.csv has no rows yet")
    return config, {k: np.array([r[k] for r in rows]) for k in rows[0]}


# what may differ between the runs drawn in one figure
PER_RUN = ("pos_encoding", "seed", "run_name", "out_dir", *NOT_RESULTS)


def group_by_encoding(runs):
    """{encoding: [(config, metrics), ...]} in the order encodings first appear. All runs must
    share one config but for the encoding and the seed: curves of different models or
    schedules are not averaged together."""
    groups = defaultdict(list)
    reference = None
    for run in runs:
        config, metrics = read_run(run)
        if reference is None:
            reference = (run, config)
        elif keys := differing_keys(config, reference[1], ignore=PER_RUN):
            raise UserError(f"{run} and {reference[0]} differ in {', '.join(keys)}; plot runs of one config"
                            f" (name their directories, e.g. out/shakespeare_char_cpu)")
        groups[config["pos_encoding"]].append((config, metrics))
    return groups


def describe(config):
    return (f"{config['n_layer']} layers, {config['n_head']} heads, {config['n_embd']} wide, "
            f"block {config['block_size']}, batch {config['batch_size']}, dropout {config['dropout']:g}")


def aggregate(metrics, key):
    """Steps and the mean, min and max of metrics[i][key] over runs, on the steps all runs
    have reached (a run still in progress may be shorter)."""
    n = min(len(m["step"]) for m in metrics)
    values = np.stack([m[key][:n] for m in metrics])
    return metrics[0]["step"][:n], values.mean(0), values.min(0), values.max(0)


def plot_split(groups, split, path):
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for enc, items in groups.items():
        steps, mean, low, high = aggregate([m for _, m in items], f"{split}_loss")
        label = LABELS.get(enc, enc) + (f" (mean of {len(items)} seeds)" if len(items) > 1 else "")
        ax.plot(steps, mean, color=COLORS.get(enc), label=label, marker="o", markersize=3)
        if len(items) > 1:
            ax.fill_between(steps, low, high, color=COLORS.get(enc), alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{split} loss (cross-entropy, nats/char)")
    config = next(iter(groups.values()))[0][0]
    ax.set_title(f"{split} loss by positional encoding\n{describe(config)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    # the first evaluation (~ln(vocab)) dwarfs the rest; zoom on the interesting range
    lowest = [m[f"{split}_loss"].min() for items in groups.values() for _, m in items]
    second = [m[f"{split}_loss"][min(1, len(m["step"]) - 1)] for items in groups.values() for _, m in items]
    ax.set_ylim(min(lowest) - 0.1, max(second) + 0.1)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def plot_runs(runs, plots_dir):
    groups = group_by_encoding(runs)
    paths = [Path(plots_dir) / f"{split}_loss.png" for split in ("train", "val")]
    for split, path in zip(("train", "val"), paths):
        plot_split(groups, split, path)
    return paths


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", default=["out"], help="run directories, or folders to search (default: out)")
    parser.add_argument("--plots-dir", default="plots", help="where to write the PNG files (default: plots)")
    args = parser.parse_args()
    for path in plot_runs(find_runs(args.runs), args.plots_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
