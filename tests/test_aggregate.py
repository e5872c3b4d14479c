"""Many runs read back on hand-made run directories: variants, plot bands, the results and
paired tables, and the refusal to mix runs evaluated on different text."""

import json

import numpy as np
import pytest

from study.analysis import paired, paired_table, real_word_shares, t_quantile, turn, verdict, words
from common import UserError
from study.report import differences_table, results_table, turns_table, variant_pairs
from study.runs import Runs
from conftest import run
from study.plot import aggregate, describe_model, plot_runs, read_metrics_of, turn_window
from model import POS_ENCODINGS
from study.runs import group_variants, parse_variants, read_config, variant_labels, variant_name
from train_config import FIELD_TYPES, TrainConfig

PROVENANCE = {"eval_version": 2, "data_sha256": "abc", "eval_text": "0123456789abcdef"}
CONFIG = {**TrainConfig(progress=False).__dict__, "provenance": PROVENANCE}


def make_run(root, name, losses, summary=None, **config):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({**CONFIG, **config}))
    lines = ["step,train_loss,val_loss,lr,tokens,elapsed_s,train_s"]
    lines += [f"{i * 10},{loss + 0.1},{loss},0.001,{i * 100},{i},{i * 0.5}" for i, loss in enumerate(losses)]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps({"n_params": 1000, "best_step": 2000, "wall_s": 100.0,
                                                          "ms_per_iter": 30.0, "seed": config.get("seed", 1337),
                                                          **summary}))
    return run_dir


def test_mean_min_max_over_seeds(tmp_path):
    runs = [make_run(tmp_path, "a", [4.0, 2.0, 1.0], seed=1),
            make_run(tmp_path, "b", [4.0, 3.0, 2.0], seed=2),
            make_run(tmp_path, "c", [4.0, 2.5], seed=3),  # still running: one row short
            make_run(tmp_path, "d", [4.0, 1.0, 0.5], pos_encoding="none", seed=1)]
    configs = [json.loads((r / "config.json").read_text()) for r in runs]
    groups = group_variants(configs)
    assert [configs[idx[0]]["pos_encoding"] for idx in groups.values()] == ["rope", "none"]
    metrics = [read_metrics_of(r) for r in runs[:3]]
    steps, mean, low, high = aggregate(metrics, "val_loss")
    assert steps.tolist() == [0, 10]  # only the steps every run has reached
    assert np.allclose(mean, [4.0, 2.5]) and np.allclose(low, [4.0, 2.0]) and np.allclose(high, [4.0, 3.0])
    seconds, mean, _, _ = aggregate(metrics, "train_loss", x="train_s")
    assert seconds.tolist() == [0.0, 0.5] and np.allclose(mean, [4.1, 2.6])


def test_variants_are_grouped_and_labelled_by_what_tells_them_apart(tmp_path):
    configs = [{**CONFIG, "pos_encoding": "rope", "seed": 1}, {**CONFIG, "pos_encoding": "rope", "seed": 2},
               {**CONFIG, "pos_encoding": "sinusoidal", "sinusoidal_scale": False},
               {**CONFIG, "pos_encoding": "sinusoidal"},
               {**CONFIG, "pos_encoding": "learned", "learning_rate": 0.002, "min_lr": 0.0002},
               {**CONFIG, "pos_encoding": "learned", "sinusoidal_scale": False}]  # an option learned ignores
    groups = group_variants(configs)
    assert list(groups.values()) == [[0, 1], [4], [5], [2], [3]]  # encodings in the plots' order
    assert list(variant_labels(configs, groups).values()) == [
        "RoPE, lr 0.001", "learned, lr 0.002", "learned, lr 0.001", "sinusoidal, lr 0.001, no √d scale",
        "sinusoidal, lr 0.001"]  # an encoding's option at its default is not named; the rate is


