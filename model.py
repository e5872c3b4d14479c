"""
A small character-level GPT whose positional encoding is a swappable part.

Everything positional lives in the `PositionalEncoding` classes below, behind
the `POS_ENCODINGS` registry. The rest of the model is nanoGPT's decoder:
token embedding -> n_layer pre-LayerNorm blocks (causal self-attention + GELU
MLP) -> final LayerNorm -> lm_head tied to the token embedding.

A positional encoding can act at three places, and each class overrides only
the hook(s) it needs (`pos` is a Python range of the tokens' absolute positions):
  embed(x, pos)              add something to the token embeddings   (learned, sinusoidal)
  rotate(q, k, pos)          transform queries and keys per head     (rope)
  attn_bias(q_pos, k_pos)    additive bias on the attention scores   (alibi, t5, fire)
                             of shape (1, n_head, len(q_pos), len(k_pos))
  scores(q, k, q_pos, k_pos) the q.k products themselves, where they are no single rotation of q and
                             k (RoPE with clamp_distance; it sets scores_itself), written-out attention
  window(layer)              the keys a layer's queries may see, distances 0 .. w - 1 (RoPE with
                             rope_window: a sliding window in its RoPE layers; nope_window, a
                             reading: in a hybrid's NoPE layers)
and an encoding with parameters that must not start from the model's random
initialisation (FIRE's c and L) sets them in init_weights(generator). An encoding that
leaves some layers without position (a RoPE/NoPE hybrid) says which in acts_on(layer):
rotate and attn_bias are then skipped there, and those layers see only the causal mask.
"""

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64  # training context length
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm layers (nanoGPT: False is a bit better and faster)
    pos_encoding: str = "rope"  # a key of POS_ENCODINGS
    rope_theta: float = 10000.0  # RoPE base: theta_i = rope_theta^(-2(i-1)/d)
    rope_fraction: float = 1.0  # p-RoPE: the fastest p share of the pairs rotate, the rest get frequency 0
    sinusoidal_scale: bool = True  # sinusoidal: token embeddings times sqrt(n_embd), as in the paper
    # RoPE context extension by a factor s, at evaluation time or for a fine-tune at a longer length:
    # "linear" divides positions by s (position interpolation, Chen et al. 2023),
    # "ntk" raises the base to theta * s^(d/(d-2)) (NTK-aware scaling),
    # "yarn" interpolates only the slow pairs and sharpens attention (NTK-by-parts, Peng et al. 2023)
    rope_scaling: str = "none"
    rope_scaling_factor: float = 1.0
    yarn_alpha: float = 1.0  # YaRN: pairs turning fewer than alpha times over the original length: interpolated
    yarn_beta: float = 32.0  # ... more than beta times: left alone; a linear ramp in between
    rope_original_length: int = 0  # the length the scaling extends from (YaRN's L); 0: block_size
    # RoPE/NoPE hybrid (a simplification of Llama 4's iRoPE): layer i (0-based) carries no position when
    # (i + 1) % nope_every == 0, RoPE otherwise; 0: every layer RoPE
    nope_every: int = 0
    fire_L: float = 512.0  # FIRE's threshold L at initialisation (then learned): the paper's, for 2048 tokens
    # RoPE layers restricted to a sliding window (RNoPE-SWA, Yang et al. 2025): a RoPE layer's query
    # attends only to the keys 0 .. rope_window - 1 back; NoPE layers (nope_every) stay global. Trained
    # with; 0: off (a window of block_size or more trains as plain RoPE)
    rope_window: int = 0
    # inference-time ablations (they own no weights): yarn_temperature=False keeps YaRN's ramp without its
    # attention temperature; clamp_distance=w scores every distance beyond w as w (RoPE as in ReRoPE,
    # T5 with the bucket of w), and clamp_offset=b then lowers the logits of those clamped keys by b;
    # log_scale_length=n multiplies query i's logits q.k/sqrt(d) by max(1, ln(i + 1) / ln n) and
    # logit_scale=tau every logit by tau, before any additive bias; attention_window=w lets every layer
    # attend only to the keys 0 .. w - 1 back, and attention_sink keeps the first token in view of that
    # window (not of a trained rope_window: a reading must not open what the model never saw);
    # nope_window=w lets only the NoPE layers of a RoPE/NoPE hybrid attend to the keys 0 .. w - 1 back
    yarn_temperature: bool = True
    clamp_distance: int = 0
    clamp_offset: float = 0.0
    log_scale_length: int = 0
    logit_scale: float = 1.0
    attention_window: int = 0
    attention_sink: bool = False
    nope_window: int = 0

    def __post_init__(self):
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"unknown pos_encoding {self.pos_encoding!r}; choose one of {', '.join(POS_ENCODINGS)}"
            )
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.clamp_distance and self.pos_encoding not in ("rope", "t5"):
            raise ValueError(f"clamp_distance clamps RoPE's or T5's distances; {self.pos_encoding} has none to clamp")
        if self.clamp_distance < 0 or self.log_scale_length < 0 or self.log_scale_length == 1:
            raise ValueError(f"clamp_distance must not be negative and log_scale_length must be 0 (off) or at least"
                             f" 2, got {self.clamp_distance} and {self.log_scale_length}")
        if self.clamp_offset and not self.clamp_distance or self.clamp_offset < 0:
            raise ValueError(f"clamp_offset lowers the clamped keys' logits by b >= 0: it needs clamp_distance, got"
                             f" clamp_offset {self.clamp_offset} with clamp_distance {self.clamp_distance}")
        if not self.logit_scale > 0:
            raise ValueError(f"logit_scale must be positive, got {self.logit_scale}")
        if min(self.attention_window, self.rope_window, self.nope_window) < 0:
            raise ValueError(f"a window is 1 or more keys (0: off), got attention_window {self.attention_window},"
                             f" rope_window {self.rope_window} and nope_window {self.nope_window}")
        if self.attention_sink and not self.attention_window:
            raise ValueError("attention_sink keeps the first token in view of attention_window: set it")
        POS_ENCODINGS[self.pos_encoding].check_config(self)

    @property
    def head_dim(self):
        return self.n_embd // self.n_head


