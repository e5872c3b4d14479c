"""Sinusoidal, ALiBi, RoPE scaling and the KV cache."""

import math

import pytest
import torch

from model import (GPT, POS_ENCODINGS, GPTConfig, KVCache, RotaryPositionalEncoding, alibi_slopes, rotating_pairs,
                   apply_rotary_embeddings, precompute_theta_pos_frequencies, sinusoidal_table, t5_bucket)

SMALL = dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_sinusoidal_values_follow_the_formula():
    table = sinusoidal_table(50, 8)
    for m in (0, 1, 7, 49):
        for i in range(4):
            angle = m / 10000 ** (2 * i / 8)
            assert math.isclose(table[m, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[m, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)


def test_sinusoidal_has_no_length_limit_and_no_parameters():
    model = GPT(GPTConfig(**SMALL, pos_encoding="sinusoidal"), seed=0).eval()
    logits, _ = model(torch.zeros(1, 100, dtype=torch.long), torch.zeros(1, 100, dtype=torch.long))
    assert logits.shape == (1, 100, 20) and torch.isfinite(logits).all()
    assert set(model.state_dict()) == set(GPT(GPTConfig(**SMALL, pos_encoding="none")).state_dict())


@pytest.mark.parametrize("n_head, expected", [
    (4, [1 / 4, 1 / 16, 1 / 64, 1 / 256]),
    (8, [1 / 2 ** i for i in range(1, 9)]),
    # not a power of two: the 4-head slopes, then every other slope of the 8-head sequence
    (6, [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]),
])
def test_alibi_slopes_match_the_paper(n_head, expected):
    assert alibi_slopes(n_head) == pytest.approx(expected)


def test_alibi_bias_is_minus_slope_times_distance_and_causal():
    enc = POS_ENCODINGS["alibi"](GPTConfig(**SMALL, pos_encoding="alibi"))
    bias = enc.attn_bias(range(0, 4), range(0, 4))
    assert bias.shape == (1, 2, 4, 4)  # (batch, head, query, key): broadcast over the batch
    slopes = alibi_slopes(2)
    for h in range(2):
        for i in range(4):
            for j in range(4):
                want = -slopes[h] * (i - j) if j <= i else float("-inf")
                assert bias[0, h, i, j].item() == pytest.approx(want)
    # queries after cached keys (positions 4, 5 against keys 0..5)
    assert torch.equal(enc.attn_bias(range(4, 6), range(0, 6)), enc.attn_bias(range(0, 6), range(0, 6))[:, :, 4:])


def test_rope_scaling_factor_one_is_the_identity():
    q, k = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    plain = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2)).rotate(q, k, range(0, 40))
    for kind in ("linear", "ntk"):
        scaled = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2, rope_scaling=kind, rope_scaling_factor=1.0))
        for a, b in zip(scaled.rotate(q, k, range(0, 40)), plain):
            assert torch.equal(a, b), kind


def test_linear_rope_scaling_at_s_times_m_equals_unscaled_at_m():
    s = 4
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    plain = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2))
    linear = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2, rope_scaling="linear", rope_scaling_factor=s))
    for m in (1, 5, 15):
        for a, b in zip(linear.rotate(q, k, range(s * m, s * m + 1)), plain.rotate(q, k, range(m, m + 1))):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ntk_scaling_rotates_with_a_raised_base():
    d, s = 16, 4
    ntk = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2, rope_scaling="ntk", rope_scaling_factor=s))
    q, k = torch.randn(1, 2, 30, d), torch.randn(1, 2, 30, d)
    freqs = precompute_theta_pos_frequencies(d, 30, theta=10000 * s ** (d / (d - 2)))
    rq, rk = ntk.rotate(q, k, range(0, 30))
    torch.testing.assert_close(rq, apply_rotary_embeddings(q, freqs))
    torch.testing.assert_close(rk, apply_rotary_embeddings(k, freqs))
    # the fastest pair (i = 0) is untouched, the slowest is slowed down by s (the point of NTK scaling)
    plain = precompute_theta_pos_frequencies(d, 30)
    assert torch.allclose(freqs[:, 0], plain[:, 0])
    assert freqs[1, -1].angle().item() == pytest.approx(plain[1, -1].angle().item() / s, rel=1e-4)


