"""
The runs of a study: which to train, reuse, resume or continue (and which variants need more
seeds), training them one after another or side by side (--jobs), or printing them as train.py
commands for another scheduler; and the flags every study shares.
"""

import multiprocessing
import os
import queue
import shlex
import signal
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import torch
from tqdm import tqdm

from common import CPU_CONFIG, UserError, comma_list, pick_device, positive, read_json
from model import POS_ENCODINGS
from study.analysis import paired, verdict
from study.report import variant_pairs
from study.runs import variant_name
from study.flags import add_plots_dir_flag
from train import train
from train_config import (TrainConfig, config_differences, config_from_args, explain, provenance,
                          read_config_file, why_not_continued)


def plan(cfg, overwrite, prov):
    """"reuse" a finished run with this config and provenance, "resume" an interrupted one,
    "continue" a finished one that cfg trains for more steps (train.why_not_continued), else
    "train". A run of another config, or evaluated another way (an older version of the
    evaluation, other text), is replaced only with --overwrite."""
    run_dir = Path(cfg.out_dir) / cfg.run_name
    changed = config_differences(run_dir, cfg, prov)
    if changed == [] and (run_dir / "summary.json").exists():
        return "reuse"
    if changed and not overwrite:
        reason = why_not_continued(run_dir, cfg, changed)
        if reason is None and (run_dir / "last.pt").exists():
            return "continue"
        raise UserError(f"{reason or explain(changed, run_dir, cfg)}; --overwrite retrains it, --out-dir elsewhere"
                        f" keeps both")
    return "resume" if changed == [] and (run_dir / "last.pt").exists() else "train"



def run_group(config_path, cfg):
    """The folder a study's runs go to: <config stem>, then -<task> for a task, then -L<block size> where the
    block size is not the config file's (the runs of one training length, never mixed with another's)."""
    stem, block = Path(config_path).stem, read_config_file(config_path).get("block_size", TrainConfig.block_size)
    return stem + ("" if cfg.task == "shakespeare" else f"-{cfg.task}") + ("" if cfg.block_size == block else
                                                                           f"-L{cfg.block_size}")


def make_configs(args, variants, seeds, learning_rates=None):
    """One TrainConfig per variant (x learning rate) x seed, named <run_group>/<variant>_seed<seed> (a task's
    runs and another training length's never meet the Shakespeare runs of the same names). A learning rate r
    comes with min_lr = r / 10, as in the config files."""
    base = config_from_args(args)
    pick_device(base.device)  # a device this machine lacks: one line now, not after the first run's set-up
    rates = [{}] if not learning_rates else [{"learning_rate": r, "min_lr": float(f"{r / 10:.6g}")}
                                              for r in learning_rates]
    group, cfgs = run_group(args.config, base), []
    for enc, overrides in variants:
        for rate in rates:
            changed = {k: v for k, v in {**overrides, **rate}.items() if getattr(base, k) != v}
            for seed in seeds:
                cfgs.append(config_from_args(args, pos_encoding=enc, seed=seed, **changed,
                                             run_name=f"{group}/{variant_name(enc, changed)}_seed{seed}"))
    unique = list({cfg.run_name: cfg for cfg in cfgs}.values())  # "rope,rope:rope_theta=10000" is one variant
    return unique



def plans(cfgs, overwrite, ready=lambda cfg: True):
    """plan() of each cfg (None where ready(cfg) is False), computing each provenance once: the
    evaluated text depends on the data and the block size only, the dtype on the device."""
    provs, out = {}, []
    for cfg in cfgs:
        key = (cfg.data_dir, cfg.block_size, cfg.dtype, cfg.device)
        if ready(cfg) and key not in provs:
            provs[key] = provenance(cfg)
        out.append(plan(cfg, overwrite, provs[key]) if ready(cfg) else None)
    return out


def train_command(cfg, config_path, extra=()):
    """The train.py command that trains cfg: the config file plus a flag for every setting in which
    cfg differs from it (python train.py --help lists them), then `extra`."""
    base = TrainConfig(**read_config_file(config_path)) if config_path else TrainConfig()
    flags = []
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if value != getattr(base, f.name) or f.name in ("seed", "run_name", "out_dir"):
            flag = "--" + f.name.replace("_", "-")
            flags += ([flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)])
    return shlex.join(["python", "train.py", *([str(config_path)] if config_path else []), *flags, *extra])



