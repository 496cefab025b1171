"""The HTTP server: OpenAI-compatible API (what the `openai` package and other clients speak),
the playground page, ranking collection and attention maps.

Requests are validated by pydantic models with OpenAI's field names (plus vLLM's extras); anything
wrong comes back as 400 with OpenAI's error body, never as a 500. Generation goes through the
Batcher, so concurrent requests share one decoding batch: a request is checked completely before it
joins one, and a stream that fails ends with an error event and `data: [DONE]`.

Only the Host names the server is bound to (and --allowed-host ones) are answered, so a web page
cannot reach a local server through DNS rebinding.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import Engine, GenerationConfig
from ..errors import HangptError, InputError
from ..templates import template_for
from .batcher import Batcher, Job
from .feedback import FeedbackStore

STATIC = Path(__file__).parent / "static"


@dataclass
class ServerSettings:
    model_name: str = "hangpt"
    api_key: str | None = None
    feedback_db: Path | None = None
    max_batch_size: int = 16
    max_tokens_limit: int = 256  # largest max_tokens a request may ask for
    max_n: int = 8
    max_prompt_tokens: int | None = None  # None: the model's context minus one
    max_body_bytes: int = 1_000_000
    max_stop: int = 8
    max_answer_chars: int = 20_000  # longest answer text in a /feedback ranking
    # Host header names answered ("*" any); None: the loopback names (see allowed_hosts_for)
    allowed_hosts: list[str] | None = None


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


# -- request bodies (OpenAI names; vLLM's extras) -------------------------------------------------


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


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingFields(Body):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    stop: str | list[str] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    seed: Annotated[int, Field(ge=-2**63, le=2**63 - 1)] | None = None  # vLLM's range: seed + n fits a generator
    stream: bool = False
    stream_options: "StreamOptions | None" = None
    user: str | None = None
    # vLLM extras
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Probability | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    no_repeat_ngram_size: Annotated[int, Field(ge=0)] | None = None
    use_beam_search: bool = False
    best_of: Annotated[int, Field(ge=1)] | None = None
    length_penalty: float = 1.0
    early_stopping: bool = False
    # hangpt: only tokens that keep the text valid UTF-8 (no U+FFFD from half-written characters)
    valid_utf8: bool = False


class StreamOptions(BaseModel):
    include_usage: bool = False


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


# -- the app -----------------------------------------------------------------------------------


def create_app(checkpoint, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `checkpoint` (a loaded hangpt Checkpoint)."""
    settings = settings or ServerSettings()
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    context = model.config.context_length
    max_prompt = settings.max_prompt_tokens or context - 1
    template = template_for(checkpoint.meta, tokenizer)
    chat_stops = template.stop_strings(tokenizer)
    engine = Engine(model, tokenizer)
    batcher = Batcher(engine, settings.max_batch_size)
    store = FeedbackStore(settings.feedback_db) if settings.feedback_db else None

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.close()

    app = FastAPI(title="hangpt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    # -- errors: always OpenAI's shape ------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        err = exc.errors()[0]
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = err.get("msg", "invalid request").removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            msg, param = "the request body is not valid JSON", None
        return ApiError(f"{param}: {msg}" if param else msg, param=param).response()

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return exc.response()

    @app.exception_handler(InputError)
    async def _input_error(request, exc: InputError):
        return ApiError(str(exc)).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return ApiError(str(exc.detail), status=exc.status_code,
                        type="not_found_error" if exc.status_code == 404 else "invalid_request_error").response()

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        return ApiError(f"internal error: {type(exc).__name__}: {exc}", status=500, type="server_error").response()

    hosts = settings.allowed_hosts or allowed_hosts_for("127.0.0.1")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if not host_allowed(request.headers.get("host", ""), hosts):
            return ApiError("invalid Host header: this server answers only the names it is bound to "
                            "(start it with --allowed-host NAME to add one)", code="invalid_host").response()
        path = request.url.path
        if settings.api_key and (path.startswith("/v1/") or path.startswith(("/feedback", "/inspect"))):
            if request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
                return ApiError("invalid or missing API key (send `Authorization: Bearer KEY`)", status=401,
                                code="invalid_api_key").response()
        return await call_next(request)

    # -- API --------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "running": batcher.running,
                "waiting": batcher.waiting, "dropped": batcher.dropped, "batches": batcher.batches, "largest_batch": batcher.largest_batch}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model_card(name: str):
        _check_model(name)
        return _model_card()

    def _model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": int(time.time()), "owned_by": "hangpt",
                "max_model_len": context}

    def _check_model(name: str | None) -> None:
        if name and name != settings.model_name:
            raise ApiError(f"the model {name!r} does not exist; this server serves {settings.model_name!r}",
                           status=404, param="model", code="model_not_found")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        _check_model(body.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        prompt = template.encode_prompt(tokenizer, messages)
        top = (body.top_logprobs or 0) if body.logprobs else None
        if body.top_logprobs and not body.logprobs:
            raise ApiError("top_logprobs: needs logprobs=true", param="top_logprobs")
        max_tokens = body.max_completion_tokens or body.max_tokens
        jobs, config = _jobs([prompt], body, max_tokens, chat_stops, top)
        return await _respond(request, body, jobs, [prompt], config, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        _check_model(body.model)
        if body.echo or body.suffix:
            raise ApiError(f"{'echo' if body.echo else 'suffix'}: not supported by this server",
                           param="echo" if body.echo else "suffix")
        p = body.prompt
        if isinstance(p, str):
            prompts = [tokenizer.encode(p) or [model.config.bos_token_id]]  # "" samples unconditionally
        elif isinstance(p[0], str):
            prompts = [tokenizer.encode(s) for s in p]
        elif isinstance(p[0], int):
            prompts = [list(p)]
        else:
            prompts = [list(x) for x in p]
        for ids in prompts:
            bad = [i for i in ids if not 0 <= i < model.config.vocab_size]
            if bad:
                raise ApiError(f"prompt: token id {bad[0]} is outside the vocabulary", param="prompt")
        jobs, config = _jobs(prompts, body, body.max_tokens or 16, [], body.logprobs)
        return await _respond(request, body, jobs, prompts, config, chat=False)

    def _jobs(prompts, body: SamplingFields, max_tokens, extra_stops, logprobs):
        """Check limits and turn the request into engine jobs (one per sequence; a beam job per prompt)."""
        if body.n > settings.max_n:
            raise ApiError(f"n: at most {settings.max_n} answers per request", param="n")
        for ids in prompts:
            if not ids:
                raise ApiError("prompt: is empty", param="prompt")
            if len(ids) > max_prompt:
                raise ApiError(f"prompt: {len(ids)} tokens is longer than the limit of {max_prompt} tokens "
                               f"(the model's context is {context})", param="messages", code="context_length_exceeded")
        room = context - max(len(ids) for ids in prompts)
        if max_tokens is None:
            max_tokens = min(room, settings.max_tokens_limit)
        elif max_tokens > settings.max_tokens_limit:
            raise ApiError(f"max_tokens: at most {settings.max_tokens_limit}", param="max_tokens")
        elif max_tokens > room:
            raise ApiError(f"max_tokens: {max_tokens} new tokens do not fit: the prompt has "
                           f"{context - room} tokens and the model's context is {context}",
                           param="max_tokens", code="context_length_exceeded")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > settings.max_stop:
            raise ApiError(f"stop: at most {settings.max_stop} stop sequences", param="stop")
        if any(not s for s in stops):
            raise ApiError("stop: stop sequences must not be empty", param="stop")
        bias = {}
        for key, value in (body.logit_bias or {}).items():
            if not key.lstrip("-").isdigit() or not 0 <= int(key) < model.config.vocab_size:
                raise ApiError(f"logit_bias: {key!r} is not a token id of this model", param="logit_bias")
            bias[int(key)] = value
        temperature = 1.0 if body.temperature is None else body.temperature
        beam = body.use_beam_search
        config = GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=not beam and temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_k=max(body.top_k or 0, 0),
            top_p=1.0 if body.top_p is None else body.top_p,
            min_p=body.min_p or 0.0,
            repetition_penalty=body.repetition_penalty or 1.0,
            frequency_penalty=body.frequency_penalty,
            presence_penalty=body.presence_penalty,
            no_repeat_ngram_size=body.no_repeat_ngram_size or 0,
            num_beams=max(body.n, body.best_of or 4) if beam else 1,
            length_penalty=body.length_penalty,
            early_stopping=body.early_stopping,
            num_return_sequences=body.n if beam else 1,
            stop=stops + [s for s in extra_stops if s not in stops],
            logit_bias=bias,
            logprobs=logprobs,
            seed=body.seed,
            valid_utf8=body.valid_utf8 and not beam,
        )
        engine.check(config)
        jobs = []
        for p, ids in enumerate(prompts):
            if beam:
                jobs.append(Job(ids, config, [p * body.n + j for j in range(body.n)]))
                continue
            for j in range(body.n):
                seed = None if body.seed is None else body.seed + j
                jobs.append(Job(ids, _replace(config, seed=seed), [p * body.n + j]))
        return jobs, config

    async def _respond(request: Request, body, jobs, prompts, config, chat: bool):
        n_choices = sum(len(j.choices) for j in jobs)
        usage_prompt = sum(len(p) for p in prompts)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        ticket = batcher.submit(jobs)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _stream(ticket, rid, created, chat, n_choices, usage_prompt, include_usage),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        texts = [""] * n_choices
        tokens = [0] * n_choices
        logprobs: list[list] = [[] for _ in range(n_choices)]
        finish: list[str | None] = [None] * n_choices
        try:
            async for choice, ev in _watch(ticket, request):
                texts[choice] += ev.text
                tokens[choice] += len(ev.token_ids)
                logprobs[choice] += ev.logprobs or []
                finish[choice] = ev.finish_reason or finish[choice]
        finally:
            ticket.cancel()
        want_lp = config.logprobs is not None
        choices = []
        for i in range(n_choices):
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": texts[i]},
                                "logprobs": _chat_logprobs(logprobs[i]) if want_lp else None,
                                "finish_reason": finish[i]})
            else:
                choices.append({"index": i, "text": texts[i],
                                "logprobs": _completion_logprobs(logprobs[i]) if want_lp else None,
                                "finish_reason": finish[i]})
        return {
            "id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": settings.model_name, "choices": choices,
            "usage": _usage(usage_prompt, sum(tokens)),
        }

    async def _watch(ticket, request: Request):
        """The ticket's events; stops (and frees the rows) as soon as the client disconnects."""
        import asyncio

        async def client_gone():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        gone = asyncio.ensure_future(client_gone())
        events = ticket.events().__aiter__()
        try:
            while True:
                step = asyncio.ensure_future(events.__anext__())
                await asyncio.wait([step, gone], return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    ticket.cancel()
                    return
                try:
                    yield step.result()
                except StopAsyncIteration:
                    return
        finally:
            gone.cancel()

    async def _stream(ticket, rid, created, chat, n_choices, usage_prompt, include_usage):
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": rid, "object": obj, "created": created, "model": settings.model_name}
        extra = {"usage": None} if include_usage else {}
        completion_tokens = 0
        try:
            if chat:
                for i in range(n_choices):
                    yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                     "logprobs": None, "finish_reason": None}], **extra})
            async for choice, ev in ticket.events():
                completion_tokens += len(ev.token_ids)
                if not ev.text and ev.finish_reason is None and not ev.logprobs:
                    continue
                if chat:
                    piece = {"index": choice, "delta": {"content": ev.text} if ev.text else {},
                             "logprobs": _chat_logprobs(ev.logprobs) if ev.logprobs else None,
                             "finish_reason": ev.finish_reason}
                else:
                    piece = {"index": choice, "text": ev.text,
                             "logprobs": _completion_logprobs(ev.logprobs) if ev.logprobs else None,
                             "finish_reason": ev.finish_reason}
                yield _sse({**base, "choices": [piece], **extra})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(usage_prompt, completion_tokens)})
            yield "data: [DONE]\n\n"
        except (InputError, ApiError) as e:
            yield _sse(error_body(str(e)))
            yield "data: [DONE]\n\n"
        except Exception as e:  # a failure of this request's rows: the client learns it, the server goes on
            message = str(e) if isinstance(e, HangptError) else f"internal error: {type(e).__name__}: {e}"
            yield _sse(error_body(message, type="server_error"))
            yield "data: [DONE]\n\n"
        finally:
            ticket.cancel()  # a disconnected client (generator closed) frees its rows

    # -- playground -------------------------------------------------------------------------
    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/playground/config")
    async def playground_config():
        return {"model": settings.model_name, "context": context, "max_tokens_limit": settings.max_tokens_limit,
                "max_n": settings.max_n, "api_key_required": bool(settings.api_key),
                "template": template.name, "default_system": template.default_system,
                "n_layer": model.config.num_layers, "n_head": model.config.num_heads,
                "feedback": store is not None}

    @app.post("/feedback")
    def feedback(body: FeedbackRequest):
        if store is None:
            raise ApiError("this server was started without a feedback database", status=404)
        if len(body.answers) > settings.max_n:  # the playground ranks at most n = max_n answers
            raise ApiError(f"answers: at most {settings.max_n} answers per ranking", param="answers")
        long = next((i for i, a in enumerate(body.answers) if len(a) > settings.max_answer_chars), None)
        if long is not None:
            raise ApiError(f"answers.{long}: longer than {settings.max_answer_chars} characters", param="answers")
        rid = store.add(body.prompt, body.answers, body.ranking, system=body.system,
                        model=settings.model_name, params=body.params)
        return {"id": rid, "saved": True}

    @app.post("/inspect/attention")
    def attention(body: AttentionRequest):
        from ..inspect import attention_json, inspect_text

        found = inspect_text(model, tokenizer, body.text, top_k=5)
        return {**attention_json(found), "top_next": found.top_next}

    return app


