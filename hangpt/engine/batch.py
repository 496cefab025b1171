"""The state of a batch being decoded (left-padded rows, their KV cache and the C step): beam search
(beam.py) decodes one and reorders its rows every step; a request joining a session (session.py)
is prefilled into one."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..models import CausalLM, KVCache
from .fast import FastDecoder


@contextmanager
def evaluating(model: CausalLM):
    """Eval mode (no dropout) for generation, restored afterwards; a model already in eval mode is
    not walked twice (train()/eval() visit every module)."""
    training = model.training
    if training:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


@dataclass
class Batch:
    """Left-padded prompts with their cache; `seqs` holds every row's tokens (pads as vocab_size)."""

    cache: KVCache
    seqs: torch.Tensor  # (B, total) long
    padding_mask: torch.Tensor | None  # (B, total) bool, None when no row is padded
    positions: torch.Tensor | None  # (B, 1) position of each row's next token, None without padding
    length: int  # filled columns of seqs (= padded prompt length + generated)
    prompt_length: int
    fast: FastDecoder | None = None  # the fused C step, bound to the weights, when available
    greedy: tuple[torch.Tensor, torch.Tensor] | None = None  # (logits, their argmax) from the C step
    record: bool = True  # write each step's tokens into seqs (only penalties read them)

    def select(self, index: torch.Tensor) -> None:
        self.cache.reorder(index, self.fast.reorder_rows if self.fast is not None else None)
        if self.record:
            self.seqs = self.seqs.index_select(0, index)
        if self.padding_mask is not None:
            self.padding_mask = self.padding_mask.index_select(0, index)
            self.positions = self.positions.index_select(0, index)
