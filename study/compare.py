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

import json
import multiprocessing
import os
import platform
import queue
import shlex
import signal
import statistics
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import torch
from tqdm import tqdm

from study.analysis import (TURN_NATS, TURN_SIGMAS, TURN_WINDOW, paired, paired_table, real_word_shares, turn,
                      verdict, words)
from common import (CPU_CONFIG, UserError, announce_dtype, autocast, command_line, load_meta, load_tokens,
                    pick_device, positive, read_json, read_metrics, run_cli, write_json, write_text)
from study.evaluate import SCALINGS, evaluate_runs, format_table, write_outputs
from model import POS_ENCODINGS
from study.plot import plot_runs
from study.plot_rope import plot_rope
from study.probes import format_tables as format_probe_tables
from study.probes import probe_runs
from study.probes import write_outputs as write_probe_outputs
from study.runs import group_variants, parse_variants, read_config, run_dtype, variant_key, variant_labels, variant_name
from sample import load_model, sample
from train import (FIELD_TYPES, TrainConfig, add_config_flags, build_parser, config_differences, config_from_args,
                   config_json, explain, provenance, read_config_file, train, why_not_continued)

ARTICLE_ENCODINGS = ["rope", "learned", "none"]


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


def make_configs(args, variants, seeds, learning_rates=None):
    """One TrainConfig per variant (x learning rate) x seed, named <config stem>/<variant>_seed<seed>.
    A learning rate r comes with min_lr = r / 10, as in the config files."""
    base = config_from_args(args)
    pick_device(base.device)  # a device this machine lacks: one line now, not after the first run's set-up
    rates = [{}] if not learning_rates else [{"learning_rate": r, "min_lr": float(f"{r / 10:.6g}")}
                                              for r in learning_rates]
    group, cfgs = Path(args.config).stem, []
    for enc, overrides in variants:
        for rate in rates:
            changed = {k: v for k, v in {**overrides, **rate}.items() if getattr(base, k) != v}
            for seed in seeds:
                cfgs.append(config_from_args(args, pos_encoding=enc, seed=seed, **changed,
                                             run_name=f"{group}/{variant_name(enc, changed)}_seed{seed}"))
    unique = list({cfg.run_name: cfg for cfg in cfgs}.values())  # "rope,rope:rope_theta=10000" is one variant
    return unique


def train_command(cfg, config_path):
    """The train.py command that trains cfg: the config file plus a flag for every setting in which
    cfg differs from it (python train.py --help lists them)."""
    base = TrainConfig(**read_config_file(config_path)) if config_path else TrainConfig()
    flags = []
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if value != getattr(base, f.name) or f.name in ("seed", "run_name", "out_dir"):
            flag = "--" + f.name.replace("_", "-")
            flags += ([flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)])
    return shlex.join(["python", "train.py", *([str(config_path)] if config_path else []), *flags])


def print_commands(cfgs, config_path, overwrite, then):
    """Print the train.py command of every run that is not finished yet (any scheduler can run them:
    each writes its own record), then what rebuilds the report from the finished runs."""
    todo = [cfg for cfg in cfgs if plan(cfg, overwrite, provenance(cfg)) != "reuse"]
    for cfg in todo:
        print(train_command(cfg, config_path))
    print(f"# {len(todo)} of {len(cfgs)} runs to train; once they have finished, {then}", file=sys.stderr)


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
    provs = {}  # the evaluated text depends on the data and the block size only, the dtype on the device
    keys = [(cfg.data_dir, cfg.block_size, cfg.dtype, cfg.device) for cfg in cfgs]
    for key, cfg in zip(keys, cfgs):
        if key not in provs:
            provs[key] = provenance(cfg)
    # refuse a changed run before training anything
    actions = [plan(cfg, overwrite, provs[key]) for key, cfg in zip(keys, cfgs)]
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


def mean_std(values, fmt="{:.4f}"):
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


