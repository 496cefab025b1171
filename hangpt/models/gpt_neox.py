"""GPT-NeoX (EleutherAI's 20B and Pythia, and polyglot-ko, EleutherAI's Korean models).

Against GPT-2: rotary position embeddings on the first `rotary_pct` of each head ("rotate half"
layout), q/k/v fused in one `query_key_value` layer laid out head by head ([head, q|k|v, head_dim]
rather than GPT-2's [q|k|v, head, head_dim]), a parallel residual by default
(x + attn(ln1(x)) + mlp(ln2(x)): both branches read the block's input) or GPT-2's sequential one,
and an untied LM head called `embed_out`. Module names are transformers' (`gpt_neox.layers.0.
attention.query_key_value`), so checkpoint tensors load one-to-one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..errors import InputError
from .layers import (ACTIVATIONS, CausalLM, KVCache, Rotary, apply_rotary, attend, config_from_dict, dropout,
                     normal_init)

ROPE_TYPES = ("default", "linear")


@dataclass
class GPTNeoXConfig:
    """Model shape under transformers' GPTNeoXConfig names (its version 4 names for the rotary
    settings, which version 5 reads too), so config.json is shared."""

    vocab_size: int = 50432
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 8192
    hidden_act: str = "gelu"
    rotary_pct: float = 0.25
    rotary_emb_base: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    layer_norm_eps: float = 1e-5
    use_parallel_residual: bool = True
    attention_bias: bool = True  # on query_key_value and dense
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None

    model_type = "gpt_neox"

    # the names every family's config answers to (the engine and trainers use these)
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_ndims(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @property
    def context_length(self) -> int:
        return self.max_position_embeddings

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_attention_heads

    @property
    def dropout(self) -> float:
        return self.hidden_dropout

    def to_hf_dict(self) -> dict:
        """config.json contents that `transformers.AutoConfig` reads as a GPTNeoXConfig."""
        return {**asdict(self), "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"],
                "initializer_range": 0.02}

    @classmethod
    def from_hf_dict(cls, d: dict) -> "GPTNeoXConfig":
        """Read config.json, transformers 4's keys (rotary_pct, rotary_emb_base, rope_scaling) or 5's
        rope_parameters; refuse what this architecture does not implement, naming the field."""
        d = dict(d)
        rope = d.pop("rope_parameters", None)
        if isinstance(rope, dict):
            d.setdefault("rotary_emb_base", rope.get("rope_theta", 10000.0))
            d.setdefault("rotary_pct", rope.get("partial_rotary_factor", 0.25))
            if rope.get("rope_type", "default") != "default":
                d.setdefault("rope_scaling", {k: v for k, v in rope.items()
                                              if k not in ("rope_theta", "partial_rotary_factor")})
        cfg = config_from_dict(cls, d)
        scaling = cfg.rope_scaling
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
            if kind not in ROPE_TYPES:
                raise InputError(f"config.json: rope_scaling {scaling!r} is not supported "
                                 f"(supported types: {', '.join(ROPE_TYPES)})")
        if cfg.hidden_act not in ACTIVATIONS:
            raise InputError(f"config.json: hidden_act {cfg.hidden_act!r} is not supported "
                             f"(supported: {', '.join(ACTIVATIONS)})")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise InputError(f"config.json: hidden_size {cfg.hidden_size} is not divisible by "
                             f"num_attention_heads {cfg.num_attention_heads}")
        if not 0 < cfg.rotary_pct <= 1 or cfg.rotary_ndims % 2:
            raise InputError(f"config.json: rotary_pct {cfg.rotary_pct} must give an even number of rotary "
                             f"dimensions per head of {cfg.head_dim}")
        if cfg.tie_word_embeddings:
            raise InputError("config.json: tie_word_embeddings=true is not supported for gpt_neox")
        return cfg


class Attention(nn.Module):
    def __init__(self, config: GPTNeoXConfig):
        super().__init__()
        self.n_head, self.head_dim = config.num_heads, config.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
        self.attn_dropout = config.attention_dropout

    def forward(self, x, layer_idx: int, cache: KVCache | None, mask, want_weights: bool, rope):
        B, T, _ = x.shape
        # NeoX's layout: per head its q, k and v side by side -> three (B, H, T, D) views
        q, k, v = self.query_key_value(x).view(B, T, self.n_head, 3, self.head_dim).permute(3, 0, 2, 1, 4).unbind(0)
        cos, sin = rope
        y, weights = attend(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, layer_idx, cache, mask,
                            want_weights, self.attn_dropout, self.training)
        return self.dense(y), weights


class MLP(nn.Module):
    def __init__(self, config: GPTNeoXConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class Block(nn.Module):
    def __init__(self, config: GPTNeoXConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config)
        self.mlp = MLP(config)
        self.parallel = config.use_parallel_residual
        self.hidden_dropout = config.hidden_dropout

    def forward(self, x, layer_idx, cache, mask, want_weights, rope):
        a, weights = self.attention(self.input_layernorm(x), layer_idx, cache, mask, want_weights, rope)
        a = dropout(a, self.hidden_dropout, self.training)
        if not self.parallel:  # GPT-2's order: the MLP reads the attention's output
            x = a + x
        m = dropout(self.mlp(self.post_attention_layernorm(x)), self.hidden_dropout, self.training)
        return (m + a + x if self.parallel else m + x), weights


class Backbone(nn.Module):
    """transformers' `gpt_neox.` prefix: embeddings, layers, final norm."""

    def __init__(self, config: GPTNeoXConfig):
        super().__init__()
        self.embed_in = nn.Embedding(config.vocab_size, config.hidden_size)
        self.emb_dropout = config.hidden_dropout
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary = Rotary(config.rotary_ndims, config.rotary_emb_base, config.rope_scaling)