# -----------------------------------------------------------------------------
# RoPE, the reference (complex-number) form, as in the Llama / RoFormer write-ups.
# Position m rotates the channel pair (2i, 2i+1) by the angle m * theta_i.


def precompute_theta_pos_frequencies(head_dim, seq_len, theta=10000.0, device=None, position_scale=1.0):
    """Complex rotations e^(i * m * theta_j), shape (seq_len, head_dim // 2).
    position_scale < 1 squeezes positions (m -> m * position_scale), as position interpolation
    does; a tensor of head_dim // 2 values squeezes each pair by its own (YaRN)."""
    assert head_dim % 2 == 0, "RoPE rotates pairs of channels: head_dim must be even"
    # computed in float64 on the CPU (Apple's mps has no float64), then moved
    m = torch.arange(seq_len, dtype=torch.float64)
    angles = torch.outer(m, rope_frequencies(head_dim, theta)) * position_scale  # (seq_len, head_dim/2)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(device)


def rope_frequencies(head_dim, theta=10000.0):
    """theta_j = theta^(-2(j-1)/d) for j = 1 .. d/2, float64: radians per position of each pair."""
    return theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def yarn_ramp(head_dim, theta, length, alpha, beta):
    """YaRN's gamma per pair: with r = length / wavelength the turns a pair makes over the
    original length, 0 (interpolate fully) for r < alpha, 1 (leave alone) for r > beta,
    linear in r between."""
    turns = length * rope_frequencies(head_dim, theta) / (2 * math.pi)
    return ((turns - alpha) / (beta - alpha)).clamp(0.0, 1.0)


def rotating_pairs(head_dim, fraction):
    """p-RoPE (Barbero et al. 2024): 1 for the fastest `fraction` of the head_dim // 2 pairs
    (theta_j as in full RoPE), 0 for the slowest rest, which then carry no position at all.
    (GPT-NeoX's partial rotary instead re-spaces all of 1 .. 1/base over the rotated channels.)"""
    pairs = head_dim // 2
    return (torch.arange(pairs) < round(fraction * pairs)).double()


def apply_rotary_embeddings(x, freqs_complex):
    """Rotate x (..., seq_len, head_dim) by freqs_complex (seq_len, head_dim // 2)."""
    # consecutive channels (x0, x1) become the complex number x0 + i*x1 ...
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    # ... multiplying by e^(i*angle) rotates it; then back to real pairs
    x_rotated = torch.view_as_real(x_complex * freqs_complex).flatten(-2)
    return x_rotated.type_as(x)


# -----------------------------------------------------------------------------
# Positional encodings. To add one: subclass, override a hook, register it.