def test_an_encoding_s_options_are_named_only_where_they_leave_the_default():
    configs = [{**CONFIG, "pos_encoding": "rope"}, {**CONFIG, "pos_encoding": "rope", "nope_every": 2},
               {**CONFIG, "pos_encoding": "rope", "rope_fraction": 0.25}, {**CONFIG, "pos_encoding": "fire"},
               {**CONFIG, "pos_encoding": "fire", "fire_L": 16.0, "learning_rate": 0.008, "min_lr": 0.0008}]
    assert list(variant_labels(configs, group_variants(configs)).values()) == [
        "RoPE, lr 0.001", "RoPE, lr 0.001, RoPE/NoPE hybrid, NoPE every 2 layers",
        "RoPE, lr 0.001, 25% of pairs rotate", "FIRE, lr 0.001", "FIRE, L starts at 16, lr 0.008"]
    same_rate = configs[:3]
    assert list(variant_labels(same_rate, group_variants(same_rate)).values()) == [
        "RoPE", "RoPE, RoPE/NoPE hybrid, NoPE every 2 layers", "RoPE, 25% of pairs rotate"]
    # lr_decay_iters is not named where the rate is constant (min_lr = learning_rate), which ignores it
    flat = [{**CONFIG, "min_lr": 0.001, "lr_decay_iters": 2000}, {**CONFIG, "min_lr": 0.001, "lr_decay_iters": 0,
                                                                   "n_embd": 256, "seed": 2}]
    assert list(variant_labels(flat, group_variants(flat)).values()) == ["RoPE, n_embd 128", "RoPE, n_embd 256"]
    decayed = [{**c, "min_lr": 0.0001} for c in flat]
    assert list(variant_labels(decayed, group_variants(decayed)).values()) == [
        "RoPE, lr_decay_iters 2000, n_embd 128", "RoPE, lr_decay_iters 0, n_embd 256"]
    # the plots' subtitle names the model settings the runs share, the legend those that differ
    assert describe_model(flat) == "4 layers, 4 heads, block 64, batch 12, dropout 0"
    # min_lr = learning_rate / 10 is not named; another min_lr is
    odd = [{**CONFIG, "learning_rate": 0.002, "min_lr": 0.0001}, CONFIG,
           {**CONFIG, "learning_rate": 0.002, "min_lr": 0.0002}]
    assert list(variant_labels(odd, group_variants(odd)).values()) == [
        "RoPE, lr 0.002, min_lr 0.0001", "RoPE, lr 0.001", "RoPE, lr 0.002"]


def test_runs_evaluated_on_different_text_are_refused(tmp_path):
    runs = [make_run(tmp_path, "a", [4.0, 2.0]),
            make_run(tmp_path, "b", [4.0, 2.0], seed=2, provenance={**PROVENANCE, "eval_text": "ffffffffffffffff"})]
    with pytest.raises(UserError, match="evaluated on different text"):
        plot_runs(runs, tmp_path / "plots")
    proc = run("study.plot", tmp_path, "--plots-dir", tmp_path / "plots", check=False)
    assert proc.returncode == 2 and "evaluated on different text" in proc.stderr
    old = make_run(tmp_path, "old", [4.0, 2.0], seed=3, provenance=None)  # from before provenance was recorded
    for together in ([runs[0], old], [old]):
        with pytest.raises(UserError, match="trained before their evaluation was recorded.*retrain them"):
            plot_runs(together, tmp_path / "plots")


