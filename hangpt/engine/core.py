"""The generation engine: batched KV-cache decoding with per-row settings, and streaming.

Each step feeds one token per row into a preallocated KV cache and computes the LM head for that
position only. Sampling and greedy decoding run as a session (session.py) in which rows of
different lengths decode together and leave the moment they finish; beam search (beam.py) runs
left-padded prompts as one batch (batch.py), prepared here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator

import torch

from ..errors import InputError
from ..models import CausalLM, KVCache
from ..threads import ThreadPolicy
from .batch import Batch, evaluating
from .beam import beam_search
from .config import Completion, GenerationConfig, StreamEvent
from .fast import PREFILL_TOKENS, FastDecoder, library, weight_key
from .processors import Utf8Mask
from .session import Session
from .text import ids_before, token_bytes


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
        """The fused C decoding step, when this model can use it (float32 or bfloat16 weights on a CPU,
        a C compiler found)."""
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
        if not ids:
            return []
        if config.num_beams > 1:
            return beam_search(self, ids, config)
        out: list[list[Completion]] = [[] for _ in ids]
        shared = None  # one generator for every row, as transformers' generate seeds once
        if config.seed is not None:
            shared = torch.Generator(device=self.device).manual_seed(config.seed)
        with evaluating(self.model):
            session = self._session([(p, config) for p in ids], stream=False)
            owner = {}
            for i, joined in enumerate(session.add_many([(p, config) for p in ids], shared)):
                if isinstance(joined, Exception):
                    raise joined
                owner.update(dict.fromkeys(joined, i))
            while session:
                for row in session.step():
                    text = row.text.final_text(row.ids)
                    token_ids = row.ids
                    if row.text.stop_at is not None:
                        token_ids = ids_before(self.tokenizer, row.ids, row.text.stop_at)
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
        plain, numbers = [], []
        first = 0  # index of the request's first row
        for ids, (_, config) in zip(prompts, requests):
            n = config.num_return_sequences
            if config.num_beams > 1:
                for k, c in enumerate(beam_search(self, [ids], config)[0]):
                    if not (is_cancelled and is_cancelled(first + k)):
                        yield StreamEvent(first + k, c.text, c.token_ids, c.finish_reason)
            else:
                plain.append((ids, config))
                numbers.append(first)
            first += n
        if not plain:
            return
        with evaluating(self.model):
            session = self._session(plain, stream=True)
            number = {}  # session row -> row index in this call
            for joined, first in zip(session.add_many(plain), numbers):
                if isinstance(joined, Exception):
                    raise joined
                number.update({index: first + k for k, index in enumerate(joined)})
            while session:
                if is_cancelled is not None:
                    for row in [r for r in session.rows if is_cancelled(number[r.index])]:
                        session.cancel(row.index)
                    if not session:
                        return
                for event in session.step():
                    yield replace(event, index=number[event.index])

    def session(self, stream: bool = True) -> Session:
        """An empty continuous batch (the server's): add() requests to it at any step."""
        return Session(self, stream)

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
    def _session(self, requests: list[tuple[list[int], GenerationConfig]], stream: bool) -> Session:
        """A session with room for these requests from the start."""
        session = Session(self, stream)
        n_ctx = self.model.config.context_length
        session.reserve(sum(c.num_return_sequences for _, c in requests),
                        max(len(p) + min(c.max_new_tokens, n_ctx - len(p) + 1) - 1 for p, c in requests))
        return session

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
