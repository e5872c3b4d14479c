"""
Plot train and val loss curves of finished runs, one line per positional encoding.

  python -m study.plot                                   # every run under out/
  python -m study.plot out/compare/rope_seed1337 out/compare/learned_seed1337 --plots-dir plots

Writes <plots-dir>/train_loss.png, val_loss.png, val_loss_seconds.png (val loss against the
seconds spent training: equal compute instead of equal steps), val_vs_train.png (val loss
against train loss: equal fit instead of equal steps) and, when some run's val loss bottoms
out before its last evaluation, val_loss_turn.png (the val curves from half the step of the
earliest minimum on). Runs that differ only in the seed are drawn as their mean with a shaded
min-max band; runs that differ in more (a learning rate, say) are separate lines, labelled by
what differs (runs.py). More than six variants get a panel per family of encodings (FAMILIES).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import ArgumentParser, UserError, atomic_write, load_meta, read_json, read_metrics, run_cli  # noqa: E402
from study.flags import add_plots_dir_flag  # noqa: E402
from study.runs import COLORS, Runs, find_runs  # noqa: E402

# the variants of one encoding, in order: a dash each (dotted is kept for sliding-window baselines) and a
# shade each, so that seven variants of RoPE are told apart by more than their dashes
LINESTYLES = ["-", "--", "-.", (0, (5, 1, 1, 1, 1, 1))]
SHADES = (0, -0.45, 0.45, -0.7, 0.6, -0.25, 0.25)  # toward black (< 0) or white (> 0)


def shade(color, k):
    """The k-th variant's colour: the encoding's own for the first, darker or lighter ones after it."""
    if color is None:
        return None
    amount = SHADES[k % len(SHADES)]
    rgb = np.array(matplotlib.colors.to_rgb(color))
    return tuple(rgb * (1 + amount) if amount < 0 else rgb + (1 - rgb) * amount)


def read_metrics_of(run_dir):
    rows = [{k: float(v) for k, v in row.items()} for row in read_metrics(Path(run_dir) / "metrics.csv")]
    if not rows:
        raise UserError(f"{run_dir}/metrics.csv has no rows yet")
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


MODEL = [("n_layer", "{} layers"), ("n_head", "{} heads"), ("n_embd", "{} wide"), ("block_size", "block {}"),
         ("batch_size", "batch {}"), ("dropout", "dropout {:g}")]


def describe_model(configs):
    """The model and batch settings all the runs share (the legend names those that differ)."""
    return ", ".join(text.format(configs[0][k]) for k, text in MODEL if len({c[k] for c in configs}) == 1)


def aggregate(metrics, key, x="step"):
    """x and the mean, min and max of metrics[i][key] over runs, on the evaluations all runs
    have reached (a run still in progress may be shorter); x is averaged over runs too."""
    n = min(len(m["step"]) for m in metrics)
    values = np.stack([m[key][:n] for m in metrics])
    return np.stack([m[x][:n] for m in metrics]).mean(0), values.mean(0), values.min(0), values.max(0)


# Figures with many variants get a panel per family of encodings, four variants or so each.
FAMILIES = (("RoPE and its variants: query and key rotated by position", ("rope",)),
            ("biases added to the score, a function of i - j", ("alibi", "t5", "fire")),
            ("absolute, or no position", ("learned", "sinusoidal", "none")))
MAX_LINES = 6  # a loss-curve figure with more variants than this gets a panel per family


def by_family(items, encoding):
    """[(family title, its items)] for the families present, in FAMILIES' order; encoding(item) names an
    item's encoding (one no family lists goes to a last panel: a new encoding is drawn, not dropped)."""
    known = {e for _, members in FAMILIES for e in members}
    panels = [(title, [x for x in items if encoding(x) in members]) for title, members in FAMILIES]
    panels.append(("other encodings", [x for x in items if encoding(x) not in known]))
    return [(title, xs) for title, xs in panels if xs]


def encoding_styles(encodings):
    """(colour, line style) for each of a list of variants' encodings, in order: the encoding's
    colour and a solid line for its first variant, a new shade and dash for each further one."""
    seen, styles = {}, []
    for enc in encodings:
        n = seen[enc] = seen.get(enc, -1) + 1
        styles.append((shade(COLORS.get(enc), n), LINESTYLES[n % len(LINESTYLES)]))
    return styles


def variant_styles(configs, groups):
    """{variant: (colour, line style)} (encoding_styles)."""
    return dict(zip(groups, encoding_styles([configs[idx[0]]["pos_encoding"] for idx in groups.values()])))


def x_name(x):
    return "step" if x == "step" else "second"


