"""study.retrieval on a model that gets answers right: a one-layer RoPE model built by hand that copies
the character D back (its attention peaks at distance D by construction), read on the copy task, where a
string of m letters is copied from m back. So its exact match is known for every reading: plainly it
copies the strings of D at every length and no other; position interpolation moves its peak to D * s;
a clamp at D scores every farther key as D and spreads its attention; truncation, a mask at the training
length and a clamp beyond D leave it copying."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from common import save_checkpoint, write_json
from model import GPT, GPTConfig, apply_rotary_embeddings, precompute_theta_pos_frequencies
from study.retrieval import cell_accuracy, counts, plot_readings, retrieval_runs, truncated
from tasks import VOCAB, copy, evaluation_set, unit_correct
from train_config import TrainConfig, provenance

BLOCK, D, WIDTH = 32, 16, 96  # trained on 32 characters, copying from 16 back


def copier(block=BLOCK, distance=D):
    """(GPTConfig, weights) of a one-layer, one-head RoPE model whose prediction at position i is the
    character at i - distance: the query and key are constants (read from an embedding dimension every
    token shares), k = R(distance) q, so the score q.R(d - distance)q peaks at d = distance; the value is
    the token itself, amplified past the residual; the MLP is off."""
    config = GPTConfig(vocab_size=len(VOCAB), block_size=block, n_layer=1, n_head=1, n_embd=WIDTH, pos_encoding="rope")
    model = GPT(config, seed=0)
    state = {name: torch.zeros_like(p) for name, p in model.state_dict().items()}
    for name in state:
        if ".ln_" in name or name.startswith("transformer.ln_"):
            state[name] = torch.ones_like(state[name])
    V = len(VOCAB)
    state["transformer.wte.weight"][:, 0] = 1.0  # the shared dimension
    state["transformer.wte.weight"][torch.arange(V), torch.arange(V) + 1] = 1.0  # the token's own
    shared = (1 - 2 / WIDTH) / np.sqrt(2 / WIDTH - (2 / WIDTH) ** 2)  # the shared dimension after LayerNorm
    q = torch.zeros(WIDTH)
    q[0::2] = 10.0  # every pair at one amplitude: a sharp peak
    k = apply_rotary_embeddings(q[None], precompute_theta_pos_frequencies(WIDTH, distance + 1)[distance][None])[0]
    attn = state["transformer.h.0.attn.c_attn.weight"]
    attn[:WIDTH, 0], attn[WIDTH:2 * WIDTH, 0] = q / shared, k / shared
    attn[2 * WIDTH:] = torch.eye(WIDTH)  # the value: the token
    state["transformer.h.0.attn.c_proj.weight"] = 5.0 * torch.eye(WIDTH)
    state["lm_head.weight"] = state["transformer.wte.weight"]  # (tied, as in the model)
    return config, state


def write_run(run_dir, data_dir, config, state):
    """A finished task run's folder as train.py leaves it: config.json, summary.json, ckpt.pt."""
    cfg = TrainConfig(task="copy", data_dir=str(data_dir), block_size=config.block_size, n_layer=config.n_layer,
                      n_head=config.n_head, n_embd=config.n_embd, pos_encoding=config.pos_encoding, seed=1,
                      run_name=run_dir.name, progress=False)
    write_json(run_dir / "config.json", {**asdict(cfg), "provenance": provenance(cfg)})
    write_json(run_dir / "summary.json", {"run_name": run_dir.name, "pos_encoding": "rope", "seed": 1, "best_step": 0,
                                          "best_val_loss": 0.0})
    save_checkpoint(run_dir / "ckpt.pt", {"model_args": asdict(config), "model": state, "vocab": VOCAB, "step": 0,
                                          "val_loss": 0.0, "config": asdict(cfg)})
    return run_dir


@pytest.fixture(scope="module")
def copier_run(data_dir, tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("runs") / "rope_seed1", data_dir, *copier())


def test_the_hand_built_copier_copies_exactly_the_strings_of_its_distance():
    config, state = copier()
    model = GPT(config)
    model.load_state_dict(state)
    model.eval()
    for L in (32, 64):
        for m, want in ((8, 0), (D, 100)):
            examples = copy(np.random.default_rng(0), 100, L, size=m)
            logits, _ = model(*examples.inputs_and_targets())
            assert int(unit_correct(logits, examples).sum()) == want, (L, m)


def exact(results, method, L):
    """{string length: exact match in %} of the row read with `method` at length L (one seed)."""
    row = next(r for r in results["rows"] if r["method"] == method)
    acc = cell_accuracy(row["results"][str(L)])[0]
    return {int(c.split()[-1]): round(100 * a) for c, a in zip(results["cells"], acc) if not np.isnan(a)}


