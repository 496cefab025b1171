"""One bad request never hurts another: requests are checked before they join a batch, a failure
inside a batch fails only its own rows, a failing stream ends with an error event and [DONE];
lone surrogates, oversized rankings and foreign Host headers are refused; a client that leaves
stops its decoding."""

from __future__ import annotations

import json
import sqlite3
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from hangpt.engine.core import Engine
from hangpt.engine.session import Session
from test_serve_support import running_server

BOOM_SEED = 4242  # the patched engine fails any batch holding a request with this seed


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    """A server whose engine fails, before decoding anything, every request with BOOM_SEED as it
    joins the running batch (a stand-in for any error inside the engine), and decodes slowly enough
    to be left mid-answer."""
    real_add_many, real_step = Session.add_many, Session.step

    def add_many(self, requests, generator=None):
        joined = iter(real_add_many(self, [r for r in requests if r[1].seed != BOOM_SEED], generator))
        return [RuntimeError("boom") if config.seed == BOOM_SEED else next(joined) for _, config in requests]

    def step(self):
        if getattr(Engine, "slow", False):
            time.sleep(0.05)
        return real_step(self)

    db = tmp_path_factory.mktemp("serve") / "feedback.sqlite"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Session, "add_many", add_many)
        mp.setattr(Session, "step", step)
        with running_server(tiny_checkpoint, feedback_db=db, max_tokens_limit=100) as url:
            yield url


def _chat(content="오늘 날씨 어때요?", **fields) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 8,
            "temperature": 0, **fields}


def _post(url, body, path="/v1/chat/completions", timeout=60) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=timeout)


def _stream_events(url, body) -> list:
    """The SSE data lines of a streamed request, parsed ([DONE] kept as the string)."""
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def _text(events) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if isinstance(e, dict) and e.get("choices"))


@pytest.mark.parametrize("seed, n", [(2**64 - 1, 2), (2**70, 1), (-2**63 - 1, 1), (2**63, 1)])
def test_out_of_range_seed_is_a_400_naming_seed(server, seed, n):
    r = _post(server, _chat(seed=seed, n=n, temperature=1.0))
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"


def test_largest_seed_with_n_still_decodes(server):
    r = _post(server, _chat(seed=2**63 - 1, n=3, temperature=1.0))
    assert r.status_code == 200 and len(r.json()["choices"]) == 3


def test_failing_stream_ends_with_an_error_event_and_done(server):
    events = _stream_events(server, _chat(seed=BOOM_SEED))
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["type"] == "server_error" and "boom" in error["message"]


def test_a_batch_with_a_failing_request_fails_only_its_rows(server):
    """Eight good requests (streamed and not) decoded together with failing ones: every good one
    gets exactly the answer it gets alone."""
    alone = _post(server, _chat()).json()["choices"][0]["message"]["content"]

    def good(i):
        if i % 2:
            events = _stream_events(server, _chat())
            assert events[-1] == "[DONE]" and not any("error" in e for e in events if isinstance(e, dict))
            return _text(events)
        r = _post(server, _chat())
        assert r.status_code == 200
        return r.json()["choices"][0]["message"]["content"]

    def bad(i):
        if i % 2:
            return _stream_events(server, _chat(seed=BOOM_SEED))
        return _post(server, _chat(seed=BOOM_SEED))

    with ThreadPoolExecutor(12) as pool:
        goods = [pool.submit(good, i) for i in range(8)]
        bads = [pool.submit(bad, i) for i in range(4)]
        assert [f.result() for f in goods] == [alone] * 8
        for i, f in enumerate(bads):
            if i % 2:
                assert f.result()[-1] == "[DONE]" and "error" in f.result()[-2]
            else:
                assert f.result().status_code == 500 and "boom" in f.result().json()["error"]["message"]


def test_mixed_batch_of_good_and_invalid_requests(server):
    """Invalid requests sent together with good ones get their 400s; the good ones all succeed."""
    alone = _post(server, _chat()).json()["choices"][0]["message"]["content"]
    bad_bodies = [
        _chat(seed=2**64 - 1, n=2, temperature=1.0),
        b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
        _chat(max_tokens=10_000),
        _chat(n=99, temperature=1.0),
        _chat(logit_bias={"999999": 5}),
        _chat(stop=[""]),
        _chat(temperature=-1),
        b'{"messages": [',
    ]
    with ThreadPoolExecutor(16) as pool:
        goods = [pool.submit(_post, server, _chat()) for _ in range(8)]
        bads = [pool.submit(_post, server, body) for body in bad_bodies]
        assert [b.result().status_code for b in bads] == [400] * len(bad_bodies)
        assert [g.result().json()["choices"][0]["message"]["content"] for g in goods] == [alone] * 8