class Study:
    """Finished runs read back: their configs and summaries, grouped into variants (runs that
    differ only in the seed) and labelled (runs.py)."""

    def __init__(self, run_dirs):
        self.run_dirs = [Path(d) for d in run_dirs]
        self.configs = [read_config(d) for d in self.run_dirs]
        self.summaries = [read_json(d / "summary.json", "retrain the run") for d in self.run_dirs]
        self.groups = group_variants(self.configs)  # variant key -> indices of its runs
        self.labels = variant_labels(self.configs, self.groups)

    def runs(self, key):
        return [self.summaries[i] for i in self.groups[key]]

    def encoding(self, key):
        return self.configs[self.groups[key][0]]["pos_encoding"]

    def per_seed(self, key, field):
        return {s["seed"]: s[field] for s in self.runs(key)}

    def pairs(self):
        """Each variant against learned, RoPE against each other variant, the variants of one
        encoding against each other (sinusoidal with and without its sqrt(d) scale), and each
        variant against its neighbour in the order of mean final val loss (so that a whole
        ranking can be read off the table): each unordered pair once, and only pairs that share
        a seed."""
        keys = list(self.groups)
        candidates = [(k, b) for b in keys if self.encoding(b) == "learned" for k in keys]
        candidates += [(r, k) for r in keys if self.encoding(r) == "rope" for k in keys]
        candidates += [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:] if self.encoding(a) == self.encoding(b)]
        ranked = sorted(keys, key=lambda k: statistics.mean(self.per_seed(k, "final_val_loss").values()))
        candidates += list(zip(ranked, ranked[1:]))
        pairs, seen = [], set()
        for a, b in candidates:
            shared = self.per_seed(a, "seed").keys() & self.per_seed(b, "seed").keys()
            if a != b and frozenset((a, b)) not in seen and shared:
                seen.add(frozenset((a, b)))
                pairs.append((a, b))
        return pairs


def undecided_variants(study):
    """The variant keys (runs.variant_key) of the variants in a pair whose interval, on val or
    on test, contains 0."""
    close = set()
    for a, b in study.pairs():
        for split in ("val", "test"):
            field = f"final_{split}_loss"
            if verdict(paired(study.per_seed(a, field), study.per_seed(b, field))) == "undecided":
                close |= {a, b}
    return close


