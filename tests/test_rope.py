"""RoPE: the complex reference form against the rotation-matrix definition and its properties."""

import math

import torch

from model import GPTConfig, RotaryPositionalEncoding, apply_rotary_embeddings, precompute_theta_pos_frequencies
from study.plot_rope import base_table, similarity_bound


def rotate_by_matrices(x, theta=10000.0):
    """The definition: pair (x_2i, x_2i+1) at position m times [[cos, -sin], [sin, cos]] of m*theta_i."""
    *_, T, d = x.shape
    out = torch.empty_like(x)
    for m in range(T):
        for i in range(d // 2):
            angle = m * theta ** (-2 * i / d)  # theta_i = theta^(-2(i-1)/d) with 1-based i
            rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                               dtype=torch.float64)
            pair = x[..., m, 2 * i:2 * i + 2].double()
            out[..., m, 2 * i:2 * i + 2] = (pair @ rot.T).to(x.dtype)
    return out


def test_frequencies_follow_the_formula():
    freqs = precompute_theta_pos_frequencies(head_dim=8, seq_len=5, theta=10000.0)
    assert freqs.shape == (5, 4) and freqs.dtype == torch.complex64
    for m in range(5):
        for i in range(4):
            expected = m * 10000.0 ** (-2 * i / 8)
            assert math.isclose(freqs[m, i].angle().item() % (2 * math.pi), expected % (2 * math.pi), abs_tol=1e-5)
            assert math.isclose(freqs[m, i].abs().item(), 1.0, abs_tol=1e-6)


def test_complex_form_equals_rotation_matrices():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8)
    got = apply_rotary_embeddings(x, precompute_theta_pos_frequencies(8, 7))
    torch.testing.assert_close(got, rotate_by_matrices(x), atol=1e-5, rtol=1e-5)
    # other base: theta is really used
    got = apply_rotary_embeddings(x, precompute_theta_pos_frequencies(8, 7, theta=500.0))
    torch.testing.assert_close(got, rotate_by_matrices(x, theta=500.0), atol=1e-5, rtol=1e-5)


def test_model_rotation_is_the_reference_form_at_any_offset():
    cfg = GPTConfig(n_embd=64, n_head=4, pos_encoding="rope")
    rope = RotaryPositionalEncoding(cfg)
    torch.manual_seed(1)
    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 10, 16)
    freqs = precompute_theta_pos_frequencies(16, 40)
    for start in (0, 25):  # positions 0..9 and 25..34 (as with a KV cache)
        rq, rk = rope.rotate(q, k, range(start, start + 10))
        torch.testing.assert_close(rq, apply_rotary_embeddings(q, freqs[start:start + 10]), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(rk, apply_rotary_embeddings(k, freqs[start:start + 10]), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(rq, rotate_by_matrices(torch.cat([torch.zeros(2, 4, start, 16), q], 2))[:, :, start:],
                                   atol=1e-5, rtol=1e-5)


def test_dot_product_depends_only_on_relative_position():
    torch.manual_seed(2)
    d = 16
    q, k = torch.randn(d), torch.randn(d)
    freqs = precompute_theta_pos_frequencies(d, 200)

    def score(m, n):
        qm = apply_rotary_embeddings(q.view(1, d), freqs[m:m + 1])
        kn = apply_rotary_embeddings(k.view(1, d), freqs[n:n + 1])
        return (qm * kn).sum().item()

    for m, n in [(5, 2), (9, 9), (3, 7)]:
        for shift in (1, 17, 150):
            assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-4, abs_tol=1e-4)
    assert abs(score(5, 2) - score(5, 3)) > 1e-3  # but it does depend on the distance


def test_rotation_keeps_norms():
    torch.manual_seed(3)
    x = torch.randn(4, 2, 50, 32)
    y = apply_rotary_embeddings(x, precompute_theta_pos_frequencies(32, 50))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y[..., 1:, :], x[..., 1:, :])  # it did rotate (position 0 is the identity)
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])


def test_men_et_al_bound_is_the_first_distance_where_the_cosine_sum_fails():
    # d = 4, base 100: theta = (1, 0.1); B(m) = cos(m) + cos(0.1 m) = 1.54, 0.56, -0.035 at m = 1, 2, 3
    assert similarity_bound(4, 100.0) == 3
    assert similarity_bound(4, 100.0, max_distance=2) is None
    table = base_table(32, 64, [100, 10000])
    assert "| 100 | 9 | 471 | 28 |" in table and "| 10000 | 5 | 35,333 | 474 |" in table
