"""The windowed hybrid (rope_window) and the inference-time readings of the mechanism study
(attention_window with and without a sink, clamp_offset, logit_scale), each against its definition
on small tensors."""

import math

import pytest
import torch

from model import GPT, GPTConfig, KVCache, causal_distance
from conftest import TINY_FLAGS, run

SMALL = dict(vocab_size=20, block_size=16, n_layer=4, n_head=2, n_embd=32)


def sharp(model):
    """Attention sharper than at initialisation (nearly uniform there), so that a key's change shows."""
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    return model.eval()


def last_query_moves(model, layer, position, T=12):
    """How much layer `layer`'s output at the last query changes when its input at `position` changes:
    exactly 0 for a key out of view (its weight is exp(-inf) = 0), more for one in view."""
    pos_enc, attn = model.transformer.pos, model.transformer.h[layer].attn
    x = torch.randn(1, T, 32, generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[:, position] += torch.randn(32, generator=torch.Generator().manual_seed(1))
    bias = pos_enc.attn_bias(range(T), range(T)) if pos_enc.acts_on(layer) else None
    a, b = (attn(inp, pos_enc, range(T), bias)[:, -1] for inp in (x, changed))
    return (a - b).abs().max().item()


def test_a_rope_layer_sees_w_keys_back_and_a_nope_layer_sees_all():
    w, T = 4, 12
    model = sharp(GPT(GPTConfig(**SMALL, nope_every=2, rope_window=w), seed=0))
    for layer, rope in ((0, True), (1, False), (2, True), (3, False)):
        far, edge = last_query_moves(model, layer, T - 1 - w), last_query_moves(model, layer, T - w)
        assert edge > 0.0, layer  # distance w - 1: inside the window
        assert (far == 0.0) if rope else (far > 0.0), layer  # distance w: outside it (exactly) in RoPE layers only


def test_a_nope_window_masks_the_nope_layers_only_and_keeps_a_trained_rope_window():
    w, T = 4, 12
    for rope_window, rope_far in ((0, True), (3, False)):  # a plain hybrid, and a windowed one read so
        model = sharp(GPT(GPTConfig(**SMALL, nope_every=2, rope_window=rope_window, nope_window=w), seed=0))
        for layer, rope in ((0, True), (1, False), (2, True), (3, False)):
            far = last_query_moves(model, layer, T - 1 - w)  # distance w: beyond the NoPE layers' window
            assert (far > 0.0) == (rope and rope_far), (rope_window, layer)
            if not rope:
                assert last_query_moves(model, layer, T - w) > 0.0, layer  # distance w - 1: in view


def test_an_attention_window_acts_in_every_layer_and_a_sink_keeps_the_first_token():
    w, T = 3, 12
    for enc in ("rope", "none", "alibi", "t5"):
        windowed = sharp(GPT(GPTConfig(**SMALL, pos_encoding=enc, attention_window=w), seed=0))
        sink = sharp(GPT(GPTConfig(**SMALL, pos_encoding=enc, attention_window=w, attention_sink=True), seed=0))
        for layer in range(4):
            assert last_query_moves(windowed, layer, T - 1 - w) == 0.0 and last_query_moves(windowed, layer, 0) == 0.0
            assert last_query_moves(windowed, layer, T - w) > 0.0, (enc, layer)
            assert last_query_moves(sink, layer, 0) > 0.0 and last_query_moves(sink, layer, 4) == 0.0, (enc, layer)


def test_a_reading_s_sink_does_not_open_a_trained_rope_window():
    # a windowed hybrid (RoPE layers 0 and 2 see 4 keys; NoPE layers 1 and 3 all) read with far keys masked at 8,
    # the first kept: the first token is in view of the NoPE layers (the sink), never of the RoPE layers
    model = sharp(GPT(GPTConfig(**SMALL, nope_every=2, rope_window=4, attention_window=8, attention_sink=True),
                      seed=0))
    assert [last_query_moves(model, layer, 0) > 0.0 for layer in range(4)] == [False, True, False, True]
    assert [last_query_moves(model, layer, 2) > 0.0 for layer in range(4)] == [False, False, False, False]
    assert [last_query_moves(model, layer, 5) > 0.0 for layer in range(4)] == [False, True, False, True]


def test_the_window_mask_is_its_definition():
    """Key j is in view of query i when 0 <= i - j < w, or, with a sink, when j is the first token."""
    model = GPT(GPTConfig(**SMALL, attention_window=3, attention_sink=True), seed=0)
    attn, T = model.transformer.h[0].attn, 7
    mask = attn.windowed(None, model.transformer.pos, range(T), T, "cpu")
    for i in range(T):
        for j in range(T):
            seen = 0 <= i - j < 3 or (j == 0 and i >= 0)
            assert mask[i, j].item() == (0.0 if seen else float("-inf")), (i, j)
    cached = attn.windowed(None, model.transformer.pos, range(5, 7), 7, "cpu")  # two new queries after 5 keys
    assert torch.equal(cached, mask[5:])


@pytest.mark.parametrize("settings", [dict(nope_every=2, rope_window=4), dict(rope_window=4),
                                      dict(pos_encoding="none", attention_window=5, attention_sink=True),
                                      dict(nope_every=2, rope_window=3, nope_window=5)])
def test_windowed_models_are_causal_and_sample_the_same_with_a_kv_cache(settings):
    model = GPT(GPTConfig(**{**SMALL, **settings}), seed=0).eval()
    idx = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 20
    a, b = (model(i, torch.zeros_like(i))[0] for i in (idx, changed))
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=1e-6, rtol=0)
    cache = KVCache(model.config, 2, "cpu")
    steps = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(steps, 1), a[:, 4:], atol=1e-5, rtol=1e-5)
    start = idx[:, :3]
    generated = [model.generate(start, 13, generator=torch.Generator().manual_seed(5), use_cache=c) for c in (0, 1)]
    assert torch.equal(*generated)  # within one block the cached sampler draws the same characters