@pytest.mark.parametrize("enc", POS_ENCODINGS)
def test_kv_cache_gives_the_same_logits(enc):
    model = GPT(GPTConfig(**SMALL, pos_encoding=enc), seed=0).eval()
    idx = torch.randint(0, 20, (3, 12))
    full = model(idx, torch.zeros_like(idx))[0]
    cache = KVCache(model.config, 3, "cpu")
    steps = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, 1), full[:, [4, 5, 6, 7, 8, 9, 10, 11]], atol=1e-5, rtol=1e-5)
    # several new tokens after cached ones (the causal mask is aligned to the end): every row
    cache = KVCache(model.config, 3, "cpu")
    model(idx[:, :5], cache=cache)
    chunk = model(idx[:, 5:9], targets=torch.zeros_like(idx[:, 5:9]), cache=cache)[0]
    torch.testing.assert_close(chunk, full[:, 5:9], atol=1e-5, rtol=1e-5)


def reference_sample(model, idx, new, generator, temperature=1.0):
    """nanoGPT's sampler written out plainly: each character from the last block_size ones."""
    seq = idx.clone()
    for _ in range(new):
        logits, _ = model(seq[:, -model.config.block_size:])
        probs = torch.softmax(logits[:, -1, :] / temperature, dim=-1)
        seq = torch.cat([seq, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return seq


@pytest.mark.parametrize("enc", POS_ENCODINGS)
def test_sampling_is_the_sliding_window_sampler_and_the_cache_agrees_within_a_block(enc):
    model = GPT(GPTConfig(**SMALL, pos_encoding=enc), seed=1).eval()
    block = model.config.block_size
    idx = torch.zeros(4, 1, dtype=torch.long)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    slide = model.generate(idx, 3 * block, generator=gen())  # the default: no cache
    assert slide.shape == (4, 3 * block + 1)
    assert torch.equal(slide, reference_sample(model, idx, 3 * block, gen()))
    cached = model.generate(idx, 3 * block, generator=gen(), use_cache=True)
    assert torch.equal(cached[:, :block + 1], slide[:, :block + 1])  # the same contexts up to a full block


@pytest.mark.parametrize("enc", POS_ENCODINGS)
def test_tables_built_during_inference_still_train(enc):
    model = GPT(GPTConfig(**SMALL, pos_encoding=enc), seed=0)
    idx = torch.randint(0, 20, (2, 16))
    with torch.inference_mode():
        model(idx, idx)  # evaluation first, as train.py does at step 0
    _, loss = model(idx, idx)
    loss.backward()
    assert model.transformer.wte.weight.grad is not None


def record_contexts(model):
    seen, forward = [], model.forward
    model.forward = lambda idx, targets=None, cache=None: seen.append(idx.clone()) or forward(idx, targets, cache)
    return seen


def test_sampling_sees_the_last_block_size_characters():
    model = GPT(GPTConfig(**SMALL, pos_encoding="learned"), seed=0).eval()
    seen = record_contexts(model)
    prompt = torch.arange(1, 11).view(1, 10)  # 10 tokens, block_size 16
    out = model.generate(prompt, 20, top_k=3, generator=torch.Generator().manual_seed(0))
    assert [x.size(1) for x in seen] == [10, 11, 12, 13, 14, 15] + [16] * 14
    for i, x in enumerate(seen):  # the context of the character at position 10 + i
        assert torch.equal(x, out[:, max(0, 10 + i - 16):10 + i])


def test_cached_sampling_cuts_its_context_back_to_half_a_block():
    """With the KV cache: the context grows to block_size, then restarts from the last
    block_size // 2 tokens (fed through the model again to rebuild the cache)."""
    model = GPT(GPTConfig(**SMALL, pos_encoding="learned"), seed=0).eval()
    seen = record_contexts(model)
    prompt = torch.arange(1, 11).view(1, 10)
    out = model.generate(prompt, 20, top_k=3, generator=torch.Generator().manual_seed(0), use_cache=True)
    # the prompt, then one new token per step until 17 tokens would be in the context: then 8 again
    assert [x.size(1) for x in seen] == [10] + [1] * 6 + [8] + [1] * 8 + [8] + [1] * 3
    assert torch.equal(seen[7], out[:, 9:17])  # after 16 tokens + 1 new: keep the last 8 of 17


def test_sinusoidal_scale_is_an_option_and_the_waves_have_the_same_size_at_every_position():
    x, pos = torch.randn(2, 5, 32), range(3, 8)
    table = sinusoidal_table(8, 32)
    for scale, factor in ((True, math.sqrt(32)), (False, 1.0)):
        enc = POS_ENCODINGS["sinusoidal"](GPTConfig(**SMALL, pos_encoding="sinusoidal", sinusoidal_scale=scale))
        torch.testing.assert_close(enc.embed(x, pos), x * factor + table[3:8])
    # sin^2 + cos^2 = 1 for each of the d/2 pairs: RMS 1/sqrt(2) = 0.71 per channel, at every position
    rms = sinusoidal_table(4096, 32).pow(2).mean(1).sqrt()
    torch.testing.assert_close(rms, torch.full((4096,), 2 ** -0.5))


# --- T5 relative bias, FIRE, p-RoPE --------------------------------------------------


def t5_bucket_reference(n, num_buckets=32, max_distance=128):
    """T5's _relative_position_bucket for bidirectional=False, one distance n >= 0 at a time."""
    exact = num_buckets // 2
    if n < exact:
        return n
    return min(num_buckets - 1, exact + int(math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact)))


def test_t5_buckets_follow_the_paper():
    got = t5_bucket(torch.arange(0, 600)).tolist()
    assert got == [t5_bucket_reference(n) for n in range(600)]
    # boundaries: one bucket per distance below 16, then log-spaced up to 128, then the last one
    assert [got[n] for n in (0, 15, 16, 18, 19, 63, 66, 67, 112, 113, 127, 128, 599)] == \
        [0, 15, 16, 16, 17, 26, 26, 27, 30, 31, 31, 31, 31]


def test_t5_bias_is_the_bucket_table_per_head_and_causal():
    enc = POS_ENCODINGS["t5"](GPTConfig(**SMALL, pos_encoding="t5"))
    table = enc.relative_attention_bias.weight  # (32 buckets, 2 heads)
    bias = enc.attn_bias(range(0, 40), range(0, 40))
    assert bias.shape == (1, 2, 40, 40)
    for h in range(2):
        for i in (0, 5, 39):
            for j in (0, 4, 5, 6, 39):
                want = table[t5_bucket_reference(i - j), h].item() if j <= i else float("-inf")
                assert bias[0, h, i, j].item() == want
    assert torch.equal(enc.attn_bias(range(30, 32), range(0, 32)), bias[:, :, 30:32, :32])  # after cached keys


def test_fire_normalizes_the_log_distance_by_the_query_position():
    enc = POS_ENCODINGS["fire"](GPTConfig(**SMALL, pos_encoding="fire"))
    assert (enc.c.item(), enc.L_multiplier.item()) == (pytest.approx(0.1), 1.0)
    psi = lambda x: math.log(0.1 * x + 1)  # noqa: E731
    x, distance = enc.normalized_distance(range(0, 700), range(0, 700))
    for i, j in ((0, 0), (10, 3), (63, 0), (511, 200), (600, 0), (699, 1)):
        # below L = 512 every query shares the normalizer psi(512); past it, its own position's
        assert x[i, j].item() == pytest.approx(psi(i - j) / psi(max(512, i)), rel=1e-5)
        assert distance[i, j].item() == i - j
    assert x.max().item() <= 1 and x[699, 0].item() == pytest.approx(1.0, rel=1e-4)
    with torch.no_grad():  # a learned multiplier moves the threshold: L = 0.125 * 512 = 64
        enc.L_multiplier.fill_(0.125)
    assert enc.normalized_distance(range(0, 100), range(0, 100))[0][99, 9].item() == pytest.approx(psi(90) / psi(99))
    bias = enc.attn_bias(range(0, 8), range(0, 8))
    x = enc.normalized_distance(range(0, 8), range(0, 8))[0]
    torch.testing.assert_close(bias[0, :, 7, 2], enc.mlp(x[7, 2].view(1, 1))[0])
    assert bias[0, 0, 2, 3].item() == float("-inf")


def test_fire_starts_at_the_papers_values_not_the_models_random_ones():
    model = GPT(GPTConfig(**SMALL, pos_encoding="fire"), seed=3)
    fire = model.transformer.pos
    assert (fire.c.item(), fire.L_multiplier.item()) == (pytest.approx(0.1), 1.0)
    w1 = fire.mlp[0].weight  # nn.Linear's default for fan_in 1: U(-1, 1), not the model's N(0, 0.02)
    assert w1.abs().max().item() <= 1 and w1.std().item() > 0.3
    w2 = fire.mlp[2].weight  # U(-1/sqrt(32), 1/sqrt(32)): std 0.102
    assert w2.abs().max().item() <= 32 ** -0.5 and 0.08 < w2.std().item() < 0.13
    for bias, bound in ((fire.mlp[0].bias, 1.0), (fire.mlp[2].bias, 32 ** -0.5)):  # not left at the model's 0
        assert bias.abs().max().item() <= bound and (bias != 0).all()
    again = GPT(GPTConfig(**SMALL, pos_encoding="fire"), seed=3).transformer.pos
    assert torch.equal(again.mlp[0].weight, w1)  # seeded like every other parameter
    assert not torch.equal(GPT(GPTConfig(**SMALL, pos_encoding="fire"), seed=4).transformer.pos.mlp[0].weight, w1)


@pytest.mark.parametrize("enc", ["t5", "fire"])
def test_learned_biases_get_the_gradient_of_plain_attention(enc):
    """The bias is an SDPA mask that needs a gradient: it must get the same one as written-out attention."""
    model = GPT(GPTConfig(**SMALL, pos_encoding=enc), seed=0)
    idx = torch.randint(0, 20, (2, 16))
    model(idx, idx)[1].backward()
    sdpa = {n: p.grad.clone() for n, p in model.transformer.pos.named_parameters()}
    model.zero_grad()
    x = model.transformer.wte(idx)
    bias = model.transformer.pos.attn_bias(range(16), range(16))
    for block in model.transformer.h:
        att = block.attn
        a = att.attention_weights(block.ln_1(x), model.transformer.pos, range(16), bias)
        v = att.c_attn(block.ln_1(x)).split(32, dim=2)[2].view(2, 16, 2, 16).transpose(1, 2)
        x = x + att.c_proj((a @ v).transpose(1, 2).reshape(2, 16, 32))
        x = x + block.mlp(block.ln_2(x))
    logits = model.lm_head(model.transformer.ln_f(x))
    torch.nn.functional.cross_entropy(logits.view(-1, 20), idx.view(-1)).backward()
    for name, p in model.transformer.pos.named_parameters():
        assert sdpa[name].abs().sum() > 0, name
        torch.testing.assert_close(sdpa[name], p.grad, atol=1e-6, rtol=1e-4)


def test_p_rope_rotates_the_fastest_pairs_and_leaves_the_rest_alone():
    d = 16  # 8 pairs; a quarter rotate: pairs 0 and 1, at full RoPE's frequencies
    enc = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2, rope_fraction=0.25))
    q, k = torch.randn(1, 2, 30, d), torch.randn(1, 2, 30, d)
    rq, rk = enc.rotate(q, k, range(0, 30))
    full = apply_rotary_embeddings(q, precompute_theta_pos_frequencies(d, 30))
    torch.testing.assert_close(rq[..., :4], full[..., :4])
    assert torch.equal(rq[..., 4:], q[..., 4:]) and torch.equal(rk[..., 4:], k[..., 4:])
    assert rotating_pairs(16, 0.5).tolist() == [1] * 4 + [0] * 4
    one = RotaryPositionalEncoding(GPTConfig(n_embd=32, n_head=2, rope_fraction=1.0)).rotate(q, k, range(0, 30))
    assert torch.equal(one[0], apply_rotary_embeddings(q, precompute_theta_pos_frequencies(d, 30)))


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.5])
def test_p_rope_needs_a_whole_number_of_pairs(fraction):
    with pytest.raises(ValueError, match="rope_fraction must be in"):
        GPTConfig(n_embd=32, n_head=2, rope_fraction=fraction)
    GPTConfig(n_embd=50, n_head=1, rope_fraction=0.28)  # 25 pairs x 0.28 = 7.000000000000001: accepted