class GPTNeoX(CausalLM):
    """GPT-NeoX language model; same forward interface as GPT (see layers.CausalLM)."""

    def __init__(self, config: GPTNeoXConfig):
        super().__init__()
        self.config = config
        self.gpt_neox = Backbone(config)
        self.embed_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(normal_init)

    # the head is `embed_out` in NeoX checkpoints; the engine and trainers call every family's
    # head lm_head: one module under two names, stored once
    @property
    def lm_head(self) -> nn.Linear:
        return self.embed_out

    def __setattr__(self, name, value):
        super().__setattr__("embed_out" if name == "lm_head" else name, value)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.gpt_neox.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.gpt_neox.final_layer_norm

    def embedding(self) -> nn.Embedding:
        return self.gpt_neox.embed_in

    def set_embedding(self, emb: nn.Embedding) -> None:
        self.gpt_neox.embed_in = emb

    def embed(self, input_ids, position_ids, past):
        backbone = self.gpt_neox
        x = dropout(backbone.embed_in(input_ids), backbone.emb_dropout, self.training)
        if position_ids is None:
            position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)[None]
        return x, backbone.rotary(position_ids, x.dtype)

    def set_dropout(self, p: float) -> None:
        """Dropout on embeddings, attention weights and both residual branches, recorded in the config."""
        self.config.attention_dropout = self.config.hidden_dropout = p
        self.gpt_neox.emb_dropout = p
        for block in self.gpt_neox.layers:
            block.attention.attn_dropout = block.hidden_dropout = p

    # -- checkpoint names: ours are transformers' ----------------------------------------------
    # buffers older checkpoints carry (causal mask, rotary frequencies): recomputed, never loaded
    ignored_checkpoint_suffixes = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")

    @staticmethod
    def checkpoint_key(name: str) -> str:
        """transformers 5 calls the head lm_head in memory; its files, like ours, say embed_out."""
        return "embed_out." + name.removeprefix("lm_head.") if name.startswith("lm_head.") else name
