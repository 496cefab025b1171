"""Byte-level models and UTF-8: streaming never shows half a character, and valid_utf8 decoding
never produces invalid text while equalling plain decoding when the model only picks valid tokens.

The tiny tokenizer (400 tokens) splits most Hangul syllables into single-byte tokens, and a random
model picks bytes in any order: the worst case for both."""

import random

import pytest

from hangpt.checkpoint import load_checkpoint
from hangpt.engine import Engine, GenerationConfig
from hangpt.engine.processors import _utf8_walk
from hangpt.engine.text import token_bytes


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    return Engine(ckpt.model, ckpt.tokenizer)


def valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_token_bytes_rebuild_the_text(engine):
    pieces = token_bytes(engine.tokenizer)
    text = "오늘 날씨가 정말 좋네요. The stock market 🙂 <|endoftext|>"
    ids = engine.tokenizer.encode(text)
    assert b"".join(pieces[i] for i in ids) == text.encode()
    assert sum(not valid(p) for p in pieces) > 50  # many tokens are parts of a character


def test_utf8_walk_agrees_with_python():
    rng = random.Random(0)
    edge = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xEA, 0xED, 0xEF,
            0xF0, 0xF4, 0xF5, 0xFF]
    for _ in range(20000):
        data = bytes(rng.choice(edge) for _ in range(rng.randint(1, 6)))
        assert (_utf8_walk((0, 0, 0), data) == (0, 0, 0)) == valid(data), data


def test_streaming_never_emits_a_partial_character(engine):
    split = 0
    for seed in range(12):
        config = GenerationConfig(max_new_tokens=40, do_sample=True, seed=seed)
        shown, ids = "", []
        for event in engine.stream("오늘 날씨가", config):
            shown += event.text
            ids += event.token_ids
            # what was shown never changes later: a half character would show as U+FFFD and then
            # turn into the real character
            assert engine.tokenizer.decode(ids).startswith(shown)
        assert shown == engine.tokenizer.decode(ids)
        pieces = token_bytes(engine.tokenizer)
        split += sum(not valid(pieces[i]) for i in ids)
    assert split > 20  # the model did write characters in pieces


def test_valid_utf8_never_produces_invalid_text(engine):
    pieces = token_bytes(engine.tokenizer)
    invalid_plain = 0
    for seed in range(12):
        for valid_utf8 in (False, True):
            config = GenerationConfig(max_new_tokens=40, do_sample=True, seed=seed, valid_utf8=valid_utf8)
            completion = engine.generate(["오늘 날씨가"], config)[0][0]
            data = b"".join(pieces[i] for i in completion.token_ids)
            if valid_utf8:
                assert valid(data) and "\ufffd" not in completion.text
            else:
                invalid_plain += not valid(data)
        streamed = "".join(e.text for e in engine.stream("저는", GenerationConfig(
            max_new_tokens=40, do_sample=True, seed=seed, valid_utf8=True)))
        assert "\ufffd" not in streamed
    assert invalid_plain >= 6  # without the option, this model writes broken text


def test_valid_utf8_equals_plain_decoding_when_the_model_picks_valid_tokens(engine):
    pieces = token_bytes(engine.tokenizer)
    whole = {i: 100.0 for i, p in enumerate(pieces) if p and valid(p)}  # tokens that are whole characters
    for config in (GenerationConfig(max_new_tokens=30, logit_bias=whole),
                   *(GenerationConfig(max_new_tokens=30, do_sample=True, seed=s, top_k=50, logit_bias=whole)
                     for s in range(5))):
        plain = engine.generate(["오늘", "저는 한국어"], config)
        config.valid_utf8 = True
        safe = engine.generate(["오늘", "저는 한국어"], config)
        assert [c[0].token_ids for c in safe] == [c[0].token_ids for c in plain]
