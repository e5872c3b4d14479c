"""
A small character-level GPT whose positional encoding is a swappable part.

Everything positional lives in the `PositionalEncoding` classes below, behind
the `POS_ENCODINGS` registry. The rest of the model is nanoGPT's decoder:
token embedding -> n_layer pre-LayerNorm blocks (causal self-attention + GELU
MLP) -> final LayerNorm -> lm_head tied to the token embedding.

A positional encoding can act at three places, and each class overrides only
the hook(s) it needs (`pos` is a Python range of the tokens' absolute positions):
  embed(x, pos)        add something to the token embeddings   (learned)
  rotate(q, k, pos)    transform queries and keys per head     (rope)
  attn_bias(pos)       additive bias on the attention scores   (none yet)
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

    def __post_init__(self):
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"unknown pos_encoding {self.pos_encoding!r}; choose one of {', '.join(POS_ENCODINGS)}"
            )
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        POS_ENCODINGS[self.pos_encoding].check_config(self)

    @property
    def head_dim(self):
        return self.n_embd // self.n_head


# -----------------------------------------------------------------------------
# RoPE, the reference (complex-number) form, as in the Llama / RoFormer write-ups.
# Position m rotates the channel pair (2i, 2i+1) by the angle m * theta_i.


def precompute_theta_pos_frequencies(head_dim, seq_len, theta=10000.0, device=None):
    """Complex rotations e^(i * m * theta_j), shape (seq_len, head_dim // 2)."""
    assert head_dim % 2 == 0, "RoPE rotates pairs of channels: head_dim must be even"
    # theta_j = theta^(-2(j-1)/d) for j = 1 .. d/2
    theta_j = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    m = torch.arange(seq_len, device=device, dtype=torch.float64)
    angles = torch.outer(m, theta_j)  # (seq_len, head_dim/2): m * theta_j
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def apply_rotary_embeddings(x, freqs_complex):
    """Rotate x (..., seq_len, head_dim) by freqs_complex (seq_len, head_dim // 2)."""
    # consecutive channels (x0, x1) become the complex number x0 + i*x1 ...
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    # ... multiplying by e^(i*angle) rotates it; then back to real pairs
    x_rotated = torch.view_as_real(x_complex * freqs_complex).flatten(-2)
    return x_rotated.type_as(x)


# -----------------------------------------------------------------------------
# Positional encodings. To add one: subclass, override a hook, register it.

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

    def __init__(self, config):
        super().__init__()

    @staticmethod
    def check_config(config):
        """Raise ValueError if this encoding cannot work with `config`."""

    def embed(self, x, pos):
        return x

    def rotate(self, q, k, pos):
        return q, k

    def attn_bias(self, pos):
        return None


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

    Inside the model we use the real-valued form of `apply_rotary_embeddings`
    (same numbers, tested equal): cos/sin tables are cheaper than complex tensors.
    The tables are recomputed on demand, so any length works, and are not saved:
    a RoPE model owns no position parameters.
    """

    def __init__(self, config):
        super().__init__(config)
        self.head_dim = config.head_dim
        self.theta = config.rope_theta
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    @staticmethod
    def check_config(config):
        if config.head_dim % 2:
            raise ValueError(
                f"rope needs an even head size, got n_embd/n_head = {config.head_dim}; change n_embd or n_head"
            )

    def _tables(self, n, device):
        if self.cos.shape[0] < n or self.cos.device != torch.device(device):
            angles = torch.view_as_real(
                precompute_theta_pos_frequencies(self.head_dim, max(n, 2 * self.cos.shape[0]), self.theta, device)
            )
            # (seq, head_dim/2) each; for a unit complex number, real = cos and imag = sin
            self.cos, self.sin = angles[..., 0].contiguous(), angles[..., 1].contiguous()
        return self.cos, self.sin

    def rotate(self, q, k, pos):
        cos, sin = self._tables(pos.stop, q.device)
        cos, sin = cos[pos.start:pos.stop].to(q.dtype), sin[pos.start:pos.stop].to(q.dtype)  # (T, head_dim/2)
        return rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin)


def rotate_pairs(x, cos, sin):
    """Real form of apply_rotary_embeddings: (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos)."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


# -----------------------------------------------------------------------------
# The decoder


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, pos_enc, pos, bias):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = pos_enc.rotate(q, k, pos)  # RoPE acts here: on q and k only, never on v
        dropout = self.dropout if self.training else 0.0
        if bias is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:  # the bias must already hold the causal mask (-inf above the diagonal)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
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
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, pos_enc, pos, bias):
        x = x + self.attn(self.ln_1(x), pos_enc, pos, bias)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config, seed=0):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            pos=POS_ENCODINGS[config.pos_encoding](config),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
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
            digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            if name.endswith("bias"):
                p.zero_()
            elif ".ln_" in name or name.startswith("transformer.ln_"):
                p.fill_(1.0)  # LayerNorm gain
            else:
                std = residual_std if name.endswith("c_proj.weight") else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None):
        B, T = idx.shape
        pos_enc = self.transformer.pos
        pos = range(0, T)  # absolute positions of these tokens
        x = pos_enc.embed(self.transformer.wte(idx), pos)
        x = self.transformer.drop(x)
        bias = pos_enc.attn_bias(pos)
        for block in self.transformer.h:
            x = block(x, pos_enc, pos, bias)
        x = self.transformer.ln_f(x)
        if targets is None:  # inference: only the last position's logits are needed
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices (Linear weights, embeddings) only."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type == "cuda"
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Extend idx (B, T) by max_new_tokens sampled characters.

        The context fed to the model is cropped to the last block_size tokens: every
        model was trained on windows of that length (and `learned` has no vectors
        for later positions)."""
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
