"""Request bodies: OpenAI's field names plus vLLM's extras, checked by pydantic so anything wrong is a
400 naming the field before a request reaches the batch."""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from ..engine.config import GenerationConfig


def _lone_surrogate(value, path: str = "") -> str | None:
    """The path of the first string holding a lone UTF-16 surrogate (JSON allows "\\ud800", UTF-8 does not)."""
    if isinstance(value, str):
        return path or "body" if any("\ud800" <= c <= "\udfff" for c in value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _lone_surrogate(key, path) or _lone_surrogate(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


class Body(BaseModel):
    """A request body: text anywhere in it must be valid Unicode (it is tokenized and stored as UTF-8)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data):
        path = _lone_surrogate(data)
        if path:
            raise ValueError(f"{path}: contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode text")
        return data


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(Body):
    """The fields the server spells its own way; the rest of SamplingFields comes from GenerationConfig."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    stop: str | list[str] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    seed: Annotated[int, Field(ge=-2**63, le=2**63 - 1)] | None = None  # vLLM's range: seed + n fits a generator
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM extras
    top_k: Annotated[int, Field(ge=-1)] | None = None
    use_beam_search: bool = False
    best_of: Annotated[int, Field(ge=1)] | None = None
    early_stopping: bool = False


# GenerationConfig's fields that requests name and mean the same way (top_p, penalties, vLLM's
# min_p, ..., hangpt's valid_utf8), with the bounds and help of their one definition; unset = its default
SETTINGS = {f.name: f for f in fields(GenerationConfig) if f.metadata["api"] is not None}
SamplingFields = create_model("SamplingFields", __base__=_Sampling, **{
    name: (Annotated[{"int": int, "float": float, "bool": bool}[f.type], Field(**f.metadata["api"])] | None,
           Field(None, description=f.metadata["help"]))
    for name, f in SETTINGS.items()})


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1)] | Annotated[list[int], Field(min_length=1)] \
        | Annotated[list[list[int]], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=0)] | None = None  # 0 with echo: score the prompt only
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    suffix: str | None = None


class FeedbackRequest(Body):
    prompt: str
    system: str = ""
    answers: list[str]
    ranking: list[int]  # rank of each answer, lower = better
    params: dict = Field(default_factory=dict)


class AttentionRequest(Body):
    text: Annotated[str, Field(min_length=1, max_length=4000)]
