"""The committed run records (records/<config>/<run>/: config.json, metrics.csv, summary.json,
samples.json) regenerate the committed tables with no training and no checkpoint."""

import argparse
import json
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from common import read_metrics
from conftest import ROOT, run
from study import evaluate, plot_bias
from study.ablations import report
from study.compare import add_length_flags
from study.probes import format_tables as format_probe_tables
from study.studies import STUDIES
from study.training import run_group

CORPUS = Path(os.environ.get("SHAKESPEARE_INPUT", ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
TIMING = ("wall time (s)", "ms/iter")  # measured, not computed: they differ from machine to machine


def prepare_data(tmp_path):
    """The corpus prepared into tmp_path/data; skipped without a corpus, failed under CI (which sets one)."""
    if not CORPUS.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"no corpus at {CORPUS} (CI sets SHAKESPEARE_INPUT)")
        pytest.skip(f"no corpus at {CORPUS} (set SHAKESPEARE_INPUT)")
    run("prepare_shakespeare.py", "--input", CORPUS, "--out-dir", tmp_path / "data")


# study: (its records folder, how many runs it reuses); each is run as
# study/studies.py defines it, without the length study, which needs checkpoints (its tables are compared as
# study.evaluate and study.probes print them from their JSON), except a task study's, whose records keep the
# counts it reads
RECORDED = {"baseline": ("shakespeare_char_cpu", 9), "lr_sweep": ("shakespeare_char_cpu", 102),
            "encodings": ("shakespeare_char_cpu", 56), "rope_study": ("shakespeare_char_cpu", 7),
            "rope_break": ("shakespeare_char_cpu", 73), "passkey": ("shakespeare_char_cpu-passkey", 30),
            "copy": ("shakespeare_char_cpu-copy", 30)}


def length_study_flags():
    """{flag: how many values follow it} of the length study (study.compare's add_length_flags)."""
    parser = argparse.ArgumentParser()
    add_length_flags(parser)
    return {flag: 0 if action.nargs == 0 else 1 for action in parser._actions for flag in action.option_strings
            if flag not in ("-h", "--help")}


LENGTH_STUDY = length_study_flags()


def without_length_study(flags):
    """A study's flags less the length study's (LENGTH_STUDY: each flag and the values it takes)."""
    out, it = [], iter(flags)
    for flag in it:
        if flag in LENGTH_STUDY:
            for _ in range(LENGTH_STUDY[flag]):
                next(it)
        else:
            out.append(flag)
    return out


def test_the_length_study_s_flags_and_their_values_are_left_out():
    assert without_length_study(["--pos-encodings", "x", "--extrapolate", "--extrapolate-methods", "none,ntk",
                                 "--ablations", "log-scale", "--seeds-if-undecided", "1"]) == [
        "--pos-encodings", "x", "--seeds-if-undecided", "1"]


def tables(markdown):
    """{(table header, first cell): {column: cell}} for every row of every table in a markdown text."""
    rows, header = {}, None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = tuple(cells)
        elif not set(line) <= set("|-: "):
            rows[header, cells[0]] = dict(zip(header, cells))
    return rows


def rows_by_table(markdown):
    """{table header: its rows} for every table in a markdown text, a row its cells but the timing columns
    (tables of one header pooled)."""
    rows, header = defaultdict(list), None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = tuple(cells)
        elif not set(line) <= set("|-: "):
            rows[header].append(tuple(cell for column, cell in zip(header, cells) if column not in TIMING))
    return rows


def missing(committed, regenerated):
    """What of committed's tables regenerated lacks, by name: a table (its header), a row of a table, a line of
    a plain-text table (```text)."""
    ours, lines = rows_by_table(regenerated), set(regenerated.splitlines())
    out = []
    for header, rows in rows_by_table(committed).items():
        if header not in ours:
            out.append(f"table | {' | '.join(header)} |")
        else:
            out += [f"row | {' | '.join(row)} | of table | {' | '.join(header)} |"
                    for row in rows if row not in ours[header]]
    text = [line for block in re.findall(r"```text\n(.*?)\n```", committed, re.S) for line in block.splitlines()]
    return out + [f"line {line!r} of a text table" for line in text if line not in lines]


def test_missing_names_a_lost_table_a_lost_row_and_a_lost_line():
    committed = ("| a | b | wall time (s) |\n|---|---:|---:|\n| x | 1 | 10 |\n| y | 2 | 20 |\n\n| c | d |\n|---|---|\n"
                 "| x | 3 |\n\n```text\nloss   64\nRoPE   1.7\n```\n")
    assert missing(committed, committed.replace("| 10 |", "| 11 |")) == []  # (a timing column)
    regenerated = committed.replace("| y | 2 | 20 |\n", "").replace("| c | d |", "| c | e |").replace("1.7", "1.8")
    assert missing(committed, regenerated) == ["row | y | 2 | of table | a | b | wall time (s) |", "table | c | d |",
                                               "line 'RoPE   1.7' of a text table"]
    assert missing(regenerated, committed) == ["table | c | e |", "line 'RoPE   1.8' of a text table"]


def test_tables_parse_rows_by_header_and_first_cell():
    text = "# t\n\n| a | b |\n|---|---:|\n| x | 1 |\n| y | 2 |\n\ntext\n\n| a | c |\n|---|---|\n| x | 3 |\n"
    assert tables(text) == {(("a", "b"), "x"): {"a": "x", "b": "1"}, (("a", "b"), "y"): {"a": "y", "b": "2"},
                            (("a", "c"), "x"): {"a": "x", "c": "3"}}


@pytest.mark.parametrize("study", list(RECORDED))
def test_records_regenerate_the_committed_tables(study, tmp_path):
    folder, runs = RECORDED[study]
    module, config, *flags = STUDIES[study].main
    task = "--task" in flags  # (a task study's length study reads the counts its records keep: it stays)
    module, flags, seeds = f"study.{module}", flags if task else without_length_study(flags), STUDIES[study].seeds
    report = ROOT / STUDIES[study].plots_dir / "results.md"
    records = ROOT / "records" / folder
    prepare_data(tmp_path)
    shutil.copytree(records, tmp_path / "out" / folder)  # the study may write beside them: not into the repo
    proc = run(module, ROOT / config, "--seeds", seeds, *flags,
               "--data-dir", tmp_path / "data", "--out-dir", tmp_path / "out", "--plots-dir", tmp_path / "plots")
    assert proc.stdout.count("finished earlier, reusing it") == runs
    assert not re.search(r": best val loss [0-9.]+ at step", proc.stdout)  # what a run trained here prints
    regenerated, committed = (tmp_path / "plots" / "results.md").read_text(), report.read_text()
    if not task and "--extrapolate" in STUDIES[study].main:  # the length study's tables, left out, from its JSON
        lengths, probes = (json.loads(report.with_name(f).read_text()) for f in ("extrapolation.json", "probes.json"))
        regenerated += f"\n{evaluate.format_table(lengths)}\n\n{format_probe_tables(probes)}\n"
    assert not missing(committed, regenerated)  # no table, row or line lost
    gained = [what for what in missing(regenerated, committed) if what.startswith("row")]  # (tables added since
    assert not gained                                                                       # are not compared)
    assert sum(map(len, rows_by_table(committed).values())) >= (2 if task else 9)  # the results, the paired
    for name in ("retrieval.md",) if task else ("samples.md",):                   # differences (and the real words)
        assert not missing(report.with_name(name).read_text(), (tmp_path / "plots" / name).read_text())
        assert (tmp_path / "plots" / name).read_text() == report.with_name(name).read_text()


# task study: how many runs its fine-tunes reuse (the trained runs and the fine-tunes), from records/<config>-<task>
# and records/<config>-<task>_finetune, whose retrieval.json keep the counts the fine-tunes' table is read from
FINETUNES_RECORDED = {"passkey": 12, "copy": 12}


def rooted(flags):
    """A study command's flags with its config/ file named from the repository, for a run in tmp_path."""
    return [str(ROOT / f) if f.startswith("config/") else f for f in flags]


@pytest.mark.parametrize("study", list(FINETUNES_RECORDED))
def test_task_fine_tunes_regenerate_their_committed_table(study, tmp_path):
    (module, *flags), = [c for c in STUDIES[study].commands(plots_dir="plots") if c[0] == "study.finetune"]
    folder = RECORDED[study][0]
    prepare_data(tmp_path)
    for name in (folder, f"{folder}_finetune"):
        shutil.copytree(ROOT / "records" / name, tmp_path / "out" / name)
    flags = rooted(flags)
    # (run where the records' init_from, out/<config>-<task>/rope_seedN, points: in tmp_path)
    proc = run(module, *flags, "--data-dir", "data", "--out-dir", "out", cwd=tmp_path)
    assert proc.stdout.count("finished earlier, reusing it") == FINETUNES_RECORDED[study]
    committed = ROOT / STUDIES[study].plots_dir / "finetune" / "retrieval.md"
    assert (tmp_path / "plots" / "finetune" / "retrieval.md").read_text() == committed.read_text()


def test_the_tables_of_the_length_study_and_of_the_biases_regenerate_from_their_json():
    """extrapolation.md and learned_bias.md are written from the JSON beside them, which needs no checkpoint."""
    written = {path: module for module in (evaluate, plot_bias)
               for path in (ROOT / "plots").glob(f"*/{'extrapolation' if module is evaluate else 'learned_bias'}.md")}
    assert len(written) >= 6
    for path, module in written.items():
        assert path.read_text() == module.markdown(json.loads(path.with_suffix(".json").read_text())), path


def test_the_ablation_verdicts_regenerate_from_the_committed_length_study():
    """A study's ablations.md is written from the extrapolation.json beside it, which needs no checkpoint."""
    studies = {name: s for name, s in STUDIES.items() if any(step[0] == "ablations" for step in s.after)}
    assert studies
    for name, study in studies.items():
        plots = ROOT / study.plots_dir
        results = json.loads((plots / "extrapolation.json").read_text())
        assert report(results, f"python -m study {name}") == (plots / "ablations.md").read_text(), name


def test_the_recall_pilots_records_give_the_control_their_readme_quotes(tmp_path):
    """Recall is not studied because its control fails at 10,000 steps: the records say so, not only the prose."""
    pilots = ROOT / "records" / "pilots" / "recall-10000-steps"
    shutil.copytree(pilots, tmp_path / "recall")
    printed = tables(run("study.retrieval", tmp_path / "recall", "--plots-dir", tmp_path / "plots").stdout)
    at_64 = {first: row["64 (1x)"] for (header, first), row in printed.items() if header[:2] == ("variant", "64 (1x)")}
    seeds = {name: cell.split("(")[-1].rstrip(")") for name, cell in at_64.items()}
    assert seeds == {"RoPE": "100/100/69", "FIRE": "100/99/12", "T5 bias": "96", "ALiBi": "44"}

    def onset(run):  # the first evaluation above 20% val exact match (chance is 1 in 8)
        return next((row["step"] for row in read_metrics(pilots / run / "metrics.csv")
                     if float(row["val_exact"]) > 0.2), None)
    rope, fire = ([onset(f"{e}_seed{s}") for s in (1337, 1338, 1339)] for e in ("rope", "fire"))
    assert fire[2] is None  # FIRE's seed 1339 has not left chance by its last step
    pooled = {name: cell.split()[0] for name, cell in at_64.items()}
    readme = " ".join((ROOT / "records" / "pilots" / "README.md").read_text().split())
    assert (f"at step {rope[0]}, {rope[1]} and {rope[2]} for RoPE (seeds 1337/1338/1339) and {fire[0]},"
            f" {fire[1]} and none by step 10,000 for FIRE") in readme
    assert (f"T5 {onset('t5_seed1337')}, ALiBi {onset('alibi_seed1337')}") in readme
    control = f"RoPE recalls {seeds['RoPE']}% and FIRE {seeds['FIRE']}%"
    assert f"{control} (T5 {pooled['T5 bias']} and ALiBi {pooled['ALiBi']}, one seed each" in readme
    # where the choice of the copy is explained (studies.py in a comment: its #s are dropped)
    code = {path: " ".join((ROOT / path).read_text().replace("#", "").split())
            for path in ("tasks.py", "study/studies.py")}
    for text in code.values():
        assert f"RoPE {seeds['RoPE']}%, FIRE {seeds['FIRE']}%" in text
    assert f"RoPE at step {rope[0]}, {rope[1]} and {rope[2]}" in code["tasks.py"]


# the mechanism study's task commands (study/studies.py), each with the runs it reuses from records/ (the folder of
# its --out-dir below out/, then <config>-<task>), whose retrieval.json keep every reading's counts and far-key mass
MECHANISM_RECORDED = {"passkey": 15, "windowed": 15, "copy": 15, "windowed_copy": 12}


@pytest.mark.parametrize("folder", list(MECHANISM_RECORDED))
def test_the_mechanism_study_s_task_tables_regenerate_from_the_records(folder, tmp_path):
    commands = [c for c in STUDIES["mechanism"].commands(plots_dir="plots")
                if "--plots-dir" in c and c[c.index("--plots-dir") + 1] == f"plots/{folder}"]
    (module, *flags), = commands
    prepare_data(tmp_path)
    out = flags[flags.index("--out-dir") + 1] if "--out-dir" in flags else "out"
    group = Path(out).relative_to("out") / f"shakespeare_char_cpu-{flags[flags.index('--task') + 1]}"
    shutil.copytree(ROOT / "records" / group, tmp_path / "out" / group)
    flags = rooted(flags) + ([] if "--out-dir" in flags else ["--out-dir", "out"])
    proc = run(module, *flags, "--data-dir", "data", cwd=tmp_path)
    assert proc.stdout.count("finished earlier, reusing it") == MECHANISM_RECORDED[folder]
    committed = ROOT / "plots" / "mechanism" / folder / "retrieval.md"
    assert (tmp_path / "plots" / folder / "retrieval.md").read_text() == committed.read_text()


def test_the_training_length_study_regenerates_from_the_records(tmp_path):
    # its runs at every length but 64 (whose rung is the task studies' committed readings), reused, not trained
    prepare_data(tmp_path)
    *trains, (module, *flags) = STUDIES["train_length"].commands(plots_dir="plots/train_length")
    for train_module, *train_flags in trains:
        value = dict(zip(train_flags, train_flags[1:]))
        # the group its runs go to: shakespeare_char_cpu-passkey-L32, and shakespeare_char_cpu-passkey at 64
        group = run_group(ROOT / train_flags[0], SimpleNamespace(task=value["--task"],
                                                                 block_size=int(value["--block-size"])))
        if not (tmp_path / "out" / group).exists():
            shutil.copytree(ROOT / "records" / group, tmp_path / "out" / group)
        proc = run(train_module, *rooted(train_flags), "--data-dir", "data", "--out-dir", "out", cwd=tmp_path)
        runs = len(value["--pos-encodings"].split(",")) * len(value["--seeds"].split(","))
        assert proc.stdout.count("finished earlier, reusing it") == runs  # every run reused, none retrained
    run(module, *flags, cwd=tmp_path)
    committed = ROOT / "plots" / "train_length" / "lengths.md"
    assert (tmp_path / "plots" / "train_length" / "lengths.md").read_text() == committed.read_text()