def results_table(study):
    """Markdown table, one row per variant; with several seeds, mean ± std over them."""
    lines = ["| variant | parameters | best val loss | at step | final train loss | final val loss | final test loss "
             "| wall time (s) | ms/iter | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in study.groups:
        runs = study.runs(key)
        col = lambda field, fmt="{:.4f}": mean_std([r[field] for r in runs], fmt)  # noqa: E731
        lines.append(f"| {study.labels[key]} | {runs[0]['n_params']:,} | {col('best_val_loss')} "
                     f"| {col('best_step', '{:.0f}')} | {col('final_train_loss')} | {col('final_val_loss')} "
                     f"| {col('final_test_loss')} | {col('wall_s', '{:.0f}')} | {col('ms_per_iter', '{:.1f}')} "
                     f"| {len(runs)} |")
    return "\n".join(lines)


def turns_table(study):
    """Per run, how far its val curve rose after its minimum (analysis.turn), and the test loss of
    its best checkpoint (once runs overfit, final losses compare how far each has overfitted, the
    best checkpoints what each can reach); '' when every run's best evaluation is its last."""
    lines = [f"| variant | seed | best val loss | at step | test loss there | lowest mean of {TURN_WINDOW} "
             f"| last mean of {TURN_WINDOW} | rise | noise σ | turned (rise ≥ {TURN_NATS} and > {TURN_SIGMAS}σ) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    any_before_end = False
    for key in study.groups:
        for i in study.groups[key]:
            rows = read_metrics(study.run_dirs[i] / "metrics.csv")
            val = [float(r["val_loss"]) for r in rows]
            t = turn(val)
            noise = "–" if t["noise"] is None else f"{t['noise']:.4f}"
            any_before_end |= t["best"] < len(rows) - 1
            lines.append(f"| {study.labels[key]} | {study.summaries[i]['seed']} | {val[t['best']]:.4f} "
                         f"| {rows[t['best']]['step']} | {study.summaries[i]['best_test_loss']:.4f} "
                         f"| {t['lowest_mean']:.4f} | {t['last_mean']:.4f} "
                         f"| {t['rise']:+.4f} | {noise} | {'yes' if t['turned'] else 'no'} |")
    return "\n".join(lines) if any_before_end else ""


def differences_table(study):
    """The paired differences of final losses (analysis.py), or '' when there is nothing to pair."""
    pairs = study.pairs()
    if not pairs:
        return ""
    values = {k: {"val": study.per_seed(k, "final_val_loss"), "test": study.per_seed(k, "final_test_loss")}
              for k in study.groups}
    return paired_table(values, pairs, study.labels)


# --- samples and their real-word share ----------------------------------------------

SAMPLING = dict(prompt="\n", num_samples=20, temperature=0.8, top_k=None)  # the article's prompt


def run_samples(run_dir, seed, tokens):
    """SAMPLING's samples of `tokens` characters from a run's best checkpoint (the sliding-window
    sampler), without the prompt; kept in the run's samples.json and reused while SAMPLING holds."""
    dtype = run_dtype(run_dir)
    settings = {**SAMPLING, "max_new_tokens": tokens, "seed": seed, **({"dtype": dtype} if dtype != "float32" else {})}
    path = Path(run_dir) / "samples.json"
    if path.exists():
        kept = read_json(path, "delete it")
        if kept.get("settings") == settings:
            return kept["samples"]
    model, vocab = load_model(run_dir)
    announce_dtype(dtype, "cpu")
    with autocast(dtype, "cpu"):  # sampled in the precision it was trained in
        texts = sample(model, vocab, SAMPLING["prompt"], SAMPLING["num_samples"], tokens, SAMPLING["temperature"],
                       SAMPLING["top_k"], seed)
    texts = [t[len(SAMPLING["prompt"]):] for t in texts]  # the generated part only
    write_json(path, {"settings": settings, "samples": texts})
    return texts


def train_vocabulary(data_dir):
    """The set of lower-cased words of the train split (analysis.words)."""
    chars = load_meta(data_dir)["chars"]
    return set(words("".join(chars[i] for i in load_tokens(data_dir, "train").tolist())))


def samples_report(study, tokens, progress=True):
    """samples.md (one sample per variant, its first seed) and a markdown table of real-word shares."""
    vocabulary = train_vocabulary(study.configs[0]["data_dir"])
    texts, metrics = {}, {}
    for i in tqdm(range(len(study.run_dirs)), desc="samples", disable=not progress, dynamic_ncols=True):
        texts[i] = run_samples(study.run_dirs[i], study.configs[i]["seed"], tokens)
        metrics[i] = real_word_shares(texts[i], vocabulary)
    n = SAMPLING["num_samples"]
    lines = [f"| variant | real words, all | real words, 5+ letters | words per run | seeds |", "|---|---:|---:|---:|---:|"]
    parts = [f"# One sample per variant ({tokens} characters from a single newline; temperature "
             f"{SAMPLING['temperature']}, no top-k, sliding {study.configs[0]['block_size']}-character context)\n"]
    for key, idx in study.groups.items():
        col = lambda field: mean_std([metrics[i][field] for i in idx], "{:.3f}")  # noqa: E731
        lines.append(f"| {study.labels[key]} | {col('real')} | {col('real_long')} "
                     f"| {mean_std([metrics[i]['words'] for i in idx], '{:.0f}')} | {len(idx)} |")
        first = idx[0]
        parts.append(f"## {study.labels[key]} (seed {study.configs[first]['seed']})\n\n"
                     f"```text\n{texts[first][0].strip()}\n```\n")
    note = (f"Share of generated words found in the train split's vocabulary ({len(vocabulary):,} words; a word is"
            f" a maximal run of letters and apostrophes, lower-cased; every occurrence counts). {n} samples of"
            f" {tokens} characters per run from its best checkpoint, from a single newline, temperature"
            f" {SAMPLING['temperature']}, no top-k, each character predicted from the last block_size characters;"
            f" mean ± std over seeds.")
    return "\n".join(lines) + "\n\n" + note, "\n".join(parts)


def machine():
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def parse_seeds(text):
    try:
        seeds = list(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UserError("--seeds is empty")
    return seeds


def write_report(study, plots_dir, title, args, extrapolate=False, t0=None, intro="", methods=SCALINGS):
    """Everything a study's readers look at, in plots_dir: the loss curves, results.md (`intro`,
    results table, paired differences, where the val loss turns, real-word shares,
    extrapolation) and samples.md."""
    t0 = t0 or time.time()
    plots_dir = Path(plots_dir)
    plots = plot_runs(study.run_dirs, plots_dir)
    sections = [f"# {title}\n", *([intro] if intro else []), results_table(study), ""]
    diffs = differences_table(study)
    if diffs:
        sections += ["## Paired differences\n", diffs, "",
                     "Per seed, a − b of the final loss (both runs share initial weights and batches); 95% CI:"
                     " mean ± t(0.975, seeds − 1) · sd / √seeds; \"not decided\" where it contains 0. Each"
                     " interval is 95% on its own: with this many rows, one may miss by chance.", ""]
    turns = turns_table(study)
    if turns:
        sections += ["## Where the val loss turns\n", turns, "",
                     f"Means of {TURN_WINDOW} consecutive evaluations; rise: from the lowest to the last (0"
                     f" when the last is the lowest). Noise σ: the evaluation-to-evaluation wobble over the"
                     f" second half of the run (sd of successive differences / √2; – with fewer than"
                     f" {2 * TURN_WINDOW} evaluations).", ""]
    words_table, samples_md = samples_report(study, args.sample_tokens, study.configs[0]["progress"])
    sections += ["## Samples: real words\n", words_table, ""]
    if extrapolate:
        t_eval = time.time()
        results = evaluate_runs(study.run_dirs, scalings=methods, device=pick_device(study.configs[0]["device"]),
                                progress=study.configs[0]["progress"])
        write_outputs(results, plots_dir)
        c = study.configs[0]
        plot_rope(c["n_embd"] // c["n_head"], c["rope_theta"], c["block_size"], plots_dir / "rope_decay.png")
        sections += [f"## Length extrapolation (val loss; evaluate.py, {time.time() - t_eval:.0f} s)\n",
                     f"```text\n{format_table(results)}\n```", ""]
        print(format_table(results))
        t_probe = time.time()
        probes = probe_runs(study.run_dirs, device=pick_device(c["device"]), progress=c["progress"])
        write_probe_outputs(probes, plots_dir)
        sections += [f"## How far back the models read (probes.py, {time.time() - t_probe:.0f} s)\n",
                     "Attention-weighted mean distance (characters) per layer, mean over heads and seeds:\n",
                     format_probe_tables(probes), ""]
        print(format_probe_tables(probes))
    command = command_line()
    sections += [f"Machine: {machine()}; each run's threads are in its summary.json (runs trained side by side"
                 f" with --jobs share the cores, so each one's wall time and ms/iter are longer than alone).  ",
                 f"Wall time of this command: {time.time() - t0:.0f} s (a run reused from an earlier invocation"
                 f" costs nothing).  ", f"Evaluated text: {json.dumps(study.configs[0]['provenance'])}.  ",
                 f"Regenerate with `{command}`.", ""]
    write_text(plots_dir / "results.md", "\n".join(sections))
    write_text(plots_dir / "samples.md", samples_md)
    print(results_table(study))
    if diffs:
        print(diffs)
    print(words_table)
    print(f"wrote {plots_dir}/{', '.join(p.name for p in plots)}, results.md, samples.md")


def add_study_flags(parser, encodings_default):
    parser.set_defaults(config=CPU_CONFIG)
    parser.add_argument("--pos-encodings", default=encodings_default,
                        help="comma-separated variants: an encoding (" + ", ".join(POS_ENCODINGS) + ") or 'all', each "
                             "optionally with settings, ENCODING:KEY=VALUE[:KEY=VALUE], e.g. "
                             f"sinusoidal:sinusoidal_scale=false (default: {encodings_default})")
    parser.add_argument("--plots-dir", default="plots", help="where plots and tables go (default: plots)")
    parser.add_argument("--sample-tokens", type=positive(int), default=500,
                        help="characters per sample for samples.md and the real-word shares (default: 500)")
    parser.add_argument("--overwrite", action="store_true",
                        help="retrain runs whose directory holds a run with other settings or evaluated another way"
                             " (default: refuse)")
    parser.add_argument("--jobs", type=positive(int), default=1,
                        help="CPU: runs trained at a time, each in its own process with an equal share of torch's "
                             "threads (default: 1, one run after another with all threads)")
    parser.add_argument("--print-commands", action="store_true",
                        help="train nothing: print a train.py command for each run not finished yet, to run with any"
                             " scheduler (GNU parallel, a SLURM array, ...); the same command without this flag"
                             " then reuses them and writes the report")


def main():
    parser = build_parser(__doc__)
    add_study_flags(parser, ",".join(ARTICLE_ENCODINGS))
    parser.add_argument("--seeds", default="1337", help="comma-separated seeds, one run per variant and seed (default: 1337)")
    parser.add_argument("--seeds-if-undecided", default="", metavar="SEEDS",
                        help="more seeds for the variants of every pair whose paired interval (val or test) contains 0"
                             " after --seeds, e.g. 1340,1341 (default: none)")
    parser.add_argument("--extrapolate", action="store_true",
                        help="afterwards, evaluate every run at 1x, 2x, 4x, 8x its block size (evaluate.py), run the"
                             " attention-distance and copy probes (probes.py) and draw the RoPE decay picture"
                             " (plot_rope.py)")
    parser.add_argument("--extrapolate-methods", default=",".join(SCALINGS), metavar="METHODS",
                        help="with --extrapolate: the RoPE context-extension methods rope runs are also read with"
                             " (evaluate.py --rope-scaling): none (plain), linear, ntk, dynamic-ntk, yarn"
                             " (default: all)")
    add_config_flags(parser, exclude=("pos_encoding", "run_name", "seed"))
    args = parser.parse_args()

    variants = parse_variants(args.pos_encodings, FIELD_TYPES)
    seeds = parse_seeds(args.seeds)
    methods = [m.strip() for m in args.extrapolate_methods.split(",") if m.strip()]
    if not methods or set(methods) - set(SCALINGS):
        raise UserError(f"--extrapolate-methods takes some of {', '.join(SCALINGS)}, got {args.extrapolate_methods!r}")
    base = config_from_args(args)  # flags over the config file over the defaults, before per-run settings
    if args.jobs > 1 and pick_device(base.device) != "cpu":
        raise UserError(f"--jobs trains runs side by side on the CPU; on {pick_device(base.device)} train one at a time")
    more = parse_seeds(args.seeds_if_undecided) if args.seeds_if_undecided.strip() else []
    t0 = time.time()
    cfgs = make_configs(args, variants, seeds)
    if args.print_commands:
        then = "the same command without --print-commands writes the report" + (
            " (and first trains the seeds of --seeds-if-undecided that the pairs need)" if more else "")
        return print_commands(cfgs, args.config, args.overwrite, then)
    train_runs(cfgs, args.overwrite, args.jobs)
    study = Study([Path(cfg.out_dir) / cfg.run_name for cfg in cfgs])
    if more:
        close = undecided_variants(study)
        extra = [cfg for cfg in make_configs(args, variants, more) if variant_key(config_json(cfg)) in close]
        print(f"{len(close)} variant(s) in pairs the seeds do not decide: {len(more)} more seed(s) each")
        train_runs(extra, args.overwrite, args.jobs)
        study = Study([Path(cfg.out_dir) / cfg.run_name for cfg in cfgs + extra])
    write_report(study, args.plots_dir, f"Results: {Path(args.config).stem}", args, args.extrapolate, t0,
                 methods=methods)
    total = time.time() - t0
    print(f"total wall time: {total:.0f} s ({total / 60:.1f} min)")


if __name__ == "__main__":
    run_cli(main)
