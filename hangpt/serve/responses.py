"""Response bodies and server-sent events in OpenAI's shapes, and its error body."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse

from ..errors import HangptError, InputError


class ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(str(self), self.type, self.param, self.code), status_code=self.status)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(entries: list[dict]) -> dict:
    def one(e):
        return {"token": e["token"], "logprob": e["logprob"], "bytes": list(e["token"].encode("utf-8"))}

    return {"content": [{**one(e), "top_logprobs": [one(t) for t in e.get("top") or []]} for e in entries]}


def completion_logprobs(entries: list[dict], start: int = 0) -> dict:
    """OpenAI's legacy shape; an echoed prompt's first token has no logprob (null) and no alternatives."""
    offsets, pos = [], start
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [None if e["logprob"] is None else {t["token"]: t["logprob"] for t in e.get("top") or []}
                             for e in entries],
            "text_offset": offsets}


def choice(chat: bool, index: int, text: str, logprobs: list[dict] | None, finish: str | None) -> dict:
    """One answer of a whole (non-streamed) response."""
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": text},
                "logprobs": chat_logprobs(logprobs) if logprobs is not None else None, "finish_reason": finish}
    return {"index": index, "text": text,
            "logprobs": completion_logprobs(logprobs) if logprobs is not None else None, "finish_reason": finish}


async def event_stream(events, base: dict, chat: bool, n_choices: int, prompt_tokens: int, include_usage: bool,
                       on_close=None):
    """SSE chunks for (choice, StreamEvent) pairs; a failure ends the stream with an error event and
    `data: [DONE]` (the client learns it, the server goes on). `on_close` runs however the stream ends
    (a disconnected client closes the generator)."""
    extra = {"usage": None} if include_usage else {}
    completion_tokens = 0
    try:
        if chat:
            for i in range(n_choices):
                yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}], **extra})
        async for index, ev in events:
            completion_tokens += len(ev.token_ids)
            if not ev.text and ev.finish_reason is None and not ev.logprobs:
                continue
            if chat:
                piece = {"index": index, "delta": {"content": ev.text} if ev.text else {},
                         "logprobs": chat_logprobs(ev.logprobs) if ev.logprobs else None,
                         "finish_reason": ev.finish_reason}
            else:
                piece = {"index": index, "text": ev.text,
                         "logprobs": completion_logprobs(ev.logprobs) if ev.logprobs else None,
                         "finish_reason": ev.finish_reason}
            yield sse({**base, "choices": [piece], **extra})
        if include_usage:
            yield sse({**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
        yield "data: [DONE]\n\n"
    except (InputError, ApiError) as e:
        yield sse(error_body(str(e)))
        yield "data: [DONE]\n\n"
    except Exception as e:
        message = str(e) if isinstance(e, HangptError) else f"internal error: {type(e).__name__}: {e}"
        yield sse(error_body(message, type="server_error"))
        yield "data: [DONE]\n\n"
    finally:
        if on_close is not None:
            on_close()