def test_each_reading_gives_the_counts_its_definition_predicts(copier_run, tmp_path):
    results = retrieval_runs([copier_run], lengths=[32, 64, 128], scalings=["none", "linear"], progress=False,
                             ablations=("clamp-16", "clamp-32", "truncate", "mask", "temp-2"), far_mass=True)
    assert exact(results, "none", 32) == {8: 0, 16: 100}
    assert exact(results, "none", 128) == {8: 0, 16: 100, 32: 0, 64: 0}  # relative: the same at any length
    assert exact(results, "linear", 64) == {8: 0, 16: 0, 32: 100}  # PI at s = 2: the peak at 2 * 16
    assert exact(results, "linear", 128) == {8: 0, 16: 0, 32: 0, 64: 100}
    assert exact(results, "clamp-16", 64)[16] == 0  # every key beyond 16 ties with the answer
    for method in ("clamp-32", "truncate", "mask", "temp-2"):
        assert exact(results, method, 128) == {8: 0, 16: 100, 32: 0, 64: 0}, method
    # the far-key mass (keys 32 or more back): the copier looks 16 back
    plain = next(r for r in results["rows"] if r["method"] == "none")["far_mass"]
    assert plain["32"] is None  # at the training length no key is that far
    near, every = plain["128"][0]["near"], plain["128"][0]["all"]
    assert np.array(near["sum"]).max() / near["positions"] < 1e-3 and every["positions"] > near["positions"]
    # the counts are kept in the run's folder: read again, nothing needs the checkpoint
    (copier_run / "ckpt.pt").rename(tmp_path / "ckpt.pt")
    try:
        again = retrieval_runs([copier_run], lengths=[32, 64, 128], scalings=["none", "linear"], progress=False,
                               ablations=("clamp-16", "clamp-32", "truncate", "mask", "temp-2"), far_mass=True)
    finally:
        (tmp_path / "ckpt.pt").rename(copier_run / "ckpt.pt")
    assert json.dumps(again["rows"]) == json.dumps(results["rows"])
    capped = retrieval_runs([copier_run], lengths=[32, 64, 128], scalings=["none", "linear"], progress=False,
                            ablations=("mask",), far_mass=True, readings_up_to=2)
    by = {r["method"]: r for r in capped["rows"]}
    assert by["mask"]["results"]["128"] == "not read past 2x" and by["mask"]["far_mass"]["128"] is None
    assert by["linear"]["results"]["128"] == results["rows"][1]["results"]["128"]  # the scalings at every length
    assert by["linear"]["far_mass"]["128"] is None and by["none"]["far_mass"]["128"] is not None  # (plain and ablations)


def test_the_readings_figure_keeps_each_seed_apart(copier_run, data_dir, tmp_path, monkeypatch):
    """Two runs that differ (the copier, and one looking 4 back, which copies no string it is read on) are one
    variant of two seeds: the figure's dots are the two seeds' values, not their mean."""
    other = write_run(tmp_path / "rope_seed2", data_dir, *copier(distance=4))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "seed": 2}))
    results = retrieval_runs([copier_run, other], lengths=[32, 64], progress=False, ablations=("mask",))
    drawn = []
    monkeypatch.setattr("matplotlib.axes.Axes.scatter", lambda ax, x, y, **kw: drawn.append(sorted(y)))
    plot_readings(results, tmp_path / "readings.png")
    # pooled over the headline's cells (the strings up to 16, half the training length 32): 50% and 0%
    assert drawn == [[0.0, 0.5]] * 4  # plain and masked, at 32 and 64
    row = next(r for r in results["rows"] if r["method"] == "none")
    assert cell_accuracy(row["results"]["64"]).tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


def test_truncation_reads_only_the_last_block_and_a_unit_reaching_before_it_is_wrong(data_dir, tmp_path):
    far = write_run(tmp_path / "rope_seed1", data_dir, *copier(distance=BLOCK))  # copies from 32 back
    results = retrieval_runs([far], lengths=[64], progress=False, ablations=("truncate",), far_mass=True)
    assert exact(results, "none", 64) == {8: 0, 16: 0, 32: 100}
    assert exact(results, "truncate", 64) == {8: 0, 16: 0, 32: 0}  # 32 back lies outside the last 32 inputs
    masses = {r["method"]: r["far_mass"]["64"][0]["all"] for r in results["rows"]}
    assert np.array(masses["none"]["sum"]).min() / masses["none"]["positions"] > 0.99  # it looks 32 back: far
    assert np.array(masses["truncate"]["sum"]).max() == 0.0  # nothing that far is left to look at
    examples = evaluation_set("copy", 64, None)[1]  # strings of 16: the answer is the last 16 positions
    kept, lost = truncated(examples, 16)
    assert not lost.any() and torch.equal(kept.tokens, examples.tokens[:, -17:])  # 16 inputs and the last target
    assert torch.equal(kept.inputs_and_targets()[1], examples.inputs_and_targets()[1][:, -16:])
    assert truncated(examples, 10)[1].all()  # 6 of its 16 positions cut: the unit cannot be answered
    config, state = copier()
    model = GPT(config)
    model.load_state_dict(state)
    for keep, right in ((40, 100), (32, 100), (16, 0)):  # the first answer's source lies 32 from the end
        got, _ = counts(model.eval(), [examples], "copy", [64], "cpu", truncate=keep)
        assert got == {"string of 16": [right, 100]}, keep


class Oracle(torch.nn.Module):
    """Right at every answer position it is shown (the targets are its logits): what truncation alone
    takes away is then all that is wrong."""

    def forward(self, x, y):
        return torch.nn.functional.one_hot(y.clamp(min=0), len(VOCAB)).float(), None


def test_a_unit_with_positions_before_the_cut_counts_as_wrong_though_the_rest_is_right():
    strings_of_16 = evaluation_set("copy", 64, None)[1]
    for keep, right in ((16, 100), (10, 0)):  # its 16 answer positions: all kept, or 6 of them cut
        got, _ = counts(Oracle(), [strings_of_16], "copy", [64], "cpu", truncate=keep)
        assert got == {"string of 16": [right, 100]}, keep