def test_runs_of_different_models_are_separate_lines(tmp_path):
    runs = [make_run(tmp_path, "a", [4.0, 2.0]), make_run(tmp_path, "b", [4.0, 2.0], n_layer=6, seed=2)]
    paths = plot_runs(runs, tmp_path / "plots")
    assert [p.name for p in paths] == ["train_loss.png", "val_loss.png", "val_loss_seconds.png", "val_vs_train.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    assert not (tmp_path / "plots" / "val_loss_turn.png").exists()  # both still falling at their end
    configs = [json.loads((r / "config.json").read_text()) for r in runs]
    assert list(variant_labels(configs, group_variants(configs)).values()) == ["RoPE, n_layer 4", "RoPE, n_layer 6"]


def test_a_setting_added_after_a_run_takes_its_default_so_old_and_new_runs_still_group(tmp_path):
    old = make_run(tmp_path, "old", [4.0, 2.0], seed=1)
    config = json.loads((old / "config.json").read_text())
    del config["grad_clip"]  # as if the run predated the setting
    (old / "config.json").write_text(json.dumps(config))
    new = make_run(tmp_path, "new", [4.0, 2.0], seed=2)
    configs = [read_config(old), read_config(new)]
    assert list(group_variants(configs).values()) == [[0, 1]]


def test_half_written_metrics_row_is_ignored(tmp_path):
    run_dir = make_run(tmp_path, "a", [4.0, 2.0])
    with open(run_dir / "metrics.csv", "a") as f:
        f.write("20,1.5")  # a killed run's last line
    assert read_metrics_of(run_dir)["step"].tolist() == [0, 10]


def finished(tmp_path, enc, seed, val, test=None, **config):
    return make_run(tmp_path, f"{enc}_{seed}", [4.0, val], pos_encoding=enc, seed=seed, summary={
        "best_val_loss": val, "final_train_loss": val - 0.1, "final_val_loss": val, "best_test_loss": test or val,
        "final_test_loss": test or val + 0.01}, **config)


def test_results_table_mean_and_std(tmp_path):
    study = Runs([finished(tmp_path, "rope", 1, 1.0), finished(tmp_path, "rope", 2, 1.2),
                   finished(tmp_path, "rope", 3, 1.1), finished(tmp_path, "learned", 1, 1.5)])
    rope, learned = results_table(study).splitlines()[2:]
    # mean ± sample std (n-1): 1.1 ± 0.1
    assert rope.startswith("| RoPE | 1,000 | 1.1000 ± 0.1000 | 2000 ± 0 | 1.0000 ± 0.1000 | 1.1000 ± 0.1000 |")
    assert rope.endswith("| 1.1100 ± 0.1000 | 100 ± 0 | 30.0 ± 0.0 | 3 |")
    assert learned.startswith("| learned | 1,000 | 1.5000 | 2000 |") and learned.endswith("| 1 |")


def test_t_quantiles_match_the_tables():
    for df, t in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)]:
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    assert t_quantile(0.95, 4) == pytest.approx(2.1318, abs=1e-4)


def test_paired_differences_and_their_interval():
    a, b = {1: 1.0, 2: 1.2, 3: 1.1, 4: 9.9}, {1: 1.5, 2: 1.5, 3: 1.7}  # seed 4 has no pair: left out
    r = paired(a, b)
    assert r["seeds"] == [1, 2, 3] and r["diffs"] == pytest.approx([-0.5, -0.3, -0.6])
    mean, sd = -1.4 / 3, 0.152752523  # sd of -0.5, -0.3, -0.6 with n - 1
    half = 4.302652730 * sd / 3 ** 0.5
    assert r["mean"] == pytest.approx(mean) and r["ci"] == pytest.approx((mean - half, mean + half))
    assert r["agree"] == 3 and verdict(r) == "lower"
    # an interval that contains 0 does not rank; one seed has no interval
    wide = paired({1: 1.0, 2: 1.3, 3: 1.1}, {1: 1.1, 2: 1.1, 3: 1.1})
    assert wide["agree"] == 1 and verdict(wide) == "undecided"
    assert paired({1: 1.0}, {1: 2.0})["ci"] is None and verdict(paired({1: 1.0}, {1: 2.0})) == "undecided"


def test_paired_table_on_hand_made_runs(tmp_path):
    runs = [finished(tmp_path, enc, s, v, t) for enc, vals in (
        ("rope", [(1.0, 1.1), (1.2, 1.3), (1.1, 1.2)]), ("learned", [(1.5, 1.6), (1.5, 1.6), (1.7, 1.8)]),
        ("none", [(2.0, 2.0), (1.4, 1.5), (1.9, 1.9)])) for s, (v, t) in zip((1, 2, 3), vals)]
    lines = differences_table(Runs(runs)).splitlines()
    assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| RoPE − learned", "| none − learned", "| RoPE − none"]
    assert lines[2] == ("| RoPE − learned | -0.5000, -0.3000, -0.6000 | -0.4667 [-0.8461, -0.0872] | 3/3 "
                        "| -0.4667 [-0.8461, -0.0872] | 3/3 | a lower / a lower |")
    # none − learned: +0.5, -0.1, +0.2 on val; +0.4, -0.1, +0.1 on test
    assert lines[3].endswith("| 2/3 | not decided / not decided |") and lines[3].split(" | ")[3] == "2/3"