def test_fire_at_this_scale_starts_its_threshold_at_fire_L():
    enc = POS_ENCODINGS["fire"](GPTConfig(**SMALL, pos_encoding="fire", fire_L=16.0))
    psi = lambda x: math.log(0.1 * x + 1)  # noqa: E731
    x, _ = enc.normalized_distance(range(0, 64), range(0, 64))
    for i, j in ((5, 2), (15, 0), (16, 3), (63, 10)):  # below 16 the shared psi(16), past it the query's own
        assert x[i, j].item() == pytest.approx(psi(i - j) / psi(max(16, i)), rel=1e-5)
    assert enc.L_multiplier.requires_grad  # still learned
    with pytest.raises(ValueError, match="fire_L must be positive"):
        GPTConfig(**SMALL, pos_encoding="fire", fire_L=0.0)


HYBRID = dict(SMALL, n_layer=4, pos_encoding="rope", nope_every=2)


@pytest.mark.parametrize("every, nope_layers", [(2, [1, 3]), (4, [3]), (0, [])])
def test_nope_every_k_leaves_every_kth_layer_without_position(every, nope_layers):
    enc = POS_ENCODINGS["rope"](GPTConfig(**dict(HYBRID, nope_every=every)))
    assert [i for i in range(4) if not enc.acts_on(i)] == nope_layers


