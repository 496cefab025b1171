"""Batches for the fine-tuning stages: which examples go together (ShuffledBatches, resumable and
split between DDP ranks) and how a batch of token lists becomes tensors (right padding).
Pretraining's token windows are in shards.py."""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol

import torch

from ..device import distributed
from ..errors import InputError


class BatchSource(Protocol):
    """Where batches come from. Its state must be enough to continue exactly where it stopped."""

    steps_per_epoch: int  # micro-batches in one pass over the data

    def next_batch(self) -> Any: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class ShuffledBatches:
    """Examples in a fresh seeded order every epoch, `batch_size` at a time through `collate`.

    The order of epoch e is a permutation seeded by (seed, e), so the position (epoch, index) is the
    whole state. Under DDP (`torchrun`) `batch_size` is per rank, as in pretraining: step k takes the
    k-th global batch of batch_size x world_size examples and each rank collates its own slice, so
    the ranks see disjoint examples that together make the batch one process would take with
    --batch-size batch_size x world_size (same order, same epochs, same steps).

    With `length` (the token count of an example), batches are bucketed: the shuffled examples are
    taken in windows of BUCKET_WINDOW batches, each window is sorted by length and cut into batches,
    and the batches are shuffled. A batch then holds examples of similar length, so padding stays
    small (on NSMC reviews this trains about twice as many examples per second) while every epoch
    still sees every example in a random batch order. Data that fits in one window is only shuffled:
    sorting it whole would put repeats of an example in the same batch, and its padding is cheap.
    """

    BUCKET_WINDOW = 64

    def __init__(self, examples: list, batch_size: int, collate: Callable[[list], Any], seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, drop_last: bool = True,
                 length: Callable[[Any], int] | None = None):
        if rank is None or world_size is None:
            rank, world_size = distributed()
        if not examples:
            raise InputError("no training examples")
        if len(examples) < world_size:
            raise InputError(f"{len(examples)} training examples cannot be shared by {world_size} ranks")
        self.examples, self.collate = examples, collate
        self.batch_size = batch_size * world_size  # the global batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.lengths = [length(e) for e in examples] if length is not None else None
        bs = self.batch_size
        n = len(examples) // bs if drop_last and len(examples) >= bs else math.ceil(len(examples) / bs)
        self.steps_per_epoch = max(1, n)
        self.epoch, self.index = 0, 0
        self._order = None

    def _epoch_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.examples), generator=g).tolist()
        window, bs = self.BUCKET_WINDOW * self.batch_size, self.batch_size
        if self.lengths is None or len(order) <= window:
            return order
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=self.lengths.__getitem__)
            batches.extend(chunk[i : i + bs] for i in range(0, len(chunk), bs))
        full = [b for b in batches if len(b) == bs]
        partial = [b for b in batches if len(b) < bs]  # at most one: it stays last (dropped with drop_last)
        full = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
        return [i for b in full + partial for i in b]

    def next_indices(self) -> list[int]:
        """This rank's slice of the next global batch (an even split of a partial last batch)."""
        if self._order is None:
            self._order = self._epoch_order()
        if self.index >= self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._epoch_order()
        batch = self._order[self.index * self.batch_size : (self.index + 1) * self.batch_size]
        self.index += 1
        n, r, w = len(batch), self.rank, self.world_size
        return batch[r * n // w : (r + 1) * n // w]

    def next_batch(self):
        return self.collate([self.examples[i] for i in self.next_indices()])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self._order = state["epoch"], state["index"], None


def pad_batch(rows: list[list[int]], value: int):
    """Right-pad lists of ints into one LongTensor (B, longest): the one collate every stage's
    batches go through (ids with the pad token, labels with -100, masks with 0)."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out
