"""The extrapolation study's parts against their definitions: YaRN, dynamic NTK, the sliding-window
baseline, --init-from fine-tunes, the attention statistics and the copy probe."""

import json
import math

import pytest
import torch
from torch.nn import functional as F

from common import build_model, eval_windows, load_checkpoint, load_tokens
from conftest import TINY, TINY_FLAGS, TINY_GROUP, run
from study.evaluate import dynamic_factor, evaluate_runs, loss_by_position, sliding_window_losses
from model import GPT, GPTConfig, RotaryPositionalEncoding, apply_rotary_embeddings, precompute_theta_pos_frequencies
from study.probes import attention_stats, copy_gain, copy_sequences, uniform_reference

BLOCK = TINY["block_size"]  # 16
SMALL = dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)


# --- YaRN -----------------------------------------------------------------------


def yarn_angles(m, d, theta, length, s, alpha, beta):
    """The paper's definition, written out: pair i turns r = length / (2 pi / theta_i) times over
    the original length; gamma = 0 below alpha, 1 above beta, linear between; its angle at position
    m is m * theta_i * ((1 - gamma) / s + gamma)."""
    out = []
    for i in range(d // 2):
        theta_i = theta ** (-2 * i / d)
        r = length / (2 * math.pi / theta_i)
        gamma = 0.0 if r < alpha else 1.0 if r > beta else (r - alpha) / (beta - alpha)
        out.append(m * theta_i * ((1 - gamma) / s + gamma))
    return out


def test_yarn_rotates_each_pair_as_the_paper_defines():
    d, s, length, alpha, beta = 16, 4.0, 64, 1.0, 8.0
    # over 64 positions the pairs turn 10.2, 3.2, 1.02, 0.32, ... times: one pair above beta, two on
    # the ramp, five below alpha
    yarn = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2, block_size=length, rope_scaling="yarn",
                                              rope_scaling_factor=s, yarn_alpha=alpha, yarn_beta=beta))
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 100, d), torch.randn(1, 2, 100, d)
    rq, rk = yarn.rotate(q, k, range(0, 100))
    factor = 0.1 * math.log(s) + 1  # sqrt(1/t) on q and k
    angles = torch.tensor([yarn_angles(m, d, 10000.0, length, s, alpha, beta) for m in range(100)], dtype=torch.float64)
    expected = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
    torch.testing.assert_close(rq, apply_rotary_embeddings(q, expected) * factor, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rk, apply_rotary_embeddings(k, expected) * factor, atol=1e-5, rtol=1e-5)
    # pair 0 (beyond beta) turns as in plain RoPE; pairs 3.. (below alpha) as in position interpolation
    plain = precompute_theta_pos_frequencies(d, 100)
    linear = precompute_theta_pos_frequencies(d, 100, position_scale=1 / s)
    torch.testing.assert_close(rq[..., :2] / factor, apply_rotary_embeddings(q, plain)[..., :2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rq[..., 6:] / factor, apply_rotary_embeddings(q, linear)[..., 6:], atol=1e-5, rtol=1e-5)
    between = apply_rotary_embeddings(q, plain)[..., 2:4]
    assert not torch.allclose(rq[..., 2:4] / factor, between, atol=1e-3)  # the ramp: neither


def test_yarn_with_the_papers_beta_interpolates_every_pair_here():
    """alpha 1, beta 32 at 64 positions: no pair turns 32 times, so every pair is (partly) interpolated."""
    from model import yarn_ramp
    gamma = yarn_ramp(32, 10000.0, 64, 1.0, 32.0)
    assert (gamma < 1).all() and gamma[0] == pytest.approx((64 / (2 * math.pi) - 1) / 31)
    assert int((yarn_ramp(32, 10000.0, 64, 1.0, 8.0) == 1).sum()) == 1  # beta 8 leaves the fastest pair alone


def test_yarn_ramp_uses_the_original_length_not_the_new_block():
    """A fine-tune at 64 of a model trained at 16: YaRN's r counts turns over 16 positions."""
    fine_tune = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2, block_size=64, rope_scaling="yarn",
                                                   rope_scaling_factor=4.0, yarn_beta=8.0, rope_original_length=16))
    at_16 = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2, block_size=16, rope_scaling="yarn",
                                               rope_scaling_factor=4.0, yarn_beta=8.0))
    at_64 = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2, block_size=64, rope_scaling="yarn",
                                               rope_scaling_factor=4.0, yarn_beta=8.0))
    assert torch.equal(fine_tune.position_scale, at_16.position_scale)
    assert not torch.equal(fine_tune.position_scale, at_64.position_scale)