def table_mode():
    """For building cached position tables: a table first built while sampling or evaluating
    (inference mode) must still be usable by a later training step."""
    return torch.inference_mode(False)

POS_ENCODINGS = {}


def register(name):
    def add(cls):
        cls.name = name
        POS_ENCODINGS[name] = cls
        return cls
    return add


class PositionalEncoding(nn.Module):
    """Base class: contributes no position information at all."""

    max_len = None  # longest sequence this encoding can represent; None = unbounded
    options = ()  # GPTConfig fields only this encoding reads (other encodings ignore them)
    scores_itself = False  # True: scores() gives the q.k products, and rotate leaves q and k alone

    def __init__(self, config):
        super().__init__()

    @staticmethod
    def check_config(config):
        """Raise ValueError if this encoding cannot work with `config`."""

    def embed(self, x, pos):
        return x

    def rotate(self, q, k, pos):
        return q, k

    def attn_bias(self, q_pos, k_pos):
        return None

    def acts_on(self, layer):
        """Whether rotate and attn_bias act in this layer (0-based); embed acts before all of them."""
        return True

    def scores(self, q, k, q_pos, k_pos):
        return None

    def window(self, layer):
        """How far back this layer's queries see: keys at distances 0 .. w - 1 (0: all)."""
        return 0

    def init_weights(self, generator):
        """Called after the model's own initialisation; generator(name) is this parameter's seeded one."""


@register("none")
class NoPositionalEncoding(PositionalEncoding):
    """No position signal: only the causal mask tells a token what came before it."""


@register("learned")
class LearnedPositionalEncoding(PositionalEncoding):
    """nanoGPT / GPT-2: a trainable table of block_size vectors added to the token embeddings."""

    def __init__(self, config):
        super().__init__(config)
        self.max_len = config.block_size
        self.wpe = nn.Embedding(config.block_size, config.n_embd)

    def embed(self, x, pos):
        if pos.stop > self.max_len:
            raise ValueError(
                f"learned position table has {self.max_len} entries; cannot encode position {pos.stop - 1}"
            )
        return x + self.wpe.weight[pos.start:pos.stop]


