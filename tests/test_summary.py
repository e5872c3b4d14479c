"""The README's summary figure and its table regenerate from committed files alone (no checkpoint, no run)."""

from conftest import ROOT, run


def table_lines(text):
    return [line for line in text.splitlines() if line.startswith("|")]


def test_the_summary_regenerates_from_the_committed_records(tmp_path):
    run("study", "summary", "--plots-dir", tmp_path)
    committed = (ROOT / "plots" / "summary" / "summary.md").read_text()
    assert table_lines((tmp_path / "summary.md").read_text()) == table_lines(committed)
    assert (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"
