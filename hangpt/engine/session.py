"""Continuous batching: requests join a running batch at any step and leave it the moment they end.

The rows live in a pool of KV-cache slots, each row with its own length. Requests joining at the
same step are prefilled apart from the running rows, those with prompts of equal length together
(add_many), and their keys and values are copied into free slots (no other row is touched); each
step then feeds one token per row at that row's own position (the C step takes per-row positions;
the PyTorch forward writes per row through KVCache.with_slots). A finished or cancelled row leaves
at once: the last row moves into its slot, so the rows stay in slots 0..n-1 and a step never
computes an empty slot; a pool left mostly empty after a burst shrinks. Every row samples from its
own generator as it would alone (Processor.sample), so a request gets the same tokens whatever
shares its batch.

Engine.generate and Engine.stream_batch are sessions whose requests all join at the first step;
the server (serve/batcher.py) adds requests as they arrive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..models import KVCache
from .config import GenerationConfig, StreamEvent
from .fast import PREFILL_TOKENS
from .processors import Processor
from .text import TextStream, complete_prefix, ids_before


@dataclass
class Row:
    index: int  # the row's id in its session (the StreamEvent index)
    config: GenerationConfig
    eos: set[int]
    max_new: int
    end: int  # cache positions the row needs: prompt + max_new - 1
    generator: torch.Generator | None
    text: TextStream
    ids: list[int] = field(default_factory=list)
    logprobs: list[dict] | None = None
    finish: str | None = None
    sent: int = 0  # tokens already reported in a StreamEvent


class Session:
    """The rows being decoded together: add() / add_many() prefill requests into the batch, step()
    advances every row by one token, cancel() drops a row. The caller holds the model in eval mode."""

    def __init__(self, engine, stream: bool = True):
        """stream=False (Engine.generate): no text is released per step and step() returns the
        finished rows instead of events."""
        self.engine, self.stream = engine, stream
        self.rows: list[Row] = []  # row i is in cache slot i
        self.cache: KVCache | None = None
        self.seqs = self.lengths = None  # (slots, columns + 1) tokens so far (V after the end), (slots,)
        self.logits = self.greedy = None  # (rows, V) next-token logits of every row, and their argmax
        self.proc: Processor | None = None
        self.fast = engine.fast_decoder()
        self._next_index = 0

    def __len__(self) -> int:
        return len(self.rows)

    # -- rows joining and leaving ----------------------------------------------------------------
    def reserve(self, rows: int, columns: int) -> None:
        """Make room for `rows` rows of `columns` positions (the pool grows by doubling: a rare
        event, unlike a join)."""
        have_rows, have_cols = (0, 0) if self.cache is None else (self.cache.k.shape[1], self.cache.max_length)
        if rows <= have_rows and columns <= have_cols:
            return
        if rows > have_rows:
            rows = max(rows, 2 * have_rows)
        if columns > have_cols:
            columns = min(max(columns, 2 * have_cols), self.engine.model.config.context_length)
        self._reallocate(max(rows, have_rows), max(columns, have_cols))

    def _shrink(self) -> None:
        """After a busy period: a pool with more than four slots per live row is reallocated with
        two per live row and the columns they need (released when no row is left), so one burst
        does not hold its memory, nor make every later step copy and scan a mostly empty pool."""
        n = len(self.rows)
        if self.cache is None or 4 * n >= self.cache.k.shape[1]:
            return
        if not n:
            self.cache = self.seqs = self.lengths = None
            return
        self._reallocate(2 * n, max(r.end for r in self.rows))

    def _reallocate(self, rows: int, columns: int) -> None:
        """A new pool of rows x columns holding the live rows: only their filled positions are copied."""
        engine, n = self.engine, len(self.rows)
        cache = KVCache(engine.model.config, rows, columns, dtype=engine.model.lm_head.weight.dtype,
                        device=engine.device)
        seqs = torch.full((rows, columns + 1), engine.vocab_size, dtype=torch.long, device=engine.device)
        lengths = torch.zeros(rows, dtype=torch.long, device=engine.device)
        if n:
            filled = int(self.lengths[:n].max())
            cache.k[:, :n, :, :filled] = self.cache.k[:, :n, :, :filled]
            cache.v[:, :n, :, :filled] = self.cache.v[:, :n, :, :filled]
            seqs[:n, :filled] = self.seqs[:n, :filled]
            lengths[:n] = self.lengths[:n]
        self.cache, self.seqs, self.lengths = cache, seqs, lengths

    def add(self, prompt: str | list[int], config: GenerationConfig,
            generator: torch.Generator | None = None) -> list[int]:
        """One request joining (see add_many); returns its rows' indices, or raises its error."""
        [joined] = self.add_many([(prompt, config)], generator)
        if isinstance(joined, Exception):
            raise joined
        return joined

    def add_many(self, requests: list[tuple[str | list[int], GenerationConfig]],
                 generator: torch.Generator | None = None) -> list[list[int] | Exception]:
        """Requests joining at the same step: each is checked on its own, and prompts of equal
        length are prefilled together, up to PREFILL_TOKENS tokens a forward (no padding, and the
        short prompts of a burst in a few C calls instead of one each). Each request's
        num_return_sequences rows go into the batch in request order. Returns, per request, its
        rows' indices or the exception that kept it out: a bad request fails alone (a batched
        prefill that raises is retried one prompt at a time).

        generator: shared by every row (Engine.generate's seed); by default each request's own,
        from its seed. A row prefilled with others has the keys, values and logits it has alone up
        to float32 rounding (within torch.testing's rtol 1.3e-6, atol 1e-5: GPT-2's C matmul and
        PyTorch's sum in an order that depends on the number of rows; the Llama C step's does not,
        and is bit-identical), as a decoding step shared with other rows already is."""
        engine = self.engine
        results: list[list[int] | Exception | None] = [None] * len(requests)
        prompts: dict[int, list[int]] = {}
        for i, (prompt, config) in enumerate(requests):
            try:
                engine.check(config)
                prompts[i] = engine.encode(prompt)
            except Exception as e:
                results[i] = e
        prefilled = {}  # request -> (its prefill's cache, its row there, its logits, its greedy token)
        by_length: dict[int, list[int]] = {}
        for i, ids in prompts.items():
            by_length.setdefault(len(ids), []).append(i)
        for P, members in by_length.items():
            per_forward = max(1, PREFILL_TOKENS // P)
            for k in range(0, len(members), per_forward):
                chunk = members[k : k + per_forward]
                try:
                    prefilled.update(self._prefill(chunk, [prompts[i] for i in chunk]))
                except Exception as e:
                    if len(chunk) == 1:
                        results[chunk[0]] = e
                        continue
                    for i in chunk:  # find the bad one: the others still join
                        try:
                            prefilled.update(self._prefill([i], [prompts[i]]))
                        except Exception as error:
                            results[i] = error
        joining = [i for i in range(len(requests)) if i in prefilled]
        if joining:
            placed = self._place([(prompts[i], requests[i][1], prefilled[i]) for i in joining], generator)
            for i, indices in zip(joining, placed):
                results[i] = indices
        return results

    def _prefill(self, members: list[int], prompts: list[list[int]]) -> dict:
        """Prefill prompts of one length in one forward: member -> (cache, row, logits, greedy)."""
        batch, logits = self.engine.prefill(prompts, len(prompts[0]))
        greedy = batch.greedy[1] if batch.greedy is not None else logits.argmax(dim=-1)
        return {i: (batch.cache, b, logits[b], greedy[b]) for b, i in enumerate(members)}

    def _place(self, joining: list, generator: torch.Generator | None) -> list[list[int]]:
        """Put prefilled requests (prompt, config, (cache, row, logits, greedy)) into free slots,
        num_return_sequences rows each: only their own keys and values are copied. Returns each
        request's row indices."""
        engine = self.engine
        placed = []
        n_ctx = engine.model.config.context_length
        ends = [len(p) + min(c.max_new_tokens, n_ctx - len(p) + 1) - 1 for p, c, _ in joining]
        self.reserve(len(self.rows) + sum(c.num_return_sequences for _, c, _ in joining), max(ends))
        logits, greedy, configs = [], [], []
        for (prompt, config, (cache, b, row_logits, row_greedy)), end in zip(joining, ends):
            P, n, first = len(prompt), config.num_return_sequences, len(self.rows)
            slots = torch.arange(first, first + n, device=engine.device)
            self.cache.k[:, first : first + n, :, :P] = cache.k[:, b : b + 1, :, :P]
            self.cache.v[:, first : first + n, :, :P] = cache.v[:, b : b + 1, :, :P]
            self.seqs[slots, :P] = torch.tensor(prompt, device=engine.device)
            self.lengths[slots] = P
            logits += [row_logits] * n
            greedy += [row_greedy] * n
            configs += [config] * n
            row_generator = generator
            if row_generator is None and config.seed is not None:
                row_generator = torch.Generator(device=engine.device).manual_seed(config.seed)
            eos = set(config.eos_ids(engine.model.config.eos_token_id))
            for _ in range(n):
                self.rows.append(Row(
                    index=self._next_index, config=config, eos=eos, max_new=end - P + 1, end=end,
                    generator=row_generator, text=TextStream(engine.tokenizer, config.stop),
                    logprobs=[] if config.logprobs is not None else None))
                self._next_index += 1
            placed.append([r.index for r in self.rows[first:]])
        logits, greedy = torch.stack(logits), torch.stack(greedy)
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])
        self.greedy = greedy if self.greedy is None else torch.cat([self.greedy, greedy])
        utf8 = engine.utf8_mask() if any(c.valid_utf8 for c in configs) else None
        joined = Processor(configs, engine.vocab_size, engine.device, utf8)
        if self.proc is None:
            self.proc = joined
        else:
            self.proc.extend(joined)
        return placed

    def cancel(self, index: int) -> None:
        """Drop a row (its client went away); nothing more is reported for it."""
        self._keep([i for i, r in enumerate(self.rows) if r.index != index])

    def _keep(self, keep: list[int]) -> list[int]:
        """Keep these rows (indices into self.rows, ascending): each row leaving is replaced by the
        last row still kept, whose slot alone is copied. Returns the new order (old indices)."""
        m = len(keep)
        if m == len(self.rows):
            return keep
        kept = set(keep)
        movers = [i for i in keep if i >= m]
        order = list(range(m))
        for hole in (i for i in range(m) if i not in kept):
            src = movers.pop(0)
            order[hole] = src
            length = int(self.lengths[src])
            self.cache.k[:, hole, :, :length] = self.cache.k[:, src, :, :length]
            self.cache.v[:, hole, :, :length] = self.cache.v[:, src, :, :length]
            self.seqs[hole] = self.seqs[src]
            self.lengths[hole] = self.lengths[src]
        self.rows = [self.rows[i] for i in order]
        self._shrink()
        if not self.rows:
            self.proc = self.logits = self.greedy = None
            return order
        index = torch.tensor(order, device=self.engine.device)
        self.proc.select(index)
        if self.logits is not None:
            self.logits, self.greedy = self.logits.index_select(0, index), self.greedy.index_select(0, index)
        return order

    # -- one step ----------------------------------------------------------------------------------
    def step(self) -> list:
        """Choose every row's next token, report it, let the finished rows leave, and run the model
        one step for the others. Returns this step's StreamEvents (stream=True: each row with new
        text, or finished), or the rows that finished (stream=False)."""
        engine = self.engine
        n = len(self.rows)
        tokens, info = self._choose()
        self.proc.advance(tokens)
        slots = torch.arange(n, device=engine.device)
        self.seqs[slots, self.lengths[:n]] = tokens
        self.lengths[:n] += 1
        want_text = self.stream or any(r.config.stop for r in self.rows)
        out, keep = [], []
        for i, (row, token) in enumerate(zip(self.rows, tokens.tolist())):
            if token in row.eos:
                row.finish = "stop"
            else:
                row.ids.append(token)
                if row.logprobs is not None:
                    row.logprobs.append(self._logprob_entry(token, info, i, row.config.logprobs))
                if len(row.ids) >= row.max_new:
                    row.finish = "length"
                    if row.config.valid_utf8:  # cut mid-character: keep whole characters only
                        row.ids = complete_prefix(engine.tokenizer, row.ids)
                if want_text and row.text.add(row.ids):
                    row.finish = "stop"
            if self.stream:
                event = self._event(row)
                if event is not None:
                    out.append(event)
            elif row.finish:
                out.append(row)
            if not row.finish:
                keep.append(i)
        self.logits = self.greedy = None
        order = self._keep(keep)
        if self.rows:
            engine.threads.before()
            t0 = time.perf_counter()
            self.logits, self.greedy = self._forward(tokens[torch.tensor(order, device=engine.device)])
            engine.threads.after(time.perf_counter() - t0)
        return out

    def _forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed each row's new token at its own position: the logits of every row, and their argmax
        when the C step computed it."""
        n = len(self.rows)
        slots = self.lengths[:n] - 1
        if self.fast is not None:
            return self.fast.step_rows(tokens, self.cache, slots)
        with torch.inference_mode():
            hidden = self.engine.model(tokens.unsqueeze(1), position_ids=slots.unsqueeze(1),
                                       cache=self.cache.with_slots(n, slots), return_logits=False).logits
            return self.engine.next_token_logits(hidden[:, -1]), None

    def _choose(self):
        """Next token of every row: penalties, then argmax or a draw from the warped distribution."""
        n = len(self.rows)
        logits, scores = self.logits, self.logits
        proc = self.proc
        if proc.penalizes:
            lengths = self.lengths[:n].unsqueeze(1)
            starts = lengths - torch.tensor([len(r.ids) for r in self.rows], device=lengths.device).unsqueeze(1)
            scores = proc.penalize(logits, self.seqs[:n, : int(lengths.max())], starts, lengths)
        if scores is logits and self.greedy is not None:
            tokens = self.greedy  # computed with the logits, in the C step
        else:
            tokens = scores.argmax(dim=-1)
        if proc.any_sample:
            sampled = proc.sample(scores, [r.generator for r in self.rows], [r.index for r in self.rows])
            tokens = torch.where(proc.sample_rows.squeeze(1), sampled, tokens)
        info = None
        if any(r.logprobs is not None for r in self.rows):
            logprobs = logits.log_softmax(dim=-1)
            k = max(r.config.logprobs or 0 for r in self.rows)
            top = logprobs.topk(k, dim=-1) if k else None
            info = (logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist(),
                    top.values.tolist() if top is not None else None,
                    top.indices.tolist() if top is not None else None)
        return tokens, info

    def _event(self, row: Row) -> StreamEvent | None:
        """The row's news: its text released so far (held back while it might be a stop string's
        start, or half a character), and the tokens and log-probabilities behind it."""
        if row.finish:
            text = row.text.release(row.ids)
            end = len(row.ids)
            if row.text.stop_at is not None:
                end = max(len(ids_before(self.engine.tokenizer, row.ids, row.text.stop_at)), row.sent)
        else:
            text = row.text.release()
            if not text:
                return None
            end = len(row.ids)
        start, row.sent = row.sent, end
        logprobs = row.logprobs[start:end] if row.logprobs is not None else None
        return StreamEvent(row.index, text, row.ids[start:end], row.finish, logprobs)

    def _logprob_entry(self, token: int, info, i: int, k: int) -> dict:
        """The model's log-probability of the chosen token (before penalties and sampling filters),
        with the k most likely alternatives, in the OpenAI shape."""
        chosen, top_values, top_ids = info
        piece = self.engine.tokenizer.decode
        top = []
        if k:
            top = [{"token": piece([t]), "id": t, "logprob": v} for t, v in zip(top_ids[i][:k], top_values[i][:k])]
        return {"token": piece([token]), "id": token, "logprob": chosen[i], "top": top}
