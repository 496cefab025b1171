"""The generation engine: batched KV-cache decoding with per-row settings, and streaming.

Prompts of different lengths are left-padded into one batch and run through the model in one
forward; then each step feeds one token per row into a preallocated KV cache and computes the
LM head for that position only. A finished (or cancelled) row leaves the batch at once, so the
remaining rows decode faster. The batch state is batch.py's; beam search (beam.py) shares it
and the batch preparation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..errors import InputError
from ..models import CausalLM, KVCache
from ..threads import ThreadPolicy
from .batch import Batch, evaluating
from .beam import beam_search
from .config import Completion, GenerationConfig, StreamEvent
from .fast import PREFILL_TOKENS, FastDecoder, library, weight_key
from .processors import Processor, Utf8Mask
from .text import TextStream, complete_prefix, ids_before, token_bytes


@dataclass
class _Row:
    index: int
    config: GenerationConfig
    eos: set[int]
    max_new: int
    generator: torch.Generator | None
    text: TextStream
    ids: list[int] = field(default_factory=list)
    logprobs: list[dict] | None = None
    finish: str | None = None


class Engine:
    """Generation over a loaded model (any family) + tokenizer; the CLI, chat, server and RLHF all use it."""

    def __init__(self, model: CausalLM, tokenizer, fast_decode: bool = True):
        """fast_decode=False always decodes with the PyTorch forward instead of the fused C step
        (the two give the same tokens; the switch is there to compare them)."""
        self.fast_decode = fast_decode
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.vocab_size
        self._head, self._head_key = None, None
        self._fast: FastDecoder | None = None
        self.threads = ThreadPolicy(period=64, probe=4)  # decoding steps on a busy machine
        self._utf8: Utf8Mask | None = None

    def head_matrix(self) -> torch.Tensor:
        """The LM head weight transposed and contiguous, (n_embd, V), for a CPU: MKL's GEMM for a
        few rows is 2-4x faster on that layout than on nn.Linear's (vocab 8192, 8 rows: 245 vs
        612 us), and the head is the biggest matmul of a decoding step. The copy is rebuilt
        whenever the weight changes (PPO trains the model it generates with)."""
        weight = self.model.lm_head.weight
        key = weight_key(weight)
        if key != self._head_key:
            self._head, self._head_key = weight.detach().t().contiguous(), key
        return self._head

    def next_token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on the last hidden state of each row: (B, n_embd) -> float32 (B, V). The transposed
        copy only for float32: in bf16 nn.Linear's layout is as fast (vocab 151936 x 896, one row:
        160-173 vs 183-187 ms) and the copy would add the biggest matrix to memory a second time."""
        head = self.model.lm_head
        if self.device.type != "cpu" or hidden.dtype != torch.float32:
            return head(hidden).float()
        if head.bias is not None:  # GPT-J's head has one
            return torch.addmm(head.bias, hidden, self.head_matrix()).float()
        return (hidden @ self.head_matrix()).float()

    def utf8_mask(self) -> Utf8Mask:
        """The valid-UTF-8 tables of this tokenizer (built on first use: ~0.1 s for 8k tokens)."""
        if self._utf8 is None:
            pieces = token_bytes(self.tokenizer)[: self.vocab_size]
            pieces += [b""] * (self.vocab_size - len(pieces))  # ids past the tokenizer: only between characters
            ends = {i for i, p in enumerate(pieces) if not p} | set(self.tokenizer.backend.get_added_tokens_decoder())
            self._utf8 = Utf8Mask(pieces, ends, self.device)
        return self._utf8

    def fast_decoder(self) -> FastDecoder | None:
        """The fused C decoding step, when this model can use it (float32 on a CPU, compiler found)."""
        if not (self.fast_decode and FastDecoder.supports(self.model)):
            return None
        if self._fast is None:
            self._fast = FastDecoder.for_model(self.model, library())
        self._fast.bind(self.head_matrix)
        return self._fast

    # -- public API ---------------------------------------------------------------------------
    def generate(self, prompts: list[str] | list[list[int]], config: GenerationConfig) -> list[list[Completion]]:
        """Batched (different lengths, left-padded); one list of num_return_sequences completions per prompt."""
        self.check(config)
        ids = [self.encode(p) for p in prompts]
        if config.num_beams > 1:
            return beam_search(self, ids, config)
        out: list[list[Completion]] = [[] for _ in ids]
        owner = [i for i in range(len(ids)) for _ in range(config.num_return_sequences)]
        rows = self._rows([(p, config) for p in ids], shared_generator=True)
        for row in self._decode(rows, [p for p in ids for _ in range(config.num_return_sequences)], False, None):
            text = row.text.final_text(row.ids)
            token_ids = row.ids if row.text.stop_at is None else ids_before(self.tokenizer, row.ids, row.text.stop_at)
            logprobs = row.logprobs[: len(token_ids)] if row.logprobs is not None else None
            out[owner[row.index]].append((row.index, Completion(text, token_ids, row.finish, logprobs)))
        return [[c for _, c in sorted(group, key=lambda x: x[0])] for group in out]

    def stream(self, prompt: str | list[int], config: GenerationConfig) -> Iterator[StreamEvent]:
        """Tokens as they come for one prompt (index 0; more rows if num_return_sequences > 1)."""
        self.check(config)
        return self.stream_batch([(self.encode(prompt), config)])

    def stream_batch(
        self,
        requests: list[tuple[list[int], GenerationConfig]],
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[StreamEvent]:
        """Decode several independent requests in one batch, each row with its own settings, seed
        and stop rules. A request with num_return_sequences=n takes n consecutive rows; events are
        tagged with the row index. A row whose is_cancelled(index) turns True leaves the batch
        without a further event. Beam-search requests are decoded on their own, first, and give one
        final event per returned sequence."""
        for _, config in requests:
            self.check(config)
        prompts = [self.encode(p) for p, _ in requests]
        plain, plain_prompts, plain_numbers = [], [], []
        first = 0  # index of the request's first row
        for ids, (_, config) in zip(prompts, requests):
            n = config.num_return_sequences
            if config.num_beams > 1:
                for k, c in enumerate(beam_search(self, [ids], config)[0]):
                    if not (is_cancelled and is_cancelled(first + k)):
                        yield StreamEvent(first + k, c.text, c.token_ids, c.finish_reason)
            else:
                plain.append((ids, config))
                plain_prompts.extend([ids] * n)
                plain_numbers.extend(range(first, first + n))
            first += n
        if not plain:
            return
        rows = self._rows(plain, shared_generator=False)
        for r, number in zip(rows, plain_numbers):
            r.index = number
        for r, text, ids, logprobs in self._decode(rows, plain_prompts, True, is_cancelled):
            yield StreamEvent(r.index, text, ids, r.finish, logprobs)

    # -- checks ---------------------------------------------------------------------------------
    def check(self, config: GenerationConfig) -> None:
        config.validate()
        for name, ids in (("eos_token_id", config.eos_ids(None)), ("logit_bias", list(config.logit_bias))):
            bad = [i for i in ids if i >= self.vocab_size]
            if bad:
                raise InputError(f"{name}: token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt exactly as the checkpoint's tokenizer encodes it (no BOS added);
        an empty prompt starts from the BOS token, as unconditional GPT-2 sampling does."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            ids = [self.model.config.bos_token_id]
        n_ctx = self.model.config.context_length
        if len(ids) > n_ctx:
            raise InputError(f"prompt of {len(ids)} tokens is longer than the model's context ({n_ctx} tokens)")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise InputError(f"prompt: token id outside the vocabulary (0..{self.vocab_size - 1})")
        return ids

    # -- internals ------------------------------------------------------------------------------
    def _rows(self, requests: list[tuple[list[int], GenerationConfig]], shared_generator: bool) -> list[_Row]:
        rows = []
        shared = None
        P = max(len(p) for p, _ in requests)
        for ids, config in requests:
            generator = None
            if config.seed is not None:
                if shared is None or not shared_generator:
                    shared = torch.Generator(device=self.device).manual_seed(config.seed)
                generator = shared
            for _ in range(config.num_return_sequences):
                rows.append(_Row(
                    index=len(rows),
                    config=config,
                    eos=set(config.eos_ids(self.model.config.eos_token_id)),
                    max_new=min(config.max_new_tokens, self.model.config.context_length - P + 1),
                    generator=generator,
                    text=TextStream(self.tokenizer, config.stop),
                    logprobs=[] if config.logprobs is not None else None,
                ))
        return rows

    def prefill(self, prompts: list[list[int]], total: int) -> tuple[Batch, torch.Tensor]:
        """Run the left-padded prompts in one forward into a cache sized for `total` positions;
        returns the batch and the next-token logits (B, V), computing the LM head for the last
        position only. The batch's tensors are ordinary tensors (made outside inference mode), so
        the C step updates them without an autograd guard."""
        B, P = len(prompts), max(len(p) for p in prompts)
        model, dev = self.model, self.device
        cache = KVCache(model.config, B, max(total - 1, P), dtype=model.lm_head.weight.dtype, device=dev)
        seqs = torch.full((B, total), self.vocab_size, dtype=torch.long, device=dev)
        for r, p in enumerate(prompts):
            seqs[r, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        real = seqs[:, :P] != self.vocab_size
        padded = not bool(real.all())
        padding_mask = positions = pos = None
        inputs = seqs[:, :P].masked_fill(~real, 0)
        if padded:
            padding_mask = torch.ones((B, total), dtype=torch.bool, device=dev)
            padding_mask[:, :P] = real
            pos = (real.long().cumsum(-1) - 1).clamp(min=0)
            positions = pos[:, -1:] + 1
        batch = Batch(cache, seqs, padding_mask, positions, P, P, self.fast_decoder())
        if batch.fast is not None and B * P <= PREFILL_TOKENS:
            batch.greedy = batch.fast.prefill(inputs, pos, padding_mask, cache)
            return batch, batch.greedy[0]
        mask = padding_mask[:, :P] if padded else None
        with torch.inference_mode():
            hidden = model(inputs, position_ids=pos, padding_mask=mask, cache=cache, return_logits=False).logits
            return batch, self.next_token_logits(hidden[:, -1])

    def step(self, batch: Batch, tokens: torch.Tensor) -> torch.Tensor:
        """Append `tokens` (B,) to every row and return the next-token logits (B, V). The C step
        never sees a tensor that requires grad; the PyTorch forward runs in inference mode."""
        if batch.record:
            batch.seqs[:, batch.length] = tokens
        batch.length += 1
        mask = batch.padding_mask[:, : batch.length] if batch.padding_mask is not None else None
        if batch.fast is not None:
            batch.greedy = batch.fast.step(tokens, batch.cache, batch.positions, mask)
            logits = batch.greedy[0]
        else:
            with torch.inference_mode():
                hidden = self.model(tokens.unsqueeze(1), position_ids=batch.positions, padding_mask=mask,
                                    cache=batch.cache, return_logits=False).logits
                logits = self.next_token_logits(hidden[:, -1])
        if batch.positions is not None:
            batch.positions += 1
        return logits

    def _decode(self, rows: list[_Row], prompts: list[list[int]], stream: bool,
                is_cancelled: Callable[[int], bool] | None):
        """Greedy/sampling decoding of all rows together. Yields each row once, finished, or with
        stream=True `(row, text, token_ids, logprobs)` whenever a row has new text or finishes."""
        with evaluating(self.model):
            steps = max(r.max_new for r in rows)
            batch, logits = self.prefill(prompts, max(len(p) for p in prompts) + steps)
            utf8 = self.utf8_mask() if any(r.config.valid_utf8 for r in rows) else None
            proc = Processor([r.config for r in rows], self.vocab_size, self.device, utf8)
            batch.record = proc.penalizes
            want_text = stream or any(r.config.stop for r in rows)
            want_logprobs = any(r.logprobs is not None for r in rows)
            pending = {id(r): 0 for r in rows}  # tokens not yet sent in an event (streaming)
            active = rows
            for _ in range(steps):
                tokens, logprob_info = self._choose(logits, batch, proc, active, want_logprobs)
                proc.advance(tokens)
                keep = []
                for i, (row, token) in enumerate(zip(active, tokens.tolist())):
                    if is_cancelled is not None and is_cancelled(row.index):
                        continue
                    if token in row.eos:
                        row.finish = "stop"
                    else:
                        row.ids.append(token)
                        if row.logprobs is not None:
                            row.logprobs.append(self._logprob_entry(token, logprob_info, i, row.config.logprobs))
                        if len(row.ids) >= row.max_new:
                            row.finish = "length"
                            if row.config.valid_utf8:  # cut mid-character: keep whole characters only
                                row.ids = complete_prefix(self.tokenizer, row.ids)
                        if want_text and row.text.add(row.ids):
                            row.finish = "stop"
                    if stream:
                        event = self._event(row, pending)
                        if event is not None:
                            yield event
                    elif row.finish:
                        yield row
                    if not row.finish:
                        keep.append(i)
                if not keep:
                    return
                if len(keep) < len(active):
                    index = torch.tensor(keep, device=self.device)
                    active = [active[i] for i in keep]
                    batch.select(index)  # no inference mode: the batch keeps ordinary tensors
                    proc.select(index)
                    tokens = tokens.index_select(0, index)
                self.threads.before()
                t0 = time.perf_counter()
                logits = self.step(batch, tokens)
                self.threads.after(time.perf_counter() - t0)

    def _event(self, row: _Row, pending: dict):
        """Streaming: (row, text, token_ids, logprobs) when there is text to show or the row ended."""
        if row.finish:
            text = row.text.release(row.ids)
            if row.text.stop_at is not None:
                kept = len(ids_before(self.tokenizer, row.ids, row.text.stop_at))
                new_ids = row.ids[pending[id(row)] : max(kept, pending[id(row)])]
            else:
                new_ids = row.ids[pending[id(row)] :]
        else:
            text = row.text.release()
            if not text:
                return None
            new_ids = row.ids[pending[id(row)] :]
        start = pending[id(row)]
        pending[id(row)] = start + len(new_ids)
        logprobs = row.logprobs[start : start + len(new_ids)] if row.logprobs is not None else None
        return row, text, new_ids, logprobs

    def _choose(self, logits, batch: Batch, proc: Processor, rows: list[_Row], want_logprobs: bool):
        """Next token of every row: penalties, then argmax or a sample from the warped distribution.
        (No autograd guard needed: nothing here requires grad.)"""
        scores = logits
        if proc.penalizes:
            scores = proc.penalize(logits, batch.seqs[:, : batch.length], batch.prompt_length)
        if scores is logits and batch.greedy is not None and batch.greedy[0] is logits:
            tokens = batch.greedy[1]  # computed with the logits, in the C step
        else:
            tokens = scores.argmax(dim=-1)
        if proc.any_sample:
            values, ids = proc.candidates(scores)
            probs = values.softmax(dim=-1)
            noise = torch.empty_like(probs)
            generators = {id(r.generator): r.generator for r in rows}
            if len(generators) == 1:
                noise.exponential_(generator=rows[0].generator)
            else:
                for i, r in enumerate(rows):
                    noise[i].exponential_(generator=r.generator)
            sampled = (probs / noise).argmax(dim=-1, keepdim=True)  # exponential race = a draw from probs
            sampled = (ids.gather(1, sampled) if ids is not None else sampled).squeeze(1)
            tokens = torch.where(proc.sample_rows.squeeze(1), sampled, tokens)
        info = None
        if want_logprobs:
            logprobs = logits.log_softmax(dim=-1)
            k = max(r.config.logprobs or 0 for r in rows)
            top = logprobs.topk(k, dim=-1) if k else None
            info = (logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist(),
                    top.values.tolist() if top is not None else None,
                    top.indices.tolist() if top is not None else None)
        return tokens, info

    def _logprob_entry(self, token: int, info, i: int, k: int) -> dict:
        """The model's log-probability of the chosen token (before penalties and sampling filters),
        with the k most likely alternatives, in the OpenAI shape."""
        chosen, top_values, top_ids = info
        piece = self.tokenizer.decode
        top = []
        if k:
            top = [{"token": piece([t]), "id": t, "logprob": v} for t, v in zip(top_ids[i][:k], top_values[i][:k])]
        return {"token": piece([token]), "id": token, "logprob": chosen[i], "top": top}