@pytest.mark.parametrize("settings, message", [
    (dict(nope_every=1), "nope_every must be 0"), (dict(nope_every=5), "nope_every must be 0"),
    (dict(pos_encoding="alibi", clamp_distance=32), "alibi has none to clamp")])
def test_settings_that_would_be_meaningless_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**HYBRID, **settings})


def test_a_nope_layer_carries_no_position_and_a_rope_layer_does():
    """The last query's output of a layer without position is a weighted sum over a set: permuting
    the earlier positions' keys and values (their inputs) leaves it unchanged; under RoPE it changes."""
    model = GPT(GPTConfig(**HYBRID), seed=0).eval()
    with torch.no_grad():  # sharper attention than at initialisation, where it is nearly uniform
        for block in model.transformer.h:
            block.attn.c_attn.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    pos_enc, T = model.transformer.pos, 12
    x = torch.randn(1, T, 32, generator=torch.Generator().manual_seed(0))
    shuffled = torch.cat([x[:, torch.randperm(T - 1, generator=torch.Generator().manual_seed(1))], x[:, -1:]], 1)
    for layer, rope in ((0, True), (1, False), (2, True), (3, False)):
        attn = model.transformer.h[layer].attn
        bias = None  # rope's layers have no bias; the causal mask is SDPA's is_causal
        last, moved = (attn(inp, pos_enc, range(T), bias)[:, -1] for inp in (x, shuffled))
        if rope:
            assert (last - moved).abs().max() > 1e-3, layer
        else:
            torch.testing.assert_close(last, moved, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("settings", [dict(nope_every=2), dict(nope_every=4), dict(pos_encoding="fire", fire_L=16.0)])
def test_the_new_variants_are_causal_and_sample_the_same_with_a_kv_cache(settings):
    model = GPT(GPTConfig(**{**HYBRID, **settings}), seed=0).eval()
    idx = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 20
    a, b = (model(i, torch.zeros_like(i))[0] for i in (idx, changed))
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=1e-6, rtol=0)
    cache = KVCache(model.config, 2, "cpu")
    steps = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(steps, 1), a[:, 4:], atol=1e-5, rtol=1e-5)