@register("rope")
class RotaryPositionalEncoding(PositionalEncoding):
    """RoPE: rotate each query and key channel pair by an angle proportional to its position.

    Uses the reference complex form, apply_rotary_embeddings, as it is: one complex
    multiply per tensor is also the fastest form we measured on CPU (bench.py), faster
    than the real-valued cos/sin form with its split and stack. The rotation table is
    grown on demand, so any length works, and is not saved: a RoPE model owns no
    position parameters.
    """

    options = ("rope_theta", "rope_fraction", "rope_scaling", "rope_scaling_factor", "yarn_alpha", "yarn_beta",
               "rope_original_length", "nope_every", "rope_window", "yarn_temperature", "clamp_distance",
               "clamp_offset", "nope_window")

    def __init__(self, config):
        super().__init__(config)
        self.head_dim, self.nope_every, self.clamp = config.head_dim, config.nope_every, config.clamp_distance
        self.rope_window, self.nope_window = config.rope_window, config.nope_window
        self.clamp_offset = config.clamp_offset
        self.scores_itself = self.clamp > 0
        d, s, kind = config.head_dim, config.rope_scaling_factor, config.rope_scaling
        self.theta = config.rope_theta * (s ** (d / (d - 2)) if kind == "ntk" else 1.0)
        self.position_scale = 1.0 / s if kind == "linear" else 1.0
        self.attn_factor = 1.0  # multiplies q and k: the attention logits by its square
        if kind == "yarn":
            gamma = yarn_ramp(d, config.rope_theta, config.rope_original_length or config.block_size,
                              config.yarn_alpha, config.yarn_beta)
            self.position_scale = (1.0 - gamma) / s + gamma  # per pair: 1/s where gamma = 0, 1 where gamma = 1
            self.attn_factor = 0.1 * math.log(s) + 1.0 if config.yarn_temperature else 1.0  # the paper's sqrt(1/t)
        if config.rope_fraction < 1:  # p-RoPE: a position scale of 0 is a frequency of 0 for the slow pairs
            self.position_scale = self.position_scale * rotating_pairs(d, config.rope_fraction)
        self.register_buffer("freqs", torch.empty(0, dtype=torch.complex64), persistent=False)

    @staticmethod
    def check_config(config):
        if config.head_dim % 2:
            raise ValueError(
                f"rope needs an even head size, got n_embd/n_head = {config.head_dim}; change n_embd or n_head"
            )
        if not config.rope_theta > 1:  # theta_i = rope_theta^(-2(i-1)/d): 1 gives every pair one frequency
            raise ValueError(f"rope_theta must be greater than 1, got {config.rope_theta}")
        pairs = config.head_dim // 2 * config.rope_fraction
        if not (0 < config.rope_fraction <= 1 and abs(pairs - round(pairs)) < 1e-6):
            raise ValueError(f"rope_fraction must be in (0, 1] and rotate a whole number of the"
                             f" {config.head_dim // 2} pairs of a head, got {config.rope_fraction} ({pairs:g} pairs)")
        if config.rope_scaling not in ("none", "linear", "ntk", "yarn"):
            raise ValueError(f"rope_scaling must be none, linear, ntk or yarn, got {config.rope_scaling!r}")
        if not config.rope_scaling_factor >= 1:
            raise ValueError(f"rope_scaling_factor must be at least 1 (it extends the context), got"
                             f" {config.rope_scaling_factor}")
        if not 0 <= config.yarn_alpha < config.yarn_beta:
            raise ValueError(f"yarn_alpha and yarn_beta need 0 <= alpha < beta, got {config.yarn_alpha} and"
                             f" {config.yarn_beta}")
        if config.rope_original_length < 0:
            raise ValueError(f"rope_original_length must not be negative, got {config.rope_original_length}")
        if config.nope_every and not 2 <= config.nope_every <= config.n_layer:
            raise ValueError(f"nope_every must be 0 (RoPE in every layer) or 2 .. n_layer = {config.n_layer}"
                             f" (1 would leave no RoPE layer, more than n_layer no NoPE layer), got {config.nope_every}")
        if config.rope_window and config.clamp_distance:
            raise ValueError("rope_window hides the keys a clamp_distance would score as near: use one of them")
        if config.nope_window and not config.nope_every:
            raise ValueError("nope_window masks the NoPE layers of a RoPE/NoPE hybrid: set nope_every too")

    def acts_on(self, layer):
        return not self.nope_every or (layer + 1) % self.nope_every != 0

    def window(self, layer):
        return self.rope_window if self.acts_on(layer) else self.nope_window

    def table(self, stop, device):
        """The rotations of positions 0 .. stop - 1, grown on demand."""
        if self.freqs.shape[0] < stop or self.freqs.device != device:
            with table_mode():
                self.freqs = precompute_theta_pos_frequencies(
                    self.head_dim, max(stop, 2 * self.freqs.shape[0]), self.theta, device, self.position_scale)
        return self.freqs

    def rotate(self, q, k, pos):
        if self.clamp:  # scores() rotates them, pair by pair of positions
            return q, k
        freqs = self.table(pos.stop, q.device)[pos.start:pos.stop]  # (T, head_dim/2)
        q, k = apply_rotary_embeddings(q, freqs), apply_rotary_embeddings(k, freqs)
        if self.attn_factor != 1.0:
            q, k = q * self.attn_factor, k * self.attn_factor
        return q, k

    def scores(self, q, k, q_pos, k_pos):
        """With clamp_distance w (ReRoPE, Su 2023): q_i.R(i - j)k_j where i - j <= w, as RoPE scores it,
        and q_i.R(w)k_j beyond, every far key scored as if it stood w back. Two products, merged."""
        if not self.clamp:
            return None
        freqs = self.table(max(q_pos.stop, self.clamp + 1), q.device)
        near = apply_rotary_embeddings(q, freqs[q_pos.start:q_pos.stop]) @ \
            apply_rotary_embeddings(k, freqs[k_pos.start:k_pos.stop]).transpose(-2, -1)
        far = apply_rotary_embeddings(q, freqs[self.clamp:self.clamp + 1]) @ k.transpose(-2, -1)
        distance = causal_distance(q_pos, k_pos, q.device)
        scores = torch.where(distance <= self.clamp, near, far) * self.attn_factor ** 2
        if self.clamp_offset:  # (in logit units: the scores are divided by sqrt(d) after this)
            scores = scores - (distance > self.clamp) * (self.clamp_offset * math.sqrt(q.size(-1)))
        return scores


