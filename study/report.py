"""
A study's report: its finished runs (study.runs.Runs) in tables, results.md and
samples.md beside the loss plots. It measures nothing: samples and the length study's
results come in from the modules that measure them.
"""

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from common import command_line, read_metrics, write_text
from study.analysis import (IMPROVING, TURN_NATS, TURN_SIGMAS, TURN_WINDOW, mean_std, paired_table,
                            still_improving, turn)
from study.evaluate import format_table
from study.probes import format_tables as format_probe_tables
from study.samples import samples_report


def variant_pairs(study):
    """Each variant against learned, RoPE against each other variant, the variants of one
    encoding against each other (sinusoidal with and without its sqrt(d) scale), and each
    variant against its neighbour in the order of mean final val loss (so that a whole
    ranking can be read off the table): each unordered pair once, and only pairs that share
    a seed."""
    keys = list(study.groups)
    candidates = [(k, b) for b in keys if study.encoding(b) == "learned" for k in keys]
    candidates += [(r, k) for r in keys if study.encoding(r) == "rope" for k in keys]
    candidates += [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:] if study.encoding(a) == study.encoding(b)]
    ranked = sorted(keys, key=lambda k: statistics.mean(study.per_seed(k, "final_val_loss").values()))
    candidates += list(zip(ranked, ranked[1:]))
    out, seen = [], set()
    for a, b in candidates:
        shared = study.per_seed(a, "seed").keys() & study.per_seed(b, "seed").keys()
        if a != b and frozenset((a, b)) not in seen and shared:
            seen.add(frozenset((a, b)))
            out.append((a, b))
    return out


def results_table(study):
    """Markdown table, one row per variant; with several seeds, mean ± std over them. Task runs
    (train.py --task) add their exact match on val and test (the losses are the answers' only)."""
    task = "final_val_exact" in study.runs(next(iter(study.groups)))[0]
    exact = " final val exact match | final test exact match |" if task else ""
    lines = ["| variant | parameters | best val loss | at step | final train loss | final val loss | final test loss "
             f"|{exact} wall time (s) | ms/iter | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * task]
    for key in study.groups:
        runs = study.runs(key)
        col = lambda field, fmt="{:.4f}": mean_std([r[field] for r in runs], fmt)  # noqa: E731
        exact = f" {col('final_val_exact', '{:.3f}')} | {col('final_test_exact', '{:.3f}')} |" if task else ""
        lines.append(f"| {study.labels[key]} | {runs[0]['n_params']:,} | {col('best_val_loss')} "
                     f"| {col('best_step', '{:.0f}')} | {col('final_train_loss')} | {col('final_val_loss')} "
                     f"| {col('final_test_loss')} |{exact} {col('wall_s', '{:.0f}')} | {col('ms_per_iter', '{:.1f}')} "
                     f"| {len(runs)} |")
    return "\n".join(lines)



def run_still_improving(run_dir):
    """Whether a run's val loss (its metrics.csv) is still improving at its last step (analysis.still_improving)."""
    return still_improving([float(r["val_loss"]) for r in read_metrics(Path(run_dir) / "metrics.csv")])


def improving_table(study):
    """Task studies: per variant, the seeds still improving at their last step (run_still_improving)."""
    lines = [f"| variant | still improving at the last step (a new best val loss in one of its last {IMPROVING}"
             f" evaluations) |", "|---|---|"]
    for key in study.groups:
        seeds = [study.summaries[i]["seed"] for i in study.groups[key] if run_still_improving(study.run_dirs[i])]
        lines.append(f"| {study.labels[key]} | {len(seeds)} of {len(study.groups[key])}"
                     + (f" ({', '.join(map(str, seeds))})" if seeds else "") + " |")
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
    pairs = variant_pairs(study)
    if not pairs:
        return ""
    values = {k: {"val": study.per_seed(k, "final_val_loss"), "test": study.per_seed(k, "final_test_loss")}
              for k in study.groups}
    return paired_table(values, pairs, study.labels)



def machine():
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"



def write_report(study, plots_dir, title, samples, sample_tokens, t0=None, intro="", lengths=None):
    """A study's tables in plots_dir: results.md (`intro`, results table, paired differences, where
    the val loss turns, real-word shares, and the length study's tables when `lengths` holds them:
    measure_lengths in study.compare) and samples.md. samples: study.samples.collect_samples' texts.
    It reads and writes only: the numbers come from the runs' records and `lengths`, the figures
    from study.plot."""
    t0 = t0 or time.time()
    plots_dir = Path(plots_dir)
    sections = [f"# {title}\n", *([intro] if intro else []), results_table(study), ""]
    diffs = differences_table(study)
    if diffs:
        sections += ["## Paired differences\n", diffs, "",
                     "Per seed, a − b of the final loss (both runs share initial weights and batches); 95% CI:"
                     " mean ± t(0.975, seeds − 1) · sd / √seeds; \"not decided\" where it contains 0. Each"
                     " interval is 95% on its own: with this many rows, one may miss by chance.", ""]
    if "final_val_exact" in study.summaries[0]:  # (a task's budget is read with how far its runs have got)
        sections += ["## Still improving\n", improving_table(study), ""]
    turns = turns_table(study)
    if turns:
        sections += ["## Where the val loss turns\n", turns, "",
                     f"Means of {TURN_WINDOW} consecutive evaluations; rise: from the lowest to the last (0"
                     f" when the last is the lowest). Noise σ: the evaluation-to-evaluation wobble over the"
                     f" second half of the run (sd of successive differences / √2; – with fewer than"
                     f" {2 * TURN_WINDOW} evaluations).", ""]
    words_table, samples_md = samples_report(study, samples, sample_tokens) if samples else ("", "")
    if samples:  # (a task model's samples are not text)
        sections += ["## Samples: real words\n", words_table, ""]
    if lengths:
        sections += [f"## Length extrapolation (val loss; study.evaluate, {lengths['seconds']:.0f} s)\n",
                     f"```text\n{format_table(lengths['results'])}\n```", ""]
        sections += [f"## How far back the models read (study.probes, {lengths['probe_seconds']:.0f} s)\n",
                     "Attention-weighted mean distance (characters) per layer, mean over heads and seeds:\n",
                     format_probe_tables(lengths["probes"]), ""]
    command = command_line()
    sections += [f"Machine: {machine()}; each run's threads are in its summary.json (runs trained side by side"
                 f" with --jobs share the cores, so each one's wall time and ms/iter are longer than alone).  ",
                 f"Wall time of this command: {time.time() - t0:.0f} s (a run reused from an earlier invocation"
                 f" costs nothing).  ", f"Evaluated text: {json.dumps(study.configs[0]['provenance'])}.  ",
                 f"Regenerate with `{command}`.", ""]
    write_text(plots_dir / "results.md", "\n".join(sections))
    if samples:
        write_text(plots_dir / "samples.md", samples_md)
    print(results_table(study))
    if diffs:
        print(diffs)
    print(words_table)
    print(f"wrote {plots_dir}/results.md" + (" and samples.md" if samples else ""))