def test_yarn_at_factor_one_is_plain_rope_and_its_temperature_is_one():
    q, k = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    plain = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2)).rotate(q, k, range(0, 40))
    yarn = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2, rope_scaling="yarn", rope_scaling_factor=1.0,
                                              yarn_beta=8.0))
    assert yarn.attn_factor == 1.0
    for a, b in zip(yarn.rotate(q, k, range(0, 40)), plain):
        assert torch.equal(a, b)


def test_bad_scaling_settings_are_refused():
    with pytest.raises(ValueError, match="rope_scaling must be none, linear, ntk or yarn"):
        GPTConfig(rope_scaling="ntk-by-parts")
    with pytest.raises(ValueError, match="at least 1"):
        GPTConfig(rope_scaling="yarn", rope_scaling_factor=0.5)
    with pytest.raises(ValueError, match="0 <= alpha < beta"):
        GPTConfig(rope_scaling="yarn", yarn_alpha=8.0, yarn_beta=8.0)


# --- dynamic NTK and the sliding window -----------------------------------------


def test_dynamic_factor_is_the_smallest_power_of_two_covering_the_context():
    assert [dynamic_factor(p, 16) for p in (0, 15, 16, 31, 32, 63, 64, 127, 128)] == [1, 1, 2, 2, 4, 4, 8, 8, 16]


def reference_sliding(model, tokens, block, stride, t):
    """The loss of target t from the window the sliding scheme assigns it, by a per-token loop:
    windows start at multiples of stride (the last flush with the end) and score their last stride
    positions, so t is read from the first start a with a + block >= t."""
    a = min(max(0, math.ceil((t - block) / stride) * stride), len(tokens) - block - 1)
    assert a + block - stride < t <= a + block or a == len(tokens) - block - 1
    logits, _ = model(tokens[a:t][None])
    return F.cross_entropy(logits[0, -1:], tokens[t:t + 1]).item()


@pytest.mark.parametrize("stride", [1, 4, 16])
def test_sliding_window_equals_a_per_token_loop(stride):
    model = GPT(GPTConfig(**SMALL, pos_encoding="rope"), seed=0).eval()
    tokens = torch.randint(0, 20, (103,), generator=torch.Generator().manual_seed(0))
    got = sliding_window_losses(model, tokens, 16, stride)
    assert torch.isnan(got[:16 - stride + 1]).all() and not torch.isnan(got[16 - stride + 1:]).any()
    with torch.no_grad():
        for t in range(16 - stride + 1, 103):
            assert got[t].item() == pytest.approx(reference_sliding(model, tokens, 16, stride, t), abs=1e-5), t
    if stride == 1:  # every prediction sees exactly its last 16 tokens
        for t in (16, 50, 102):
            with torch.no_grad():
                logits, _ = model(tokens[t - 16:t][None])
            assert got[t].item() == pytest.approx(F.cross_entropy(logits[0, -1:], tokens[t:t + 1]).item(), abs=1e-5)
    # rows: each as on its own
    rows = torch.stack([tokens, tokens.flip(0)])
    two = sliding_window_losses(model, rows, 16, stride)
    torch.testing.assert_close(two[1], sliding_window_losses(model, tokens.flip(0), 16, stride), equal_nan=True)


@pytest.fixture(scope="module")
def rope_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("runs")
    run("train.py", "--pos-encoding", "rope", "--data-dir", data_dir, "--out-dir", out, *TINY_FLAGS)
    return out / "rope_seed1337"