def print_commands(cfgs, config_path, overwrite, then):
    """Print the train.py command of every run that is not finished yet (any scheduler can run them:
    each writes its own record), then what rebuilds the report from the finished runs."""
    todo = []
    # a run with no directory yet is trained: no need to read the data for it
    actions = plans(cfgs, overwrite, ready=lambda cfg: (Path(cfg.out_dir) / cfg.run_name).exists())
    for cfg, action in zip(cfgs, actions):
        if action != "reuse":
            extra = {"resume": ["--resume"], "continue": ["--resume"]}.get(action, ["--overwrite"] if overwrite else [])
            todo.append(train_command(cfg, config_path, extra))
    if todo:
        print("\n".join(todo))
    print(f"# {len(todo)} of {len(cfgs)} runs to train; once they have finished, {then}", file=sys.stderr)



# Runs side by side (--jobs > 1): each in a process of its own, with its share of the threads
# and its own progress-bar line. A model this small keeps many threads only partly busy, so on
# the CPU several runs at once can finish sooner than one after another (BENCHMARKS.md has
# the measurements). The thread count changes losses by ~1e-6 at most.
#
# Signals: each worker runs in its own process group, so the terminal's Ctrl-C reaches only
# this process, which passes each one on to every running worker exactly once (the first makes
# them save their state and stop, a second aborts them, as for a single run). A worker whose
# parent died (killed, say) stops the same way instead of training on unseen. A worker starts
# with SIGINT ignored (it would otherwise die of one while importing torch); while it starts,
# the parent holds back its own SIGINT (blocked, not lost), and a worker that set up after the
# parent passed one on learns of it from the `stopping` event.


POLL = 0.2  # seconds between the parent's checks for Ctrl-C and for workers that died


def _watch_parent(parent):
    while os.getppid() == parent:
        time.sleep(2.0)
    os.kill(os.getpid(), signal.SIGINT)  # orphaned: save the state and stop


def _train_in_process(i, cfg, resume, threads, bar_line, bar_lock, results, parent, stopping):
    if hasattr(signal, "pthread_sigmask"):  # inherited blocked (see _start_immune); still ignored
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if hasattr(os, "setpgrp"):
        os.setpgrp()  # out of the terminal's process group: Ctrl-C comes from the parent only
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    tqdm.set_lock(bar_lock)  # one lock for all processes' progress bars
    signal.signal(signal.SIGINT, signal.default_int_handler)  # started ignored, see _start_immune
    try:
        if stopping.is_set():  # the parent passed a Ctrl-C on while this process started, SIGINT ignored
            raise KeyboardInterrupt
        outcome = (i, train(cfg, resume=resume, overwrite=True, bar_position=bar_line), None)
    except UserError as e:  # includes a first Ctrl-C: the run saved its state and stopped
        outcome = (i, None, str(e))
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training began
        outcome = (i, None, f"{cfg.run_name}: interrupted")
    except BaseException as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        results.put((i, None, f"{cfg.run_name} failed with {type(e).__name__}: {e} (traceback above)"))
        raise
    # The run is over. The parent passes on its Ctrl-C, or stops the others after another run's
    # error, at any moment: one arriving now must not cut the report short with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    results.put(outcome)


