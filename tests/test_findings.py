"""Every number a reader sees in README.md or in a study's findings (plots/<study>/README.md) was written
by a script, into a table the reader can open beside the finding: a generated .md (results.md,
retrieval.md, ablations.md, ...) of the study the paragraph is about. For plots/<study>/README.md that is
its own folder; for any findings file, also the folders of the studies the same paragraph links to
(](../copy/README.md), ](plots/copy/results.md)). JSON files, run records and READMEs are not such tables:
a number only they hold is written into a table first.

Checked are the numbers with three or more decimals, and the percentages quoted with their seeds
(99.8% (100/100/99)). Each appears in one of those tables at its precision or as the rounding of a
longer number, with the sign, the ± spread, the [interval] and the (seeds) it is quoted with. A table
row with numbers in a findings file is a row of a generated table, verbatim (and its numbers count as
that table's). Every study's findings file is linked from the top README.

The rule is calibrated on the committed files: a random number rarely traces, and a one-digit typo of a
checked number does not, but for the few in TYPO_COLLISIONS. A percentage without its seeds is not
checked: a task study's tables print hundreds of the values 0.0 to 100.0, and a typo of one of those the
findings quote would trace about one time in five. But a pooled percentage whose every cell has seeds more
than SPLIT points apart must be quoted with them: alone it reads as a mean no model reached."""

import os
import random
import re
from collections import defaultdict
from functools import cache
from pathlib import Path

from conftest import ROOT

NUM = r"[-+]?\d+\.\d+"
# a number as a table prints it, with what may stand beside it: ± its spread, [its interval], (each seed's);
# not a part of a version (2.13.0) or of a word
QUOTE = re.compile(rf"(?<![\w.])(?P<value>{NUM})(?!\d|\.\d)(?P<percent>%?)(?:\s+±\s+(?P<spread>{NUM}))?"
                   rf"(?:\s+\[(?P<lo>{NUM}),\s+(?P<hi>{NUM})\])?(?:\s+\((?P<seeds>\d+(?:/\d+)+)\))?")
NUMBERS = ("value", "spread", "lo", "hi")
BESIDE = ("percent", "spread", "lo", "hi", "seeds")
CODE = re.compile(r"`[^`]*`")  # a number in `code` (or a code block) is part of a name, a flag or a command
LINK = re.compile(r"\]\(([^)\s#]+)")
ITEM = re.compile(r"\s*(?:[-*]|\d+\.)\s")

# the checked numbers whose typo (the last digit one higher) is another number of their paragraph's tables,
# by findings file: values that crowd a narrow range
TYPO_COLLISIONS = {
    "plots/baseline/README.md": ["0.195", "0.057",  # shares of real words, printed with 3 decimals
                                 "1.7154"],  # RoPE's sliding window, one of many losses near 1.71
    "plots/encodings/README.md": ["-0.0013",  # a per-seed difference, one of hundreds near 0
                                  "1.8114", "1.7145"],  # ALiBi's and RoPE's sliding windows at 8x
    "plots/lr_sweep/README.md": ["0.826", "0.827"],  # shares of real words, 0.802 to 0.830 for nine variants
    "plots/mechanism/README.md": ["13.6% (14/10/17)"],  # the windowed hybrid k = 4 at 8x; nope-mask: 13.7%, same seeds
    "plots/rope_break/README.md": ["0.004", "0.008"],  # learning rates, which the tables print with 3 decimals
}


def findings_files(root=ROOT):
    return [root / "README.md", *sorted((root / "plots").rglob("README.md"))]


# --- what a findings file quotes ----------------------------------------------


def paragraphs(text):
    """The prose of a findings file: runs of lines between blank lines, headings and tables; a list item
    with its continuation lines is one paragraph."""
    out, lines = [], []
    for line in text.splitlines() + [""]:
        if not line.strip() or line.startswith(("#", "|")) or ITEM.match(line):
            out += ["\n".join(lines)] if lines else []
            lines = []
        if line.startswith("#"):
            out.append(line)
        elif line.strip() and not line.startswith("|"):
            lines.append(line)
    return out


def quotes(text):
    """Every number in text with what stands beside it, {value, percent, spread, lo, hi, seeds}, but in code;
    a unicode minus read as '-'."""
    return [m.groupdict() for m in QUOTE.finditer(CODE.sub("", text).replace("−", "-"))]


