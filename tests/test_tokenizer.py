"""Byte-level BPE: training, special tokens, Korean round trips, files, and the tokenizer command."""

from __future__ import annotations

import json
import unicodedata

import pytest
from click.testing import CliRunner

from conftest import SHARED_DATA, make_corpus
from hangpt.cli import cli
from hangpt.errors import InputError
from hangpt.tokenizer import EOS, SPECIAL_TOKENS, Tokenizer, bytes_per_token, train_tokenizer


def test_special_tokens_come_first_and_stay_whole(tiny_tokenizer):
    assert [tiny_tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tiny_tokenizer.eos_id == 0 and tiny_tokenizer.pad_id == 1
    ids = tiny_tokenizer.encode("안녕<|endoftext|>")
    assert ids[-1] == tiny_tokenizer.eos_id


@pytest.mark.parametrize("text", ["오늘 날씨가 정말 좋네요.", "뷁 햏 똠얌꿍 🙂 ÷ \t end", "English and 한국어 mixed, 123!"])
def test_any_text_round_trips(tiny_tokenizer, text):
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


def test_decomposed_korean_is_normalized(tiny_tokenizer):
    composed = "한국어를 공부하고 있어요"
    assert tiny_tokenizer.encode(unicodedata.normalize("NFD", composed)) == tiny_tokenizer.encode(composed)


def test_learned_merges_make_korean_compact(tiny_tokenizer):
    """Frequent Korean words become single tokens rather than 3 bytes per syllable."""
    held_out = ["인공지능은 다음 단어를 예측하도록 학습됩니다.", "주말에 친구와 영화를 봤어요."]
    assert bytes_per_token(tiny_tokenizer, held_out) > 4
    assert tiny_tokenizer.pieces(tiny_tokenizer.encode(" 날씨가 단어를")) == [" 날씨가", " 단어를"]


def test_vocab_size_is_respected_and_too_small_refused():
    tok = train_tokenizer(iter(make_corpus(100)), vocab_size=300)
    assert tok.vocab_size <= 300
    with pytest.raises(InputError, match="too small"):
        train_tokenizer(iter(["a"]), vocab_size=100)


def test_save_load_and_transformers_agree(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    text = "저는 한국어를 공부하고 있어요.<|endoftext|>"
    assert loaded.encode(text) == tiny_tokenizer.encode(text) and loaded.eos_token == EOS
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf(text)["input_ids"] == tiny_tokenizer.encode(text)
    assert hf.eos_token == EOS


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="tokenizer.json: not a valid tokenizer file"):
        Tokenizer.load(tmp_path)


def test_tokenizer_command(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(300)) + "\n", encoding="utf-8")
    runner = CliRunner()
    r = runner.invoke(cli, ["tokenizer", "train", "--data", str(corpus), "--out", str(tmp_path / "tok"),
                            "--vocab-size", "400", "--json"], catch_exceptions=False)
    summary = json.loads(r.output)
    assert summary["vocab_size"] <= 400 and summary["held_out_bytes_per_token"] > 2
    r = runner.invoke(cli, ["tokenizer", "encode", "--model", str(tmp_path / "tok"), "--text", " 날씨가 단어를", "--json"])
    enc = json.loads(r.output)
    assert len(enc["ids"]) == len(enc["pieces"]) and enc["pieces"][0] == " 날씨가"
    r = runner.invoke(cli, ["tokenizer", "decode", "--model", str(tmp_path / "tok"), *map(str, enc["ids"])])
    assert r.output == " 날씨가 단어를\n"
    r = runner.invoke(cli, ["tokenizer", "decode", "--model", str(tmp_path / "tok"), "99999"])
    assert isinstance(r.exception, InputError) and "outside the vocabulary" in str(r.exception)


@pytest.mark.skipif(not (SHARED_DATA / "korean_text").is_dir(), reason="needs ../shared/data/korean_text")
def test_held_out_bytes_per_token_on_real_korean_text():
    """8192 merges learned on Korean news cover common syllables and words: an unseen article
    collection (fairy tales) still packs well over one syllable (3 bytes) per token."""
    from hangpt.data.text import iter_documents

    tok = train_tokenizer(iter_documents([SHARED_DATA / "korean_text" / "txt_wikinews.txt"]), vocab_size=8192)
    held_out = list(iter_documents([SHARED_DATA / "korean_text" / "txt_fairytale01.txt"]))
    assert bytes_per_token(tok, held_out) > 3.0
