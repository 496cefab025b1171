"""GPT-J (EleutherAI's 6B, and KoGPT, kakaobrain's Korean GPT-J).

Against GPT-2: attention and MLP run in parallel from one LayerNorm (x + attn(ln(x)) + mlp(ln(x))),
rotary position embeddings on the first `rotary_dim` dimensions of each head in GPT-J's
interleaved layout (dims 2i and 2i+1 turn together), q/k/v/out projections without biases, and an
untied LM head with a bias. Module names are transformers' (`transformer.h.0.attn.q_proj`), so
checkpoint tensors load one-to-one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..errors import InputError
from .gpt2 import GPT2Names
from .layers import (ACTIVATIONS, CausalLM, KVCache, Rotary, apply_rotary, attend, config_from_dict, dropout,
                     normal_init)


@dataclass
class GPTJConfig(GPT2Names):
    """Model shape under transformers' GPTJConfig names, so config.json is shared."""

    vocab_size: int = 50400
    n_positions: int = 2048
    n_embd: int = 4096
    n_layer: int = 28
    n_head: int = 16
    rotary_dim: int | None = 64  # None: the whole head turns
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None

    model_type = "gptj"

    @property
    def rotary_dims(self) -> int:
        return self.rotary_dim or self.head_dim

    def to_hf_dict(self) -> dict:
        """config.json contents that `transformers.AutoConfig` reads as a GPTJConfig."""
        return {**asdict(self), "model_type": "gptj", "architectures": ["GPTJForCausalLM"],
                "initializer_range": 0.02}

    @classmethod
    def from_hf_dict(cls, d: dict) -> "GPTJConfig":
        """Read a GPT-J config.json; refuse what this architecture does not implement, naming the field."""
        cfg = config_from_dict(cls, d)
        if cfg.activation_function not in ACTIVATIONS:
            raise InputError(f"config.json: activation_function {cfg.activation_function!r} is not supported "
                             f"(supported: {', '.join(ACTIVATIONS)})")
        if cfg.n_embd % cfg.n_head:
            raise InputError(f"config.json: n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
        if cfg.rotary_dims % 2 or cfg.rotary_dims > cfg.head_dim:
            raise InputError(f"config.json: rotary_dim {cfg.rotary_dim} must be even and at most the head "
                             f"size {cfg.head_dim}")
        return cfg


class Attention(nn.Module):
    def __init__(self, config: GPTJConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.k_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.v_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.attn_dropout = config.attn_pdrop
        self.resid_dropout = config.resid_pdrop

    def forward(self, x, layer_idx: int, cache: KVCache | None, mask, want_weights: bool, rope):
        B, T, _ = x.shape
        q, k, v = (proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = rope
        q = apply_rotary(q, cos, sin, interleaved=True)
        k = apply_rotary(k, cos, sin, interleaved=True)
        y, weights = attend(q, k, v, layer_idx, cache, mask, want_weights, self.attn_dropout, self.training)
        return dropout(self.out_proj(y), self.resid_dropout, self.training), weights


class MLP(nn.Module):
    def __init__(self, config: GPTJConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.n_embd, config.mlp_width)
        self.fc_out = nn.Linear(config.mlp_width, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = config.resid_pdrop

    def forward(self, x):
        return dropout(self.fc_out(self.act(self.fc_in(x))), self.dropout, self.training)


class Block(nn.Module):
    """Attention and MLP side by side on the same normalised input: one LayerNorm per block."""

    def __init__(self, config: GPTJConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config)
        self.mlp = MLP(config)

    def forward(self, x, layer_idx, cache, mask, want_weights, rope):
        h = self.ln_1(x)
        a, weights = self.attn(h, layer_idx, cache, mask, want_weights, rope)
        return a + self.mlp(h) + x, weights


class Transformer(nn.Module):
    """transformers' `transformer.` prefix: embeddings, blocks, final norm."""

    def __init__(self, config: GPTJConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.embd_dropout = config.embd_pdrop
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.rotary = Rotary(config.rotary_dims, 10000.0, interleaved=True)


class GPTJ(CausalLM):
    """GPT-J language model; same forward interface as GPT (see layers.CausalLM)."""

    def __init__(self, config: GPTJConfig):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(normal_init)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    @property
    def final_norm(self) -> nn.Module:
        return self.transformer.ln_f

    def embedding(self) -> nn.Embedding:
        return self.transformer.wte

    def set_embedding(self, emb: nn.Embedding) -> None:
        self.transformer.wte = emb

    def embed(self, input_ids, position_ids, past):
        tr = self.transformer
        x = dropout(tr.wte(input_ids), tr.embd_dropout, self.training)
        if position_ids is None:
            position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)[None]
        return x, tr.rotary(position_ids, x.dtype)

    def set_dropout(self, p: float) -> None:
        """Dropout on embeddings, attention weights and both residual branches, recorded in the config."""
        self.config.embd_pdrop = self.config.attn_pdrop = self.config.resid_pdrop = p
        self.transformer.embd_dropout = p
        for block in self.transformer.h:
            block.attn.attn_dropout = block.attn.resid_dropout = block.mlp.dropout = p

    # -- checkpoint names: ours are transformers' --------------------------------------------
    # the causal-mask buffers old GPT-J checkpoints carry: recomputed here, never loaded
    ignored_checkpoint_suffixes = (".attn.bias", ".attn.masked_bias")

    @staticmethod
    def checkpoint_key(name: str) -> str:
        return name
