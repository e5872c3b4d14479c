"""The synthetic tasks (tasks.py): their formats, the answer-only loss, exact match, the fixed
evaluation set, and a task run end to end."""

import json
import string

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tasks
from conftest import TINY_FLAGS, run
from tasks import IGNORE, STOI, VOCAB, Examples, TaskBatches, unit_correct, wilson
from train_config import TrainConfig

ITOS = dict(enumerate(VOCAB))


def text(ids):
    return "".join(ITOS[int(i)] for i in ids)


def test_the_vocabulary_is_shakespeares_65_characters_nine_digits_and_two_markers():
    assert len(tasks.SHAKESPEARE_CHARS) == 65 and len(VOCAB) == 76
    assert set(VOCAB) - set(tasks.SHAKESPEARE_CHARS) == set("012456789#=")
    assert VOCAB == sorted(VOCAB) and all(STOI[c] == i for i, c in enumerate(VOCAB))


@pytest.fixture
def filler():
    words = "the king and his lord shall not speak of it to me now "  # letters and spaces only
    return torch.tensor([STOI[c] for c in (words * 40)])


@pytest.mark.parametrize("length", [16, 64, 127])
def test_passkey_format_lengths_and_answer_positions(filler, length):
    ex = tasks.passkey(np.random.default_rng(0), 50, length, filler)
    assert ex.tokens.shape == (50, length + 1) and ex.unit.shape == (50, length)
    for row, unit in zip(ex.tokens, ex.unit):
        s = text(row)
        a = s.index("#")
        key = s[a + 1:a + 6]
        assert set(key) <= set(string.digits) and s[a + 6] == "#"
        assert s[-6] == "=" and s[-5:] == key  # the answer: the key again after "="
        assert s.count("#") == 2 and s.count("=") == 1
        assert (unit >= 0).tolist() == [False] * (length - 5) + [True] * 5  # only the five digits are scored
        filler_text = s[:a] + s[a + 7:-6]  # the two fillers, joined, are one slice of the filler text
        assert filler_text in text(filler) and len(filler_text) == length - 12


def test_passkey_depth_puts_the_key_where_asked(filler):
    room = 64 - 12
    for depth in tasks.DEPTHS:
        ex = tasks.passkey(np.random.default_rng(1), 5, 64, filler, depth)
        for row in ex.tokens:
            assert text(row).index("#") == round(depth * room)  # len(filler_a) / (both fillers) = depth
        assert ex.where[:, 0].tolist() == pytest.approx([round(depth * room) / room] * 5)


def test_passkey_digits_are_uniform(filler):
    ex = tasks.passkey(np.random.default_rng(2), 4000, 32, filler)
    digits = [c for row in ex.tokens for c in text(row)[-5:]]
    counts = np.array([digits.count(d) for d in string.digits])
    expected = len(digits) / 10
    assert ((counts - expected) ** 2 / expected).sum() < 27.9  # chi-square, 9 d.o.f., p = 0.001


def test_recall_format_keys_values_and_distances():
    keys = tasks.RECALL_KEYS
    ex = tasks.recall(np.random.default_rng(3), 40, 64, keys)
    assert ex.tokens.shape == (40, 65) and ex.answers.shape == (40, 64)
    x, y = ex.inputs_and_targets()
    for row, unit, where, target in zip(ex.tokens, ex.unit, ex.where, y):
        s = text(row)
        pairs = dict(zip(s[0:2 * keys:2], s[1:2 * keys:2]))
        assert len(pairs) == keys and set(pairs) <= set(string.ascii_lowercase)
        assert len(set(pairs.values())) == keys and set(pairs.values()) <= set(string.digits)  # distinct values
        scored = torch.nonzero(unit >= 0).flatten().tolist()
        assert scored == torch.nonzero(target != tasks.IGNORE).flatten().tolist()
        assert len(scored) == keys and all(q >= 2 * keys and q % 2 == 0 for q in scored)
        assert sorted(s[q] for q in scored) == sorted(pairs)  # every key asked once
        assert all(text(target[q:q + 1]) == pairs[s[q]] for q in scored)  # its target: the key's value
        rest = set(range(2 * keys, 65)) - set(scored)
        assert {s[i] for i in rest} <= set(string.ascii_uppercase + string.digits)  # noise, never a key
        assert sorted(unit[scored].tolist()) == list(range(keys))
        for q in scored:
            assert where[unit[q]] == q - s.index(s[q])  # from the query back to its key


