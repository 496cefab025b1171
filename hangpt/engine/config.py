"""Decoding settings and results, named as `transformers.generate` and the OpenAI API name them, so
flags, API fields and the reference implementation line up one to one."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..errors import InputError


def setting(default, help: str, *, api: dict | None = None, factory=None):
    """A GenerationConfig field with its help text, the one definition the CLI flags (cli/options.py)
    and the server's request fields (serve/schemas.py) are generated from. api: the bounds of the
    OpenAI/vLLM request field of the same name and meaning (pydantic Field keywords); None when the
    request spells the setting differently or not at all."""
    meta = {"help": help, "api": api}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class GenerationConfig:
    max_new_tokens: int = setting(64, "Tokens to generate at most [64].")
    do_sample: bool = setting(False, "Sample (with the filters below) instead of greedy/beam decoding.")
    temperature: float = setting(1.0, "Sampling temperature [1.0].")  # with do_sample, 0 means greedy (OpenAI)
    top_k: int = setting(0, "Sample among the k most likely tokens (0 = off).")
    top_p: float = setting(1.0, "Nucleus sampling: smallest set with this much probability.", api={"gt": 0, "le": 1})
    min_p: float = setting(0.0, "Drop tokens below min-p x the top token's probability.", api={"ge": 0, "le": 1})
    repetition_penalty: float = setting(1.0, "transformers' penalty on seen tokens (1 = off).", api={"gt": 0})
    frequency_penalty: float = setting(0.0, "OpenAI: subtract this x count of each generated token.",
                                       api={"ge": -2, "le": 2})
    presence_penalty: float = setting(0.0, "OpenAI: subtract this from every generated token.", api={"ge": -2, "le": 2})
    no_repeat_ngram_size: int = setting(0, "Never repeat an n-gram of this size.", api={"ge": 0})
    num_beams: int = setting(1, "Beam search with this many beams (1 = off).")
    length_penalty: float = setting(1.0, "Beam score = logprob / length ** this [1.0].", api={})
    early_stopping: bool | str = setting(False, "Beam search stopping rule, as in transformers.")  # True, False, "never"
    num_return_sequences: int = setting(1, "Sequences per prompt.")
    eos_token_id: int | list[int] | None = setting(None, "Stop at this token id (repeatable; default: the model's).")
    stop: list[str] = setting(None, "Stop string, not included in the output (repeatable).", factory=list)
    logit_bias: dict[int, float] = setting(None, "ID=BIAS added to a token's logit (repeatable).", factory=dict)
    logprobs: int | None = setting(None, "Report each token's logprob and the N most likely alternatives.")
    seed: int | None = setting(None, "Random seed (sampling repeats exactly).")
    valid_utf8: bool = setting(False, "Only tokens that keep the text valid UTF-8 (no half-written characters).",
                               api={})

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationConfig":
        """Known keys of a dict (e.g. generation_config.json); the rest is ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})

    @property
    def samples(self) -> bool:
        return self.do_sample and self.temperature > 0

    def eos_ids(self, default: int | None) -> list[int]:
        eos = default if self.eos_token_id is None else self.eos_token_id
        if eos is None:
            return []
        return [eos] if isinstance(eos, int) else list(eos)

    def validate(self) -> None:
        """Raise InputError naming the first bad field."""
        def bad(name, why):
            raise InputError(f"{name}={getattr(self, name)!r}: {why}")

        def number(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, "must be a finite number")
            return v

        for name in ("max_new_tokens", "top_k", "no_repeat_ngram_size", "num_beams", "num_return_sequences"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                bad(name, "must be an integer")
        if self.max_new_tokens < 1:
            bad("max_new_tokens", "must be at least 1")
        if number("temperature") < 0:
            bad("temperature", "must be >= 0")
        if self.top_k < 0:
            bad("top_k", "must be >= 0 (0 turns it off)")
        if not 0 < number("top_p") <= 1:
            bad("top_p", "must be in (0, 1]")
        if not 0 <= number("min_p") <= 1:
            bad("min_p", "must be in [0, 1]")
        if number("repetition_penalty") <= 0:
            bad("repetition_penalty", "must be > 0 (1 turns it off)")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= number(name) <= 2:
                bad(name, "must be in [-2, 2]")
        if self.no_repeat_ngram_size < 0:
            bad("no_repeat_ngram_size", "must be >= 0 (0 turns it off)")
        if self.num_beams < 1:
            bad("num_beams", "must be at least 1")
        number("length_penalty")
        if self.early_stopping not in (True, False, "never"):
            bad("early_stopping", "must be true, false or 'never'")
        if self.num_return_sequences < 1:
            bad("num_return_sequences", "must be at least 1")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            bad("num_return_sequences", f"cannot exceed num_beams ({self.num_beams})")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            bad("num_return_sequences", "greedy decoding gives one sequence: set do_sample or num_beams")
        eos = [] if self.eos_token_id is None else self.eos_ids(None)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in eos):
            bad("eos_token_id", "must be a token id or a list of token ids")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must be a list of non-empty strings")
        for k, v in self.logit_bias.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise InputError(f"logit_bias: key {k!r} is not a token id")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100 <= v <= 100:
                raise InputError(f"logit_bias[{k}]={v!r}: must be a number in [-100, 100]")
        if self.logprobs is not None:
            if isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20:
                bad("logprobs", "must be an integer in [0, 20]")
            if self.num_beams > 1:
                bad("logprobs", "is not available with beam search")
        if not isinstance(self.valid_utf8, bool):
            bad("valid_utf8", "must be true or false")
        if self.valid_utf8 and self.num_beams > 1:
            bad("valid_utf8", "is not available with beam search")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            bad("seed", "must be an integer")


@dataclass
class Completion:
    text: str  # decoded new tokens (stop string and eos removed)
    token_ids: list[int]  # new tokens only (eos not included)
    finish_reason: str  # "stop" (eos or stop string) or "length"
    logprobs: list[dict] | None = None  # per token: {"token", "id", "logprob", "top": [{"token", "id", "logprob"}]}


@dataclass
class StreamEvent:
    index: int  # which row: requests in order, a request with n sequences taking n consecutive rows
    text: str  # new text since the last event of this row (held back while it may start a stop string)
    token_ids: list[int]
    finish_reason: str | None = None  # set on the last event of this row
    logprobs: list[dict] | None = None