def test_lone_surrogates_are_a_400_naming_the_field(server):
    r = _post(server, b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}')
    assert r.status_code == 400 and "messages.0.content" in r.json()["error"]["message"]
    r = _post(server, b'{"prompt": "q", "answers": ["a", "b\\udc00"], "ranking": [0, 1]}', path="/feedback")
    assert r.status_code == 400 and "answers.1" in r.json()["error"]["message"]
    r = _post(server, b'{"prompt": "q", "answers": ["a", "b"], "ranking": [0, 1], "params": {"\\ud800": 1}}',
              path="/feedback")
    assert r.status_code == 400 and "params" in r.json()["error"]["message"]


def test_rankings_are_capped_in_answers_and_size(server):
    ok = {"prompt": "q", "answers": ["a", "b"], "ranking": [0, 1]}
    assert _post(server, ok, path="/feedback").status_code == 200
    many = {"prompt": "q", "answers": [f"a{i}" for i in range(5000)], "ranking": list(range(5000))}
    r = _post(server, many, path="/feedback")
    assert r.status_code == 400 and "at most 16 answers" in r.json()["error"]["message"]
    huge = {"prompt": "q", "answers": ["a", "b" * 30_000], "ranking": [0, 1]}
    r = _post(server, huge, path="/feedback")
    assert r.status_code == 400 and "answers.1" in r.json()["error"]["message"]


def test_export_streams_pairs_of_a_huge_old_ranking(tmp_path):
    """A ranking of 600 answers stored before the cap: 179,700 pairs written without holding them."""
    from hangpt.serve.feedback import FeedbackStore, export_pairs

    db = tmp_path / "fb.sqlite"
    FeedbackStore(db)
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO rankings (created, model, system, prompt, answers, ranks, params) "
                  "VALUES (0, 'm', '', 'q', ?, ?, '{}')",
                  (json.dumps([f"answer {i}" for i in range(600)]), json.dumps(list(range(600)))))
    tracemalloc.start()
    summary = export_pairs(db, tmp_path / "pairs.jsonl")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert summary["pairs"] == 600 * 599 // 2
    assert sum(1 for _ in open(tmp_path / "pairs.jsonl")) == summary["pairs"]
    assert peak < 5_000_000  # a list of the pairs alone takes over 50 MB


def test_a_client_that_leaves_a_non_streaming_request_stops_its_decoding(server, tiny_checkpoint):
    Engine.slow = True  # 50 ms a token: 100 tokens take 5 s
    try:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            _post(server, _chat(max_tokens=100, temperature=1.0, seed=1), timeout=0.5)
        deadline = t0 + 3.0
        while time.monotonic() < deadline:
            health = httpx.get(server + "/health").json()
            if health["running"] == 0 and health["dropped"] >= 1:
                break
            time.sleep(0.1)
        assert health["running"] == 0 and health["dropped"] >= 1
    finally:
        Engine.slow = False


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("[::1]:{port}", True), ("LOCALHOST", True),
    ("evil.example:{port}", False), ("attacker.test", False), ("127.0.0.1.nip.io:{port}", False), ("", False),
    ("[::1", False),
])
def test_only_the_bound_host_names_are_answered(server, host, ok):
    port = server.rsplit(":", 1)[1]
    r = httpx.get(server + "/v1/models", headers={"host": host.format(port=port)})
    assert (r.status_code == 200) is ok
    if not ok:
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"


def test_allowed_hosts_follow_the_bind_address():
    from hangpt.serve.app import allowed_hosts_for, host_allowed

    assert host_allowed("localhost:8000", allowed_hosts_for("127.0.0.1"))
    assert not host_allowed("example.com", allowed_hosts_for("127.0.0.1"))
    assert host_allowed("example.com", allowed_hosts_for("127.0.0.1", ("Example.com",)))
    assert host_allowed("anything.test", allowed_hosts_for("127.0.0.1", ("*",)))
    assert host_allowed("192.168.1.20:8000", allowed_hosts_for("0.0.0.0"))  # any address of the machine
    assert not host_allowed("rebind.example:8000", allowed_hosts_for("0.0.0.0"))
    assert host_allowed("10.0.0.5", allowed_hosts_for("10.0.0.5"))
    assert not host_allowed("10.0.0.6", allowed_hosts_for("10.0.0.5"))
