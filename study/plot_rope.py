"""
Two pictures of RoPE's frequencies, for the head size and context length of our models.

  python -m study.plot_rope                                  # the CPU config: head dim 128/4 = 32, block 64
  python -m study.plot_rope --head-dim 64 --block-size 256   # the GPU config (384 / 6)
  python -m study.plot_rope --from-run out/shakespeare_char_cpu/rope_seed1337

Writes <plots-dir>/rope_decay.png:
 (a) RoFormer's long-term decay (Su et al. 2021, section 3.4.3): the attention score between a
     query and a key m positions apart is bounded by a constant times
     (1/(d/2)) * sum_{j=1..d/2} |S_j|,  S_j = sum_{k=0..j-1} e^(i m theta_k),
     which shrinks as m grows. Plotted relative to its value at m = 0, which is (d/2 + 1)/2.
 (b) the wavelength 2 pi / theta_i = 2 pi theta^(2i/d) of each rotating channel pair: pairs
     below the block size turn full circle inside a training window; the slow pairs above it
     only ever see a fraction of a turn in training, so longer contexts show them new angles.
"""

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import ArgumentParser, UserError, atomic_write, run_cli, write_text  # noqa: E402
from study.flags import add_plots_dir_flag  # noqa: E402


def frequencies(head_dim, theta=10000.0):
    """theta_i = theta^(-2i/d) for the pairs i = 0 .. d/2 - 1 (model.py's convention), radians per position."""
    if head_dim < 2 or head_dim % 2:
        raise UserError(f"RoPE rotates pairs of channels: the head dim must be even and at least 2, got {head_dim}")
    if theta <= 1:
        raise UserError(f"the RoPE base theta must be greater than 1, got {theta}")
    return theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def wavelengths(head_dim, theta=10000.0):
    """Positions per full turn of each pair: 2 pi / theta_i = 2 pi theta^(2i/d)."""
    return 2 * math.pi / frequencies(head_dim, theta)


def decay_bound(distances, head_dim, theta=10000.0, relative=True):
    """RoFormer's (1/(d/2)) sum_j |S_j| at each relative distance m; relative=True divides by
    its value at m = 0 (where every S_j = j, so the bound is the mean of 1..d/2 = (d/2 + 1)/2)."""
    m = np.asarray(distances, dtype=np.float64)
    rotations = np.exp(1j * np.outer(m, frequencies(head_dim, theta)))  # (M, d/2): e^(i m theta_k)
    partial_sums = np.cumsum(rotations, axis=1)  # S_j = sum of the first j rotations, j = 1 .. d/2
    bound = np.abs(partial_sums).mean(axis=1)
    return bound / ((head_dim / 2 + 1) / 2) if relative else bound


def similarity_bound(head_dim, theta=10000.0, max_distance=1 << 16):
    """Men et al. 2024 ("Base of RoPE Bounds Context Length"): a query can attend more to a key
    like itself than to a random one only while B(m) = sum_i cos(m theta_i) > 0; the first
    distance m where it is not bounds the context the base supports. None if beyond max_distance."""
    m = np.arange(max_distance + 1, dtype=np.float64)
    b = np.cos(np.outer(m, frequencies(head_dim, theta))).sum(axis=1)
    negative = np.flatnonzero(b <= 0)
    return int(negative[0]) if len(negative) else None


def base_table(head_dim, block_size, bases):
    """Markdown: per base, the pairs that turn fully within the block, the slowest wavelength,
    and the distance at which Men et al.'s bound B(m) first fails."""
    lines = [f"| base | pairs turning fully within {block_size} positions (of {head_dim // 2}) |"
             f" slowest wavelength | B(m) = Σ cos(m θ_i) first ≤ 0 at m |", "|---:|---:|---:|---:|"]
    for base in bases:
        wl = wavelengths(head_dim, base)
        bound = similarity_bound(head_dim, base)
        lines.append(f"| {base:g} | {(wl <= block_size).sum()} | {wl[-1]:,.0f} |"
                     f" {bound if bound is not None else 'beyond 65,536'} |")
    return "\n".join(lines) + "\n"