def test_pairs_include_variants_of_one_encoding_once_and_only_with_shared_seeds(tmp_path):
    runs = [finished(tmp_path, "sinusoidal", 1, 1.6), finished(tmp_path, "sinusoidal", 2, 1.7),
            make_run(tmp_path, "noscale_1", [4.0, 1.5], pos_encoding="sinusoidal", seed=1, sinusoidal_scale=False,
                     summary={"best_val_loss": 1.5, "final_train_loss": 1.4, "final_val_loss": 1.5,
                              "best_test_loss": 1.5, "final_test_loss": 1.5}),
            finished(tmp_path, "rope", 1, 1.0), finished(tmp_path, "learned", 3, 1.9)]  # learned: no shared seed
    study = Runs(runs)
    labels = [(study.labels[a], study.labels[b]) for a, b in variant_pairs(study)]
    assert labels == [("RoPE", "sinusoidal"), ("RoPE", "sinusoidal, no √d scale"),
                      ("sinusoidal", "sinusoidal, no √d scale")]


def test_a_variant_with_one_seed_twice_is_refused(tmp_path):
    runs = [finished(tmp_path, "rope", 1, 1.0), make_run(tmp_path, "rope_again", [4.0, 1.0], seed=1)]
    with pytest.raises(UserError, match="two runs of one variant have seed 1"):
        plot_runs(runs, tmp_path / "plots")


def test_variants_on_the_command_line():
    v = parse_variants("rope,all,sinusoidal:sinusoidal_scale=false:learning_rate=2e-3", FIELD_TYPES)
    assert v[0] == ("rope", {}) and len(v) == len(POS_ENCODINGS) + 1  # "all" repeats rope: kept once
    assert v[-1] == ("sinusoidal", {"sinusoidal_scale": False, "learning_rate": 0.002})
    assert variant_name(*v[-1]) == "sinusoidal-sinusoidal_scale=false-lr=0.002"
    assert variant_name("rope", {"learning_rate": 0.002, "min_lr": 0.0002}) == "rope-lr=0.002"
    for text, message in [("rope:n_layer", "is not KEY=VALUE"), ("rope:seed=3", "is not KEY=VALUE"),
                          ("rope:banana=1", "is not KEY=VALUE"), ("rope:n_layer=two", "n_layer takes a int"),
                          ("rope:bias=maybe", "bias takes a bool"), ("rofl", "unknown encoding 'rofl'"),
                          ("rope:sinusoidal_scale=false", "rope does not read sinusoidal_scale"),
                          ("all:rope_theta=100", "none does not read rope_theta"),
                          (",", "no encodings given")]:
        with pytest.raises(UserError, match=message):
            parse_variants(text, FIELD_TYPES)


def test_paired_table_needs_values_for_both_metrics():
    values = {"a": {"val": {1: 1.0, 2: 2.0}, "test": {1: 1.0, 2: 2.0}},
              "b": {"val": {1: 1.5, 2: 2.5}, "test": {1: 1.0, 2: 2.0}}}
    line = paired_table(values, [("a", "b")], {"a": "A", "b": "B"}).splitlines()[2]
    # identical differences: sd 0, a zero-width interval that excludes 0; all zero: no sign, no ranking
    assert line == ("| A − B | -0.5000, -0.5000 | -0.5000 [-0.5000, -0.5000] | 2/2 | +0.0000 [+0.0000, +0.0000] "
                    "| 0/2 | a lower / not decided |")