def checked(quote):
    return len(quote["value"].split(".")[1]) >= 3 or bool(quote["percent"] and quote["seeds"])


def shown(quote):
    """A quote as the findings file writes it (a unicode minus as '-')."""
    beside = {"spread": " ± {spread}", "lo": " [{lo}, {hi}]", "seeds": " ({seeds})"}
    return quote["value"] + quote["percent"] + "".join(form.format(**quote) for k, form in beside.items() if quote[k])


# --- where it may come from ---------------------------------------------------


def unsigned(number):
    return number.lstrip("+-")


def rounds_to(quoted, printed):
    """Whether a table's number `printed` reads as `quoted`: the same digits, or fewer by rounding, and the
    same sign (a number quoted without one is not negative)."""
    decimals = len(quoted.split(".")[1])
    if len(printed.split(".")[1]) < decimals:  # (more digits than the table printed)
        return False
    x = float(printed)
    return (x < 0) == quoted.startswith("-") and f"{abs(x):.{decimals}f}" == unsigned(quoted)


class Pool:
    """The quotes in some generated lines, each number also alone, found by every rounding of their value."""

    def __init__(self, lines):
        self.by_value = defaultdict(list)
        for line in lines:
            for q in quotes(line):
                for number in filter(None, (q[k] for k in NUMBERS)):
                    self.add(number, {"value": number, **dict.fromkeys(BESIDE)})
                if any(q[k] for k in BESIDE):
                    self.add(q["value"], q)

    def add(self, number, quote):
        for decimals in range(1, len(number.split(".")[1]) + 1):
            self.by_value[f"{abs(float(number)):.{decimals}f}"].append(quote)

    def holds(self, quote):
        """Whether a table here printed the quote: its value, and all it is quoted with."""
        def beside(k, printed):
            return not quote[k] or bool(printed[k]) and (
                rounds_to(quote[k], printed[k]) if k in NUMBERS else quote[k] == printed[k])
        return any(rounds_to(quote["value"], p["value"]) and all(beside(k, p) for k in BESIDE)
                   for p in self.by_value.get(unsigned(quote["value"]), ()))


def generated_files(folder):
    return sorted(path for path in folder.rglob("*.md") if path.name != "README.md")


def generated_lines(root=ROOT):
    return {line for path in generated_files(root / "plots") for line in path.read_text().splitlines()}


@cache
def study_pool(folder):
    """The generated tables of a study: every .md under its folder but the findings."""
    return Pool(line for path in generated_files(folder) for line in path.read_text().splitlines())


def study_of(path, root=ROOT):
    """plots/<study> of a path inside it, else None."""
    parts = Path(os.path.normpath(path)).parts
    inside, rest = parts[:len(root.parts)] == root.parts, parts[len(root.parts):]
    return root / "plots" / rest[1] if inside and len(rest) >= 2 and rest[0] == "plots" else None


def pools(path, root=ROOT):
    """(paragraph, the pools its numbers may come from) for each paragraph of a findings file: its study's
    tables, those of each study the paragraph links, and the file's own rows of a generated table."""
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("|") and line in generated_lines(root)]
    own = [Pool(rows)] + [study_pool(s) for s in [study_of(path, root)] if s]
    for paragraph in paragraphs(text):
        linked = {study_of(path.parent / target, root) for target in LINK.findall(paragraph)} - {None}
        yield paragraph, own + [study_pool(s) for s in sorted(linked)]


def traced(quote, pools):
    return any(pool.holds(quote) for pool in pools)


def untraced(path, root=ROOT):
    """The checked numbers of a findings file that no table of its paragraph's studies holds."""
    return [shown(q) for paragraph, found in pools(path, root) for q in quotes(paragraph)
            if checked(q) and not traced(q, found)]


def copied_rows(text, root=ROOT):
    """The table rows with a decimal number in text that are not lines of a generated table."""
    lines = generated_lines(root)
    return [line for line in text.splitlines()
            if line.startswith("|") and re.search(NUM, line) and line not in lines]


def typo(number):
    """The number with its last digit one higher (9 becomes 0)."""
    return number[:-1] + str((int(number[-1]) + 1) % 10)