def test_recall_cannot_be_answered_without_a_lookup():
    """No answer is shown in the input (the token after a query is noise), and the values are distinct:
    the best a model that does not look the key up can do is a guess among the D values."""
    ex = tasks.make("recall", np.random.default_rng(6), 2000, 64)
    rows, q = torch.nonzero(ex.unit >= 0, as_tuple=True)
    value, after = ex.answers[rows, q], ex.tokens[rows, q + 1]
    assert (value == after).float().mean() < 0.05  # the next input is noise: 1/36 by chance
    values = ex.tokens[:, 1:2 * tasks.RECALL_KEYS:2]
    assert all(len(set(v.tolist())) == tasks.RECALL_KEYS for v in values)  # no most frequent value to guess
    # the answer is not where a positional rule would find it: any query's key can be any of the D pairs
    pair = (ex.where[rows, ex.unit[rows, q]] - q).neg().div(2).long()
    assert sorted(set(pair.tolist())) == list(range(tasks.RECALL_KEYS))


def test_recall_queries_spread_with_the_length_and_the_keys_stay():
    rng = np.random.default_rng(4)
    short, long = (tasks.recall(rng, 200, L) for L in (64, 256))
    assert (long.unit >= 0).sum(1).tolist() == (short.unit >= 0).sum(1).tolist() == [tasks.RECALL_KEYS] * 200
    assert short.where.max() <= 64 - 2 and long.where.max() > 128  # queries reach farther back
    assert long.where.mean() > 3 * short.where.mean()


def test_recall_in_training_mixes_the_number_of_pairs():
    ex = tasks.make("recall", np.random.default_rng(5), 400, 64, training=True)
    asked = (ex.unit >= 0).sum(1)
    assert sorted(set(asked.tolist())) == list(range(1, tasks.RECALL_KEYS + 1))
    assert torch.equal(asked, (~ex.where.isnan()).sum(1))  # an absent query has no distance
    assert torch.equal(tasks.make("recall", np.random.default_rng(5), 50, 64).unit.ge(0).sum(1),
                       torch.full((50,), tasks.RECALL_KEYS))  # evaluation: always all D


def test_copy_repeats_the_string_after_the_separator():
    ex = tasks.copy(np.random.default_rng(5), 10, 32)
    for row, unit in zip(ex.tokens, ex.unit):
        s = text(row)
        assert len(s) == 33 and s[16] == "=" and s[:16] == s[17:] and set(s[:16]) <= set(string.ascii_lowercase)
        assert torch.nonzero(unit >= 0).flatten().tolist() == list(range(16, 32))


def test_copy_in_training_mixes_the_string_lengths():
    ex = tasks.make("copy", np.random.default_rng(7), 300, 32, training=True)
    sizes = ex.where[:, 0].long()
    assert sorted(set(sizes.tolist())) == list(range(1, 17))
    for row, unit, m in zip(ex.tokens, ex.unit, sizes.tolist()):
        s = text(row)
        string_ = s[32 - 2 * m:32 - m]
        assert s[32 - m] == "=" and s[33 - m:] == string_ and set(string_) <= set(string.ascii_lowercase)
        assert set(s[:32 - 2 * m]) <= set(string.ascii_uppercase)  # noise before it
        assert torch.nonzero(unit >= 0).flatten().tolist() == list(range(32 - m, 32))


def test_copy_is_evaluated_at_every_string_length_up_to_half_the_length_each_in_its_cell():
    from study.retrieval import cell_labels, cell_of
    sets = tasks.evaluation_set("copy", 128, None)
    assert [int(e.where[0, 0]) for e in sets] == [8, 16, 32, 64] and all(len(e.tokens) == 100 for e in sets)
    for k, ex in enumerate(sets):
        m = int(ex.where[0, 0])
        for row in ex.tokens:
            s = text(row)
            assert len(s) == 129 and s[128 - m] == "=" and s[128 - 2 * m:128 - m] == s[129 - m:]
            assert set(s[:128 - 2 * m]) <= set(string.ascii_uppercase)
        lengths = [64, 128]  # the cells of a study read at 64 and 128: strings of 8, 16, 32 and 64
        assert cell_labels("copy", lengths)[int(cell_of("copy", ex.where, k, lengths)[0, 0])] == f"string of {m}"
    assert cell_labels("copy", [8, 2048]) == ["string of 4", *(f"string of {8 * 2 ** i}" for i in range(8))]
    assert tasks.copy_sizes(64) == [8, 16, 32] and tasks.copy_sizes(2048)[-1] == 1024 and tasks.copy_sizes(8) == [4]
    sets = tasks.TaskBatches("copy", None, 64, 4, 1, "cpu").sets  # (the copy needs no filler)
    for split in ("train", "val", "test"):  # train loss and exact match on the strings val scores
        assert [int(e.where[0, 0]) for e in sets[split]] == [8, 16, 32]
    with pytest.raises(tasks.UserError, match="holds strings of 1 to 8 letters, got 9"):
        tasks.copy(np.random.default_rng(0), 1, 16, size=9)