def plot_rope(head_dim, theta, block_size, path, max_distance=None):
    max_distance = max_distance or 8 * block_size
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120)

    m = np.arange(max_distance + 1)
    ax_a.plot(m, decay_bound(m, head_dim, theta), color="tab:blue", linewidth=1)
    ax_a.axvline(block_size, color="gray", linestyle="--", linewidth=1, label=f"training length ({block_size})")
    ax_a.set_xlabel("relative distance m between query and key (positions)")
    ax_a.set_ylabel("relative upper bound of the attention score")
    ax_a.set_title(f"(a) long-term decay: (1/(d/2)) $\\sum_j |S_j|$, relative to m = 0\n"
                   f"d = {head_dim}, theta = {theta:g} (RoFormer sec. 3.4.3)", fontsize=10)
    ax_a.set_xlim(0, max_distance)
    ax_a.set_ylim(0, 1.05)
    ax_a.grid(alpha=0.3)
    ax_a.legend(fontsize=8)

    wl = wavelengths(head_dim, theta)
    pairs = np.arange(len(wl))
    fast = wl <= block_size
    ax_b.semilogy(pairs, wl, color="lightgray", linewidth=1, zorder=1)
    ax_b.scatter(pairs[fast], wl[fast], color="tab:blue", zorder=2,
                 label=f"{fast.sum()} pairs: full turn within {block_size} positions")
    ax_b.scatter(pairs[~fast], wl[~fast], color="tab:orange", zorder=2,
                 label=f"{(~fast).sum()} pairs: less than one turn in training")
    ax_b.axhline(block_size, color="gray", linestyle="--", linewidth=1, label=f"training length ({block_size})")
    ax_b.set_xlabel("channel pair index i (theta_i = theta^(-2i/d))")
    ax_b.set_ylabel("wavelength 2 pi / theta_i (positions, log scale)")
    ax_b.set_title(f"(b) wavelength of each rotary frequency\nd = {head_dim}: {len(wl)} pairs", fontsize=10)
    ax_b.grid(alpha=0.3, which="both")
    ax_b.legend(fontsize=8)

    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def read_run_config(run_dir):
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"no config.json in {run_dir}; pass a run directory written by train.py")
    config = json.loads(path.read_text())
    return {"head_dim": config["n_embd"] // config["n_head"], "theta": config.get("rope_theta", 10000.0),
            "block_size": config["block_size"]}


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dim", type=int, default=None, help="channels per attention head (default: 32)")
    parser.add_argument("--theta", type=float, default=None, help="RoPE base (default: 10000)")
    parser.add_argument("--block-size", type=int, default=None, help="training context length (default: 64)")
    parser.add_argument("--from-run", default=None,
                        help="take head dim, theta and block size from this run's config.json (flags still override)")
    parser.add_argument("--max-distance", type=int, default=None, help="x range of panel (a) (default: 8x block size)")
    add_plots_dir_flag(parser, "rope_decay.png")
    parser.add_argument("--bases", default=None,
                        help="comma-separated RoPE bases: also write <plots-dir>/rope_bases.md, a table of each one's"
                             " turning pairs, slowest wavelength and the distance where Men et al.'s bound fails")
    args = parser.parse_args()

    values = {"head_dim": 32, "theta": 10000.0, "block_size": 64}  # the CPU config: 128 wide / 4 heads
    if args.from_run:
        values.update(read_run_config(args.from_run))
    values.update({k: getattr(args, k) for k in values if getattr(args, k) is not None})
    if values["block_size"] < 1 or (args.max_distance is not None and args.max_distance < 1):
        raise UserError("--block-size and --max-distance must be at least 1")
    path = Path(args.plots_dir) / "rope_decay.png"
    plot_rope(values["head_dim"], values["theta"], values["block_size"], path, args.max_distance)
    print(f"wrote {path} (head dim {values['head_dim']}, theta {values['theta']:g}, block size {values['block_size']})")
    if args.bases:
        try:
            bases = [float(b) for b in args.bases.split(",")]
        except ValueError:
            raise UserError(f"--bases takes comma-separated numbers, got {args.bases!r}") from None
        for base in bases:
            frequencies(2, base)  # refuses a base <= 1
        table = base_table(values["head_dim"], values["block_size"], bases)
        write_text(Path(args.plots_dir) / "rope_bases.md", table)
        print(table + f"wrote {Path(args.plots_dir) / 'rope_bases.md'}")


if __name__ == "__main__":
    run_cli(main)