def tokens_per_epoch(configs):
    """(train tokens, tokens per step) if every run shares them, else None."""
    per_step = {c["batch_size"] * c["block_size"] * c["gradient_accumulation_steps"] for c in configs}
    dirs = {c["data_dir"] for c in configs}
    if len(per_step) > 1 or len(dirs) > 1:
        return None
    try:
        return load_meta(dirs.pop())["train_tokens"], per_step.pop()
    except UserError:  # the data is not on this machine: no epoch axis
        return None


def turn_window(metrics):
    """The first step of val_loss_turn.png: half the earliest step at which some run's val loss
    is lowest, if that is before its last evaluation; None while every run is still falling."""
    early = [m["step"][np.argmin(m["val_loss"])] for m in metrics if np.argmin(m["val_loss"]) < len(m["step"]) - 1]
    return min(early) / 2 if early else None


def redraw(path, json_name, module, keys, tables, draw, plots_dir):
    """--from-json: the tables and figures again from a JSON a measuring module wrote (keys: what it holds)."""
    results = read_json(path, f"rerun {module} on the runs to write it again")
    if not isinstance(results, dict) or not set(keys) <= set(results):
        raise UserError(f"{path} is not the {json_name} that {module} writes")
    print(tables(results))
    for written in draw(results, plots_dir):
        print(f"wrote {written}")


def legend_outside(ax, seeds_band=False, family=None):
    """The legend to the right of the axes, where it covers no curve; titled by the panel's family."""
    lines = ([family] if family else []) + (["line: mean over seeds; band: min-max"] if seeds_band else [])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title="\n".join(lines) or None,
              title_fontsize=8, alignment="left")


def legend_below(ax, last=()):
    """The panel's legend under it (lines cross everywhere above), in drawing order, `last` labels at
    the end (matplotlib lists plain lines before error bars)."""
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] in last)
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.17), frameon=False)


def save(fig, path):
    """Write a figure with room for a legend outside its axes, then free it."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    plt.close(fig)


def panels_of(items, encoding):
    """[(panel title or None, items)]: one panel, or one per family when there are more than MAX_LINES
    items (a dozen lines in one panel cannot be told apart); encoding(item) names an item's encoding."""
    return [(None, list(items))] if len(items) <= MAX_LINES else by_family(items, encoding)


def panel_axes(panels, title, xlabel, pad=6):
    """A figure with a row per panel of panels_of (shared axes), `title` over the first row (`pad`
    points above it) and the x label under the last; the figure and [(axes, items, family title)]."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 4.8 if len(panels) == 1 else 1.2 + 3.4 * len(panels)),
                             dpi=120, sharex=True, sharey=True, squeeze=False)
    for ax in axes[:, 0]:
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_title(title, fontsize=10, pad=pad)
    axes[-1, 0].set_xlabel(xlabel)
    return fig, [(ax, items, family) for ax, (family, items) in zip(axes[:, 0], panels)]


def variant_axes(runs, title, xlabel, pad=6):
    """panel_axes for the variants of runs, the models' shape under the title."""
    configs, _, groups, _, _ = runs
    panels = panels_of(list(groups), lambda key: configs[groups[key][0]]["pos_encoding"])
    return panel_axes(panels, f"{title}\n{describe_model(configs)}", xlabel, pad)


def plot_split(runs, split, path, x="step", start=None):
    """One line per variant (mean over its seeds, min-max band), loss against steps or, with
    x="train_s", against the seconds spent in training steps (evaluation excluded); from step
    `start` on, if given, with the y axis fitted to that part (a turn of a few hundredths is
    invisible on the scale of the first steps' fall). Many variants: a panel per family."""
    configs, metrics, groups, labels, styles = runs
    what = "the whole val split" if split == "val" else "a fixed sample of train windows"
    zoom = "" if start is None else f", from step {start:,.0f} on"
    epoch_tokens = tokens_per_epoch(configs)
    fig, panels = variant_axes(runs, f"{split} loss by positional encoding, on {what}{zoom}",
                             "step" if x == "step" else "seconds of training (mean over seeds; evaluation excluded)",
                             pad=6 + 16 * (x == "step" and epoch_tokens is not None))
    for ax, keys, family in panels:
        for key in keys:
            idx = groups[key]
            xs, mean, low, high = aggregate([metrics[i] for i in idx], f"{split}_loss", x)
            color, dash = styles[key]
            label = labels[key] + (f" ({len(idx)} seeds)" if len(idx) > 1 else "")
            if split == "val":  # where the val curve bottoms out: overfitting starts after it
                best = int(np.argmin(mean))
                label += f": min {mean[best]:.4f} at {x_name(x)} {xs[best]:,.0f}"
                ax.plot(xs[best], mean[best], marker="*", markersize=13, color=color, markeredgecolor="black",
                        linestyle="none")
            ax.plot(xs, mean, color=color, linestyle=dash, label=label, marker="o", markersize=3)
            if len(idx) > 1:
                ax.fill_between(xs, low, high, color=color, alpha=0.15, linewidth=0)
        if split == "val":
            ax.plot([], [], marker="*", markersize=11, color="white", markeredgecolor="black", linestyle="none",
                    label="star: each curve's minimum")
        ax.set_ylabel(f"{split} loss (nats/char)")
        legend_outside(ax, any(len(groups[key]) > 1 for key in keys), family)
    if x == "step" and epoch_tokens:  # data passes on top: what overfitting depends on
        per_step = epoch_tokens[1] / epoch_tokens[0]
        top = panels[0][0].secondary_xaxis("top", functions=(lambda s: s * per_step, lambda e: e / per_step))
        top.set_xlabel("epochs (passes over the train split)", fontsize=8)
    ax = panels[0][0]  # (the axes are shared: limits set on one hold for all)
    if start is None:  # the first evaluation (~ln(vocab)) dwarfs the rest; zoom on the interesting range
        lowest = [m[f"{split}_loss"].min() for m in metrics]
        second = [m[f"{split}_loss"][min(1, len(m["step"]) - 1)] for m in metrics]
        ax.set_ylim(min(lowest) - 0.1, max(second) + 0.1)
    else:
        visible = np.concatenate([m[f"{split}_loss"][m["step"] >= start] for m in metrics])
        margin = 0.1 * (visible.max() - visible.min())
        ax.set_xlim(start, max(m["step"][-1] for m in metrics) * 1.02)
        ax.set_ylim(visible.min() - margin, visible.max() + margin)
    save(fig, path)