def test_only_the_answers_are_scored():
    ex = tasks.copy(np.random.default_rng(6), 4, 8)
    x, y = ex.inputs_and_targets()
    assert torch.equal(x, ex.tokens[:, :-1])
    assert (y[:, :4] == IGNORE).all() and torch.equal(y[:, 4:], ex.tokens[:, 5:])
    logits = torch.randn(4, 8, len(VOCAB))
    masked = F.cross_entropy(logits.view(-1, len(VOCAB)), y.reshape(-1))
    by_hand = F.cross_entropy(logits[:, 4:].reshape(-1, len(VOCAB)), ex.tokens[:, 5:].reshape(-1))
    assert masked == pytest.approx(by_hand.item(), rel=1e-6)


def test_exact_match_counts_a_unit_only_when_every_character_is_right():
    tokens = torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])
    unit = torch.tensor([[-1, 0, 0, 1], [-1, 0, 0, 1]])  # two units: targets 2,3 and target 4
    ex = Examples(tokens, unit, torch.zeros(2, 2))
    logits = F.one_hot(tokens[:, 1:], 8).float()  # every prediction right ...
    logits[1, 1] = F.one_hot(torch.tensor(7), 8).float()  # ... but row 1's second digit of unit 0
    logits[0, 0] = F.one_hot(torch.tensor(7), 8).float()  # (row 0's unscored position does not count)
    assert unit_correct(logits, ex).tolist() == [[True, True], [False, True]]


def test_wilson_interval_against_known_values():
    assert wilson(0, 100) == pytest.approx((0.0, 0.03699), abs=1e-4)
    assert wilson(100, 100) == pytest.approx((0.96301, 1.0), abs=1e-4)
    assert wilson(50, 100) == pytest.approx((0.40383, 0.59617), abs=1e-4)


def test_the_evaluation_set_does_not_depend_on_the_run_seed(data_dir):
    a, b = (TaskBatches("passkey", data_dir, 16, 8, seed, "cpu") for seed in (1, 2))
    retrieval = tasks.evaluation_set("passkey", 16, a.filler["val"])
    for split in ("val", "test"):  # retrieval's own set is none of those training scored
        assert not any(torch.equal(x.tokens, y.tokens) for x, y in zip(retrieval, a.sets[split]))
    assert [len(e.tokens) for e in a.sets["test"]] == [len(e.tokens) for e in a.sets["val"]]  # alike: 11 depths
    assert a.eval_text.fingerprint == b.eval_text.fingerprint
    assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(a.sets["val"], b.sets["val"]))
    assert len(a.sets["val"]) == len(tasks.DEPTHS) and len(a.sets["val"][0].tokens) == tasks.EVAL_EXAMPLES
    (xa, _), = a.step_batches(1)
    (xb, _), = b.step_batches(1)
    assert not torch.equal(xa, xb)  # training examples follow the run's seed
    c = TaskBatches("passkey", data_dir, 16, 8, 1, "cpu")
    assert torch.equal(c.step_batches(1)[0][0], xa)  # ... reproducibly


def test_a_task_run_writes_exact_match_and_refuses_an_unknown_task(data_dir, tmp_path):
    run("train.py", "--task", "copy", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS)
    run_dir = tmp_path / "copy-rope_seed1337"
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith(",val_exact")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "copy" and 0 <= summary["final_val_exact"] <= 1
    assert json.loads((run_dir / "config.json").read_text())["task"] == "copy"
    proc = run("train.py", "--task", "sorting", "--data-dir", data_dir, "--out-dir", tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "train.py: error: task must be shakespeare or one of passkey, recall, copy, got 'sorting'"]
    with pytest.raises(Exception, match="task must be"):
        TrainConfig(task="Passkey")


