"""A real server on loopback for the API and browser tests (uvicorn in a thread, free port)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def running_server(model_dir: Path | dict[str, Path], **settings):
    """Serve the checkpoint at `model_dir` (or {name: folder} for several) on 127.0.0.1; yields the base URL."""
    import uvicorn

    from hangpt.checkpoint import load_checkpoint
    from hangpt.serve.app import ServerSettings, create_app

    loaded = ({name: load_checkpoint(d) for name, d in model_dir.items()} if isinstance(model_dir, dict)
              else load_checkpoint(model_dir))
    app = create_app(loaded, ServerSettings(**{"model_name": "tiny", **settings}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_server_starts_reports_health_and_stops(tiny_checkpoint, tmp_path):
    with running_server(tiny_checkpoint, feedback_db=tmp_path / "fb.sqlite") as url:
        health = httpx.get(url + "/health").json()
        assert health["status"] == "ok" and health["model"] == "tiny"
        page = httpx.get(url + "/")
        assert page.status_code == 200 and 'charset="utf-8"' in page.text
        assert httpx.get(url + "/static/app.js").status_code == 200
