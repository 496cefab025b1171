"""The Llama family: Llama (2, 3.x), Mistral, Qwen2 (2.5) and Qwen3 — one architecture, four config.json
dialects.

Against GPT-2: rotary position embeddings instead of learned ones, RMSNorm instead of LayerNorm,
a SwiGLU MLP (down(silu(gate(x)) * up(x))), grouped-query attention (fewer key/value heads than
query heads, so the KV cache is smaller), no biases, and an LM head that may be untied. The
dialects differ in little: Qwen2 has biases on q/k/v, Qwen3 normalises each head's q and k with
RMSNorm before the rotation. Module names are transformers' (`model.layers.0.self_attn.q_proj`),
so checkpoint tensors load one-to-one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from .layers import CausalLM, KVCache, RMSNorm, Rotary, apply_rotary, attend, normal_init

MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class LlamaConfig:
    """Model shape under transformers' names, so config.json is shared."""

    model_type: str = "llama"
    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    head_dim_: int | None = None  # config.json's head_dim; None means hidden_size / heads
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False  # q/k/v/o biases (Llama's option; Qwen2 always has q/k/v ones)
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    sliding_window: int | None = None  # Mistral's; sequences longer than this are refused
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None

    # the names every family's config answers to (the engine and trainers use these)
    @property
    def head_dim(self) -> int:
        return self.head_dim_ or self.hidden_size // self.num_attention_heads

    @property
    def context_length(self) -> int:
        if self.sliding_window:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_key_value_heads

    @property
    def dropout(self) -> float:
        return self.attention_dropout

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.model_type == "qwen2"

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "qwen3"

    def to_hf_dict(self) -> dict:
        """config.json contents that `transformers.AutoConfig` reads as this model type."""
        d = {k: v for k, v in asdict(self).items() if k != "head_dim_"}
        d.update(
            architectures=[MODEL_TYPES[self.model_type]],
            head_dim=self.head_dim,
            hidden_act="silu",
            initializer_range=0.02,
        )
        if self.model_type == "qwen2":
            d.pop("attention_bias")
            d.pop("mlp_bias")
        if self.model_type in ("qwen2", "qwen3"):
            d["use_sliding_window"] = False
        return d

    @classmethod
    def from_hf_dict(cls, d: dict) -> "LlamaConfig":
        """Read config.json (transformers 4's rope_theta/rope_scaling or 5's rope_parameters);
        refuse what this architecture does not implement, naming the field."""
        d = dict(d)
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise InputError(f"config.json: hidden_act {act!r} is not supported (the Llama family uses silu)")
        rope = d.pop("rope_parameters", None)
        if isinstance(rope, dict):
            d.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
            if rope.get("rope_type", "default") != "default":
                d.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
        scaling = d.get("rope_scaling")
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
            if kind not in ROPE_TYPES:
                raise InputError(f"config.json: rope_scaling {scaling!r} is not supported "
                                 f"(supported types: {', '.join(ROPE_TYPES)})")
        if d.get("model_type") in ("qwen2", "qwen3") and not d.get("use_sliding_window"):
            d["sliding_window"] = None
        if d.get("head_dim") is not None:
            d["head_dim_"] = d.pop("head_dim")
        d.setdefault("num_key_value_heads", d.get("num_attention_heads", 4))
        names = {f.name for f in fields(cls)}
        try:
            cfg = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise InputError(f"config.json: {e}") from None
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise InputError(f"config.json: num_attention_heads {cfg.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {cfg.num_key_value_heads}")
        if cfg.head_dim_ is None and cfg.hidden_size % cfg.num_attention_heads:
            raise InputError(f"config.json: hidden_size {cfg.hidden_size} is not divisible by "
                             f"num_attention_heads {cfg.num_attention_heads}")
        return cfg


PRESETS = {
    # about the parameter count of GPT-2's tiny preset: SwiGLU's three matrices at 704 wide ~
    # GPT-2's two at 1024, the head tied as in GPT-2
    "tiny": dict(vocab_size=8192, max_position_embeddings=256, hidden_size=256, intermediate_size=704,
                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    # a GPT-2-small-sized Llama with grouped-query attention
    "small": dict(vocab_size=32000, max_position_embeddings=1024, hidden_size=768, intermediate_size=2048,
                  num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=True),
}


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        H, H_kv, D = config.num_heads, config.num_kv_heads, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = H, H_kv, D
        self.q_proj = nn.Linear(config.hidden_size, H * D, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, H_kv * D, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, H_kv * D, bias=config.qkv_bias)
        self.o_proj = nn.Linear(H * D, config.hidden_size, bias=config.attention_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(D, config.rms_norm_eps)
            self.k_norm = RMSNorm(D, config.rms_norm_eps)
        self.qk_norm = config.qk_norm
        self.attn_dropout = config.attention_dropout

    def forward(self, x, layer_idx: int, cache: KVCache | None, mask, want_weights: bool, rope):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.qk_norm:  # Qwen3: each head's q and k normalised before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope
        q = apply_rotary(q.transpose(1, 2), cos, sin)
        k = apply_rotary(k.transpose(1, 2), cos, sin)
        y, weights = attend(q, k, v, layer_idx, cache, mask, want_weights, self.attn_dropout, self.training)
        return self.o_proj(y), weights


class MLP(nn.Module):
    """SwiGLU: a gated MLP, down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, layer_idx, cache, mask, want_weights, rope):
        a, weights = self.self_attn(self.input_layernorm(x), layer_idx, cache, mask, want_weights, rope)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, weights


class Backbone(nn.Module):
    """transformers' `model.` prefix: embeddings, layers, final norm."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = Rotary(config.head_dim, config.rope_theta, config.rope_scaling)


class Llama(CausalLM):
    """Llama-family language model; same forward interface as GPT (see layers.CausalLM)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(normal_init)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.model.norm

    def embedding(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_embedding(self, emb: nn.Embedding) -> None:
        self.model.embed_tokens = emb

    def embed(self, input_ids, position_ids, past):
        x = self.model.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)[None]
        return x, self.model.rotary(position_ids, x.dtype)

    def set_dropout(self, p: float) -> None:
        """The family has dropout only on the attention weights (`attention_dropout`)."""
        self.config.attention_dropout = p
        for block in self.model.layers:
            block.self_attn.attn_dropout = p

    # -- checkpoint names: ours are transformers' --------------------------------------------
    ignored_checkpoint_suffixes = (".rotary_emb.inv_freq",)

    @staticmethod
    def checkpoint_key(name: str) -> str:
        return name