def test_retrieval_keeps_each_runs_counts_and_reads_them_back_without_a_checkpoint(data_dir, tmp_path):
    from study.retrieval import STORED
    flags = ["--rope-scaling", "ntk", "--data-dir", data_dir, "--no-progress"]
    train = ["train.py", "--task", "copy", "--pos-encoding", "rope", "--data-dir", data_dir,
             "--out-dir", tmp_path / "runs", *TINY_FLAGS]
    run(*train)
    (run_dir,) = (tmp_path / "runs").iterdir()
    run("study.retrieval", run_dir, "--lengths", "16", *flags, "--plots-dir", tmp_path / "a")
    run("study.retrieval", run_dir, "--lengths", "32", *flags, "--plots-dir", tmp_path / "b")  # kept beside 16's
    stored = json.loads((run_dir / STORED).read_text())
    assert sorted(stored["entries"]) == ["none at 16", "none at 32", "ntk at 16", "ntk at 32"]
    ntk = stored["entries"]["ntk at 32"]["depends"]["settings"]
    assert ntk == {"rope_scaling": "ntk", "rope_scaling_factor": 2.0}  # s = 32 / 16: what the count rests on
    (run_dir / "ckpt.pt").rename(tmp_path / "ckpt.pt")  # what a committed record holds: no checkpoint
    run("study.retrieval", run_dir, "--lengths", "16,32", *flags, "--plots-dir", tmp_path / "c")
    both = json.loads((tmp_path / "c" / "retrieval.json").read_text())
    alone = {L: json.loads((tmp_path / d / "retrieval.json").read_text()) for L, d in (("16", "a"), ("32", "b"))}
    def by_cell(results, L):  # each row's seeds' {cell: [right, total]} at L, the cells it holds
        return [[{c: n for c, n in zip(results["cells"], seed) if n[1]} for seed in r["results"][L]]
                for r in results["rows"]]

    for L in ("16", "32"):
        assert by_cell(both, L) == by_cell(alone[L], L)
    assert both["rows"][0]["results"]["32"][0] == [stored["entries"]["none at 32"]["counts"].get(c, [0, 0])
                                                   for c in both["cells"]]
    proc = run("study.retrieval", run_dir, "--lengths", "16,48", *flags, "--plots-dir", tmp_path / "d", check=False)
    assert proc.returncode == 2 and proc.stderr == (
        f"study.retrieval: error: {run_dir} has no checkpoint (ckpt.pt) and was never read at length 48 with"
        f" 'none'; retrain it, or leave that length or reading out\n")
    (tmp_path / "ckpt.pt").rename(run_dir / "ckpt.pt")
    run(*train, "--overwrite")  # retrained: another checkpoint, so its counts are gone
    assert not (run_dir / STORED).exists()
    (run_dir / "summary.json").unlink()  # as a run still training: its checkpoint changes, nothing is kept
    run("study.retrieval", run_dir, "--lengths", "16", *flags, "--plots-dir", tmp_path / "e")
    assert not (run_dir / STORED).exists()


def test_a_studys_task_runs_get_a_folder_of_their_own(tmp_path):
    proc = run("study.compare", "--task", "copy", "--pos-encodings", "rope,alibi", "--seeds", "1",
               "--out-dir", tmp_path, "--print-commands")
    commands = [line for line in proc.stdout.splitlines() if line.startswith("python train.py")]
    assert [c.split("--run-name ")[1].split()[0] for c in commands] == [
        "shakespeare_char_cpu-copy/rope_seed1", "shakespeare_char_cpu-copy/alibi_seed1"]
    assert all("--task copy" in c for c in commands)