def test_rope_clamp_scores_every_distance_beyond_w_as_w():
    """ReRoPE against its definition, pair by pair of positions: q_i . R(min(i - j, w)) k_j."""
    d, T, w = 8, 10, 3
    enc = POS_ENCODINGS["rope"](GPTConfig(**dict(SMALL, n_embd=16, n_head=2, clamp_distance=w)))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, T, d, generator=g), torch.randn(1, 1, T, d, generator=g)
    assert enc.rotate(q, k, range(T)) == (q, k)  # scores() does the rotating
    got = enc.scores(q, k, range(T), range(T))[0, 0]
    freqs = precompute_theta_pos_frequencies(d, T)
    for i in range(T):
        for j in range(i + 1):
            rotated = apply_rotary_embeddings(q[0, 0, i:i + 1], freqs[min(i - j, w)][None])  # by the relative angle
            assert got[i, j].item() == pytest.approx((rotated @ k[0, 0, j]).item(), abs=1e-5)


def test_a_clamp_beyond_the_window_changes_nothing_and_a_clamped_model_is_causal_with_the_same_cache():
    plain = GPT(GPTConfig(**SMALL), seed=0).eval()
    idx = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(0))
    far = GPT(GPTConfig(**SMALL, clamp_distance=16), seed=0).eval()
    torch.testing.assert_close(far(idx, torch.zeros_like(idx))[0], plain(idx, torch.zeros_like(idx))[0],
                               atol=1e-5, rtol=1e-5)
    clamped = GPT(GPTConfig(**SMALL, clamp_distance=4), seed=0).eval()
    full = clamped(idx, torch.zeros_like(idx))[0]
    assert (full - plain(idx, torch.zeros_like(idx))[0]).abs().max() > 1e-4  # distances beyond 4 do change
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 20
    torch.testing.assert_close(clamped(changed, torch.zeros_like(idx))[0][:, :10], full[:, :10], atol=1e-6, rtol=0)
    cache = KVCache(clamped.config, 2, "cpu")
    steps = [clamped(idx[:, :5], cache=cache)[0]] + [clamped(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 4:], atol=1e-5, rtol=1e-5)


