"""From a checked request body to the engine's work: the limits a server sets, the GenerationConfig
a request asks for (a plain function, tested on its own), and the batcher's jobs."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..engine import GenerationConfig
from .batcher import Job
from .responses import ApiError
from .schemas import SETTINGS, SamplingFields


@dataclass(frozen=True)
class Limits:
    """What one served model accepts."""

    context: int  # the model's context length
    vocab_size: int
    max_prompt: int  # tokens
    max_tokens: int  # largest max_tokens a request may ask for
    max_n: int  # answers (n, best_of) per prompt
    max_stop: int = 8


def check_prompts(prompts: list[list[int]], limits: Limits) -> None:
    for ids in prompts:
        if not ids:
            raise ApiError("prompt: is empty", param="prompt")
        bad = [i for i in ids if not 0 <= i < limits.vocab_size]
        if bad:
            raise ApiError(f"prompt: token id {bad[0]} is outside the vocabulary", param="prompt")
        if len(ids) > limits.max_prompt:
            raise ApiError(f"prompt: {len(ids)} tokens is longer than the limit of {limits.max_prompt} tokens "
                           f"(the model's context is {limits.context})", param="messages",
                           code="context_length_exceeded")


def new_tokens(prompts: list[list[int]], max_tokens: int | None, limits: Limits) -> int:
    """max_tokens checked against the limit and the room the longest prompt leaves (None: all of it)."""
    room = limits.context - max(len(ids) for ids in prompts)
    if max_tokens is None:
        return min(room, limits.max_tokens)
    if max_tokens > limits.max_tokens:
        raise ApiError(f"max_tokens: at most {limits.max_tokens}", param="max_tokens")
    if max_tokens > room:
        raise ApiError(f"max_tokens: {max_tokens} new tokens do not fit: the prompt has "
                       f"{limits.context - room} tokens and the model's context is {limits.context}",
                       param="max_tokens", code="context_length_exceeded")
    return max_tokens


def generation_config(body: SamplingFields, limits: Limits, max_new_tokens: int, extra_stops: list[str] = (),
                      logprobs: int | None = None) -> GenerationConfig:
    """The engine settings a request asks for, in OpenAI's meaning (temperature 0 is greedy, top_k -1
    is off, seeds count up over the n answers); refuses what exceeds the limits."""
    n = body.n
    if n > limits.max_n:
        raise ApiError(f"n: at most {limits.max_n} answers per request", param="n")
    if body.best_of is not None and not body.use_beam_search:
        if body.best_of < n:
            raise ApiError("best_of: must be at least n", param="best_of")
        if body.best_of > limits.max_n:
            raise ApiError(f"best_of: at most {limits.max_n}", param="best_of")
        if body.stream and body.best_of > n:
            raise ApiError("best_of: cannot be streamed (the best answers are known only at the end)",
                           param="best_of")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > limits.max_stop:
        raise ApiError(f"stop: at most {limits.max_stop} stop sequences", param="stop")
    if any(not s for s in stops):
        raise ApiError("stop: stop sequences must not be empty", param="stop")
    bias = {}
    for key, value in (body.logit_bias or {}).items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < limits.vocab_size:
            raise ApiError(f"logit_bias: {key!r} is not a token id of this model", param="logit_bias")
        bias[int(key)] = value
    temperature = 1.0 if body.temperature is None else body.temperature
    beam = body.use_beam_search
    given = {name: getattr(body, name) for name in SETTINGS if getattr(body, name) is not None}
    if beam:
        given.pop("valid_utf8", None)  # whole tokens of beams: nothing to mask
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not beam and temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_k=max(body.top_k or 0, 0),
        num_beams=max(n, body.best_of or 4) if beam else 1,
        early_stopping=body.early_stopping,
        num_return_sequences=n if beam else 1,
        stop=stops + [s for s in extra_stops if s not in stops],
        logit_bias=bias,
        logprobs=logprobs,
        seed=body.seed,
        **given,
    )


def sequences_per_prompt(body: SamplingFields, config: GenerationConfig) -> int:
    """Sampled sequences decoded for each prompt: best_of of them when the best n are kept."""
    if config.num_beams > 1:
        return body.n
    return max(body.n, body.best_of or 1) if config.samples else body.n


def jobs_for(prompts: list[list[int]], body: SamplingFields, config: GenerationConfig) -> list[Job]:
    """One job per sequence (its own seed: seed, seed + 1, ...), or one beam-search job per prompt."""
    per_prompt = sequences_per_prompt(body, config)
    jobs = []
    for p, ids in enumerate(prompts):
        first = p * per_prompt
        if config.num_beams > 1:
            jobs.append(Job(ids, config, list(range(first, first + per_prompt))))
            continue
        for j in range(per_prompt):
            seed = None if body.seed is None else body.seed + j
            jobs.append(Job(ids, replace(config, seed=seed), [first + j]))
    return jobs
