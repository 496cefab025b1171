"""/v1/completions as evaluation tools use it (echo + logprobs, token-id prompts, best_of), the
request -> GenerationConfig mapping on its own, and several models in one server."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch

from hangpt.checkpoint import load_checkpoint
from hangpt.serve.params import Limits, generation_config, jobs_for
from hangpt.serve.responses import ApiError
from hangpt.serve.schemas import ChatRequest, CompletionRequest
from test_serve_support import running_server

LIMITS = Limits(context=128, vocab_size=1000, max_prompt=127, max_tokens=64, max_n=8)


def test_request_fields_map_to_a_generation_config():
    body = ChatRequest(messages=[{"role": "user", "content": "x"}], temperature=0.7, top_p=0.9, top_k=-1,
                       stop="끝", logit_bias={"5": -100}, seed=3, n=2, presence_penalty=0.5)
    config = generation_config(body, LIMITS, 12, extra_stops=["</s>", "끝"], logprobs=2)
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 0.7, 0.9, 0)
    assert config.stop == ["끝", "</s>"] and config.logit_bias == {5: -100.0} and config.logprobs == 2
    assert config.max_new_tokens == 12 and config.presence_penalty == 0.5
    jobs = jobs_for([[1, 2]], body, config)
    assert [j.config.seed for j in jobs] == [3, 4] and [j.choices for j in jobs] == [[0], [1]]
    greedy = generation_config(ChatRequest(messages=[{"role": "user", "content": "x"}], temperature=0), LIMITS, 4)
    assert not greedy.do_sample and greedy.temperature == 1.0
    beams = CompletionRequest(prompt="x", n=2, use_beam_search=True)
    config = generation_config(beams, LIMITS, 4)
    assert (config.num_beams, config.num_return_sequences) == (4, 2)
    assert [j.choices for j in jobs_for([[1], [2]], beams, config)] == [[0, 1], [2, 3]]
    sampled = CompletionRequest(prompt="x", n=2, best_of=5, temperature=1)
    assert len(jobs_for([[1]], sampled, generation_config(sampled, LIMITS, 4))) == 5
    for bad, param in ((dict(n=9), "n"), (dict(best_of=1, n=2), "best_of"), (dict(stop=[""]), "stop"),
                       (dict(logit_bias={"1000": 1}), "logit_bias"), (dict(best_of=3, stream=True), "best_of")):
        with pytest.raises(ApiError) as e:
            generation_config(CompletionRequest(prompt="x", **bad), LIMITS, 4)
        assert e.value.param == param


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    with running_server(tiny_checkpoint, max_tokens_limit=32) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def _forward_logprobs(tiny_checkpoint, ids):
    model = load_checkpoint(tiny_checkpoint).model.eval()
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return [logprobs[i - 1, t].item() for i, t in enumerate(ids) if i], logprobs


def test_echo_logprobs_are_the_models_own(client, tiny_checkpoint, tiny_tokenizer):
    text = "오늘 날씨가 참 좋네요"
    ids = tiny_tokenizer.encode(text)
    r = client.completions.create(model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=3)
    lp = r.choices[0].logprobs
    expected, full = _forward_logprobs(tiny_checkpoint, ids)
    assert r.choices[0].text == text and len(lp.tokens) == len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    best = full[0].topk(3).values.tolist()  # alternatives are keyed by text: byte pieces may share one
    assert all(min(abs(v - b) for b in best) < 1e-4 for v in lp.top_logprobs[1].values())
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(ids)
    # with an answer: the prompt's logprobs, then the answer's, as lm-eval's local-completions reads them
    more = client.completions.create(model="tiny", prompt=ids, max_tokens=3, echo=True, logprobs=1, temperature=0)
    lp = more.choices[0].logprobs
    assert more.choices[0].text.startswith(text) and len(lp.tokens) == len(ids) + 3
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(expected, abs=1e-4)
    alone = client.completions.create(model="tiny", prompt=ids, max_tokens=3, temperature=0)
    assert more.choices[0].text == text + alone.choices[0].text


def test_token_id_prompts_equal_their_text(client, tiny_tokenizer):
    texts = ["오늘 날씨가", "주말에 친구와"]
    by_text = client.completions.create(model="tiny", prompt=texts, max_tokens=4, temperature=0)
    ids = [tiny_tokenizer.encode(t) for t in texts]
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=4, temperature=0)
    one = client.completions.create(model="tiny", prompt=ids[1], max_tokens=4, temperature=0)
    assert [c.text for c in by_ids.choices] == [c.text for c in by_text.choices]
    assert one.choices[0].text == by_text.choices[1].text
    scored = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    assert [len(c.logprobs.tokens) for c in scored.choices] == [len(i) for i in ids]


def test_best_of_keeps_the_answers_with_the_best_mean_logprob(client):
    kwargs = dict(model="tiny", prompt="오늘", max_tokens=6, temperature=1.0, seed=11, logprobs=0)
    every = client.completions.create(**kwargs, n=5)
    best = client.completions.create(**kwargs, n=2, best_of=5)

    def mean(c):
        return sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs)

    ranked = sorted(every.choices, key=mean, reverse=True)[:2]
    assert [c.text for c in best.choices] == [c.text for c in ranked]
    assert [c.index for c in best.choices] == [0, 1]
    plain = client.completions.create(model="tiny", prompt="오늘", max_tokens=6, temperature=1.0, seed=11, n=1,
                                      best_of=5)
    assert plain.choices[0].logprobs is None and plain.choices[0].text == ranked[0].text


def test_max_tokens_zero_needs_echo(server):
    r = httpx.post(server + "/v1/completions", json={"prompt": "오늘", "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_two_models_in_one_server(tiny_checkpoint, tmp_path, tiny_tokenizer):
    from hangpt.checkpoint import save_checkpoint
    from hangpt.models import GPT, GPTConfig

    torch.manual_seed(1)
    other = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                          bos_token_id=tiny_tokenizer.eos_id, eos_token_id=tiny_tokenizer.eos_id))
    save_checkpoint(tmp_path / "small", other, tiny_tokenizer, {"stage": "pretrain"})
    with running_server({"tiny": tiny_checkpoint, "small": tmp_path / "small"}) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        cards = client.models.list().data
        assert [(m.id, m.max_model_len) for m in cards] == [("tiny", 128), ("small", 64)]
        answers = {}
        for name in ("tiny", "small"):
            r = client.completions.create(model=name, prompt="오늘", max_tokens=5, temperature=0,
                                          logit_bias={str(tiny_tokenizer.eos_id): -100})
            assert r.model == name
            answers[name] = r.choices[0].text
        expected = {name: load_checkpoint(d) for name, d in (("tiny", tiny_checkpoint), ("small", tmp_path / "small"))}
        from hangpt.engine import Engine, GenerationConfig

        for name, ckpt in expected.items():
            config = GenerationConfig(max_new_tokens=5, logit_bias={tiny_tokenizer.eos_id: -100.0})
            assert Engine(ckpt.model, ckpt.tokenizer).generate(["오늘"], config)[0][0].text == answers[name]
        scores = [client.completions.create(model=name, prompt="오늘 날씨가", max_tokens=0, echo=True, logprobs=0)
                  .choices[0].logprobs.token_logprobs[1:] for name in ("tiny", "small")]
        assert scores[0] != scores[1]  # each request ran on its own model
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="big", prompt="오늘", max_tokens=2)
        assert httpx.get(url + "/playground/config").json()["models"] == ["tiny", "small"]


def test_cli_flags_and_request_fields_share_one_definition():
    from dataclasses import fields

    from hangpt.cli.options import _generation_flags
    from hangpt.engine import GenerationConfig
    from hangpt.serve.schemas import SamplingFields

    defined = {f.name: f.metadata["help"] for f in fields(GenerationConfig)}
    flags = {name: option(lambda: None).__click_params__[0] for name, option in _generation_flags().items()}
    assert set(flags) == set(defined) and all(flags[n].help == defined[n] for n in defined)
    for name in ("top_p", "min_p", "presence_penalty", "repetition_penalty", "valid_utf8"):
        assert SamplingFields.model_fields[name].description == defined[name]
    with pytest.raises(Exception, match="min_p"):
        CompletionRequest(prompt="x", min_p=1.5)