def test_t5_clamp_gives_every_far_distance_the_bucket_of_w():
    plain = POS_ENCODINGS["t5"](GPTConfig(**SMALL, pos_encoding="t5"))
    clamped = POS_ENCODINGS["t5"](GPTConfig(**SMALL, pos_encoding="t5", clamp_distance=32))
    clamped.load_state_dict(plain.state_dict())
    a, b = plain.attn_bias(range(100), range(100)), clamped.attn_bias(range(100), range(100))
    assert torch.equal(a[..., 90, 58:], b[..., 90, 58:])  # distances up to 32: as before
    assert torch.equal(b[..., 90, :58], a[..., 90, 58:59].expand(-1, -1, 58))  # beyond: the bucket of 32


def test_log_scaling_multiplies_query_logits_past_n_before_the_bias():
    n, T = 4, 12
    plain = GPT(GPTConfig(**SMALL, pos_encoding="alibi"), seed=0).eval()
    scaled = GPT(GPTConfig(**SMALL, pos_encoding="alibi", log_scale_length=n), seed=0).eval()
    x = torch.randn(1, T, 32, generator=torch.Generator().manual_seed(0))
    attn, pos_enc = plain.transformer.h[0].attn, plain.transformer.pos
    bias = pos_enc.attn_bias(range(T), range(T))
    q, k, v = attn.qkv(x, pos_enc, range(T))
    factor = torch.tensor([max(1.0, math.log(i + 1) / math.log(n)) for i in range(T)])
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1)) * factor[:, None] + bias  # the bias unscaled
    by_hand = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(1, T, 32)
    got = scaled.transformer.h[0].attn(x, scaled.transformer.pos, range(T), bias)
    torch.testing.assert_close(got, attn.c_proj(by_hand), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:, :n], attn(x, pos_enc, range(T), bias)[:, :n])  # inside n: unchanged