# -- helpers ------------------------------------------------------------------------------------

LOOPBACK = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = "0.0.0.0"  # in allowed_hosts: any IP address as Host (a rebinding page always sends a name)


def allowed_hosts_for(bind: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Host names a server bound to `bind` answers: the loopback names for a loopback address, any
    IP address on 0.0.0.0 or ::, else the address itself; plus `extra` ("*" answers any)."""
    if bind in LOOPBACK or bind.startswith("127."):
        names = [*LOOPBACK, bind]
    elif bind in ("0.0.0.0", "::", ""):
        names = [*LOOPBACK, ANY_ADDRESS]
    else:
        names = [bind]
    return names + [h.lower() for h in extra]


def host_allowed(header: str, allowed: list[str]) -> bool:
    import ipaddress
    from urllib.parse import urlsplit

    if "*" in allowed:
        return True
    try:
        name = urlsplit(f"//{header}").hostname or ""
    except ValueError:  # a malformed port or bracket
        return False
    if name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return ANY_ADDRESS in allowed


def _replace(config: GenerationConfig, **changes) -> GenerationConfig:
    from dataclasses import replace

    return replace(config, **changes)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _chat_logprobs(entries: list[dict]) -> dict:
    def one(e):
        return {"token": e["token"], "logprob": e["logprob"], "bytes": list(e["token"].encode("utf-8"))}

    return {"content": [{**one(e), "top_logprobs": [one(t) for t in e.get("top") or []]} for e in entries]}


def _completion_logprobs(entries: list[dict]) -> dict:
    offsets, pos = [], 0
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top") or []} for e in entries],
            "text_offset": offsets}


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not Content-Length is sent:
    the body is read (up to the limit) before the app sees it, then replayed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(send)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: disconnect notices

        await self.app(scope, replay, send)

    async def _refuse(self, send):
        body = json.dumps(error_body(f"the request body is larger than {self.limit} bytes",
                                     code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


SamplingFields.model_rebuild()
