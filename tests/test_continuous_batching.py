"""Continuous batching (engine/session.py, serve/batcher.py): rows that join a running batch mid-decode
(those joining at the same step prefilled together) and leave it get exactly the tokens they get
alone (greedy and seeded sampling, penalties, no-repeat n-grams, valid UTF-8, stop strings,
log-probabilities, n > 1), for GPT-2 and the Llama family, with the C step and with the PyTorch
forward; a prefill shared by equal-length prompts gives each the logits it has alone (to float32
rounding; bit for bit in the Llama C step); a joiner whose checks or prefill fail fails alone; a
cancelled row frees its slot; the pool shrinks after a burst; in the server a request sent while a
long one decodes is answered before the long one ends."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import httpx
import pytest
import torch

from hangpt.checkpoint import load_checkpoint, save_checkpoint
from hangpt.engine import Engine, GenerationConfig
from hangpt.engine.session import Session
from hangpt.errors import InputError
from hangpt.models import Llama, LlamaConfig
from test_serve_support import running_server

NO_EOS = dict(eos_token_id=[])
REQUESTS = [  # (prompt, settings), joining in this order
    ("오늘 날씨가", dict(max_new_tokens=20)),
    ("저는 한국어를", dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.8, seed=3, repetition_penalty=1.3,
                      max_new_tokens=24, **NO_EOS)),
    ("언어", dict(no_repeat_ngram_size=2, logprobs=3, max_new_tokens=12, **NO_EOS)),
    ("주말에 친구와 함께", dict(do_sample=True, min_p=0.05, frequency_penalty=0.5, presence_penalty=0.3, seed=5,
                          max_new_tokens=30, **NO_EOS)),
    ("봄", dict(do_sample=True, seed=7, valid_utf8=True, stop=["다", "요"], max_new_tokens=25, **NO_EOS)),
    ("오늘", dict(do_sample=True, temperature=1.2, top_p=0.8, seed=11, num_return_sequences=2, logprobs=0,
                 max_new_tokens=16, **NO_EOS)),
    ("저는", dict(max_new_tokens=4, logit_bias={5: 3.0}, **NO_EOS)),
]
JOIN_AT = [0, 0, 3, 3, 7, 7, 15]  # the step before which each request joins (0 and 7: prompts of one length)


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A random Llama folder (grouped-query attention)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tiny_tokenizer.vocab_size, max_position_embeddings=128, hidden_size=64,
                      intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      bos_token_id=tiny_tokenizer.eos_id, eos_token_id=tiny_tokenizer.eos_id)
    out = tmp_path_factory.mktemp("ckpt") / "llama"
    save_checkpoint(out, Llama(cfg), tiny_tokenizer, {"stage": "pretrain"})
    return out


def _engine(request, family: str, fast: bool) -> Engine:
    ckpt = load_checkpoint(request.getfixturevalue("tiny_checkpoint" if family == "gpt2" else "llama_checkpoint"))
    torch.manual_seed(1)
    with torch.no_grad():  # sharper distributions than the random init: answers that differ by prompt
        for p in ckpt.model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return Engine(ckpt.model.eval(), ckpt.tokenizer, fast_decode=fast)


def _collect(events, rows: dict) -> None:
    """Fold StreamEvents into {index: [text, token_ids, logprobs, finish]}."""
    for e in events:
        row = rows.setdefault(e.index, ["", [], [], None])
        row[0] += e.text
        row[1] += e.token_ids
        row[2] += e.logprobs or []
        row[3] = e.finish_reason or row[3]


def _count_prefills(engine: Engine) -> list[int]:
    """The number of prompts of each of the engine's prefills from now on."""
    calls, real = [], engine.prefill

    def prefill(prompts, total):
        calls.append(len(prompts))
        return real(prompts, total)

    engine.prefill = prefill
    return calls


def _same(joined: dict, alone: dict) -> None:
    assert joined.keys() == alone.keys()
    for k in alone:
        assert joined[k][:2] == alone[k][:2] and joined[k][3] == alone[k][3], k
        assert [e["id"] for e in joined[k][2]] == [e["id"] for e in alone[k][2]]
        assert [e["logprob"] for e in joined[k][2]] == pytest.approx([e["logprob"] for e in alone[k][2]], abs=1e-4)
        assert [[t["id"] for t in e["top"]] for e in joined[k][2]] == [[t["id"] for t in e["top"]] for e in alone[k][2]]