def test_a_window_as_long_as_the_block_is_plain_rope():
    idx = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(0))
    plain, wide = (GPT(GPTConfig(**SMALL, rope_window=w), seed=0).eval() for w in (0, 16))
    torch.testing.assert_close(wide(idx, idx)[0], plain(idx, idx)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("settings, message", [
    (dict(rope_window=8, clamp_distance=4), "rope_window hides the keys a clamp_distance"),
    (dict(rope_window=-1), "a window is 1 or more keys"), (dict(attention_window=-2), "a window is 1 or more keys"),
    (dict(attention_sink=True), "attention_sink keeps the first token in view of attention_window"),
    (dict(clamp_offset=2.0), "clamp_offset lowers the clamped keys' logits by b >= 0: it needs clamp_distance"),
    (dict(clamp_distance=4, clamp_offset=-1.0), "it needs clamp_distance"),
    (dict(logit_scale=0.0), "logit_scale must be positive"),
    (dict(nope_window=8), "nope_window masks the NoPE layers of a RoPE/NoPE hybrid: set nope_every too"),
    (dict(nope_every=2, nope_window=-1), "a window is 1 or more keys")])
def test_meaningless_window_and_reading_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**SMALL, **settings})


def test_train_py_refuses_them_in_one_line(data_dir, tmp_path):
    proc = run("train.py", "--data-dir", data_dir, "--out-dir", tmp_path, *TINY_FLAGS, "--rope-window", "8",
               "--clamp-distance", "4", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["train.py: error: rope_window hides the keys a clamp_distance would"
                                                " score as near: use one of them"]


def logits_of(model, T=10, layer=0):
    """Layer `layer`'s written-out attention logits (1, n_head, T, T) for a fixed input."""
    attn, pos_enc = model.transformer.h[layer].attn, model.transformer.pos
    x = torch.randn(1, T, 32, generator=torch.Generator().manual_seed(0))
    q, k, _ = attn.qkv(x, pos_enc, range(T))
    return attn.logits(q, k, pos_enc, range(T), pos_enc.attn_bias(range(T), range(T)))


@pytest.mark.parametrize("enc", ["rope", "t5"])
def test_a_clamp_offset_lowers_the_clamped_keys_logits_by_b(enc):
    w, b, T = 3, 2.5, 10
    clamped, offset = (GPT(GPTConfig(**SMALL, pos_encoding=enc, clamp_distance=w, clamp_offset=o), seed=0)
                       for o in (0.0, b))
    a, got = logits_of(clamped, T), logits_of(offset, T)
    distance = causal_distance(range(T), range(T), "cpu")
    seen = distance >= 0
    want = torch.where(distance > w, a - b, a)
    torch.testing.assert_close(got[..., seen], want[..., seen], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("enc", ["rope", "alibi", "none"])
def test_a_logit_scale_multiplies_every_logit_before_the_bias(enc):
    tau, T = 1.5, 10
    plain, scaled = (GPT(GPTConfig(**SMALL, pos_encoding=enc, logit_scale=s), seed=0) for s in (1.0, tau))
    bias = plain.transformer.pos.attn_bias(range(T), range(T))
    bias = torch.zeros(1) if bias is None else bias
    seen = causal_distance(range(T), range(T), "cpu") >= 0
    want = (logits_of(plain, T) - bias) * tau + bias
    torch.testing.assert_close(logits_of(scaled, T)[..., seen], want[..., seen], atol=1e-5, rtol=1e-5)
    assert not math.isclose(tau, 1.0)


def test_a_windowed_run_is_read_without_the_readings_its_window_makes_meaningless():
    from study.evaluate import ablation_settings
    # plain RoPE and a plain hybrid are clamped, offset and (the hybrid) masked in their RoPE layers ...
    assert ablation_settings("clamp-63", "rope", 64) == {"clamp_distance": 63}
    assert ablation_settings("rope-mask", "rope", 64, hybrid=True) == {"rope_window": 64}
    assert ablation_settings("count-8", "rope", 64) == {"clamp_distance": 63, "attention_window": 72}
    # ... a windowed one, whose RoPE layers see no distance a clamp moves, is not: the model refuses the mix
    for name in ("clamp-16", "clamp-63", "offset-2", "rope-mask"):
        assert ablation_settings(name, "rope", 64, hybrid=True, windowed=True) is None, name
    assert ablation_settings("count-8", "rope", 64, hybrid=True, windowed=True) == {"attention_window": 72}
    assert ablation_settings("mask", "rope", 64, windowed=True) == {"attention_window": 64}
    assert ablation_settings("truncate", "rope", 64, windowed=True) == {"truncate": 64}
    # the NoPE layers' far keys are masked in any hybrid, windowed or not; a model without NoPE layers has none
    assert ablation_settings("nope-mask", "rope", 64, hybrid=True) == {"nope_window": 64}
    assert ablation_settings("nope-mask", "rope", 64, hybrid=True, windowed=True) == {"nope_window": 64}
    assert ablation_settings("nope-mask", "rope", 64, windowed=True) is None
    assert ablation_settings("nope-mask", "t5", 64) is None
