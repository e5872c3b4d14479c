"""sweep.py's logic on stand-in runs: which rates it tries, when it stops, what it reports."""

import json
import math
from pathlib import Path

import pytest

import study.sweep as sweep
from study.training import add_study_flags
from study.runs import parse_variants
from train import Diverged
from train_config import FIELD_TYPES, add_config_flags, build_parser


def parse(*flags):
    parser = build_parser(None)
    add_study_flags(parser, "rope")
    parser.add_argument("--max-extensions", type=int, default=3)
    add_config_flags(parser, exclude=("pos_encoding", "run_name", "seed", "learning_rate", "min_lr"))
    return parser.parse_args(list(map(str, flags)))


@pytest.fixture
def fake_training(monkeypatch):
    """train_runs writes a summary whose final val loss is a parabola in log2(rate), lowest at
    each encoding's `best` rate; rates in `diverge` raise Diverged instead. Records what it trained."""
    trained, best, diverge = [], {"rope": 0.004, "learned": 0.001}, set()

    def train_runs(cfgs, overwrite, jobs=1):
        for cfg in cfgs:
            trained.append((cfg.pos_encoding, cfg.learning_rate, cfg.min_lr))
            if cfg.learning_rate in diverge:
                raise Diverged("training loss became nan")
            loss = 1.5 + 0.01 * math.log2(cfg.learning_rate / best[cfg.pos_encoding]) ** 2
            run_dir = Path(cfg.out_dir) / cfg.run_name
            run_dir.mkdir(parents=True)
            (run_dir / "summary.json").write_text(json.dumps({"final_val_loss": loss}))
    monkeypatch.setattr(sweep, "train_runs", train_runs)
    return trained, diverge


def test_a_best_rate_at_the_edge_gets_the_next_rate_until_it_is_inside(tmp_path, fake_training):
    trained, _ = fake_training
    args = parse("--out-dir", tmp_path)
    variants = parse_variants("rope,learned", FIELD_TYPES)
    result = sweep.run_sweep(args, variants, [5e-4, 1e-3, 2e-3], seed=7)
    # rope is best at 4e-3, beyond the range: 4e-3 is added, then 8e-3 to see it is not at the edge any more
    assert sorted(result[0]) == [5e-4, 1e-3, 2e-3, 4e-3, 8e-3]
    assert sorted(result[1]) == [5e-4, 1e-3, 2e-3]  # learned: best inside from the start
    assert ("rope", 8e-3, 8e-4) in trained and len(trained) == 8  # min_lr = rate / 10
    assert [c.run_name for c in result[1].values()][1] == "shakespeare_char_cpu/learned_seed7"  # the config's rate


def test_extensions_stop_at_the_limit_and_the_report_says_so(tmp_path, fake_training, capsys):
    args = parse("--out-dir", tmp_path, "--max-extensions", 1)
    variants = parse_variants("rope", FIELD_TYPES)
    result = sweep.run_sweep(args, variants, [5e-4, 1e-3], seed=7)
    assert sorted(result[0]) == [5e-4, 1e-3, 2e-3]  # one extension only: still at the edge
    assert "still at the edge" in capsys.readouterr().out


def test_a_diverged_rate_counts_as_the_worst_and_does_not_stop_the_sweep(tmp_path, fake_training, capsys):
    trained, diverge = fake_training
    diverge.add(4e-3)
    args = parse("--out-dir", tmp_path, "--max-extensions", 0)
    result = sweep.run_sweep(args, parse_variants("rope", FIELD_TYPES), [1e-3, 2e-3, 4e-3, 6e-3], seed=7)
    assert [r for _, r, _ in trained] == [1e-3, 2e-3, 4e-3, 6e-3]  # 6e-3 still trained after 4e-3 diverged
    assert sweep.final_val(result[0][4e-3]) == math.inf and "diverged" in capsys.readouterr().out
    assert min(result[0], key=lambda r: sweep.final_val(result[0][r])) == 6e-3


def test_the_sweep_reads_its_best_rate_runs_past_their_length_with_the_ablations(data_dir, tmp_path):
    from conftest import TINY_FLAGS, TINY_GROUP, run
    run("study.sweep", "--pos-encodings", "rope", "--learning-rates", "1e-3,2e-3", "--max-extensions", 0,
        "--seeds", 1337, "--extrapolate", "--extrapolate-methods", "none", "--ablations", "log-scale,clamp-63",
        "--sample-tokens", 20, "--data-dir", data_dir, "--out-dir", tmp_path / "out", "--plots-dir", tmp_path / "plots",
        *(f for f in TINY_FLAGS if not f.startswith("--learning-rate=")))  # (an abbreviation of --learning-rates)
    results = (tmp_path / "plots" / "results.md").read_text()
    assert "## Length extrapolation" in results and "## The sweep" in results
    rows = [json_row["name"] for json_row in json.loads((tmp_path / "plots" / "extrapolation.json").read_text())["rows"]]
    assert {r.split("+")[1] for r in rows if "+" in r} == {"log-scale", "clamp-63", "sliding"}
    sweep_rows = json.loads((tmp_path / "plots" / "lr_sweep.json").read_text())
    group = tmp_path / "out" / TINY_GROUP  # (1e-3 is the config's own rate: the run study.compare trains)
    assert sweep_rows[0]["runs"] == {"0.001": str(group / "rope_seed1337"), "0.002": str(group / "rope-lr=0.002_seed1337")}