def test_real_word_shares_of_a_hand_made_text():
    vocabulary = set(words("ROMEO:\nBut soft! what light through yonder window breaks? O'er the hill."))
    assert vocabulary == {"romeo", "but", "soft", "what", "light", "through", "yonder", "window", "breaks",
                          "o'er", "the", "hill"}
    samples = ["ROMEO: but SOFT, whaz light\nthrough yondre window-breaks", "o'er the the hilly 42 do'nt"]
    # words: romeo but soft whaz light through yondre window breaks | o'er the the hilly do'nt
    r = real_word_shares(samples, vocabulary)
    assert (r["words"], r["real"]) == (14, pytest.approx(10 / 14))
    # 5+ letters: romeo light through yondre window breaks hilly -> 5 of 7 real (do'nt has 4 letters)
    assert (r["long_words"], r["real_long"]) == (7, pytest.approx(5 / 7))
    assert real_word_shares(["42 !"], vocabulary) == {"words": 0, "real": None, "long_words": 0, "real_long": None}


def test_neighbours_in_the_ranking_are_paired_too(tmp_path):
    # alibi and sinusoidal meet no rule but their ranks: 1.2 and 1.3 are neighbours; rope-alibi exists already
    runs = [finished(tmp_path, enc, s, v + 0.01 * s) for enc, v in (("rope", 1.0), ("alibi", 1.2), ("sinusoidal", 1.3))
            for s in (1, 2)]
    study = Runs(runs)
    labels = [(study.labels[a], study.labels[b]) for a, b in variant_pairs(study)]
    assert labels == [("RoPE", "sinusoidal"), ("RoPE", "ALiBi"), ("ALiBi", "sinusoidal")]


def test_turn_needs_a_rise_of_0_02_nats_and_three_times_the_noise():
    # falls to 1.44 and climbs back: the means of 5 evaluations go down to 1.454 and end at
    # 1.506; the second half's successive differences .02 0 .02 0 .02 have sd 0.010954, and
    # the noise is that over √2
    rising = turn([1.6, 1.5, 1.45, 1.44, 1.45, 1.46, 1.47, 1.49, 1.49, 1.51, 1.51, 1.53])
    assert rising["best"] == 3 and rising["lowest_mean"] == pytest.approx(1.454)
    assert rising["last_mean"] == pytest.approx(1.506) and rising["rise"] == pytest.approx(0.052)
    assert rising["noise"] == pytest.approx(0.0109545 / 2 ** 0.5, rel=1e-4) and rising["turned"]
    # flat and noisy: its minimum is a lucky 1.49, but the 5-evaluation means only wander by 0.004
    flat = turn([1.5, 1.49, 1.51, 1.49, 1.51, 1.49, 1.51, 1.49, 1.51, 1.50])
    assert flat["best"] == 1 and flat["rise"] == pytest.approx(0.002) and not flat["turned"]
    # still falling at the end: no rise however noisy the last evaluations are
    falling = turn([2.0, 1.8, 1.7, 1.65, 1.6, 1.58, 1.56, 1.55, 1.53, 1.52])
    assert falling["best"] == 9 and falling["rise"] == 0 and not falling["turned"]
    # 0.04 above the lowest means, but the curve jumps by 0.1 between evaluations
    jumpy = turn([1.5, 1.4, 1.5, 1.4, 1.5, 1.4, 1.5, 1.4, 1.5, 1.6])
    assert jumpy["rise"] == pytest.approx(0.04) and jumpy["noise"] == pytest.approx(0.1 / 2 ** 0.5)
    assert not jumpy["turned"]
    # smooth (no noise) but rises only 0.0116: below the 0.02 floor
    small = turn([1.5 - 0.01 * i for i in range(10)] + [1.41 + 0.002 * i for i in range(10)])
    assert small["rise"] == pytest.approx(0.0116) and small["noise"] < 1e-9 and not small["turned"]
    # too few evaluations for a noise estimate: no verdict
    short = turn([1.6, 1.5, 1.45, 1.44, 1.5, 1.55, 1.6, 1.65, 1.7])
    assert short["noise"] is None and short["rise"] > 0.1 and not short["turned"]