def test_retrieval_scores_each_cell_of_each_seed_and_past_the_training_length(data_dir, tmp_path):
    for enc in ("rope", "learned"):
        for seed in (1, 2):
            run("train.py", "--task", "passkey", "--pos-encoding", enc, "--seed", seed, "--data-dir", data_dir,
                "--out-dir", tmp_path / "runs", *TINY_FLAGS)
    proc = run("study.retrieval", tmp_path / "runs", "--lengths", "16,32", "--rope-scaling", "ntk",  # (+ plain)
               "--ablations", "clamp-63,log-scale", "--plots-dir", tmp_path / "plots", "--no-progress")
    out = json.loads((tmp_path / "plots" / "retrieval.json").read_text())
    assert out["task"] == "passkey" and out["lengths"] == [16, 32] and len(out["cells"]) == len(tasks.DEPTHS)
    rows = {row["label"]: row for row in out["rows"]}
    assert set(rows) == {"RoPE", "RoPE + NTK (s=L/16)", "RoPE + clamp at 63", "RoPE + log scaling (n=16)",
                         "learned", "learned + log scaling (n=16)"}  # (nothing to clamp in a learned table)
    for L in ("16", "32"):
        per_seed = rows["RoPE"]["results"][L]
        assert len(per_seed) == 2 and all(total == tasks.EVAL_EXAMPLES for seed in per_seed for _, total in seed)
        assert rows["RoPE + clamp at 63"]["results"][L] == per_seed  # no distance reaches 63: the plain model
    assert rows["learned"]["results"]["32"] == "learned table has 16 positions"
    assert rows["RoPE + NTK (s=L/16)"]["results"]["16"] == rows["RoPE"]["results"]["16"]  # s = 1 at the training length
    assert rows["RoPE + log scaling (n=16)"]["results"]["16"] == rows["RoPE"]["results"]["16"]  # ln(i+1)/ln 16 <= 1
    assert "| learned | " in proc.stdout and "n/a" in proc.stdout
    assert (tmp_path / "plots" / "retrieval.png").read_bytes()[:4] == b"\x89PNG"


def test_recall_units_are_binned_by_their_distance_back_to_the_key():
    from study.retrieval import cell_labels, cell_of
    where = torch.tensor([[0.0, 15.0, 16.0, 63.0, 64.0, 511.0, 512.0, 2000.0]])
    assert cell_of("recall", where, 0, [64]).tolist() == [[0, 0, 1, 2, 3, 5, 6, 6]]
    labels = cell_labels("recall", [64])
    assert [labels[i] for i in (0, 5, 6)] == ["distance 0-15", "distance 256-511", "distance 512+"] and len(labels) == 7
    assert cell_of("passkey", torch.zeros(3, 1), 4, [64]).flatten().tolist() == [4, 4, 4]  # the set's depth


def test_a_task_study_reports_exact_match_and_no_samples(data_dir, tmp_path):
    flags = ["--task", "copy", "--data-dir", data_dir, "--out-dir", tmp_path / "out", *TINY_FLAGS]
    run("study.compare", "--pos-encodings", "rope", "--seeds", "2", *flags)  # another study's run beside it
    run("study.compare", "--pos-encodings", "rope,none", "--seeds", "1", *flags, "--plots-dir", tmp_path / "plots",
        "--extrapolate", "--extrapolate-methods", "none,ntk,dynamic-ntk", "--ablations", "log-scale")
    retrieval = json.loads((tmp_path / "plots" / "retrieval.json").read_text())  # --extrapolate, for a task
    assert [(row["label"], len(row["runs"])) for row in retrieval["rows"]] == [
        ("RoPE", 1), ("RoPE + NTK (s=L/16)", 1), ("RoPE + log scaling (n=16)", 1), ("none", 1),
        ("none + log scaling (n=16)", 1)]  # the study's runs only; dynamic NTK is the length study's
    assert retrieval["lengths"] == [16, 32, 64, 128]
    results = (tmp_path / "plots" / "results.md").read_text()
    header = next(line for line in results.splitlines() if line.startswith("| variant | parameters"))
    assert "| final val exact match | final test exact match |" in header
    row = next(line for line in results.splitlines() if line.startswith("| RoPE |"))
    assert len(row.split("|")) == len(header.split("|"))  # every column filled
    assert "real words" not in results and not (tmp_path / "plots" / "samples.md").exists()


def test_a_run_s_fingerprint_covers_what_training_draws(data_dir, monkeypatch):
    """A task run is reused only if its evaluation sets and its training draw are today's."""
    before = tasks.TaskBatches("copy", data_dir, 16, 4, 1, "cpu").eval_text.fingerprint
    assert tasks.TaskBatches("copy", data_dir, 16, 4, 2, "cpu").eval_text.fingerprint == before  # any seed
    unmixed = tasks.copy
    monkeypatch.setattr(tasks, "copy",
                        lambda rng, n, length, mixed=False, size=None: unmixed(rng, n, length, size=size))
    assert tasks.TaskBatches("copy", data_dir, 16, 4, 1, "cpu").eval_text.fingerprint != before
