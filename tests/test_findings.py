"""Every number a reader sees in README.md or in a study's findings (plots/**/README.md) was written
by a script: written with three or more decimals, it appears in a generated .md, .json or .csv file
under plots/ or records/, at that precision or as the rounding of a longer number; a table row with
numbers is a row of a generated table, verbatim. And every study's findings file is linked from the
top README."""

import json
import re
from functools import cache

from conftest import ROOT

NUMBER = re.compile(r"(?<![\w.])\d+\.(\d{3,})(?![\d.])")  # 3+ decimals; not part of a version like 2.13.0
ANY_NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?:[eE][-+]?\d+)?")


def findings_files(root=ROOT):
    return [root / "README.md", *sorted((root / "plots").rglob("README.md"))]


def numbers_in_json(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from numbers_in_json(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers_in_json(v)
    elif isinstance(value, str):
        yield from (float(m) for m in ANY_NUMBER.findall(value))


@cache
def generated_numbers(root=ROOT):
    """The absolute values of every number in the generated files, as floats."""
    found = set()
    for folder in ("plots", "records"):
        for path in (root / folder).rglob("*"):
            if path.suffix == ".json":
                found.update(abs(x) for x in numbers_in_json(json.loads(path.read_text())))
            elif path.suffix in (".md", ".csv") and path.name != "README.md":
                found.update(float(m) for m in ANY_NUMBER.findall(path.read_text()))
    return found


@cache
def roundings(decimals, root=ROOT):
    return {f"{x:.{decimals}f}" for x in generated_numbers(root)}


def untraced(text, root=ROOT):
    """The numbers of 3+ decimals in text that no generated file holds at that precision."""
    return [m.group(0) for m in NUMBER.finditer(text) if m.group(0) not in roundings(len(m.group(1)), root)]


def generated_lines(root=ROOT):
    return {line for path in (root / "plots").rglob("*.md") if path.name != "README.md"
            for line in path.read_text().splitlines()}


def copied_rows(text, root=ROOT):
    """The table rows with a decimal number in text that are not lines of a generated table."""
    lines = generated_lines(root)
    return [line for line in text.splitlines()
            if line.startswith("|") and ANY_NUMBER.search(line) and line not in lines]


def test_copied_rows_finds_a_row_edited_by_hand(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "results.md").write_text("| a | b |\n|---|---:|\n| RoPE | 1.7457 |\n| none | 2.0650 |\n")
    text = "| a | b |\n|---|---:|\n| RoPE | 1.7457 |\n| none | 2.065 |\n| `t5` | 32 buckets |\n"
    assert copied_rows(text, tmp_path) == ["| none | 2.065 |"]


def test_every_table_row_in_the_findings_is_a_row_of_a_generated_table():
    copied = {path.relative_to(ROOT).as_posix(): copied_rows(path.read_text()) for path in findings_files()}
    assert not {path: rows for path, rows in copied.items() if rows}


def test_untraced_finds_a_number_no_generated_file_holds(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "records").mkdir()
    (tmp_path / "plots" / "results.md").write_text("| RoPE | 1.74567 ± 0.0053 |\n")
    (tmp_path / "records" / "summary.json").write_text(json.dumps({"val": 2.06504, "note": "at 0.1239"}))
    text = "RoPE 1.7457 (1.746) beats none −2.065 by 0.0053; 0.124; torch 2.13.0; 1.7458 and 9.999 are made up"
    assert untraced(text, tmp_path) == ["1.7458", "9.999"]


def test_every_number_with_three_decimals_in_the_findings_was_written_by_a_script():
    missing = {path.relative_to(ROOT).as_posix(): untraced(path.read_text()) for path in findings_files()}
    assert not {path: numbers for path, numbers in missing.items() if numbers}


def test_every_study_findings_file_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    studies = [path.relative_to(ROOT).as_posix() for path in findings_files()[1:]]
    assert studies, "no plots/<study>/README.md"
    assert [s for s in studies if f"]({s})" not in readme] == []