def _start_immune(process):
    """Start a worker with SIGINT ignored, which it inherits (see the Signals comment). Meanwhile
    this process's SIGINT is also blocked, where the OS allows, so one arriving then waits for
    the handler to come back instead of being lost."""
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    can_block = hasattr(signal, "pthread_sigmask")  # not on Windows
    if can_block:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, handler)
        if can_block:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def train_side_by_side(cfgs, resume, jobs, done):
    """Train cfgs `jobs` at a time; call done(i, summary) for each that finished. After an error
    or Ctrl-C no new run starts and the running ones save their state and stop; then the
    first error is raised."""
    threads = max(1, torch.get_num_threads() // jobs)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked OpenMP or torch state
    results, bar_lock = ctx.Queue(), ctx.RLock()
    waiting, running, ended, finished, error = list(range(len(cfgs))), {}, set(), [], None
    # running: index -> (process, its bar's line)
    ctrl_c = [0, 0]  # Ctrl-Cs received, Ctrl-Cs passed on to the workers

    stopping = ctx.Event()  # for workers still starting up when stop_workers' SIGINT came

    def stop_workers():
        stopping.set()
        for process, _ in running.values():
            if process.exitcode is None:
                os.kill(process.pid, signal.SIGINT)

    def fail(message):  # the first error is the one reported; the running runs save and stop
        nonlocal error
        if error is None:
            error = message
            stop_workers()

    previous = signal.signal(signal.SIGINT, lambda signum, frame: ctrl_c.__setitem__(0, ctrl_c[0] + 1))
    print(f"training {len(cfgs)} runs, {jobs} at a time with {threads} torch thread(s) each")
    try:
        while running or (waiting and error is None):
            while waiting and error is None and len(running) < jobs:
                i = waiting.pop(0)
                line = min(set(range(jobs)) - {line for _, line in running.values()})
                process = ctx.Process(target=_train_in_process, args=(
                    i, cfgs[i], resume[i], threads, line, bar_lock, results, os.getpid(), stopping))
                _start_immune(process)
                running[i] = (process, line)
            if ctrl_c[0] > ctrl_c[1]:
                ctrl_c[1] += 1
                error = error or "stopped by Ctrl-C; the same command resumes the interrupted runs"
                stop_workers()
            try:  # a short timeout: a Ctrl-C caught meanwhile is passed on within POLL seconds
                i, summary, message = results.get(timeout=POLL)
            except queue.Empty:  # a process that ended a whole timeout ago without a word was killed
                for i, (process, _) in list(running.items()):
                    if process.exitcode is not None and i in ended:
                        running.pop(i)
                        fail(f"{cfgs[i].run_name}: its process died (exit code {process.exitcode})")
                    elif process.exitcode is not None:
                        ended.add(i)  # its last words may still be on their way
                continue
            running.pop(i)[0].join()
            if summary is not None:
                finished.append((i, summary))
            else:
                fail(message + ("; the other runs saved their state and stopped: the same command resumes them"
                                if running else ""))
    finally:
        signal.signal(signal.SIGINT, previous)
    if cfgs[0].progress:
        sys.stderr.write("\r")  # the bars are gone; their line may still hold the cursor
    for i, summary in finished:  # reported now: printing among the other processes' bars garbles them
        done(i, summary)
    if error:
        raise UserError(error)


def train_runs(cfgs, overwrite, jobs=1):
    """The summaries of cfgs, in order: reused, resumed or trained, `jobs` runs at a time."""
    actions = plans(cfgs, overwrite)  # refuses a changed run before training anything
    summaries, todo = [None] * len(cfgs), []
    for i, (cfg, action) in enumerate(zip(cfgs, actions)):
        if action == "reuse":
            print(f"{cfg.run_name}: finished earlier, reusing it")
            summaries[i] = read_json(Path(cfg.out_dir) / cfg.run_name / "summary.json", "delete the run to retrain it")
        else:
            if action == "resume":
                print(f"{cfg.run_name}: resuming the interrupted run")
            if action == "continue":
                print(f"{cfg.run_name}: continuing the finished run to {cfg.max_iters} steps")
            todo.append(i)

    def done(i, summary):
        summaries[i] = summary
        print(f"{summary['run_name']}: best val loss {summary['best_val_loss']:.4f} "
              f"at step {summary['best_step']}, {summary['wall_s']:.0f} s")

    jobs = min(jobs, len(todo))
    if jobs <= 1:
        for i in todo:
            done(i, train(cfgs[i], resume=actions[i] in ("resume", "continue"), overwrite=True))
    else:
        train_side_by_side([cfgs[i] for i in todo], [actions[i] in ("resume", "continue") for i in todo], jobs,
                           lambda k, summary: done(todo[k], summary))
    return summaries



def parse_seeds(text, flag="--seeds"):
    return comma_list(text, flag, int)


def undecided_variants(study):
    """The variant keys (runs.variant_key) of the variants in a pair whose interval, on val or
    on test, contains 0."""
    close = set()
    for a, b in variant_pairs(study):
        for split in ("val", "test"):
            field = f"final_{split}_loss"
            if verdict(paired(study.per_seed(a, field), study.per_seed(b, field))) == "undecided":
                close |= {a, b}
    return close


def add_study_flags(parser, encodings_default):
    parser.set_defaults(config=CPU_CONFIG)
    parser.add_argument("--pos-encodings", default=encodings_default,
                        help="comma-separated variants: an encoding (" + ", ".join(POS_ENCODINGS) + ") or 'all', each "
                             "optionally with settings, ENCODING:KEY=VALUE[:KEY=VALUE], e.g. "
                             f"sinusoidal:sinusoidal_scale=false (default: {encodings_default})")
    add_plots_dir_flag(parser, "the plots and tables")
    parser.add_argument("--sample-tokens", type=positive(int), default=500,
                        help="characters per sample for samples.md and the real-word shares (default: 500)")
    parser.add_argument("--overwrite", action="store_true",
                        help="retrain runs whose directory holds a run with other settings or evaluated another way"
                             " (default: refuse)")
    parser.add_argument("--jobs", type=positive(int), default=1,
                        help="runs trained at a time, each in its own process (on a CPU with an equal share of"
                             " torch's threads; on a GPU side by side on it) (default: 1, one run after another)")
