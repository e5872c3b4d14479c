"""The GPT with each positional encoding: causality, parameters, fair initialisation, learning."""

import pytest
import torch

from model import GPT, POS_ENCODINGS, GPTConfig

SMALL = dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)


def all_logits(model, idx):
    return model(idx, targets=torch.zeros_like(idx))[0]  # with targets, forward returns every position


@pytest.mark.parametrize("enc", POS_ENCODINGS)
def test_causal_future_tokens_do_not_change_earlier_logits(enc):
    model = GPT(GPTConfig(**SMALL, pos_encoding=enc), seed=0).eval()
    torch.manual_seed(0)
    idx = torch.randint(0, 20, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 20  # change tokens 10..15
    a, b = all_logits(model, idx), all_logits(model, changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=1e-6, rtol=0)
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-3


@pytest.mark.parametrize("enc", ["rope", "none"])
def test_rope_and_none_own_no_position_parameters(enc):
    model = GPT(GPTConfig(**SMALL, pos_encoding=enc))
    names = set(model.state_dict())
    assert not [n for n in names if "wpe" in n or ".pos." in n]
    baseline = GPT(GPTConfig(**SMALL, pos_encoding="none"))
    assert names == set(baseline.state_dict())
    assert model.num_params() == baseline.num_params()


def test_learned_owns_a_block_size_table():
    model = GPT(GPTConfig(**SMALL, pos_encoding="learned"))
    extra = set(model.state_dict()) - set(GPT(GPTConfig(**SMALL, pos_encoding="none")).state_dict())
    assert extra == {"transformer.pos.wpe.weight"}
    assert model.transformer.pos.wpe.weight.shape == (16, 32)


def test_position_signal_matters_except_for_none():
    """In one layer without a position signal, the last token's prediction is blind to the
    order of the tokens before it (attention is a weighted set operation); with one it is not.
    (With more layers the causal mask itself leaks order: earlier tokens see different prefixes.)"""
    idx = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 9]])
    shuffled = torch.tensor([[6, 3, 7, 1, 5, 2, 4, 9]])  # same prefix tokens, other order; same last token
    for enc in POS_ENCODINGS:
        model = GPT(GPTConfig(**{**SMALL, "n_layer": 1}, pos_encoding=enc), seed=0).eval()
        diff = (all_logits(model, idx)[:, -1] - all_logits(model, shuffled)[:, -1]).abs().max().item()
        if enc == "none":
            assert diff < 1e-6, enc
        else:
            assert diff > 1e-5, enc  # 300x above the float noise of "none"


def test_shared_parameters_start_identical_across_encodings():
    models = {enc: GPT(GPTConfig(**SMALL, pos_encoding=enc), seed=42) for enc in POS_ENCODINGS}
    reference = dict(models["none"].named_parameters())
    for enc, model in models.items():
        for name, p in model.named_parameters():
            if name in reference:
                assert torch.equal(p, reference[name]), (enc, name)
    # and a different seed gives different weights
    other = GPT(GPTConfig(**SMALL, pos_encoding="none"), seed=43)
    assert not torch.equal(other.transformer.wte.weight, reference["transformer.wte.weight"])


def test_initialisation_statistics_follow_nanogpt():
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, pos_encoding="learned"))
    sd = model.state_dict()
    assert abs(sd["transformer.wte.weight"].std().item() - 0.02) < 0.002
    assert abs(sd["transformer.h.0.attn.c_proj.weight"].std().item() - 0.02 / (2 * 4) ** 0.5) < 0.001
    assert torch.equal(sd["transformer.h.0.ln_1.weight"], torch.ones(128))
    assert model.lm_head.weight is model.transformer.wte.weight  # tied


@pytest.mark.parametrize("enc", POS_ENCODINGS)
def test_a_few_dozen_steps_lower_the_loss(enc):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL, pos_encoding=enc), seed=0)
    opt = model.configure_optimizer(0.1, 3e-3, (0.9, 0.99), "cpu")
    # a learnable sequence: counting modulo 20, with a random start per row
    starts = torch.randint(0, 20, (16, 1))
    idx = (starts + torch.arange(17)) % 20
    x, y = idx[:, :-1], idx[:, 1:]
    first = model(x, y)[1].item()
    for _ in range(40):
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.5  # ~ln(20) at the start
    assert loss.item() < 0.5 * first, (enc, first, loss.item())


@pytest.mark.parametrize("enc", POS_ENCODINGS)
def test_generate_extends_past_block_size(enc):
    model = GPT(GPTConfig(**SMALL, pos_encoding=enc), seed=0).eval()
    idx = torch.zeros(3, 1, dtype=torch.long)
    out = model.generate(idx, 40, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 41)
    assert out.min() >= 0 and out.max() < 20
    again = model.generate(idx, 40, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded sampling is reproducible


def test_learned_cannot_encode_past_its_table():
    model = GPT(GPTConfig(**SMALL, pos_encoding="learned"))
    with pytest.raises(ValueError, match="16 entries"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_unknown_encoding_and_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown pos_encoding 'sinus'.*rope"):
        GPTConfig(pos_encoding="sinus")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(n_embd=30, n_head=2, pos_encoding="rope")
    GPTConfig(n_embd=30, n_head=2, pos_encoding="learned")  # odd head size is fine without RoPE


def test_per_position_loss_averages_to_the_mean_loss():
    model = GPT(GPTConfig(**SMALL, pos_encoding="rope"), seed=0).eval()
    idx, targets = torch.randint(0, 20, (3, 16)), torch.randint(0, 20, (3, 16))
    logits, mean = model(idx, targets)
    _, per_position = model(idx, targets, reduction="none")
    assert per_position.shape == (3, 16)
    torch.testing.assert_close(per_position.mean(), mean)
    expected = -torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(per_position, expected, atol=1e-5, rtol=1e-5)
