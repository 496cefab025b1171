"""The GPT: a decoder-only transformer with exactly the GPT-2 architecture.

Learned position embeddings, pre-LayerNorm blocks, GELU-tanh MLP, biases everywhere, the output
projection tied to the token embedding, causal attention through `F.scaled_dot_product_attention`.
Module names and weight layouts follow Hugging Face's `GPT2LMHeadModel` (`transformer.h.0.attn.c_attn`,
Conv1D weights stored (in, out)), so a checkpoint's tensors load one-to-one, untransposed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
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

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

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


def preset_config(name: str, **overrides) -> GPTConfig:
    from ..errors import InputError

    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return GPTConfig(**{**PRESETS[name], **overrides})


class KVCache:
    """Preallocated keys/values for every layer, so decoding appends in place instead of concatenating.

    `length` is how many positions are filled; every row of the batch shares it (left padding keeps
    rows aligned, and the padding mask hides the pad slots).
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_length: int, dtype=torch.float32, device="cpu"):
        shape = (config.n_layer, batch_size, config.n_head, max_length, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self._spare: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def max_length(self) -> int:
        return self.k.shape[3]

    def reorder(self, index: torch.Tensor, reorder_rows=None) -> None:
        """Select batch rows (beam search keeps the beams whose hypotheses survive at every step).

        With the batch size unchanged only the filled positions are copied, into a spare buffer
        that then swaps places with the cache: no allocation per step (a beam-4 step of the tiny
        model: 26 instead of 134 us per tensor). `reorder_rows(cache, index, spare_k, spare_v)` may
        reorder k and v in place instead, using the spare buffers as scratch (the engine's C
        library does, copying only the rows that change).
        """
        if len(index) != self.k.shape[1]:
            self.k = self.k.index_select(1, index)
            self.v = self.v.index_select(1, index)
            self._spare = None
            return
        if self._spare is None:
            self._spare = (torch.empty_like(self.k), torch.empty_like(self.v))
        spare_k, spare_v = self._spare
        if reorder_rows is not None:
            reorder_rows(self, index, spare_k, spare_v)
            return
        n = self.length
        torch.index_select(self.k[:, :, :, :n], 1, index, out=spare_k[:, :, :, :n])
        torch.index_select(self.v[:, :, :, :n], 1, index, out=spare_v[:, :, :, :n])
        self._spare = (self.k, self.v)
        self.k, self.v = spare_k, spare_v


class GPTOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, vocab), or (B, T, n_embd) hidden when return_logits=False
    hidden_states: tuple[torch.Tensor, ...] | None  # embeddings + each block's output (ln_f applied to last)
    attentions: tuple[torch.Tensor, ...] | None  # each (B, n_head, T, T_total)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout that costs nothing when off (GPT-2 fine-tuning often sets p=0; generation always does)."""
    return F.dropout(x, p, training=True) if training and p > 0 else x


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
        if cache is not None:
            start = cache.length
            cache.k[layer_idx, :, :, start : start + T] = k
            cache.v[layer_idx, :, :, start : start + T] = v
            k = cache.k[layer_idx, :, :, : start + T]
            v = cache.v[layer_idx, :, :, : start + T]
        weights = None
        if want_weights or (T == 1 and not self.training):
            # written out: needed for the weights, and for one decoding query three plain ops cost
            # less than SDPA's dispatch (the decode step is bound by per-op overhead, not FLOPs)
            scores = (q @ k.transpose(-2, -1)).mul_(1 / math.sqrt(q.shape[-1]))
            if mask is not None:
                scores = scores.masked_fill_(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            y = weights @ v
            weights = weights if want_weights else None
        elif mask is None:  # causal without a cache, or one new token attending to everything cached
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=T > 1, dropout_p=self.attn_dropout if self.training else 0.0
            )
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
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

    def forward(self, x, layer_idx, cache, mask, want_weights):
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


