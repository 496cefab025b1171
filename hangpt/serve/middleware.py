"""What every request passes before a route: the body size limit, the Host check (no DNS rebinding),
the API key, and errors turned into OpenAI's error body (400, never a 500 for bad input)."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InputError
from .responses import ApiError, error_body

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


def install(app: FastAPI, hosts: list[str], api_key: str | None, max_body_bytes: int) -> None:
    """Add the checks and error handlers to `app`."""
    app.add_middleware(BodyLimit, limit=max_body_bytes)

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

    @app.middleware("http")
    async def _host_and_key(request: Request, call_next):
        if not host_allowed(request.headers.get("host", ""), hosts):
            return ApiError("invalid Host header: this server answers only the names it is bound to "
                            "(start it with --allowed-host NAME to add one)", code="invalid_host").response()
        path = request.url.path
        if api_key and (path.startswith("/v1/") or path.startswith(("/feedback", "/inspect"))):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                return ApiError("invalid or missing API key (send `Authorization: Bearer KEY`)", status=401,
                                code="invalid_api_key").response()
        return await call_next(request)


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