def test_yarn_without_temperature_keeps_the_ramp_and_drops_the_attention_factor():
    settings = dict(SMALL, rope_scaling="yarn", rope_scaling_factor=4.0, yarn_beta=8.0)
    with_t = POS_ENCODINGS["rope"](GPTConfig(**settings))
    without = POS_ENCODINGS["rope"](GPTConfig(**settings, yarn_temperature=False))
    assert with_t.attn_factor == pytest.approx(0.1 * math.log(4) + 1) and without.attn_factor == 1.0
    assert torch.equal(with_t.position_scale, without.position_scale)


def test_in_a_clamped_hybrid_the_rope_layers_score_as_rerope_and_the_nope_layers_as_plain_q_k():
    w, T = 3, 10
    model = GPT(GPTConfig(**dict(HYBRID, n_embd=32, clamp_distance=w)), seed=0).eval()
    pos_enc, d = model.transformer.pos, 16
    x = torch.randn(1, T, 32, generator=torch.Generator().manual_seed(0))
    freqs = precompute_theta_pos_frequencies(d, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for layer, rope in ((0, True), (1, False), (2, True), (3, False)):
        attn = model.transformer.h[layer].attn
        q, k, v = attn.qkv(x, pos_enc, range(T))
        want = torch.full((1, 2, T, T), float("-inf"))
        for i in range(T):
            for j in range(i + 1):
                qi = apply_rotary_embeddings(q[:, :, i:i + 1], freqs[min(i - j, w)][None]) if rope else q[:, :, i:i + 1]
                want[:, :, i, j] = (qi @ k[:, :, j:j + 1].transpose(-2, -1))[..., 0, 0] / math.sqrt(d)
        got = attn.logits(q, k, pos_enc, range(T), None)
        torch.testing.assert_close(got[..., causal], want[..., causal], atol=1e-5, rtol=1e-5)
        by_hand = (torch.softmax(want, -1) @ v).transpose(1, 2).reshape(1, T, 32)
        torch.testing.assert_close(attn(x, pos_enc, range(T), None), attn.c_proj(by_hand), atol=1e-5, rtol=1e-5)


def test_log_scaling_with_the_kv_cache_equals_the_uncached_pass():
    model = GPT(GPTConfig(**SMALL, log_scale_length=4), seed=0).eval()
    idx = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(0))
    full = model(idx, torch.zeros_like(idx))[0]
    assert (full - GPT(GPTConfig(**SMALL), seed=0).eval()(idx, torch.zeros_like(idx))[0]).abs().max() > 1e-4
    cache = KVCache(model.config, 2, "cpu")
    steps = [model(idx[:, :3], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(3, 16)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 2:], atol=1e-5, rtol=1e-5)
