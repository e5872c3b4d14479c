"""The command-line flags several study modules share (one place for their names and help)."""

import argparse


def add_plots_dir_flag(parser, what):
    """--plots-dir: where a module writes `what`; out/plots unless a named study says otherwise."""
    parser.add_argument("--plots-dir", default="out/plots",
                        help=f"where to write {what} (default: out/plots; the committed plots/ are written by"
                             f" python -m study NAME)")


def add_measure_flags(parser, json_name):
    """The flags of a module that measures trained runs and draws them (study.evaluate, study.probes)."""
    parser.add_argument("--from-json", default=None, metavar="FILE",
                        help=f"redraw the figures and the tables from a {json_name} written earlier, into --plots-dir"
                             f" (no checkpoints needed)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps (default: auto)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