@register("sinusoidal")
class SinusoidalPositionalEncoding(PositionalEncoding):
    """"Attention Is All You Need": fixed sin/cos waves added to the token embeddings,
    PE(m, 2i) = sin(m / 10000^(2i/d)), PE(m, 2i+1) = cos(m / 10000^(2i/d)).
    As in the paper, token embeddings are scaled by sqrt(d) first (sinusoidal_scale), so
    that the waves (RMS 0.71 per channel) do not drown the token vectors (std 0.02 at
    initialisation). With tied weights the scale also changes the input side's effective
    learning rate, hence the option to leave it out. Computed for any length; no parameters."""

    options = ("sinusoidal_scale",)

    def __init__(self, config):
        super().__init__(config)
        self.n_embd = config.n_embd
        self.scale = math.sqrt(config.n_embd) if config.sinusoidal_scale else 1.0
        self.register_buffer("table", torch.empty(0), persistent=False)

    @staticmethod
    def check_config(config):
        if config.n_embd % 2:
            raise ValueError(f"sinusoidal needs an even n_embd, got {config.n_embd}")

    def embed(self, x, pos):
        if self.table.shape[0] < pos.stop or self.table.device != x.device:
            with table_mode():
                self.table = sinusoidal_table(max(pos.stop, 2 * self.table.shape[0]), self.n_embd, x.device)
        return x * self.scale + self.table[pos.start:pos.stop].to(x.dtype)


def sinusoidal_table(seq_len, dim, device=None):
    m = torch.arange(seq_len, dtype=torch.float64)[:, None]  # float64 on the CPU, then moved
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.empty(seq_len, dim, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(m * inv_freq), torch.cos(m * inv_freq)
    return table.float().to(device)


@register("alibi")
class ALiBiPositionalEncoding(PositionalEncoding):
    """ALiBi (Press et al. 2022): no embedding; head h subtracts slope_h * distance from
    every attention score. The bias (causal mask included) goes to
    scaled_dot_product_attention as an additive float mask."""

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("slopes", torch.tensor(alibi_slopes(config.n_head)), persistent=False)

    def attn_bias(self, q_pos, k_pos):
        distance = causal_distance(q_pos, k_pos, self.slopes.device).float()
        bias = -self.slopes[:, None, None] * distance  # (n_head, Tq, Tk)
        # (1, n_head, Tq, Tk): given a 3-D mask, SDPA on the CPU falls back from its flash kernel to
        # the math path, 3.1 instead of 1.9 ms per layer (forward and backward, CPU config)
        return bias.masked_fill(distance < 0, float("-inf"))[None]


def alibi_slopes(n_head):
    """Geometric sequence starting at 2^(-8/n): for 8 heads 1/2, 1/4, ..., 1/256. For a head
    count that is not a power of two, the paper takes the slopes of the nearest smaller power
    of two, then every other slope of the next power of two."""
    def power_of_two(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]
    if math.log2(n_head).is_integer():
        return power_of_two(n_head)
    closest = 2 ** math.floor(math.log2(n_head))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][:n_head - closest]


def causal_distance(q_pos, k_pos, device):
    """(len(q_pos), len(k_pos)) query position minus key position: >= 0 for the keys a query may see."""
    q = torch.arange(q_pos.start, q_pos.stop, device=device)[:, None]
    return q - torch.arange(k_pos.start, k_pos.stop, device=device)[None, :]


def per_head_bias(bias, distance):
    """(Tq, Tk, n_head) learned biases -> SDPA's (1, n_head, Tq, Tk) float mask, causal mask included."""
    return bias.permute(2, 0, 1).masked_fill(distance < 0, float("-inf"))[None]


@register("t5")
class T5RelativeBias(PositionalEncoding):
    """T5's relative position bias (Raffel et al. 2020): a learned scalar per head for each of
    32 distance buckets, added to the scores; one table for all layers, as in T5. Causal
    (one-sided) buckets: distances 0-15 get one bucket each, 16-127 share the other 16 on a log
    scale (the last one from 113), and 128 and more are clamped into the last. Over a 64-character
    window distances reach 63 (bucket 26), so buckets 27-31 (distances 67 and more) are never
    trained: they keep their initial values, shrunk by weight decay (the table is decayed like
    every matrix here; T5 itself used none).
    The bias needs gradients, so in training SDPA takes its math path (see bench.py)."""

    num_buckets, max_distance = 32, 128
    options = ("clamp_distance", "clamp_offset")

    def __init__(self, config):
        super().__init__(config)
        self.relative_attention_bias = nn.Embedding(self.num_buckets, config.n_head)
        self.clamp = config.clamp_distance or None  # (the ablation: every distance beyond it gets its bucket)
        self.clamp_offset = config.clamp_offset  # (and its logits lowered by this)

    def attn_bias(self, q_pos, k_pos):
        distance = causal_distance(q_pos, k_pos, self.relative_attention_bias.weight.device)
        buckets = t5_bucket(distance.clamp(min=0, max=self.clamp), self.num_buckets, self.max_distance)
        bias = self.relative_attention_bias(buckets)
        if self.clamp_offset:
            bias = bias - (distance > self.clamp)[..., None] * self.clamp_offset
        return per_head_bias(bias, distance)


