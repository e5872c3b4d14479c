"""
python -m study NAME: run one of the named studies (study/studies.py), or print its commands.

  python -m study --help                     # the studies
  python -m study baseline                   # RoPE, learned and none, 3 seeds -> plots/baseline/
  python -m study baseline --seeds 1337      # a quick look: its report goes to out/plots/baseline
  python -m study encodings --print-commands  # its runs as train.py commands, for any scheduler

A study's runs are reused when they exist (out/<config name>/<run>/), so running it again only
rewrites its report. Each command is also a module that runs on its own: python -m study.compare --help.
"""

import argparse
import os
import shlex
import subprocess
import sys
import textwrap

from common import ArgumentParser, UserError, positive, run_cli
from study.studies import STUDIES


def main():
    listing = "\n".join(textwrap.fill(f"{s.about} -> {s.plots_dir}/", 100, initial_indent=f"  {name:<13}",
                                       subsequent_indent=" " * 15, break_on_hyphens=False)
                         for name, s in STUDIES.items())
    parser = ArgumentParser(description=__doc__ + "\nstudies:\n" + listing,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=list(STUDIES), metavar="NAME", help="the study: " + ", ".join(STUDIES))
    parser.add_argument("--seeds", help="other seeds than the study's; its report then goes to out/plots/NAME, so"
                                        " that the committed one under plots/ is kept (default: the study's)")
    parser.add_argument("--plots-dir", help="where the report goes (default: the study's, or out/plots/NAME with"
                                            " --seeds)")
    parser.add_argument("--jobs", type=positive(int), default=1,
                        help="runs trained side by side (study.compare --jobs; default: 1)")
    parser.add_argument("--print-commands", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args()
    study = STUDIES[args.name]
    quick = args.seeds is not None and args.seeds != study.seeds
    plots_dir = args.plots_dir or (f"out/plots/{args.name}" if quick else None)
    commands = study.commands(args.seeds, args.jobs, plots_dir)
    if args.print_commands and commands[0][0] == "study.compare":
        # the runs as train.py commands (of every step that trains them), for any scheduler; then the study
        # itself, which reuses them
        for command in commands:
            if command[0] == "study.compare":
                run([*command, "--print-commands"], echo=False)
        again = [args.name, *(["--seeds", args.seeds] if args.seeds else []),
                 *(["--jobs", str(args.jobs)] if args.jobs > 1 else []),
                 *(["--plots-dir", args.plots_dir] if args.plots_dir else [])]
        print(shlex.join(["python", "-m", "study", *again]))
        return
    for command in commands:
        if args.print_commands:
            print(shlex.join(["python", "-m", *command]))
        else:
            run(command)


def run(command, echo=True):
    """Run `python -m COMMAND`; a failure stops the study (the command has said why). Its reports
    name the study's command as the one that regenerates them."""
    line = shlex.join(["python", "-m", *command])
    if echo:
        print(line, flush=True)
    study = shlex.join(["python", "-m", "study", *sys.argv[1:]])
    if subprocess.run([sys.executable, "-m", *command], env={**os.environ, "STUDY_COMMAND": study}).returncode:
        raise UserError(f"the study stopped: `{line}` failed (its error is above)")


if __name__ == "__main__":
    run_cli(main)
