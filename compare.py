"""
Train one model per positional encoding (same config, seed and data order), then write
the loss plots, a results table and one sample per encoding.

  python compare.py                                           # CPU config; rope, learned, none
  python compare.py config/shakespeare_char.toml --device cuda  # the GPU setting
  python compare.py --pos-encodings rope,none --max-iters 500 --seeds 1,2,3

Runs go to <out-dir>/<config name>/<encoding>_seed<seed>/; a run whose config.json
matches and that has finished (summary.json) is reused, not retrained. Writes
<plots-dir>/train_loss.png, val_loss.png, results.md and samples.md.
"""

import multiprocessing
import os
import platform
import queue
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from common import CPU_CONFIG, UserError, parse_encodings, pick_device, positive, read_json, run_cli, write_text
from evaluate import evaluate_runs, format_table, write_outputs
from model import POS_ENCODINGS
from plot import LABELS, plot_runs
from plot_rope import plot_rope
from sample import load_model, sample
from train import add_config_flags, build_parser, config_differences, config_from_args, train

ARTICLE_ENCODINGS = ["rope", "learned", "none"]


def plan(cfg, overwrite):
    """"reuse" a finished run with this config, "resume" an interrupted one, else "train".
    A run of another config in the same directory is replaced only with --overwrite."""
    run_dir = Path(cfg.out_dir) / cfg.run_name
    changed = config_differences(run_dir, cfg)
    if changed == [] and (run_dir / "summary.json").exists():
        return "reuse"
    if changed and not overwrite:
        raise UserError(f"{run_dir} holds a run with other settings ({', '.join(changed)}); --overwrite replaces"
                        f" it, --out-dir elsewhere keeps both")
    return "resume" if changed == [] and (run_dir / "last.pt").exists() else "train"


# Runs side by side (--jobs > 1): each in a process of its own, with its share of the threads
# and its own progress-bar line. A model this small keeps many threads only partly busy, so on
# the CPU several runs at once can finish sooner than one after another (the README's "Speed"
# section has the measurements). The thread count changes losses by ~1e-6 at most.
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
    actions = [plan(cfg, overwrite) for cfg in cfgs]  # refuse a changed run before training anything
    summaries, todo = [None] * len(cfgs), []
    for i, (cfg, action) in enumerate(zip(cfgs, actions)):
        if action == "reuse":
            print(f"{cfg.run_name}: finished earlier, reusing it")
            summaries[i] = read_json(Path(cfg.out_dir) / cfg.run_name / "summary.json", "delete the run to retrain it")
        else:
            if action == "resume":
                print(f"{cfg.run_name}: resuming the interrupted run")
            todo.append(i)

    def done(i, summary):
        summaries[i] = summary
        print(f"{summary['run_name']}: best val loss {summary['best_val_loss']:.4f} "
              f"at step {summary['best_step']}, {summary['wall_s']:.0f} s")

    jobs = min(jobs, len(todo))
    if jobs <= 1:
        for i in todo:
            done(i, train(cfgs[i], resume=actions[i] == "resume", overwrite=True))
    else:
        train_side_by_side([cfgs[i] for i in todo], [actions[i] == "resume" for i in todo], jobs,
                           lambda k, summary: done(todo[k], summary))
    return summaries