def test_a_val_curve_that_turns_gets_a_zoomed_plot_from_half_its_minimums_step(tmp_path):
    falling = make_run(tmp_path, "rope", [4.0, 3.0, 2.0, 1.5, 1.4, 1.35])  # steps 0..50, lowest at the end
    turning = make_run(tmp_path, "learned", [4.0, 3.0, 2.0, 1.5, 1.4, 1.45], pos_encoding="learned")
    metrics = [read_metrics_of(falling), read_metrics_of(turning)]
    assert turn_window(metrics[:1]) is None and turn_window(metrics) == 20  # lowest at step 40
    paths = plot_runs([falling, turning], tmp_path / "plots")
    assert paths[-1].name == "val_loss_turn.png" and paths[-1].read_bytes().startswith(b"\x89PNG")
    plot_runs([falling], tmp_path / "plots")  # a zoom these runs have no turn for is removed
    assert not paths[-1].exists()


def test_turns_table_rows_and_when_it_is_left_out(tmp_path):
    still_falling = Runs([finished(tmp_path, "rope", 1, 1.0)])  # val 4.0 then 1.0: best at the end
    assert turns_table(still_falling) == ""
    val = [1.6, 1.5, 1.45, 1.44, 1.45, 1.46, 1.47, 1.49, 1.49, 1.51, 1.51, 1.53]  # as in the test above
    run = make_run(tmp_path, "learned_1", val, seed=1, pos_encoding="learned", summary={
        "best_val_loss": 1.44, "final_train_loss": 1.3, "final_val_loss": 1.53, "best_test_loss": 1.5123,
        "final_test_loss": 1.55})
    rows = turns_table(Runs([tmp_path / "rope_1", run])).splitlines()
    assert rows[2] == "| RoPE | 1 | 1.0000 | 10 | 1.0000 | 2.5000 | 2.5000 | +0.0000 | – | no |"  # 2 evaluations
    # the test loss is that of the best checkpoint, from summary.json
    assert rows[3] == "| learned | 1 | 1.4400 | 30 | 1.5123 | 1.4540 | 1.5060 | +0.0520 | 0.0077 | yes |"


def test_variants_of_one_encoding_differ_in_colour_and_dash_and_never_take_the_sliding_windows_dots():
    from study.plot import encoding_styles
    from study.runs import COLORS
    import matplotlib.colors
    styles = encoding_styles(["rope", "learned", "rope", "rope", "rope", "none"])
    assert styles[0] == (matplotlib.colors.to_rgb(COLORS["rope"]), "-")  # the encoding's own colour first
    assert styles[1] == (matplotlib.colors.to_rgb(COLORS["learned"]), "-")
    ropes = [styles[i] for i in (0, 2, 3, 4)]
    assert len({color for color, _ in ropes}) == 4 and len({str(dash) for _, dash in ropes}) == 4
    assert all(dash != ":" for _, dash in styles)  # dotted means a sliding window in every figure


def test_the_hybrid_and_fire_at_this_scale_are_labelled_by_what_they_change():
    from study.runs import describe
    assert describe("nope_every", 2) == "RoPE/NoPE hybrid, NoPE every 2 layers"
    assert describe("nope_every", 0) == "RoPE in every layer"
    assert describe("fire_L", 16.0) == "L starts at 16"


def test_many_variants_get_a_panel_per_family_and_an_unknown_encoding_its_own():
    from model import POS_ENCODINGS
    from study.plot import FAMILIES, MAX_LINES, panels_of
    few = ["rope", "learned", "alibi"]
    assert panels_of(few, str) == [(None, few)]  # few lines: one panel
    many = ["none", "rope", "alibi", "learned", "rope", "fire", "t5", "sinusoidal"]
    assert len(many) > MAX_LINES
    assert [(title.split()[0], items) for title, items in panels_of(many, str)] == [
        ("RoPE", ["rope", "rope"]), ("biases", ["alibi", "fire", "t5"]), ("absolute,", ["none", "learned", "sinusoidal"])]
    assert panels_of(many + ["xpos"], str)[-1] == ("other encodings", ["xpos"])  # drawn, not dropped
    assert {e for _, members in FAMILIES for e in members} == set(POS_ENCODINGS)  # every registered one has its family