def typo_collisions(root=ROOT):
    """{findings file: the checked numbers a typo of which traces as well, as quoted}."""
    found = defaultdict(list)
    for path in findings_files(root):
        for paragraph, found_in in pools(path, root):
            for q in filter(checked, quotes(paragraph)):
                if any(q[k] and traced({**q, k: typo(q[k])}, found_in) for k in NUMBERS):
                    found[path.relative_to(root).as_posix()].append(shown(q))
    return dict(found)


SPLIT = 30  # seeds further apart than this many points: a pooled percentage must be quoted with them


def split_cells(pool):
    """{pooled percentage: the seeds of the cells that print it, or None where one of them has seeds at
    most SPLIT points apart}."""
    seen = defaultdict(list)
    for candidates in pool.by_value.values():
        for q in candidates:
            if q["percent"] and q["seeds"]:
                seeds = [int(x) for x in q["seeds"].split("/")]
                seen[q["value"]].append(q["seeds"] if max(seeds) - min(seeds) > SPLIT else None)
    return {value: None if None in each else each for value, each in seen.items()}


def seedless_splits(path, root=ROOT):
    """The pooled percentages a findings file quotes without the seeds of their cell where every cell that
    prints that value has seeds more than SPLIT points apart: alone, the pooled number is a mean no model
    reached. The seeds may stand anywhere in the paragraph ("80.2% / 76.2% at 2× / 4×: 43/98/100, ...")."""
    out = []
    for paragraph, found in pools(path, root):
        splits = {}
        for pool in found:
            for value, seeds in split_cells(pool).items():
                splits[value] = None if value in splits and splits[value] is None or seeds is None else \
                    splits.get(value, []) + seeds
        text = CODE.sub("", paragraph).replace("−", "-")
        out += [shown(q) for q in quotes(paragraph) if q["percent"] and not q["seeds"]
                and len(q["value"].split(".")[1]) == 1 and splits.get(unsigned(q["value"]))
                and not any(seeds in text for seeds in splits[unsigned(q["value"])])]
    return out


# --- the rule, on a made-up tree ----------------------------------------------

COPY_ROW = "| RoPE | 99.8% [99.2, 99.9] (100/100/99) | 1.74567 ± 0.0053 | -0.0598 [-0.1002, -0.0193] |"


def a_tree(tmp_path):
    """Two studies' generated tables and JSON, their findings and a top README, which quote numbers that
    trace and numbers that do not."""
    for study, row in (("copy", COPY_ROW), ("other", "| none | 2.0650 |")):
        (tmp_path / "plots" / study).mkdir(parents=True)
        (tmp_path / "plots" / study / "results.md").write_text(f"| a | b | c | d |\n|---|---|---|---|\n{row}\n")
    (tmp_path / "plots" / "copy" / "retrieval.json").write_text('{"exact": 0.1239}')
    (tmp_path / "plots" / "other" / "README.md").write_text("none 2.0650, and 3.1416 said here only\n")
    (tmp_path / "plots" / "copy" / "README.md").write_text(
        "RoPE 1.7457 ± 0.0053 (1.746), −0.0598 [−0.1002, −0.0193] and 99.8% (100/100/99), torch 2.13.0,\n"
        "`lr=0.1234`. Made up: 1.7458, 1.746 ± 0.0054, −0.0598 [−0.1002, −0.0194], +0.0598,\n"
        "99.8% (100/100/98); only in a JSON 0.1239, only in a README 3.1416, of a study not linked 2.0650.\n\n"
        "- Linked, [other](../other/README.md): 2.0650\n\n"
        f"| a | b | c | d |\n|---|---|---|---|\n{COPY_ROW}\n| RoPE | 99.8% [99.2, 99.9] (100/100/99) | 1.7457 |\n")
    (tmp_path / "README.md").write_text(
        "1. RoPE 1.7457 ([copy](plots/copy/results.md)) and none 2.0650\n   ([other](plots/other/README.md)).\n"
        "2. Not linked: 2.0650.\n3. In the table below: −0.0598 [−0.1002, −0.0193].\n\n"
        f"| a | b | c | d |\n|---|---|---|---|\n{COPY_ROW}\n")
    return tmp_path


def test_paragraphs_are_split_at_blank_lines_headings_tables_and_list_items():
    text = "# T\nintro\ngoes on\n\n- item\n  goes on\n- next\n\n| a |\n|---|\nafter\n"
    assert paragraphs(text) == ["# T", "intro\ngoes on", "- item\n  goes on", "- next", "after"]


