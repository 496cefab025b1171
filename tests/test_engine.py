"""The engine on its own: KV cache vs full forward, seeds, stop strings, streaming, per-row batches,
penalties, log-probabilities, errors, and the `hangpt generate` command."""

import json

import pytest
import torch

from hangpt.checkpoint import load_checkpoint
from hangpt.cli import main
from hangpt.engine import Engine, GenerationConfig
from hangpt.errors import InputError


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(0)
    with torch.no_grad():  # peaked, varied next-token distributions instead of near-uniform ones
        for p in ckpt.model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return Engine(ckpt.model, ckpt.tokenizer)


def no_eos(**kwargs):
    return GenerationConfig(eos_token_id=[], **kwargs)


def test_kv_cache_equals_full_forward_greedy_100_tokens(engine):
    prompt = engine.encode("오늘 날씨가")
    got = engine.generate([prompt], no_eos(max_new_tokens=100))[0][0].token_ids
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(100):
            ids.append(int(engine.model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert got == ids[len(prompt):]


def test_engine_follows_weights_that_change_in_place(tiny_checkpoint):
    """The engine keeps a transposed copy of the LM head for speed; training the model (as PPO does
    between rollouts) must be seen by the next generation."""
    ckpt = load_checkpoint(tiny_checkpoint)
    engine = Engine(ckpt.model, ckpt.tokenizer)
    hidden = torch.randn(3, ckpt.model.config.hidden_size)
    cfg = no_eos(max_new_tokens=8)
    engine.generate(["저는"], cfg)
    torch.testing.assert_close(engine.next_token_logits(hidden), ckpt.model.lm_head(hidden))
    with torch.no_grad():
        ckpt.model.lm_head.weight.mul_(-2.0)
    torch.testing.assert_close(engine.next_token_logits(hidden), ckpt.model.lm_head(hidden))
    after = engine.generate(["저는"], cfg)[0][0].token_ids
    assert after == Engine(ckpt.model, ckpt.tokenizer).generate(["저는"], cfg)[0][0].token_ids


def test_no_prompts_give_no_completions(engine):
    """An empty list is an empty batch, not an error (callers slice prompt lists to zero)."""
    assert engine.generate([], no_eos(max_new_tokens=4)) == []
    assert engine.generate([], no_eos(max_new_tokens=4, num_beams=2)) == []


def test_seed_repeats_and_differs(engine):
    cfg = no_eos(max_new_tokens=20, do_sample=True, top_k=50, top_p=0.95, seed=7)
    a = engine.generate(["저는"], cfg)[0][0].token_ids
    assert engine.generate(["저는"], cfg)[0][0].token_ids == a
    cfg.seed = 8
    assert engine.generate(["저는"], cfg)[0][0].token_ids != a


def test_batched_sampling_rows_are_independent_of_each_other(engine):
    """n sequences from one seed are different from each other but repeat as a whole."""
    cfg = no_eos(max_new_tokens=15, do_sample=True, seed=3, num_return_sequences=3)
    first = [c.token_ids for c in engine.generate(["저는"], cfg)[0]]
    assert len({tuple(t) for t in first}) == 3
    assert [c.token_ids for c in engine.generate(["저는"], cfg)[0]] == first


def test_stop_string_is_not_returned(engine):
    full = engine.generate(["오늘"], no_eos(max_new_tokens=30))[0][0]
    stop = full.text[8:11]
    cut = full.text.index(stop)
    c = engine.generate(["오늘"], no_eos(max_new_tokens=30, stop=[stop]))[0][0]
    assert c.finish_reason == "stop" and c.text == full.text[:cut]
    assert full.token_ids[: len(c.token_ids)] == c.token_ids
    assert len(engine.tokenizer.decode(c.token_ids)) <= cut
    beam = engine.generate(["오늘"], no_eos(max_new_tokens=30, num_beams=2, stop=[stop]))[0][0]
    assert stop not in beam.text


def test_stream_concatenates_to_generate(engine):
    for cfg in (no_eos(max_new_tokens=25), no_eos(max_new_tokens=25, stop=["요"]),
                GenerationConfig(max_new_tokens=25, do_sample=True, seed=1)):
        done = engine.generate(["오늘 날씨가"], cfg)[0][0]
        events = list(engine.stream("오늘 날씨가", cfg))
        assert all(e.index == 0 for e in events) and events[-1].finish_reason == done.finish_reason
        assert all(e.finish_reason is None for e in events[:-1])
        assert "".join(e.text for e in events) == done.text
        assert [t for e in events for t in e.token_ids] == done.token_ids


def test_stream_holds_back_a_possible_stop_string(tiny_tokenizer):
    from hangpt.engine.text import TextStream

    ts = TextStream(tiny_tokenizer, ["<|user|>"])
    ids = tiny_tokenizer.encode("안녕 <|us")
    ts.add(ids)
    assert ts.release() == "안녕 "  # "<|us" might become the stop string
    ids = ids + tiny_tokenizer.encode("er|>")
    assert ts.add(ids) and ts.release(ids) == ""


def test_stream_batch_rows_keep_their_own_settings_and_can_be_cancelled(engine):
    prompts = [engine.encode(t) for t in ("오늘", "저는 한국어를", "인공지능은")]
    configs = [no_eos(max_new_tokens=12), no_eos(max_new_tokens=5, do_sample=True, seed=4),
               no_eos(max_new_tokens=12, repetition_penalty=1.5)]
    alone = [engine.generate([p], c)[0][0] for p, c in zip(prompts, configs)]
    together: dict[int, list] = {0: [], 1: [], 2: []}
    finish = {}
    for e in engine.stream_batch(list(zip(prompts, configs))):
        together[e.index] += e.token_ids
        finish[e.index] = e.finish_reason
    assert [together[i] for i in range(3)] == [c.token_ids for c in alone]
    assert finish == {0: "length", 1: "length", 2: "length"}

    seen = set()
    for e in engine.stream_batch(list(zip(prompts, configs)), is_cancelled=lambda i: i == 2 and bool(seen)):
        seen.add(e.index)
        assert e.index != 2 or e.finish_reason is None
    assert seen >= {0, 1}


def test_penalties_and_logit_bias_change_what_is_chosen(engine):
    base = engine.generate(["오늘"], no_eos(max_new_tokens=20))[0][0].token_ids
    assert len(set(base)) < len(base)  # this model repeats itself...
    for kw in (dict(frequency_penalty=2.0), dict(presence_penalty=2.0), dict(no_repeat_ngram_size=1)):
        ids = engine.generate(["오늘"], no_eos(max_new_tokens=20, **kw))[0][0].token_ids
        assert ids != base
    ids = engine.generate(["오늘"], no_eos(max_new_tokens=20, no_repeat_ngram_size=1))[0][0].token_ids
    assert len(set(ids)) == len(ids)
    banned = engine.generate(["오늘"], no_eos(max_new_tokens=20, logit_bias={base[0]: -100}))[0][0].token_ids
    assert base[0] not in banned
    forced = engine.generate(["오늘"], no_eos(max_new_tokens=5, logit_bias={42: 100}))[0][0].token_ids
    assert forced == [42] * 5


def test_logprobs(engine):
    c = engine.generate(["오늘"], no_eos(max_new_tokens=6, logprobs=3))[0][0]
    assert len(c.logprobs) == 6
    for tok, entry in zip(c.token_ids, c.logprobs):
        assert entry["id"] == tok and entry["logprob"] <= 0 and len(entry["top"]) == 3
        assert entry["top"][0]["id"] == tok  # greedy picks the most likely token
        assert entry["top"][0]["logprob"] == pytest.approx(entry["logprob"])


def test_eos_stops_and_is_not_returned(engine):
    first = engine.generate(["오늘"], no_eos(max_new_tokens=10))[0][0].token_ids
    c = engine.generate(["오늘"], GenerationConfig(max_new_tokens=10, eos_token_id=first[3]))[0][0]
    assert c.finish_reason == "stop" and c.token_ids == first[: first.index(first[3])]


def test_generation_stops_at_the_context_length(engine):
    n_ctx = engine.model.config.context_length
    prompt = [5] * (n_ctx - 3)
    c = engine.generate([prompt], no_eos(max_new_tokens=50))[0][0]
    assert len(c.token_ids) == 4 and c.finish_reason == "length"


@pytest.mark.parametrize("kwargs, field", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-1.0), "temperature"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "num_return_sequences"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(min_p=2.0), "min_p"), (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(logprobs=50), "logprobs"), (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(stop=[""]), "stop"), (dict(logit_bias={1: 500}), "logit_bias"),
])
def test_bad_settings_give_one_clear_line(engine, kwargs, field):
    with pytest.raises(InputError) as e:
        engine.generate(["오늘"], GenerationConfig(**kwargs))
    assert field in str(e.value) and "\n" not in str(e.value)


def test_bad_prompts(engine):
    with pytest.raises(InputError, match="longer than the model's context"):
        engine.generate([[1] * (engine.model.config.context_length + 1)], GenerationConfig())
    with pytest.raises(InputError, match="outside the vocabulary"):
        engine.generate(["오늘"], GenerationConfig(logit_bias={10**6: 1.0}))


def test_cli_generate_json(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tiny_checkpoint), "--prompt", "오늘 날씨가", "--max-new-tokens", "5",
              "--num-beams", "3", "--num-return-sequences", "2", "--json"])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["completions"]) == 2
    for c in out["completions"]:
        assert set(c) == {"text", "token_ids", "finish_reason"} and c["finish_reason"] in ("stop", "length")
        assert len(c["token_ids"]) <= 5


def test_cli_generate_stream_and_chat(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tiny_checkpoint), "--prompt", "안녕", "--chat", "--system", "친절하게",
              "--do-sample", "--seed", "1", "--max-new-tokens", "6", "--stream", "--json"])
    assert e.value.code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["finish_reason"] in ("stop", "length")


def test_cli_bad_top_p_is_one_error_line(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tiny_checkpoint), "--prompt", "오늘", "--top-p", "1.5"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --top-p 1.5: must be in (0, 1]"
