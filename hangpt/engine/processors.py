"""Next-token logits processing for a batch whose rows may each have their own settings.

Every control is a few whole-batch tensor ops (per-row values live in (B, 1) tensors), and an
op is skipped when no row uses it, so a plain greedy step costs nothing here. The semantics and
order follow transformers' logits processors: logit bias, repetition penalty, (OpenAI frequency
and presence penalties), no-repeat n-grams; then, for sampling rows only, temperature, top-k,
top-p, min-p. Rows with `valid_utf8` may only take tokens that keep their text valid UTF-8
(Utf8Mask).
"""

from __future__ import annotations

import torch

from .config import GenerationConfig

NEG_INF = float("-inf")


class Processor:
    """Per-row decoding controls. `seqs` given to the methods holds each row's tokens so far, with
    `vocab_size` (an id past the vocabulary) in the padding slots so pads are never penalised."""

    def __init__(self, configs: list[GenerationConfig], vocab_size: int, device="cpu",
                 utf8: "Utf8Mask | None" = None):
        """utf8: the tokenizer's mask tables, needed when a row has valid_utf8."""
        self.V = vocab_size
        self.configs = configs
        self.utf8 = utf8

        def col(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)

        sampling = [c.samples for c in configs]
        self.any_sample = any(sampling)
        self.sample_rows = col(sampling, torch.bool)
        # greedy rows get neutral warper settings, so warping the whole batch leaves them alone
        self.temperature = col([c.temperature if s else 1.0 for c, s in zip(configs, sampling)])
        self.top_k = col([min(c.top_k, vocab_size) if s and c.top_k else vocab_size for c, s in zip(configs, sampling)],
                         torch.long)
        self.top_p = col([c.top_p if s else 1.0 for c, s in zip(configs, sampling)])
        self.min_p = col([c.min_p if s else 0.0 for c, s in zip(configs, sampling)])
        self.rep = col([c.repetition_penalty for c in configs])
        self.freq = col([c.frequency_penalty for c in configs])
        self.pres = col([c.presence_penalty for c in configs])
        self.ngram = [c.no_repeat_ngram_size for c in configs]
        self.utf8_rows = col([c.valid_utf8 for c in configs], torch.bool)
        self.utf8_state = torch.zeros(len(configs), dtype=torch.long, device=device)  # Utf8Mask state per row
        self.bias = None
        if any(c.logit_bias for c in configs):
            self.bias = torch.zeros(len(configs), vocab_size, device=device)
            for r, c in enumerate(configs):
                for token, value in c.logit_bias.items():
                    self.bias[r, token] = value
        self._update_flags()

    def _update_flags(self) -> None:
        self.use_temperature = bool((self.temperature != 1).any())
        self.use_top_k = bool((self.top_k < self.V).any())
        self.use_top_p = bool((self.top_p < 1).any())
        self.use_min_p = bool((self.min_p > 0).any())
        self.use_rep = bool((self.rep != 1).any())
        self.use_freq = bool((self.freq != 0).any() or (self.pres != 0).any())
        self.any_sample = bool(self.sample_rows.any())
        self.use_utf8 = self.utf8 is not None and bool(self.utf8_rows.any())
        self.penalizes = self.bias is not None or self.use_rep or self.use_freq or any(self.ngram) or self.use_utf8

    def select(self, index: torch.Tensor) -> None:
        """Keep these rows (in this order): finished rows leave the batch, beams are reordered."""
        idx = index.tolist()
        self.configs = [self.configs[i] for i in idx]
        self.ngram = [self.ngram[i] for i in idx]
        for name in ("sample_rows", "temperature", "top_k", "top_p", "min_p", "rep", "freq", "pres", "bias",
                     "utf8_rows", "utf8_state"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, index))
        self._update_flags()

    def extend(self, other: "Processor") -> None:
        """Append other's rows after these (rows joining a running batch keep nothing of the others,
        and the rows already here keep their UTF-8 state)."""
        if (self.bias is None) != (other.bias is None):
            for p in (self, other):
                if p.bias is None:
                    p.bias = torch.zeros(len(p.configs), self.V, device=self.utf8_state.device)
        for name in ("sample_rows", "temperature", "top_k", "top_p", "min_p", "rep", "freq", "pres", "bias",
                     "utf8_rows", "utf8_state"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, torch.cat([t, getattr(other, name)]))
        self.configs = self.configs + other.configs
        self.ngram = self.ngram + other.ngram
        self.utf8 = self.utf8 or other.utf8
        self._update_flags()

    def expand(self, n: int) -> "Processor":
        """Each row repeated n times in place (the beams of one prompt)."""
        self.select(torch.arange(len(self.configs)).repeat_interleave(n))
        return self

    # -- penalties: every strategy ----------------------------------------------------------------
    def penalize(self, scores: torch.Tensor, seqs: torch.Tensor, gen_start: int | torch.Tensor,
                 ends: torch.Tensor | None = None) -> torch.Tensor:
        """scores (B, V); seqs (B, cur) with the prompt then the generated tokens, which start at
        column gen_start (an int for all rows, or (B, 1) per row). Rows end at column cur (left
        padding), or each at its own column ends (B, 1), padded with V after it."""
        if self.bias is not None:
            scores = scores + self.bias
        if self.use_rep:
            seen = torch.zeros(scores.shape[0], self.V + 1, dtype=torch.bool, device=scores.device)
            seen.scatter_(1, seqs, True)
            seen = seen[:, : self.V] & (self.rep != 1)
            penalized = torch.where(scores < 0, scores * self.rep, scores / self.rep)
            scores = torch.where(seen, penalized, scores)
        if self.use_freq:
            gen = seqs.masked_fill(torch.arange(seqs.shape[1], device=seqs.device) < gen_start, self.V)
            counts = torch.zeros(scores.shape[0], self.V + 1, device=scores.device)
            counts.scatter_add_(1, gen, torch.ones_like(gen, dtype=counts.dtype))
            counts = counts[:, : self.V]
            scores = scores - self.freq * counts - self.pres * (counts > 0).to(scores.dtype)
        if any(self.ngram):
            scores = self._ban_ngrams(scores, seqs, ends)
        if self.use_utf8:
            scores = scores.masked_fill(self.utf8.banned[self.utf8_state] & self.utf8_rows, NEG_INF)
        return scores

    def advance(self, tokens: torch.Tensor) -> None:
        """Record the chosen tokens (B,): the UTF-8 state of each row moves on."""
        if self.use_utf8:
            self.utf8_state = self.utf8.next_state[self.utf8_state, tokens]

    def _ban_ngrams(self, scores: torch.Tensor, seqs: torch.Tensor, ends: torch.Tensor | None) -> torch.Tensor:
        """transformers' NoRepeatNGramLogitsProcessor: a token that would complete an n-gram already
        in the row (prompt included) is banned."""
        cur = seqs.shape[1]
        banned = torch.zeros(scores.shape[0], self.V + 1, dtype=torch.bool, device=scores.device)
        for n in set(self.ngram) - {0}:
            if cur < n:
                continue
            rows = torch.tensor([i for i, m in enumerate(self.ngram) if m == n], device=scores.device)
            ids = seqs.index_select(0, rows)
            windows = ids.unfold(1, n, 1)
            if ends is None:
                prefix = ids[:, cur + 1 - n :]
            else:  # the last n - 1 tokens of each row (a row shorter than that matches no window)
                last = ends.index_select(0, rows) - n + 1 + torch.arange(n - 1, device=scores.device)
                prefix = ids.gather(1, last.clamp(min=0))
            matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
            # pad slots hold V already; non-matching windows point at the spare column V too
            hit = torch.zeros(len(rows), self.V + 1, dtype=torch.bool, device=scores.device)
            hit.scatter_(1, torch.where(matches, windows[..., -1], self.V), True)
            banned[rows] |= hit
        return scores.masked_fill(banned[:, : self.V], NEG_INF)

    # -- sampling filters ---------------------------------------------------------------------------
    def candidates(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Temperature, top-k, top-p, min-p, exactly as transformers' warpers (min_tokens_to_keep=1).

        Returns (values, ids): the warped scores of candidate tokens, in ascending order, -inf where
        removed, with their token ids; ids is None when the values are the whole vocabulary in order.
        When every row has a top-k, only the k best are ever looked at (no full sort of the vocabulary).
        """
        if self.use_temperature:
            scores = scores / self.temperature
        ids = None
        if self.use_top_k or self.use_top_p:
            if bool((self.top_k < self.V).all()):
                values, ids = scores.topk(int(self.top_k.max()), dim=-1)
                values, ids = values.flip(1), ids.flip(1)
            else:
                values, ids = torch.sort(scores, descending=False)
            if self.use_top_k:
                kth = values.gather(1, values.shape[1] - self.top_k)
                values = values.masked_fill(values < kth, NEG_INF)
            if self.use_top_p:
                cumulative = values.softmax(dim=-1).cumsum(dim=-1)
                remove = cumulative <= (1 - self.top_p)
                remove[:, -1] = False
                values = values.masked_fill(remove, NEG_INF)
            scores = values
        if self.use_min_p:
            probs = scores.softmax(dim=-1)
            remove = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
            remove.scatter_(1, probs.argmax(dim=-1, keepdim=True), False)
            scores = scores.masked_fill(remove, NEG_INF)
        return scores, ids

    def sample(self, scores: torch.Tensor, generators: list[torch.Generator | None], order: list) -> torch.Tensor:
        """A draw for every row from its warped distribution: the exponential race, argmax of
        p / noise. Each generator draws the noise of its sampling rows in one call (rows sorted by
        `order`), as wide and laid out as each row would have it alone (its top-k candidates, or the
        whole vocabulary sorted or in order), so a row draws the same tokens whatever shares its batch."""
        values, ids = self.candidates(scores)
        probs = values.softmax(dim=-1)
        noise = torch.ones_like(probs)
        groups: dict[int, list[int]] = {}
        for i in sorted(range(len(generators)), key=lambda i: order[i]):
            if self.configs[i].samples:
                groups.setdefault(id(generators[i]), []).append(i)
        for members in groups.values():
            first = members[0]
            width = int(self.top_k[first])  # V when the row has no top-k
            draw = torch.empty(len(members), width, device=probs.device).exponential_(generator=generators[first])
            rows = torch.tensor(members, device=probs.device)
            if ids is not None and width == self.V and float(self.top_p[first]) == 1:  # alone: vocabulary order
                draw = draw.gather(1, ids.index_select(0, rows))
            noise[rows, probs.shape[1] - width :] = draw
        sampled = (probs / noise).argmax(dim=-1, keepdim=True)
        return (ids.gather(1, sampled) if ids is not None else sampled).squeeze(1)

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        """The warped scores over the whole vocabulary (-inf where removed)."""
        values, ids = self.candidates(scores)
        if ids is None:
            return values
        return torch.full_like(scores, NEG_INF).scatter(1, ids, values)


class Utf8Mask:
    """Which tokens keep a byte-level text valid UTF-8, from each state of an unfinished character.

    A state is (continuation bytes still due, the range the next byte must be in): 8 of them, state
    0 being "between characters". For every state and token, `banned` says whether the token's
    bytes break the sequence and `next_state` where they leave it; decoding then costs one gather
    and one masked_fill per step. A token that ends the text (EOS, any added token) is allowed only
    between characters, so the final text never ends in half a character either.
    """

    def __init__(self, token_bytes: list[bytes], end_tokens: set[int], device="cpu"):
        states = [(0, 0, 0)]
        index = {states[0]: 0}
        banned, nexts = [], []
        s = 0
        while s < len(states):  # breadth-first over the states reachable from "between characters"
            row_banned, row_next = [], []
            for t, data in enumerate(token_bytes):
                end = _utf8_walk(states[s], data)
                ok = end is not None and not (t in end_tokens and s != 0)
                if ok and end not in index:
                    index[end] = len(states)
                    states.append(end)
                row_banned.append(not ok)
                row_next.append(index[end] if ok else s)
            banned.append(row_banned)
            nexts.append(row_next)
            s += 1
        self.banned = torch.tensor(banned, dtype=torch.bool, device=device)  # (states, V)
        self.next_state = torch.tensor(nexts, dtype=torch.long, device=device)


def _utf8_walk(state: tuple[int, int, int], data: bytes) -> tuple[int, int, int] | None:
    """The state after `data`, or None where a byte breaks UTF-8 (RFC 3629: no overlong forms, no
    surrogates, nothing above U+10FFFF)."""
    need, lo, hi = state
    for b in data:
        if need:
            if not lo <= b <= hi:
                return None
            need, lo, hi = need - 1, 0x80, 0xBF
        elif b < 0x80:
            continue
        elif 0xC2 <= b <= 0xDF:
            need, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= b <= 0xEF:
            need, lo, hi = 2, 0xA0 if b == 0xE0 else 0x80, 0x9F if b == 0xED else 0xBF
        elif 0xF0 <= b <= 0xF4:
            need, lo, hi = 3, 0x90 if b == 0xF0 else 0x80, 0x8F if b == 0xF4 else 0xBF
        else:
            return None
    return (need, lo, hi) if need else (0, 0, 0)