def attention_mask_for(
    query_len: int, past_len: int, padding_mask: torch.Tensor | None, device=None
) -> torch.Tensor | None:
    """Boolean (B|1, 1, T, past+T) mask, True = may attend: causal, hiding pad keys.

    Every position may always attend to itself, so a pad row never becomes all -inf (which would
    turn into NaN and leak through the values of later layers).
    Returns None for the plain causal case without a cache, where SDPA's is_causal is fastest, and
    for one new token without padding (it may attend to every cached position: no mask at all).
    """
    if padding_mask is None and (past_len == 0 or query_len == 1):
        return None
    total = past_len + query_len
    if query_len == 1:  # one decoding step: the real keys, and always itself (2 ops instead of ~10)
        mask = padding_mask[:, None, None, :total].to(torch.bool, copy=True)
        mask[..., -1] = True
        return mask
    q_pos = torch.arange(past_len, total, device=device).unsqueeze(1)
    k_pos = torch.arange(total, device=device).unsqueeze(0)
    mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, total)
    if padding_mask is not None:
        keep = padding_mask[:, None, None, :total].bool()
        mask = (mask & keep) | (k_pos == q_pos)[None, None]
    return mask


class GPT(nn.Module):
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

    def num_parameters(self, include_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if include_embeddings else n - self.transformer.wpe.weight.numel()

    def set_dropout(self, p: float) -> None:
        """Dropout on embeddings, attention weights and residual branches (GPT-1 fine-tuned its
        downstream tasks with 0.1); recorded in the config, so config.json says what was used."""
        self.config.embd_pdrop = self.config.attn_pdrop = self.config.resid_pdrop = p
        self.transformer.embd_dropout = p
        for block in self.transformer.h:
            block.attn.attn_dropout = block.attn.resid_dropout = block.mlp.dropout = p

    def resize_token_embeddings(self, new_size: int) -> None:
        """Grow (or shrink) the vocabulary, e.g. after adding chat role tokens to a tokenizer.

        New rows start at the mean of the old embeddings (a neutral token) so the first
        fine-tuning steps are not dominated by random logits.
        """
        old = self.transformer.wte.weight.data
        if new_size == old.shape[0]:
            return
        emb = nn.Embedding(new_size, old.shape[1]).to(old.device, old.dtype)
        n = min(new_size, old.shape[0])
        emb.weight.data[:n] = old[:n]
        if new_size > n:
            emb.weight.data[n:] = old.mean(dim=0, keepdim=True)
        self.transformer.wte = emb
        self.lm_head.weight = emb.weight
        self.config.vocab_size = new_size

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_logits: bool = True,
    ) -> GPTOutput:
        """Run the transformer on `input_ids` (B, T).

        padding_mask: (B, past+T) with 1 for real tokens and 0 for padding, covering the cached
        positions too. position_ids default to past..past+T-1 (pass them for left padding).
        return_logits=False returns the final hidden states instead (for reward/value/class heads).
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.n_positions:
            from ..errors import InputError

            raise InputError(
                f"sequence of {past + T} tokens is longer than the model's context ({self.config.n_positions})"
            )
        tr = self.transformer
        positions = tr.wpe.weight[past : past + T] if position_ids is None else tr.wpe(position_ids)
        x = dropout(tr.wte(input_ids) + positions, tr.embd_dropout, self.training)
        mask = attention_mask_for(T, past, padding_mask, device=input_ids.device)
        if output_attentions and mask is None:
            mask = attention_mask_for(T, 0, torch.ones(1, T, dtype=torch.bool, device=input_ids.device))
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for i, block in enumerate(tr.h):
            x, weights = block(x, i, cache, mask, output_attentions)
            if output_hidden_states:
                hidden_states.append(x)
            if output_attentions:
                attentions.append(weights)
        x = tr.ln_f(x)
        if output_hidden_states:
            hidden_states[-1] = x  # as transformers does: the last entry has ln_f applied
        if cache is not None:
            cache.length = past + T
        out = self.lm_head(x) if return_logits else x
        return GPTOutput(
            out,
            tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )
