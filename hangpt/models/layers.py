"""What every model family shares: the KV cache, the attention mask, attention over the cache
(multi-head, grouped-query or multi-query), rotary embeddings, RMSNorm, and the decoder-only
forward loop with its LM head.

A family (gpt2.py, llama.py, ...) only says how tokens are embedded, what one block computes and
how its config.json and tensor names look; the engine, the trainers and the checkpoint code talk to
the `CausalLM` interface defined here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout that costs nothing when off (fine-tuning often sets p=0; generation always does)."""
    return F.dropout(x, p, training=True) if training and p > 0 else x


class KVCache:
    """Preallocated keys/values for every layer, so decoding appends in place instead of concatenating.

    Shape (layers, batch, kv_heads, positions, head_dim): grouped-query models cache only their
    key/value heads. `length` is how many positions are filled; every row of the batch shares it
    (left padding keeps rows aligned, and the padding mask hides the pad slots).
    """

    def __init__(self, config, batch_size: int, max_length: int, dtype=torch.float32, device="cpu"):
        shape = (config.num_layers, batch_size, config.num_kv_heads, max_length, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self._spare: tuple[torch.Tensor, torch.Tensor] | None = None
        self.slots: torch.Tensor | None = None  # see with_slots

    def with_slots(self, rows: int, slots: torch.Tensor) -> "KVCache":
        """A view of rows 0..rows-1 (same memory) whose rows each have their own length, for
        continuous batching: the next forward feeds one token per row, row b's written at position
        slots[b] and attending to positions 0..slots[b] only."""
        view = copy.copy(self)
        view.k, view.v, view.slots, view.length = self.k[:, :rows], self.v[:, :rows], slots, int(slots.max())
        view.slot_mask = (torch.arange(view.length + 1, device=slots.device) <= slots[:, None])[:, None, None]
        return view

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


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, vocab), or (B, T, hidden) when return_logits=False
    hidden_states: tuple[torch.Tensor, ...] | None  # embeddings + each block's output (final norm on the last)
    attentions: tuple[torch.Tensor, ...] | None  # each (B, n_head, T, T_total)


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


# SDPA's enable_gqa (torch 2.5): key/value heads shared by query heads without copying them
SDPA_GQA = tuple(int(n) for n in torch.__version__.split(".")[:2]) >= (2, 5)


