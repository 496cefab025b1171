"""The GPT: a decoder-only transformer with exactly the GPT-2 architecture.

Learned position embeddings, pre-LayerNorm blocks, GELU-tanh MLP, biases everywhere, the output
projection tied to the token embedding, causal attention through `F.scaled_dot_product_attention`.
Module names and weight layouts follow Hugging Face's `GPT2LMHeadModel` (`transformer.h.0.attn.c_attn`,
Conv1D weights stored (in, out)), so a checkpoint's tensors load one-to-one, untransposed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import CausalLM, KVCache, attend, dropout


class GPT2Names:
    """The names every family's config answers to (the engine and trainers use these), read from
    the GPT-2 config fields that GPT-J's config shares."""

    n_embd: int
    n_positions: int
    n_layer: int
    n_head: int
    n_inner: int | None
    resid_pdrop: float

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def context_length(self) -> int:
        return self.n_positions

    @property
    def num_layers(self) -> int:
        return self.n_layer

    @property
    def num_heads(self) -> int:
        return self.n_head

    @property
    def num_kv_heads(self) -> int:
        return self.n_head

    @property
    def dropout(self) -> float:
        return self.resid_pdrop


@dataclass
class GPTConfig(GPT2Names):
    """Model shape, with the names `transformers.GPT2Config` uses so config.json is shared."""

    vocab_size: int = 8192
    n_positions: int = 256
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    layer_norm_epsilon: float = 1e-5
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    bos_token_id: int = 0
    eos_token_id: int = 0
    pad_token_id: int | None = None

    model_type = "gpt2"
    tie_word_embeddings = True

    def to_hf_dict(self) -> dict:
        """config.json contents that `transformers.AutoConfig` reads as a GPT2Config."""
        d = asdict(self)
        d.update(
            model_type="gpt2",
            architectures=["GPT2LMHeadModel"],
            activation_function="gelu_new",
            n_ctx=self.n_positions,
            tie_word_embeddings=True,
            scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
            reorder_and_upcast_attn=False,
            initializer_range=0.02,
        )
        return d

    @classmethod
    def from_hf_dict(cls, d: dict) -> "GPTConfig":
        """Read a GPT-2 config.json; refuse options this architecture does not implement."""
        from ..errors import InputError

        if d.get("model_type", "gpt2") != "gpt2":
            raise InputError(f"config.json: model_type {d.get('model_type')!r} is not a GPT-2 architecture")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise InputError(f"config.json: activation_function {act!r} is not supported (GPT-2 uses gelu_new)")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if d.get(flag):
                raise InputError(f"config.json: {flag}=true is not supported")
        if d.get("scale_attn_weights") is False:
            raise InputError("config.json: scale_attn_weights=false is not supported")
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        if cfg.n_embd % cfg.n_head:
            raise InputError(f"config.json: n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
        return cfg


PRESETS = {
    # about 5M parameters: trains on a laptop CPU in minutes
    "tiny": dict(vocab_size=8192, n_positions=256, n_embd=256, n_layer=4, n_head=4),
    # OpenAI GPT-2 small (124M)
    "small": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    # the shape of skt/kogpt2-base-v2
    "kogpt2": dict(vocab_size=51200, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
}


class Conv1D(nn.Module):
    """GPT-2's linear layer: y = x @ weight + bias, the weight stored (in, out) as in the checkpoints.

    Besides loading without transposes, this layout is the faster one for the few rows of a
    decoding step (MKL GEMM; GPT-2 124M, all layers at batch 1: 15.4 vs 16.9 ms per step as nn.Linear).
    """

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)  # fused q, k, v
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.attn_dropout = config.attn_pdrop
        self.resid_dropout = config.resid_pdrop

    def forward(self, x, layer_idx: int, cache: KVCache | None, mask: torch.Tensor | None, want_weights: bool):
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, n_head, T, head_dim) views: one permute instead of a split and 6 reshapes
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        y, weights = attend(q, k, v, layer_idx, cache, mask, want_weights, self.attn_dropout, self.training)
        return dropout(self.c_proj(y), self.resid_dropout, self.training), weights


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, config.mlp_width)
        self.c_proj = Conv1D(config.mlp_width, config.n_embd)
        self.dropout = config.resid_pdrop

    def forward(self, x):
        return dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, layer_idx, cache, mask, want_weights, _extra=None):
        a, weights = self.attn(self.ln_1(x), layer_idx, cache, mask, want_weights)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class Transformer(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.embd_dropout = config.embd_pdrop
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class GPT(CausalLM):
    """GPT-2 language model. `forward` returns logits; the engine drives it with a KVCache."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, Conv1D)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # -- the CausalLM interface ----------------------------------------------------------------
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

    def position_embedding_count(self) -> int:
        return self.transformer.wpe.weight.numel()

    def embed(self, input_ids, position_ids, past):
        tr = self.transformer
        T = input_ids.shape[1]
        positions = tr.wpe.weight[past : past + T] if position_ids is None else tr.wpe(position_ids)
        return dropout(tr.wte(input_ids) + positions, tr.embd_dropout, self.training), None

    def set_dropout(self, p: float) -> None:
        """Dropout on embeddings, attention weights and residual branches (GPT-1 fine-tuned its
        downstream tasks with 0.1); recorded in the config, so config.json says what was used."""
        self.config.embd_pdrop = self.config.attn_pdrop = self.config.resid_pdrop = p
        self.transformer.embd_dropout = p
        for block in self.transformer.h:
            block.attn.attn_dropout = block.attn.resid_dropout = block.mlp.dropout = p

    # -- checkpoint names ---------------------------------------------------------------------
    # buffers old GPT-2 checkpoints carry (the causal mask): recomputed here, never loaded
    ignored_checkpoint_suffixes = (".attn.bias", ".attn.masked_bias")

    @staticmethod
    def checkpoint_key(name: str) -> str:
        """Our parameter name for a tensor name in a GPT-2 checkpoint (old ones omit `transformer.`)."""
        return name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name
