"""The command-line flags several study modules share (one place for their names and help)."""

import argparse

from common import ArgumentParser


def add_plots_dir_flag(parser, what):
    """--plots-dir: where a module writes `what`; out/plots unless a named study says otherwise."""
    parser.add_argument("--plots-dir", default="out/plots",
                        help=f"where to write {what} (default: out/plots; the committed plots/ are written by"
                             f" python -m study NAME)")


def measure_parser(description, json_name, outputs, what="run directories"):
    """The parser of a module that measures trained runs and draws them (study.evaluate, study.probes,
    study.retrieval): the runs, their data, where the outputs go, and the flags of add_measure_flags."""
    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", default=["out"], help=f"{what}, or folders to search for them (default: out)")
    parser.add_argument("--data-dir", default=None, help="prepared data (default: the one the runs were trained on)")
    add_plots_dir_flag(parser, outputs)
    add_measure_flags(parser, json_name)
    return parser


def add_measure_flags(parser, json_name):
    parser.add_argument("--from-json", default=None, metavar="FILE",
                        help=f"redraw the figures and the tables from a {json_name} written earlier, into --plots-dir"
                             f" (no checkpoints needed)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps (default: auto)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