def attend(q, k, v, layer_idx: int, cache: KVCache | None, mask, want_weights: bool, dropout_p: float,
           training: bool):
    """Causal attention of q (B, H, T, D) over k, v (B, H_kv, T, D), appended to the cache first.

    Grouped-query attention: each key/value head serves H / H_kv query heads, shared inside SDPA
    (enable_gqa) or else repeated here, as transformers' `repeat_kv` does (a Qwen2.5-0.5B layer's
    attention forward and backward: 14.5 instead of 18 ms). Returns (B, T, H * D) and the attention
    weights if asked.
    """
    B, H, T, D = q.shape
    if cache is not None and cache.slots is not None:  # one token per row, each at its own position
        rows = torch.arange(B, device=q.device)
        cache.k[layer_idx, rows, :, cache.slots] = k[:, :, 0]
        cache.v[layer_idx, rows, :, cache.slots] = v[:, :, 0]
        k, v = cache.k[layer_idx, :, :, : cache.length + 1], cache.v[layer_idx, :, :, : cache.length + 1]
        mask = cache.slot_mask
    elif cache is not None:
        start = cache.length
        cache.k[layer_idx, :, :, start : start + T] = k
        cache.v[layer_idx, :, :, start : start + T] = v
        k = cache.k[layer_idx, :, :, : start + T]
        v = cache.v[layer_idx, :, :, : start + T]
    explicit = want_weights or (T == 1 and not training)
    grouped = k.shape[1] != H
    if grouped and (explicit or not SDPA_GQA):
        k = k.repeat_interleave(H // k.shape[1], dim=1)
        v = v.repeat_interleave(H // v.shape[1], dim=1)
        grouped = False
    weights = None
    if explicit:
        # written out: needed for the weights, and for one decoding query three plain ops cost
        # less than SDPA's dispatch (the decode step is bound by per-op overhead, not FLOPs)
        scores = (q @ k.transpose(-2, -1)).mul_(1 / math.sqrt(D))
        if mask is not None:
            scores = scores.masked_fill_(~mask, float("-inf"))
        weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        y = weights @ v
        weights = weights if want_weights else None
    else:  # no mask: causal without a cache, or one new token attending to everything cached
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           dropout_p=dropout_p if training else 0.0,
                                           **({"enable_gqa": True} if grouped else {}))
    return y.transpose(1, 2).reshape(B, T, H * D), weights


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 as the Llama family's reference code does; in one
    fused op when x is float32 (forward and backward of a 4 x 128 x 896 batch: 3.5 instead of 4.3 ms)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_frequencies(dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """Inverse frequencies of rotary embeddings for `dim` rotated dimensions.

    scaling is config.json's rope_scaling: None/"default", "linear" (positions divided by factor)
    or "llama3" (long wavelengths slowed by factor, short ones kept, a smooth blend between),
    with the formulas of transformers' modeling_rope_utils.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_context = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
        return torch.where(medium, blended, scaled)
    raise ValueError(f"rope_scaling type {kind!r}")


class Rotary(nn.Module):
    """cos/sin tables for given positions, (B, T, dim), in float32 then cast like transformers.

    interleaved: GPT-J's layout, each frequency repeated for the pair (2i, 2i+1) it rotates,
    instead of the "rotate half" layout's pair (i, i + dim/2).
    """

    def __init__(self, dim: int, theta: float, scaling: dict | None = None, interleaved: bool = False):
        super().__init__()
        self.settings = (dim, theta, scaling)
        self.interleaved = interleaved
        self.register_buffer("inv_freq", rope_frequencies(*self.settings), persistent=False)

    def reset(self) -> None:
        self.inv_freq = rope_frequencies(*self.settings).to(self.inv_freq.device if not self.inv_freq.is_meta else "cpu")

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq  # (B|1, T, dim/2)
        angles = freqs.repeat_interleave(2, dim=-1) if self.interleaved else torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate x (B, H, T, D) by position: the "rotate half" layout of Llama and GPT-NeoX, or GPT-J's
    interleaved one (with tables from an interleaved Rotary). Only the first cos.shape[-1] dims
    turn when the tables are narrower than D (GPT-J's rotary_dim, GPT-NeoX's rotary_pct)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    d = cos.shape[-1]
    turning = x if d == x.shape[-1] else x[..., :d]
    turned = turning * cos + (rotate_every_two(turning) if interleaved else rotate_half(turning)) * sin
    return turned if turning is x else torch.cat((turned, x[..., d:]), dim=-1)


# config.json's activation names (transformers' ACT2FN) for the families' MLPs; gelu_new is the tanh
# approximation GPT-2 and GPT-J were trained with
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def config_from_dict(cls, d: dict):
    """A family's config dataclass from the config.json keys it has fields for (others are ignored);
    a value the dataclass refuses is one error line."""
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in d.items() if k in names})
    except TypeError as e:
        from ..errors import InputError

        raise InputError(f"config.json: {e}") from None


def normal_init(module: nn.Module, std: float = 0.02) -> None:
    """transformers' initialisation of a fresh model: N(0, std) Linear and Embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


class CausalLM(nn.Module):
    """The decoder-only forward every family shares: embed, blocks over the KV cache, final norm,
    LM head. A family sets `config`, `lm_head`, `blocks` (ModuleList), `final_norm` and defines
    `embed(input_ids, position_ids, past) -> (x, extra)`; `extra` (rotary cos/sin, or None) is
    passed to every block as `block(x, layer_idx, cache, mask, want_weights, extra)`."""

    config = None
    blocks: nn.ModuleList
    final_norm: nn.Module
    lm_head: nn.Linear

    def embedding(self) -> nn.Embedding:
        raise NotImplementedError

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, past: int):
        raise NotImplementedError

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
    ) -> ModelOutput:
        """Run the transformer on `input_ids` (B, T).

        padding_mask: (B, past+T) with 1 for real tokens and 0 for padding, covering the cached
        positions too. position_ids default to past..past+T-1 (pass them for left padding).
        return_logits=False returns the final hidden states instead (for reward/value/class heads).
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.context_length:
            from ..errors import InputError

            raise InputError(
                f"sequence of {past + T} tokens is longer than the model's context ({self.config.context_length})"
            )
        x, extra = self.embed(input_ids, position_ids, past)
        mask = attention_mask_for(T, past, padding_mask, device=input_ids.device)
        if output_attentions and mask is None:
            mask = attention_mask_for(T, 0, torch.ones(1, T, dtype=torch.bool, device=input_ids.device))
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for i, block in enumerate(self.blocks):
            x, weights = block(x, i, cache, mask, output_attentions, extra)
            if output_hidden_states:
                hidden_states.append(x)
            if output_attentions:
                attentions.append(weights)
        x = self.final_norm(x)
        if output_hidden_states:
            hidden_states[-1] = x  # as transformers does: the last entry has the final norm applied
        if cache is not None:
            cache.length = past + T
        out = self.lm_head(x) if return_logits else x
        return ModelOutput(
            out,
            tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )

    # -- what every family offers the trainers ---------------------------------------------------
    def reset_buffers(self) -> None:
        """Recompute what checkpoints do not store (rotary frequencies), e.g. after loading a model
        built on the meta device."""
        for module in self.modules():
            if isinstance(module, Rotary):
                module.reset()

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.embedding().weight

    def num_parameters(self, include_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if include_embeddings else n - self.position_embedding_count()

    def position_embedding_count(self) -> int:
        return 0

    def resize_token_embeddings(self, new_size: int) -> None:
        """Grow (or shrink) the vocabulary, e.g. after adding chat role tokens to a tokenizer.

        New rows start at the mean of the old ones (a neutral token) so the first fine-tuning
        steps are not dominated by random logits; an untied LM head grows the same way.
        """
        emb = self.embedding()
        if new_size == emb.weight.shape[0]:
            return
        tied = self.tied
        new_emb = nn.Embedding(new_size, emb.weight.shape[1]).to(emb.weight.device, emb.weight.dtype)
        new_emb.weight.data = _resized_rows(emb.weight.data, new_size)
        self.set_embedding(new_emb)
        if tied:
            self.lm_head.weight = new_emb.weight
        else:
            head = self.lm_head
            new_head = nn.Linear(head.in_features, new_size, bias=head.bias is not None)
            new_head = new_head.to(head.weight.device, head.weight.dtype)
            new_head.weight.data = _resized_rows(head.weight.data, new_size)
            if head.bias is not None:
                new_head.bias.data = _resized_rows(head.bias.data[:, None], new_size)[:, 0]
            self.lm_head = new_head
        self.config.vocab_size = new_size

    def set_embedding(self, emb: nn.Embedding) -> None:
        raise NotImplementedError


def _resized_rows(old: torch.Tensor, n: int) -> torch.Tensor:
    keep = min(n, old.shape[0])
    out = old.new_empty((n, *old.shape[1:]))
    out[:keep] = old[:keep]
    if n > keep:
        out[keep:] = old.mean(dim=0, keepdim=True)
    return out