def t5_bucket(distance, num_buckets=32, max_distance=128):
    """T5's causal bucket of each distance >= 0 (its _relative_position_bucket, bidirectional=False):
    the first half of the buckets hold one distance each, the second half log-spaced distances up
    to max_distance, and every distance beyond shares the last bucket."""
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = exact + (log_ratio * (num_buckets - exact)).long()  # truncation, as in T5
    return torch.where(distance < exact, distance, far.clamp(max=num_buckets - 1))


@register("fire")
class FIRE(PositionalEncoding):
    """FIRE (Li et al. 2023): bias(i, j) = f(psi(i - j) / psi(max(L, i))), psi(x) = log(c x + 1),
    for query i and key j; f a 1 -> 32 -> n_head ReLU MLP; shared by all layers. The log
    stretches short distances; dividing by psi of the query's position (progressive
    interpolation) maps every distance into [0, 1], at any length; L keeps short prefixes from
    being stretched. As the paper's code: c starts at 0.1; L = fire_L (the paper's 512) times a
    learned multiplier that starts at 1; the MLP starts as PyTorch's nn.Linear does. The paper set
    L = 512 for 2048-token training; fire_L = 16 is the same share of a 64-character window."""

    hidden, init_c, eps = 32, 0.1, 1e-6
    options = ("fire_L",)

    def __init__(self, config):
        super().__init__(config)
        self.init_L = config.fire_L
        self.mlp = nn.Sequential(nn.Linear(1, self.hidden), nn.ReLU(), nn.Linear(self.hidden, config.n_head))
        self.c = nn.Parameter(torch.tensor(self.init_c))
        self.L_multiplier = nn.Parameter(torch.tensor(1.0))

    @staticmethod
    def check_config(config):
        if not config.fire_L > 0:
            raise ValueError(f"fire_L must be positive, got {config.fire_L}")

    @torch.no_grad()
    def init_weights(self, generator):
        for name, p in self.mlp.named_parameters():  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            fan_in = self.mlp[int(name.split(".")[0])].in_features
            p.uniform_(-fan_in ** -0.5, fan_in ** -0.5, generator=generator(f"mlp.{name}"))
        self.c.fill_(self.init_c)
        self.L_multiplier.fill_(1.0)

    def normalized_distance(self, q_pos, k_pos):
        """psi(i - j) / psi(max(L, i)) for the keys a query sees (0 elsewhere) and the distances."""
        distance = causal_distance(q_pos, k_pos, self.c.device)
        i = torch.arange(q_pos.start, q_pos.stop, device=self.c.device, dtype=torch.float32)[:, None]
        psi = lambda x: torch.log(torch.abs(self.c * x) + 1)  # noqa: E731
        threshold = torch.abs(self.L_multiplier * self.init_L)
        return psi(distance.clamp(min=0).float()) / (psi(torch.maximum(i, threshold)) + self.eps), distance

    def attn_bias(self, q_pos, k_pos):
        x, distance = self.normalized_distance(q_pos, k_pos)
        return per_head_bias(self.mlp(x[..., None]), distance)


# -----------------------------------------------------------------------------
# The decoder