def test_dynamic_ntk_is_the_static_pass_at_each_positions_factor(rope_run, data_dir):
    results = evaluate_runs([rope_run], lengths=[4 * BLOCK], scalings=["none", "dynamic-ntk"], max_windows=20,
                            progress=False)
    rows = {row["name"]: row["results"][0] for row in results["rows"]}
    dynamic = rows["rope+dynamic-ntk"]["loss_by_position"]
    plain = rows["rope"]["loss_by_position"]
    assert dynamic[:BLOCK] == plain[:BLOCK]  # factor 1 inside the training length
    # the reference: for each position, a model with static NTK at that position's factor
    ckpt = load_checkpoint(rope_run / "ckpt.pt")
    windows = eval_windows(load_tokens(data_dir, "val"), 4 * BLOCK, 20)
    static = {s: loss_by_position(build_model(ckpt, rope_scaling="ntk", rope_scaling_factor=float(s)), windows)
              for s in (2, 4)}
    for p in (BLOCK, 2 * BLOCK - 1, 2 * BLOCK, 4 * BLOCK - 1):
        assert dynamic[p] == pytest.approx(static[dynamic_factor(p, BLOCK)][p].item(), abs=1e-6)
    # the sliding-window baseline: the plain model before position 16, then the same targets read from
    # windows of 16. The targets, from the definition: the tiny val split has fewer than 20 windows of
    # 64, so all of them, window k starting at k * 64; its position p predicts the token after start + p
    tokens = load_tokens(data_dir, "val")
    L = 4 * BLOCK
    n = (len(tokens) - 1) // L
    assert n < 20
    starts = [k * L for k in range(n)]
    per_token = sliding_window_losses(build_model(ckpt), tokens, BLOCK, BLOCK // 4)
    curve = rows["rope+sliding"]["loss_by_position"]
    for p in (BLOCK, 2 * BLOCK + 3, L - 1):
        expected = sum(per_token[s + p + 1].item() for s in starts) / n
        assert curve[p] == pytest.approx(expected, abs=1e-9)
    assert curve[:BLOCK] == pytest.approx(plain[:BLOCK], abs=1e-9)
    assert rows["rope"]["past"] == pytest.approx(sum(plain[BLOCK:]) / (3 * BLOCK))


# --- --init-from ----------------------------------------------------------------


def test_init_from_loads_the_weights_at_a_new_block_size(rope_run, data_dir, tmp_path):
    run("train.py", "--pos-encoding", "rope", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS,
        "--init-from", rope_run, "--block-size", 2 * BLOCK, "--max-iters", 0, "--rope-scaling", "yarn",
        "--rope-scaling-factor", 2, "--run-name", "ft")
    src, got = load_checkpoint(rope_run / "ckpt.pt"), load_checkpoint(tmp_path / "ft" / "ckpt.pt")
    assert got["model"].keys() == src["model"].keys()
    for name, tensor in src["model"].items():
        assert torch.equal(got["model"][name], tensor), name
    assert got["model_args"]["block_size"] == 2 * BLOCK and got["model_args"]["rope_scaling"] == "yarn"
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["init_from"] == str(rope_run) and config["rope_original_length"] == BLOCK  # YaRN's L: the source's


@pytest.mark.parametrize("flags, message", [
    (["--pos-encoding", "learned", "--block-size", 32], "has a learned table of 16 positions; a fine-tune of it keeps"),
    (["--n-layer", 3], "has another model (n_layer 2, not 3)"),
    (["--pos-encoding", "alibi"], "has another model (pos_encoding learned, not alibi)"),
])
def test_init_from_refuses_what_does_not_fit(flags, message, data_dir, tmp_path):
    run("train.py", "--pos-encoding", "learned", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS,
        "--max-iters", 0)
    proc = run("train.py", "--pos-encoding", "learned", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS,
               "--init-from", tmp_path / "learned_seed1337", "--run-name", "ft", *flags, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert message in proc.stderr
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--init-from",
               tmp_path / "missing", check=False)
    assert "no checkpoint at" in proc.stderr and "Traceback" not in proc.stderr


# --- attention and the copy probe -----------------------------------------------


@pytest.mark.parametrize("enc", ["rope", "alibi", "none", "learned"])
def test_attention_weights_are_the_ones_forward_applies(enc):
    model = GPT(GPTConfig(**SMALL, pos_encoding=enc), seed=0).eval()
    idx = torch.randint(0, 20, (2, 12))
    captured = {}

    def grab(module, args):
        captured["args"] = args[:4]
    block = model.transformer.h[1]
    handle = block.attn.register_forward_pre_hook(grab)
    with torch.no_grad():
        model(idx)
        handle.remove()
        x, pos_enc, pos, bias = captured["args"]
        p = block.attn.attention_weights(x, pos_enc, pos, bias)
        _, _, v = block.attn.qkv(x, pos_enc, pos)
        y = (p @ v).transpose(1, 2).reshape(2, 12, 32)
        torch.testing.assert_close(block.attn.c_proj(y), block.attn(x, pos_enc, pos, bias), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, 12))
    assert (p.triu(1) == 0).all()  # causal


