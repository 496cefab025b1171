"""The HTTP server: OpenAI-compatible API (what the `openai` package and other clients speak),
the playground page, ranking collection and attention maps.

The parts: schemas.py (request bodies), params.py (a request -> GenerationConfig and jobs),
responses.py (response bodies, SSE, errors), middleware.py (body limit, Host check, API key, error
handlers), batcher.py (one decoding batch per model shared by concurrent requests). A request is
checked completely before it joins a batch, and a stream that fails ends with an error event and
`data: [DONE]`.

Several models can be served at once; the request's `model` field picks one (the first by default).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ..engine import Engine
from ..templates import template_for
from .batcher import Batcher
from .feedback import FeedbackStore
from .middleware import allowed_hosts_for, host_allowed, install  # noqa: F401  (re-exported for the CLI)
from .params import Limits, check_prompts, generation_config, jobs_for, new_tokens
from .responses import ApiError, choice, completion_logprobs, event_stream, usage
from .schemas import AttentionRequest, ChatRequest, CompletionRequest, FeedbackRequest, SamplingFields
from .scoring import prompt_logprobs

STATIC = Path(__file__).parent / "static"


@dataclass
class ServerSettings:
    model_name: str = "hangpt"  # the id of a single served model
    api_key: str | None = None
    feedback_db: Path | None = None
    max_batch_size: int = 16
    batching: str = "continuous"  # or "static" (batcher.py)
    max_tokens_limit: int = 256  # largest max_tokens a request may ask for
    max_n: int = 8
    max_prompt_tokens: int | None = None  # None: the model's context minus one
    max_body_bytes: int = 1_000_000
    max_stop: int = 8
    max_answer_chars: int = 20_000  # longest answer text in a /feedback ranking
    max_ranked: int = 16  # answers in one /feedback ranking
    # Host header names answered ("*" any); None: the loopback names (see allowed_hosts_for)
    allowed_hosts: list[str] | None = None


class Served:
    """One model with its tokenizer, chat template, limits and batch."""

    def __init__(self, name: str, checkpoint, settings: ServerSettings):
        self.name, self.model, self.tokenizer = name, checkpoint.model, checkpoint.tokenizer
        context = self.model.config.context_length
        self.limits = Limits(context, self.model.config.vocab_size, settings.max_prompt_tokens or context - 1,
                             settings.max_tokens_limit, settings.max_n, settings.max_stop)
        self.template = template_for(checkpoint.meta, self.tokenizer)
        self.chat_stops = self.template.stop_strings(self.tokenizer)
        self.engine = Engine(self.model, self.tokenizer)
        self.batcher = Batcher(self.engine, settings.max_batch_size, settings.batching)

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": int(time.time()), "owned_by": "hangpt",
                "max_model_len": self.limits.context}


def create_app(checkpoints, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving loaded hangpt Checkpoints: one, or {name: checkpoint} for several."""
    settings = settings or ServerSettings()
    if not isinstance(checkpoints, dict):
        checkpoints = {settings.model_name: checkpoints}
    served = {name: Served(name, ckpt, settings) for name, ckpt in checkpoints.items()}
    default = next(iter(served.values()))
    store = FeedbackStore(settings.feedback_db) if settings.feedback_db else None

    @asynccontextmanager
    async def lifespan(app):
        for s in served.values():
            s.batcher.start()
        yield
        for s in served.values():
            s.batcher.close()

    app = FastAPI(title="hangpt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.served = served
    install(app, settings.allowed_hosts or allowed_hosts_for("127.0.0.1"), settings.api_key, settings.max_body_bytes)

    def pick(name: str | None) -> Served:
        if not name:
            return default
        if name not in served:
            raise ApiError(f"the model {name!r} does not exist; this server serves {', '.join(map(repr, served))}",
                           status=404, param="model", code="model_not_found")
        return served[name]

    # -- API --------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        batchers = [s.batcher for s in served.values()]
        return {"status": "ok", "model": default.name, "models": list(served),
                **{key: sum(getattr(b, key) for b in batchers)
                   for key in ("running", "waiting", "dropped", "batches")},
                "largest_batch": max(b.largest_batch for b in batchers)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [s.card() for s in served.values()]}

    @app.get("/v1/models/{name:path}")
    async def model_card(name: str):
        return pick(name).card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        s = pick(body.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        prompt = s.template.encode_prompt(s.tokenizer, messages)
        if body.top_logprobs and not body.logprobs:
            raise ApiError("top_logprobs: needs logprobs=true", param="top_logprobs")
        top = (body.top_logprobs or 0) if body.logprobs else None
        check_prompts([prompt], s.limits)
        max_tokens = new_tokens([prompt], body.max_completion_tokens or body.max_tokens, s.limits)
        return await _respond(s, request, body, [prompt], generation_config(body, s.limits, max_tokens, s.chat_stops, top),
                              chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        s = pick(body.model)
        if body.suffix:
            raise ApiError("suffix: not supported by this server", param="suffix")
        if body.echo and body.stream:
            raise ApiError("echo: not available with stream", param="echo")
        if body.max_tokens == 0 and not body.echo:
            raise ApiError("max_tokens: must be at least 1 (0 only with echo, to score the prompt)",
                           param="max_tokens")
        p = body.prompt
        if isinstance(p, str):
            prompts = [s.tokenizer.encode(p) or [s.model.config.bos_token_id]]  # "" samples unconditionally
        elif isinstance(p[0], str):
            prompts = [s.tokenizer.encode(t) for t in p]
        elif isinstance(p[0], int):
            prompts = [list(p)]
        else:
            prompts = [list(x) for x in p]
        check_prompts(prompts, s.limits)
        max_tokens = new_tokens(prompts, 16 if body.max_tokens is None else body.max_tokens, s.limits)
        config = generation_config(body, s.limits, max(max_tokens, 1), logprobs=body.logprobs)
        echoed = None
        if body.echo:
            k = body.logprobs or 0
            echoed = await asyncio.to_thread(
                lambda: [prompt_logprobs(s.model, s.tokenizer, ids, k) for ids in prompts])
        return await _respond(s, request, body, prompts, config, chat=False, echoed=echoed,
                              generate=max_tokens > 0)

    async def _respond(s: Served, request: Request, body: SamplingFields, prompts, config, chat: bool,
                       echoed=None, generate: bool = True):
        ranked = config.samples and config.num_beams == 1 and (body.best_of or 1) > body.n
        if ranked and config.logprobs is None:
            config = replace(config, logprobs=0)  # best_of ranks by mean log-probability
        jobs = jobs_for(prompts, body, config) if generate else []
        n_rows = sum(len(j.choices) for j in jobs) if generate else len(prompts) * body.n
        prompt_tokens = sum(len(p) for p in prompts)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": s.name}
        ticket = s.batcher.submit(jobs) if jobs else None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                event_stream(ticket.events(), base, chat, n_rows, prompt_tokens, include_usage, ticket.cancel),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts, finish = [""] * n_rows, ["length"] * n_rows
        ids, logprobs = [[] for _ in range(n_rows)], [[] for _ in range(n_rows)]
        if ticket is not None:
            try:
                async for row, ev in _watch(ticket, request):
                    texts[row] += ev.text
                    ids[row] += ev.token_ids
                    logprobs[row] += ev.logprobs or []
                    finish[row] = ev.finish_reason or finish[row]
            finally:
                ticket.cancel()
        per_prompt = n_rows // len(prompts)
        rows = list(range(n_rows))
        if ranked:  # the n best of best_of per prompt, by mean token log-probability (OpenAI's best_of)
            mean = [sum(e["logprob"] for e in logprobs[r]) / max(len(logprobs[r]), 1) for r in rows]
            rows = [r for p in range(len(prompts))
                    for r in sorted(range(p * per_prompt, (p + 1) * per_prompt), key=lambda r: -mean[r])[: body.n]]
        show = bool(body.logprobs) if chat else body.logprobs is not None
        choices = []
        for i, r in enumerate(rows):
            text, lp = texts[r], logprobs[r]
            if echoed is not None:  # the prompt, with its own logprobs, before the answer
                p = r // per_prompt
                text, lp = s.tokenizer.decode(prompts[p]) + text, echoed[p] + lp
            choices.append(choice(chat, i, text, lp if show else None, finish[r]))
        return {**base, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                "usage": usage(prompt_tokens, sum(len(i) for i in ids))}

    async def _watch(ticket, request: Request):
        """The ticket's events; stops (and frees the rows) as soon as the client disconnects."""

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

    # -- playground -------------------------------------------------------------------------
    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/playground/config")
    async def playground_config():
        s = default
        return {"model": s.name, "models": list(served), "context": s.limits.context,
                "max_tokens_limit": settings.max_tokens_limit, "max_n": settings.max_n,
                "max_ranked": settings.max_ranked, "api_key_required": bool(settings.api_key),
                "template": s.template.name, "default_system": s.template.default_system,
                "n_layer": s.model.config.num_layers, "n_head": s.model.config.num_heads,
                "feedback": store is not None}

    @app.post("/feedback")
    def feedback(body: FeedbackRequest):
        if store is None:
            raise ApiError("this server was started without a feedback database", status=404)
        if len(body.answers) > settings.max_ranked:
            raise ApiError(f"answers: at most {settings.max_ranked} answers per ranking", param="answers")
        long = next((i for i, a in enumerate(body.answers) if len(a) > settings.max_answer_chars), None)
        if long is not None:
            raise ApiError(f"answers.{long}: longer than {settings.max_answer_chars} characters", param="answers")
        rid = store.add(body.prompt, body.answers, body.ranking, system=body.system,
                        model=pick(body.params.get("model") if body.params.get("model") in served else None).name,
                        params=body.params)
        return {"id": rid, "saved": True}

    @app.post("/inspect/attention")
    def attention(body: AttentionRequest):
        from ..inspect import attention_json, inspect_text

        found = inspect_text(default.model, default.tokenizer, body.text, top_k=5)
        return {**attention_json(found), "top_next": found.top_next}

    return app