def plot_fit(runs, path):
    """Val loss against train loss, one line per variant (means over seeds): runs compared at
    equal fit of the train split instead of equal steps. A variant that only fits faster lies on
    the others' line, further along; one that generalises better lies below it."""
    configs, metrics, groups, labels, styles = runs
    fig, panels = variant_axes(runs, "val loss against train loss, by positional encoding: equal fit instead of"
                                   " equal steps", "train loss (on a fixed sample of train windows; training moves right)")
    for ax, keys, family in panels:
        for key in keys:
            idx = groups[key]
            _, train, _, _ = aggregate([metrics[i] for i in idx], "train_loss")
            _, val, _, _ = aggregate([metrics[i] for i in idx], "val_loss")
            color, dash = styles[key]
            label = labels[key] + (f" (mean of {len(idx)} seeds)" if len(idx) > 1 else "")
            ax.plot(train[1:], val[1:], color=color, linestyle=dash, label=label, marker="o", markersize=3)
        ax.set_ylabel("val loss (nats/char)")
        legend_outside(ax, family=family)
    panels[0][0].invert_xaxis()  # training moves to the right, as in the other plots
    save(fig, path)


def length_axis(ax, ticks, labels, block, xlabel):
    """A log2 x axis of lengths with the training length dashed (the extrapolation plots' axis)."""
    ax.axvline(block, color="gray", linestyle="--", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, labels)
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def plot_runs(run_dirs, plots_dir):
    """train_loss.png, val_loss.png (against steps), val_loss_seconds.png, val_vs_train.png (Shakespeare
    runs only: a task's examples are drawn afresh, so fitting its "train split" means nothing) and,
    where a val curve turns before its end, val_loss_turn.png in plots_dir. Runs that differ in
    more than the seed are drawn as separate variants, labelled by what differs; runs evaluated
    on different text are refused."""
    read = Runs(run_dirs, "runs to plot")
    configs, metrics = read.configs, [read_metrics_of(d) for d in read.run_dirs]
    runs = (configs, metrics, read.groups, read.labels, variant_styles(configs, read.groups))
    plots_dir = Path(plots_dir)
    paths = [plots_dir / "train_loss.png", plots_dir / "val_loss.png", plots_dir / "val_loss_seconds.png"]
    plot_split(runs, "train", paths[0])
    plot_split(runs, "val", paths[1])
    plot_split(runs, "val", paths[2], x="train_s")
    if all(c.get("task", "shakespeare") == "shakespeare" for c in configs):
        paths.append(plots_dir / "val_vs_train.png")
        plot_fit(runs, paths[-1])
    else:
        (plots_dir / "val_vs_train.png").unlink(missing_ok=True)
    start = turn_window(metrics)
    if start is None:  # an earlier study's zoom would show a turn these runs do not have
        (plots_dir / "val_loss_turn.png").unlink(missing_ok=True)
    else:
        paths.append(plots_dir / "val_loss_turn.png")
        plot_split(runs, "val", paths[-1], start=start)
    return paths


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", default=["out"], help="run directories, or folders to search (default: out)")
    add_plots_dir_flag(parser, "the PNG files")
    args = parser.parse_args()
    for path in plot_runs(find_runs(args.runs), args.plots_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