class KVCache:
    """Keys and values of the tokens seen so far, one preallocated slab per layer, so that
    generating a token costs one token's worth of compute instead of the whole context's."""

    def __init__(self, config, batch_size, device, dtype=torch.float32):
        shape = (batch_size, config.n_head, config.block_size, config.head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0  # tokens stored (the same in every layer after a full forward pass)

    def append(self, layer, k, v, pos):
        """Store this layer's new k, v (B, nh, T, hs) and return all keys and values so far."""
        self.k[layer][:, :, pos.start:pos.stop] = k
        self.v[layer][:, :, pos.start:pos.stop] = v
        return self.k[layer][:, :, :pos.stop], self.v[layer][:, :, :pos.stop]


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer  # index into a KVCache
        self.n_head = config.n_head
        self.log_scale_length, self.logit_scale = config.log_scale_length, config.logit_scale
        self.attention_window, self.attention_sink = config.attention_window, config.attention_sink
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def qkv(self, x, pos_enc, pos):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if pos_enc.acts_on(self.layer):
            q, k = pos_enc.rotate(q, k, pos)  # RoPE acts here: on q and k only, never on v
        if self.log_scale_length:  # query i's logits times max(1, ln(i + 1) / ln n), before any bias
            i = torch.arange(pos.start + 1, pos.stop + 1, device=q.device, dtype=torch.float32)
            q = q * (torch.log(i) / math.log(self.log_scale_length)).clamp(min=1)[:, None].to(q.dtype)
        if self.logit_scale != 1.0:  # every logit times tau: a flat temperature, before any bias
            q = q * self.logit_scale
        return q, k, v

    def windowed(self, bias, pos_enc, pos, Tk, device):
        """The bias with the keys outside this layer's windows masked too (attention_window, whose first
        token attention_sink keeps in view, and the encoding's own: RoPE's rope_window in its RoPE
        layers and nope_window in its NoPE layers, which a reading's sink does not open): an explicit
        bias holding the causal mask, where `bias` may be None for plain causal attention. Unchanged
        without a window."""
        own = pos_enc.window(self.layer)
        if not (self.attention_window or own):
            return bias
        distance = causal_distance(pos, range(pos.stop - Tk, pos.stop), device)
        outside = distance >= self.attention_window if self.attention_window else torch.zeros_like(distance).bool()
        if self.attention_sink:
            outside[:, 0] = False  # (the keys always start at position 0, cached or not)
        if own:
            outside |= distance >= own
        hidden = (distance < 0) | outside
        mask = torch.zeros(hidden.shape, device=device).masked_fill(hidden, float("-inf"))
        return mask if bias is None else bias + mask

    def logits(self, q, k, pos_enc, pos, bias):
        """The attention logits written out, (B, n_head, Tq, Tk), the last Tq of Tk positions: the
        scores (pos_enc.scores, else q.k) / sqrt(d), plus the bias, which holds the causal mask
        (without one, masked here)."""
        Tq, Tk = q.size(2), k.size(2)
        scores = pos_enc.scores(q, k, pos, range(pos.stop - Tk, pos.stop)) if pos_enc.acts_on(self.layer) else None
        scores = (q @ k.transpose(-2, -1) if scores is None else scores) / math.sqrt(q.size(-1))
        if bias is None:
            bias = torch.zeros(Tq, Tk, device=q.device).masked_fill(
                torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).triu(Tk - Tq + 1), float("-inf"))
        return scores + bias

    def attention_weights(self, x, pos_enc, pos, bias):
        """The attention weights (B, n_head, T, T) that forward() applies to the values, for
        analysis (scaled_dot_product_attention does not return them). Without a cache."""
        q, k, _ = self.qkv(x, pos_enc, pos)
        bias = self.windowed(bias, pos_enc, pos, k.size(2), x.device)
        return torch.softmax(self.logits(q, k, pos_enc, pos, bias), dim=-1)

    def forward(self, x, pos_enc, pos, bias, cache=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x, pos_enc, pos)
        if cache is not None:  # attend to the cached tokens too
            k, v = cache.append(self.layer, k, v, pos)
        bias = self.windowed(bias, pos_enc, pos, k.size(2), x.device)
        dropout = self.dropout if self.training else 0.0
        if pos_enc.scores_itself and pos_enc.acts_on(self.layer):  # no single rotation: attention written out
            att = torch.softmax(self.logits(q, k, pos_enc, pos, bias), dim=-1)
            y = F.dropout(att, p=dropout) @ v
        elif bias is not None:  # the bias already holds the causal mask (-inf for later keys)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        elif T == k.size(2) or T == 1:  # full causal window, or one new token that may see all keys
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=T > 1)
        else:  # several new tokens after cached ones: causal mask aligned to the end
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(k.size(2) - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, pos_enc, pos, bias, cache=None):
        x = x + self.attn(self.ln_1(x), pos_enc, pos, bias, cache)
        return x + self.mlp(self.ln_2(x))