def test_untraced_finds_the_numbers_no_table_of_the_paragraph_s_studies_holds(tmp_path):
    root = a_tree(tmp_path)
    assert untraced(root / "plots" / "copy" / "README.md", root) == [
        "1.7458", "1.746 ± 0.0054", "-0.0598 [-0.1002, -0.0194]", "+0.0598", "99.8% (100/100/98)", "0.1239",
        "3.1416", "2.0650"]
    assert untraced(root / "README.md", root) == ["2.0650"]


def test_copied_rows_finds_a_row_edited_by_hand(tmp_path):
    root = a_tree(tmp_path)
    text = (root / "plots" / "copy" / "README.md").read_text()
    assert copied_rows(text, root) == ["| RoPE | 99.8% [99.2, 99.9] (100/100/99) | 1.7457 |"]


def test_typo_collisions_finds_a_number_whose_typo_is_printed_too(tmp_path):
    root = a_tree(tmp_path)
    (root / "plots" / "copy" / "results.md").write_text(f"{COPY_ROW}\n| learned | 1.7458 | 1.747 |\n")
    # (1.7457 ± 0.0053 is safe: no 1.7458 ± 0.0053 is printed)
    assert typo_collisions(root) == {"plots/copy/README.md": ["1.746"], "README.md": ["1.7457"]}


# --- the rule, on the committed findings --------------------------------------


def test_every_table_row_in_the_findings_is_a_row_of_a_generated_table():
    copied = {path.relative_to(ROOT).as_posix(): copied_rows(path.read_text()) for path in findings_files()}
    assert not {path: rows for path, rows in copied.items() if rows}


def test_every_checked_number_in_the_findings_is_in_a_table_of_its_studies():
    missing = {path.relative_to(ROOT).as_posix(): untraced(path) for path in findings_files()}
    assert not {path: numbers for path, numbers in missing.items() if numbers}


def test_a_random_number_rarely_traces():
    """2000 random 4-decimal numbers in [1, 3), a loss's range, against every table some paragraph of a
    findings file may quote: at most 1 in 10 traces, for each file."""
    rng = random.Random(0)
    numbers = [{"value": f"{rng.uniform(1, 3):.4f}", **dict.fromkeys(BESIDE)} for _ in range(2000)]
    shares = {}
    for path in findings_files():
        every = {id(pool): pool for _, found in pools(path) for pool in found}.values()
        shares[path.relative_to(ROOT).as_posix()] = sum(traced(q, every) for q in numbers) / len(numbers)
    assert max(shares.values()) <= 0.1, shares


def test_a_typo_in_a_checked_number_would_not_trace():
    assert sum(len(q) for q in TYPO_COLLISIONS.values()) <= 12  # a few, named
    assert typo_collisions() == TYPO_COLLISIONS


def test_a_pooled_percentage_whose_seeds_disagree_is_quoted_with_them(tmp_path):
    (tmp_path / "plots" / "copy").mkdir(parents=True)
    (tmp_path / "plots" / "copy" / "retrieval.md").write_text(
        "| ALiBi | 80.2% [77.5, 82.7] (43/98/100) | 81.8% [79.1, 84.2] (92/66/87) | 52.2% (73/83/0) |\n"
        "| T5 | 52.2% (50/55/52) |\n")
    (tmp_path / "plots" / "copy" / "README.md").write_text(
        "ALiBi copies 80.2% at 2× and 81.8% with YaRN; 52.2% could be either.\n\n"
        "Seeds beside it: 80.2% (43/98/100); in the paragraph: 80.2% at 2× (43/98/100 by seed).\n")
    assert seedless_splits(tmp_path / "plots" / "copy" / "README.md", tmp_path) == ["80.2%"]


def test_no_committed_finding_quotes_a_mean_no_seed_reached_without_its_seeds():
    missing = {path.relative_to(ROOT).as_posix(): seedless_splits(path) for path in findings_files()}
    assert not {path: quoted for path, quoted in missing.items() if quoted}


def test_every_study_findings_file_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    studies = [path.relative_to(ROOT).as_posix() for path in findings_files()[1:]]
    assert studies, "no plots/<study>/README.md"
    assert [s for s in studies if f"]({s})" not in readme] == []