def test_uniform_attention_gives_the_reference_distance_and_entropy():
    model = GPT(GPTConfig(**SMALL, pos_encoding="none"), seed=0).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:64] = 0  # q = k = 0: every score 0, uniform over the causal keys
    distance, entropy = attention_stats(model, torch.randint(0, 20, (3, 16)))
    ref_distance, ref_entropy = uniform_reference(16)
    assert ref_distance == 15 / 4 and ref_entropy == pytest.approx(sum(math.log(i) for i in range(1, 17)) / 16)
    torch.testing.assert_close(distance, torch.full((2, 2), ref_distance, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, torch.full((2, 2), ref_entropy, dtype=torch.float64), atol=1e-5, rtol=0)


def test_copy_probe_sequences_and_what_it_compares():
    tokens = torch.arange(1000)
    seqs, control = copy_sequences(tokens, 10, count=5)
    starts = [0, 248, 495, 742, 990]  # evenly spread, the last flush with the end
    assert seqs[:, 0].tolist() == starts and seqs.shape == control.shape == (5, 20)
    assert torch.equal(seqs[:, :10], seqs[:, 10:])  # period 10
    assert torch.equal(control[:, 10:], seqs[:, :10])  # the same passage ...
    assert torch.equal(control[:, :10], seqs[:, :10].roll(-1, 0))  # ... after the next one
    # losses at targets 1..19: the first copy's characters 2..10 are columns 0..8, the second's 10..18;
    # column 9 (the second copy's first character) counts in neither
    n = 10
    losses = torch.cat([torch.full((5, 9), 2.0), torch.full((5, 1), 99.0), torch.full((5, 9), 0.5)], 1)
    other = torch.cat([torch.full((5, 10), 7.0), torch.full((5, 9), 1.5)], 1)
    gain, vs_control, first, second, after_other = copy_gain(losses, other, n)
    assert (first, second, after_other) == (2.0, 0.5, 1.5)
    assert gain == -1.5 and vs_control == -1.0


# --- finetune.py ----------------------------------------------------------------


def test_finetune_trains_from_the_base_runs_and_reports_every_row(data_dir, tmp_path):
    out, plots = tmp_path / "out", tmp_path / "plots"
    proc = run("study.finetune", "config/shakespeare_char_cpu.toml", "--data-dir", data_dir, "--out-dir", out,
               "--plots-dir", plots, *TINY_FLAGS, "--seeds", "1", "--methods", "none,yarn-b8", "--factor", 2,
               "--scratch-seeds", "1")
    base = out / TINY_GROUP / "rope_seed1"  # trained first: it was missing
    tune = json.loads((out / f"{TINY_GROUP}_finetune" / "rope-ft2x-yarn-b8_seed1" / "config.json").read_text())
    assert tune["init_from"] == str(base) and tune["block_size"] == 2 * BLOCK and tune["max_iters"] == 200
    assert (tune["rope_scaling"], tune["rope_scaling_factor"], tune["yarn_beta"]) == ("yarn", 2.0, 8.0)
    assert (tune["learning_rate"], tune["min_lr"], tune["warmup_iters"]) == (1e-4, 1e-4, 20)  # pinned
    scratch = json.loads((out / f"{TINY_GROUP}_finetune" / "rope-block32_seed1" / "config.json").read_text())
    assert scratch["init_from"] == "" and scratch["max_iters"] == TINY["max_iters"]
    table = (plots / "finetune.md").read_text()
    for label in ("RoPE trained on 16, no fine-tune", "sliding window of 16", "fine-tuned at 32: plain RoPE",
                  "fine-tuned at 32: YaRN β=8", "RoPE trained from scratch at 32", "a − the sliding window",
                  "the same, sliding window of 32"):
        assert label in table and label in proc.stdout
    assert "at 32, positions >= 16" in table and "at 64, positions >= 32" in table
    rows = {r["key"]: r for r in json.loads((plots / "finetune.json").read_text())["rows"]}
    within = [[c["mean"] for c in rows[k]["cells"][:3]] for k in ("scratch", "scratch-sliding")]
    assert within[0] == within[1]  # up to its own training length its sliding window reads as it does
    assert rows["scratch-sliding"]["cells"][4]["mean"] != rows["scratch"]["cells"][4]["mean"]
    assert (plots / "finetune.png").read_bytes()[:4] == b"\x89PNG"
    again = run("study.finetune", "config/shakespeare_char_cpu.toml", "--data-dir", data_dir, "--out-dir", out,
                "--plots-dir", plots, *TINY_FLAGS, "--seeds", "1", "--methods", "none,yarn-b8", "--factor", 2,
                "--scratch-seeds", "1")
    assert again.stdout.count("finished earlier, reusing it") == 4  # the base run, 2 fine-tunes, the scratch run
    proc = run("study.finetune", "config/shakespeare_char_cpu.toml", "--methods", "rope-pi", check=False)
    assert "unknown fine-tune method 'rope-pi'" in proc.stderr and "Traceback" not in proc.stderr


def test_finetune_of_task_runs_reads_what_they_retrieve_and_gives_the_best_more_seeds(data_dir, tmp_path):
    out, plots = tmp_path / "out", tmp_path / "plots"
    proc = run("study.finetune", "config/shakespeare_char_cpu.toml", "--task", "copy", "--data-dir", data_dir,
               "--out-dir", out, "--plots-dir", plots, *TINY_FLAGS, "--seeds", "1", "--methods", "none,linear",
               "--factor", 2, "--scratch-seeds", "", "--more-seeds", "2", "--best", "1")
    tune = json.loads((out / "shakespeare_char_cpu-copy-L16_finetune" / "rope-ft2x-linear_seed1" / "config.json")
                      .read_text())
    assert tune["task"] == "copy" and tune["block_size"] == 2 * BLOCK and tune["max_iters"] == 200
    assert tune["init_from"] == str(out / "shakespeare_char_cpu-copy-L16" / "rope_seed1")  # the task's RoPE run
    results = json.loads((plots / "retrieval.json").read_text())
    assert results["task"] == "copy" and results["lengths"] == [BLOCK, 2 * BLOCK, 4 * BLOCK]
    rows = {row["label"]: row for row in results["rows"]}
    assert set(rows) == {"RoPE trained on 16, no fine-tune", "fine-tuned at 32: plain RoPE", "fine-tuned at 32: PI"}
    (best,) = results["best"]
    assert {row["key"]: len(row["runs"]) for row in results["rows"]} == {
        "plain": 2, best: 2, ({"none", "linear"} - {best}).pop(): 1}
    assert "fine-tuned at 32: PI" in proc.stdout and (plots / "retrieval.png").read_bytes()[:4] == b"\x89PNG"


def test_finetune_ranks_task_methods_by_exact_match_at_the_new_length_then_at_twice_it():
    from study.finetune import ranked

    def row(key, at_32, at_64):  # one seed, one cell: [right, total]
        return {"key": key, "results": {"32": [[[at_32, 100]]], "64": [[[at_64, 100]]]}}

    results = {"task": "copy", "block_size": 16,
               "rows": [row("plain", 100, 100), row("none", 90, 10), row("linear", 90, 50), row("ntk", 95, 0)]}
    assert ranked(results, ["none", "linear", "ntk"], 2) == ["ntk", "linear", "none"]  # the tie at 32 goes by 64