def parameter_generator(seed, name):
    """A generator of its own for each parameter, seeded by (seed, parameter name)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class GPT(nn.Module):
    def __init__(self, config, seed=0):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            pos=POS_ENCODINGS[config.pos_encoding](config),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as GPT-2
        self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed):
        """nanoGPT's initialisation, but every parameter draws from its own generator
        seeded by (seed, parameter name). So two models with different positional
        encodings start from identical weights for every parameter they share,
        even though one of them has an extra position table."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)  # GPT-2: scale residual projections
        for name, p in self.named_parameters():
            gen = parameter_generator(seed, name)
            if name.endswith("bias"):
                p.zero_()
            elif ".ln_" in name or name.startswith("transformer.ln_"):
                p.fill_(1.0)  # LayerNorm gain
            else:
                std = residual_std if name.endswith("c_proj.weight") else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        self.transformer.pos.init_weights(lambda name: parameter_generator(seed, f"transformer.pos.{name}"))

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, cache=None, reduction="mean"):
        """Logits (and the cross-entropy if targets are given) for idx (B, T). reduction="none"
        gives the loss of every position, (B, T), as evaluate.py needs it.
        With a KVCache, idx holds only the new tokens; they follow the cached ones."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        pos, k_pos = range(start, start + T), range(0, start + T)  # absolute positions
        pos_enc = self.transformer.pos
        x = pos_enc.embed(self.transformer.wte(idx), pos)
        x = self.transformer.drop(x)
        bias = pos_enc.attn_bias(pos, k_pos)  # computed once, shared by every layer
        for i, block in enumerate(self.transformer.h):
            x = block(x, pos_enc, pos, bias if pos_enc.acts_on(i) else None, cache)
        if cache is not None:
            cache.length += T
        x = self.transformer.ln_f(x)
        if targets is None:  # inference: only the last position's logits are needed
            return self.lm_head(x[:, -1:, :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return logits, loss if reduction != "none" else loss.view(targets.shape)

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices (Linear weights, embeddings) only."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # fused: one kernel for all parameters instead of a dozen list-wide ops. On 2 CPU cores the
        # CPU config's optimizer step takes 0.4 ms instead of 3, and a training step 3-6% less
        fused = device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    @torch.inference_mode()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, use_cache=False):
        """Extend idx (B, T) by max_new_tokens sampled characters, all rows as one batch.

        Every model was trained on windows of block_size tokens (and `learned` has no vectors
        for later positions), so the context never grows past block_size. Without the cache
        (the default; nanoGPT's sampler) each new character is predicted from the last
        block_size characters: a sliding window, the context every encoding was trained on.
        With use_cache, keys and values are kept, so a character costs one token's compute;
        as positions cannot slide under a cache, a full context is cut back to its last
        block_size // 2 characters and the cache rebuilt from them, so the context swings
        between block_size // 2 and block_size. The two give the same characters (for the
        same generator) as long as the text fits in one block."""
        block, keep = self.config.block_size, max(1, self.config.block_size // 2)
        B, T0 = idx.shape
        out = torch.empty(B, T0 + max_new_tokens, dtype=idx.dtype, device=idx.device)  # filled as we go
        out[:, :T0] = idx
        start = max(0, T0 - block)  # with the cache, the context is out[:, start:end]
        cache, new_from = None, start  # tokens from new_from on have not been through the model yet
        for end in range(T0, T0 + max_new_tokens):
            if use_cache:
                if cache is None:  # keys and values in the dtype they are computed in (bfloat16 under autocast)
                    kind, dtype = idx.device.type, self.lm_head.weight.dtype
                    if torch.is_autocast_enabled(kind):
                        dtype = torch.get_autocast_dtype(kind)
                    cache = KVCache(self.config, B, idx.device, dtype)
                logits, _ = self(out[:, new_from:end], cache=cache)
            else:
                logits, _ = self(out[:, max(0, end - block):end])
            logits = logits[:, -1, :].float() / temperature  # (bfloat16 under autocast)
            if top_k is not None and top_k < logits.size(-1):  # (top_k >= vocab keeps everything)
                v, _ = torch.topk(logits, top_k)
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            out[:, end] = torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
            new_from = end
            if use_cache and end + 1 - start > block:  # window full: cut it back, rebuild the cache from it
                start = new_from = end + 1 - keep
                cache = None
        return out