@pytest.mark.parametrize("fast", [True, False], ids=["c-step", "pytorch"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_rows_joining_and_leaving_mid_decode_get_their_tokens_alone(request, family, fast):
    engine = _engine(request, family, fast)
    if fast and engine.fast_decoder() is None:
        pytest.skip("no C compiler here: the engine uses the PyTorch forward")
    assert (engine.fast_decoder() is not None) == fast
    configs = [(prompt, GenerationConfig(**settings)) for prompt, settings in REQUESTS]
    alone, first = {}, {}
    for i, (prompt, config) in enumerate(configs):
        first[i] = len(alone)
        for e in engine.stream(prompt, config):
            _collect([e], alone.setdefault(i, {}))
    prefills = _count_prefills(engine)
    with torch.no_grad():
        session, joined, owner, step = engine.session(), {}, {}, 0
        sizes, pools = [], []
        while step <= max(JOIN_AT) or session:
            joining = [i for i, at in enumerate(JOIN_AT) if at == step]
            for i, indices in zip(joining, session.add_many([configs[i] for i in joining])):
                for k, index in enumerate(indices):
                    owner[index] = (i, k)
            sizes.append(len(session))
            pools.append(session.cache.k.shape[1])
            events = session.step()
            for e in events:
                i, k = owner[e.index]
                _collect([replace(e, index=k)], joined.setdefault(i, {}))
            step += 1
    assert max(sizes) >= 4 and any(b < a for a, b in zip(sizes, sizes[1:]))  # rows left while others went on
    assert pools[-1] < max(pools)  # and the pool shrank under the rows still decoding
    assert prefills.count(2) == 2 and len(prefills) == len(REQUESTS) - 2  # steps 0 and 7: one prefill each
    for i in alone:
        _same(joined[i], alone[i])
    assert alone[2][0][2] and len(alone[5]) == 2  # log-probabilities and n = 2 were exercised


def test_generate_and_stream_batch_equal_each_request_alone(request):
    engine = _engine(request, "gpt2", True)
    configs = [(p, GenerationConfig(**s)) for p, s in REQUESTS]
    together = {}
    for e in engine.stream_batch([(engine.encode(p), c) for p, c in configs]):
        _collect([e], together)
    row = 0
    for prompt, config in configs:
        [alone] = engine.generate([prompt], config)
        for k, completion in enumerate(alone):
            text, ids, _, finish = together[row + k]
            assert (ids, finish) == (completion.token_ids, completion.finish_reason)
        row += len(alone)


def test_a_cancelled_row_frees_its_slot_for_the_next_request(request):
    engine = _engine(request, "gpt2", True)
    long = GenerationConfig(max_new_tokens=40, **NO_EOS)
    alone = [t for e in engine.stream("오늘 날씨가", long) for t in e.token_ids]
    with torch.no_grad():
        session = engine.session()
        [keep] = session.add("오늘 날씨가", long)
        [drop] = session.add("저는", long)
        got = []
        for _ in range(5):
            got += [t for e in session.step() if e.index == keep for t in e.token_ids]
        slots = session.cache.k.shape[1]
        session.cancel(drop)
        assert len(session) == 1 and [r.index for r in session.rows] == [keep]
        [later] = session.add("봄", long)
        assert session.cache.k.shape[1] == slots  # the freed slot, not a bigger pool
        while session:
            got += [t for e in session.step() if e.index == keep for t in e.token_ids]
    assert got == alone


@pytest.mark.parametrize("fast", [True, False], ids=["c-step", "pytorch"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_prefill_shared_by_prompts_of_one_length_gives_each_its_logits_alone(request, family, fast):
    """The tolerance Session.add_many documents: float32 rounding (the matmuls may sum in another
    order for more rows), none at all in the Llama C step."""
    engine = _engine(request, family, fast)
    if fast and engine.fast_decoder() is None:
        pytest.skip("no C compiler here: the engine uses the PyTorch forward")
    prompts = ["오늘", "저는", "봄", "친구와", "오늘"]  # three tokens each
    configs = [GenerationConfig(**NO_EOS)] * len(prompts)
    configs[1] = GenerationConfig(do_sample=True, seed=1, num_return_sequences=2, **NO_EOS)
    prefills = _count_prefills(engine)

    def state(session):  # every row's next-token logits, keys and values
        return session.logits, session.cache.k[:, : len(session), :, :3], session.cache.v[:, : len(session), :, :3]

    with torch.no_grad():
        together = engine.session()
        together.add_many(list(zip(prompts, configs)))
        assert prefills == [len(prompts)]
        alone = [engine.session() for _ in prompts]
        for session, prompt, config in zip(alone, prompts, configs):
            session.add(prompt, config)
        for got, want in zip(state(together), zip(*map(state, alone))):
            want = torch.cat(want, dim=0 if got.dim() == 2 else 1)
            if family == "llama" and fast:
                assert torch.equal(got, want)
            else:
                torch.testing.assert_close(got, want)  # float32: rtol 1.3e-6, atol 1e-5


def test_a_joiner_whose_checks_or_prefill_fail_fails_alone(request):
    engine = _engine(request, "gpt2", True)
    poison = engine.encode("봄")
    real = engine.prefill

    def prefill(prompts, total):  # a stand-in for any error inside the engine
        if poison in prompts:
            raise RuntimeError("boom")
        return real(prompts, total)

    engine.prefill = prefill
    config = GenerationConfig(do_sample=True, seed=3, max_new_tokens=12, **NO_EOS)
    out_of_vocabulary = GenerationConfig(logit_bias={10**6: 1.0})
    requests = [("오늘", config), ("봄", config), ("저는", config), ("오늘", out_of_vocabulary),
                ("친구와", replace(config, seed=4))]  # three tokens each: one prefill, until it fails
    with torch.no_grad():
        session = engine.session()
        joined = session.add_many(requests)
        assert [type(j) for j in joined] == [list, RuntimeError, list, InputError, list]
        assert "logit_bias" in str(joined[3])
        got = {}
        while session:
            _collect(session.step(), got)
    for (prompt, config), indices in zip(requests, joined):
        if isinstance(indices, list):
            alone = {}
            _collect(engine.stream(prompt, config), alone)
            assert got[indices[0]][:2] == alone[0][:2]


def test_the_pool_shrinks_after_a_burst(request):
    engine = _engine(request, "gpt2", True)
    short, long = GenerationConfig(max_new_tokens=3, **NO_EOS), GenerationConfig(max_new_tokens=30, **NO_EOS)
    alone = {}
    _collect(engine.stream("오늘 날씨가", long), alone)
    with torch.no_grad():
        session = engine.session()
        session.add_many([("저는", short)] * 16 + [("오늘 날씨가", long)])
        assert session.cache.k.shape[1] == 17
        got, steps = {}, 0
        while len(session) > 1:
            _collect(session.step(), got)
            steps += 1
        assert steps == 3 and session.cache.k.shape[1] == 2  # two slots for the one row left...
        assert session.cache.max_length == 4 + 30 - 1  # ...with the positions it needs
        while session:
            _collect(session.step(), got)
        assert session.cache is None  # nothing held between bursts
        session.add("봄", short)  # and the next one starts afresh
        assert session.cache.k.shape[1] == 1
    assert got[16][:2] == alone[0][:2]


@pytest.fixture
def slow_steps(monkeypatch):
    """10 ms a decoding step, so a 60-token answer outlasts a short request's whole life."""
    real = Session.step

    def step(self):
        time.sleep(0.01)
        return real(self)

    monkeypatch.setattr(Session, "step", step)


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_a_request_sent_mid_decode_is_answered_before_the_long_one_ends(tiny_checkpoint, tmp_path, slow_steps,
                                                                        batching):
    log, lock = [], threading.Lock()
    eos = load_checkpoint(tiny_checkpoint).model.config.eos_token_id

    def stream(name, max_tokens, started=None):
        body = {"model": "tiny", "prompt": "오늘", "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "logit_bias": {str(eos): -100}}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    finish = json.loads(line[6:])["choices"][0]["finish_reason"]
                    with lock:
                        log.append((name, "finish" if finish else "token"))
                    if started is not None:
                        started.set()

    with running_server(tiny_checkpoint, feedback_db=tmp_path / "fb.sqlite", batching=batching) as url:
        started = threading.Event()
        long = threading.Thread(target=stream, args=("long", 60, started))
        long.start()
        assert started.wait(30)
        stream("short", 3)
        long.join(60)
    short_first = log.index(("short", "token"))
    long_end = log.index(("long", "finish"))
    if batching == "continuous":
        assert short_first < long_end and log.index(("short", "finish")) < long_end
    else:  # static batching: the short request waits for the whole batch
        assert short_first > long_end