def mean_std(values, fmt="{:.4f}"):
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def results_table(summaries):
    """Markdown table, one row per encoding; with several seeds, mean ± std."""
    lines = ["| encoding | parameters | best val loss | at step | final train loss | final val loss "
             "| wall time (s) | ms/iter | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for enc, runs in summaries.items():
        col = lambda key, fmt="{:.4f}": mean_std([r[key] for r in runs], fmt)  # noqa: E731
        lines.append(f"| {LABELS.get(enc, enc)} | {runs[0]['n_params']:,} | {col('best_val_loss')} "
                     f"| {col('best_step', '{:.0f}')} | {col('final_train_loss')} | {col('final_val_loss')} "
                     f"| {col('wall_s', '{:.0f}')} | {col('ms_per_iter', '{:.1f}')} | {len(runs)} |")
    return "\n".join(lines)


def machine():
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def main():
    parser = build_parser(__doc__)
    parser.set_defaults(config=CPU_CONFIG)
    parser.add_argument("--pos-encodings", default=",".join(ARTICLE_ENCODINGS),
                        help=f"comma-separated encodings, or 'all' ({', '.join(POS_ENCODINGS)}); "
                             f"default: {','.join(ARTICLE_ENCODINGS)}")
    parser.add_argument("--seeds", default="1337", help="comma-separated seeds, one run per encoding and seed (default: 1337)")
    parser.add_argument("--plots-dir", default="plots", help="where plots and tables go (default: plots)")
    parser.add_argument("--sample-tokens", type=int, default=500, help="length of each sample in samples.md (default: 500)")
    parser.add_argument("--overwrite", action="store_true",
                        help="retrain runs whose directory holds a run with other settings (default: refuse)")
    parser.add_argument("--jobs", type=positive(int), default=1,
                        help="CPU: runs trained at a time, each in its own process with an equal share of torch's "
                             "threads (default: 1, one run after another with all threads)")
    parser.add_argument("--extrapolate", action="store_true",
                        help="afterwards, evaluate every run at 1x, 2x, 4x, 8x its block size (evaluate.py) and "
                             "draw the RoPE decay picture (plot_rope.py)")
    add_config_flags(parser, exclude=("pos_encoding", "run_name", "seed"))
    args = parser.parse_args()

    encodings = list(dict.fromkeys(parse_encodings(args.pos_encodings)))  # a repeat would share a run directory
    try:
        seeds = list(dict.fromkeys(int(s) for s in args.seeds.split(",") if s.strip()))
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    group = Path(args.config).stem
    base = config_from_args(args)  # flags over the config file over the defaults, before per-run settings
    if args.jobs > 1 and pick_device(base.device) != "cpu":
        raise UserError(f"--jobs trains runs side by side on the CPU; on {pick_device(base.device)} train one at a time")

    t0 = time.time()
    cfgs = [config_from_args(args, pos_encoding=enc, seed=seed, run_name=f"{group}/{enc}_seed{seed}")
            for enc in encodings for seed in seeds]
    summaries = {}
    for cfg, summary in zip(cfgs, train_runs(cfgs, args.overwrite, args.jobs)):
        summaries.setdefault(cfg.pos_encoding, []).append(summary)
    run_dirs = [Path(cfg.out_dir) / cfg.run_name for cfg in cfgs]

    plots_dir = Path(args.plots_dir)
    plot_runs(run_dirs, plots_dir)
    extrapolation = ""
    if args.extrapolate:
        t_eval = time.time()
        results = evaluate_runs(run_dirs, device=pick_device(base.device), progress=base.progress)
        write_outputs(results, plots_dir)
        plot_rope(base.n_embd // base.n_head, base.rope_theta, base.block_size, plots_dir / "rope_decay.png")
        extrapolation = (f"## Length extrapolation (val loss; evaluate.py, {time.time() - t_eval:.0f} s)\n\n"
                         f"```text\n{format_table(results)}\n```\n\n")
        print(format_table(results))
    total = time.time() - t0
    command = "python " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    write_text(plots_dir / "results.md",
               f"# Results: {group}\n\n{results_table(summaries)}\n\n{extrapolation}"
               f"Machine: {machine()}; each run's threads are in its summary.json (runs trained side by side"
               f" with --jobs share the cores, so each one's wall time and ms/iter are longer than alone).  \n"
               f"Wall time of this command up to here: {total:.0f} s "
               f"(training{' and extrapolation' if args.extrapolate else ''}; a run reused from an earlier "
               f"invocation costs nothing).  \nRegenerate with `{command}`.\n")

    parts = [f"# One sample per encoding ({group}, seed {seeds[0]}, prompt: a single newline)\n"]
    for enc in encodings:
        model, vocab = load_model(Path(base.out_dir) / group / f"{enc}_seed{seeds[0]}")
        text = sample(model, vocab, "\n", 1, args.sample_tokens, temperature=0.8, top_k=200, seed=seeds[0])[0]
        parts.append(f"## {LABELS.get(enc, enc)}\n\n```text\n{text.strip()}\n```\n")
    write_text(plots_dir / "samples.md", "\n".join(parts))

    print(results_table(summaries))
    print(f"wrote {plots_dir}/train_loss.png, val_loss.png, results.md, samples.md")
    total = time.time() - t0
    print(f"total wall time: {total:.0f} s ({total / 60:.1f} min)")


if __name__ == "__main__":
    run_cli(main)
