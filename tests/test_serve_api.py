"""The OpenAI-compatible API, driven by the official `openai` client against a live server."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from test_serve_support import running_server


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    db = tmp_path_factory.mktemp("serve") / "feedback.sqlite"
    with running_server(tiny_checkpoint, feedback_db=db, max_tokens_limit=48) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


CHAT = [{"role": "system", "content": "친절한 도우미입니다."}, {"role": "user", "content": "오늘 날씨 어때요?"}]


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_completion_and_usage(client):
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and len(r.choices) == 1
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens > 5  # system + user + template markers


def test_streaming_chat_matches_the_whole_answer(client):
    kwargs = dict(model="tiny", messages=CHAT, max_completion_tokens=12, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len(chunks) >= 3  # role chunk, content, usage


def test_completions_with_several_prompts_and_n(client):
    r = client.completions.create(model="tiny", prompt=["오늘 날씨가", "주말에"], n=2, max_tokens=5,
                                  temperature=1.0, seed=7)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert 0 < r.usage.completion_tokens <= 4 * 5
    again = client.completions.create(model="tiny", prompt=["오늘 날씨가", "주말에"], n=2, max_tokens=5,
                                      temperature=1.0, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]  # a seed makes it repeatable


def test_chat_n_gives_several_answers(client):
    r = client.chat.completions.create(model="tiny", messages=CHAT, n=3, max_tokens=6, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    stream = client.chat.completions.create(model="tiny", messages=CHAT, n=2, max_tokens=6, stream=True)
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_stop_strings_cut_the_answer(client):
    free = client.completions.create(model="tiny", prompt="오늘 날씨가", max_tokens=20, temperature=0).choices[0]
    assert len(free.text) > 4
    stop = free.text[2:4]
    cut = client.completions.create(model="tiny", prompt="오늘 날씨가", max_tokens=20, temperature=0, stop=stop)
    assert cut.choices[0].text == free.text[: free.text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="오늘 날씨가", max_tokens=20, temperature=0,
                                         stop=[stop], stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.choices[0].text


def test_logprobs_and_vllm_extras(client):
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    extra = client.completions.create(model="tiny", prompt="오늘", max_tokens=4, logprobs=2,
                                      extra_body={"top_k": 5, "min_p": 0.01, "repetition_penalty": 1.2,
                                                  "no_repeat_ngram_size": 2})
    assert len(extra.choices[0].logprobs.tokens) == extra.usage.completion_tokens
    beams = client.completions.create(model="tiny", prompt="오늘", max_tokens=4, n=2,
                                      extra_body={"use_beam_search": True})
    assert len(beams.choices) == 2


def test_logit_bias_forces_a_token(client, tiny_tokenizer):
    token = tiny_tokenizer.encode(" 날씨가")[0]
    r = client.completions.create(model="tiny", prompt="오늘", max_tokens=3, temperature=0,
                                  logit_bias={str(token): 100})
    assert r.choices[0].text == tiny_tokenizer.decode([token] * 3)


@pytest.mark.parametrize("kwargs, param", [
    (dict(temperature=3), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(n=100), "n"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=10_000), "max_tokens"),
    (dict(presence_penalty=5), "presence_penalty"),
    (dict(logit_bias={"abc": 1}), "logit_bias"),
    (dict(logit_bias={"99999999": 1}), "logit_bias"),
    (dict(stop=[""]), "stop"),
    (dict(model="gpt-4o"), "model"),
])
def test_invalid_requests_are_400_with_an_openai_error(client, kwargs, param):
    kwargs = {"model": "tiny", "messages": CHAT, "max_tokens": 4, **kwargs}
    error = openai.NotFoundError if param == "model" else openai.BadRequestError
    with pytest.raises(error) as e:
        client.chat.completions.create(**kwargs)
    body = e.value.body
    assert body["param"] == param and body["type"] and body["message"].strip()


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[1, 2]",
    json.dumps({"messages": []}).encode(),
    json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(),
    json.dumps({"messages": [{"role": "user", "content": "x"}], "n": "many"}).encode(),
    json.dumps({"messages": [{"role": "user", "content": "가" * 3000}]}).encode(),
])
def test_malformed_bodies_are_400_never_500(server, body):
    r = httpx.post(server + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_completions_rejects_bad_prompts(server):
    for prompt in ([], [10**9], [[]], None):
        r = httpx.post(server + "/v1/completions", json={"prompt": prompt, "max_tokens": 2})
        assert r.status_code == 400, (prompt, r.text)


def test_empty_prompt_samples_unconditionally(client):
    r = client.completions.create(model="tiny", prompt="", max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == 1  # the BOS token, as GPT-2's unconditional samples start


def test_oversized_body_is_refused(server):
    r = httpx.post(server + "/v1/completions", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_concurrent_requests_are_answered(client):
    results = []

    def one(i):
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"질문 {i}"}],
                                           max_tokens=6, temperature=0.7)
        results.append(r.choices[0].finish_reason)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6


def test_disconnected_stream_frees_its_place(server):
    import time

    before = httpx.get(server + "/health").json()["dropped"]
    with httpx.stream("POST", server + "/v1/completions",
                      json={"prompt": "오늘", "max_tokens": 48, "stream": True, "logit_bias": {"0": -100}}) as r:
        next(r.iter_lines())  # the first chunk, then hang up
    deadline = time.monotonic() + 30
    while httpx.get(server + "/health").json()["dropped"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    health = httpx.get(server + "/health").json()
    assert health["dropped"] == before + 1 and health["running"] == 0  # abandoned, not decoded to the end


def test_api_key_is_required_when_set(tiny_checkpoint, tmp_path):
    with running_server(tiny_checkpoint, api_key="sekret") as url:
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="sekret", max_retries=0)
        assert good.models.list().data[0].id == "tiny"
        assert httpx.get(url + "/health").status_code == 200  # health and the page stay open


def test_feedback_and_attention_endpoints(server):
    saved = httpx.post(server + "/feedback", json={"prompt": "질문", "answers": ["좋은 답", "나쁜 답"], "ranking": [0, 1]})
    assert saved.status_code == 200 and saved.json()["saved"]
    bad = httpx.post(server + "/feedback", json={"prompt": "질문", "answers": ["하나"], "ranking": [0]})
    assert bad.status_code == 400
    att = httpx.post(server + "/inspect/attention", json={"text": "오늘 날씨가 좋네요"}).json()
    n = len(att["tokens"])
    assert att["n_layer"] == 2 and att["n_head"] == 4
    assert len(att["attentions"][0][0]) == n
    assert all(abs(sum(row) - 1) < 1e-2 for row in att["attentions"][1][3])
