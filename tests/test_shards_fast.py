"""The fast corpus encoder (tiktoken with the tokenizer's own merges) gives the Hugging Face
tokenizer's ids exactly, and steps aside for tokenizers it cannot reproduce; the corpus is read
ahead in a thread whose errors reach the caller unchanged."""

from __future__ import annotations

import random
import threading
import time
import unicodedata
from unittest import mock

import numpy as np
import pytest

from conftest import make_corpus
from hangpt.data import shards, text
from hangpt.data.prefetch import prefetch
from hangpt.data.shards import build_shards
from hangpt.errors import InputError
from hangpt.tokenizer import Tokenizer, train_tokenizer
from tokenizer_folders import kogpt2_folder

pytest.importorskip("tiktoken")

# what byte-level pre-tokenization and NFC make delicate: decomposed jamo, spaces at the ends and in
# runs, contractions, digits, emoji, punctuation runs, tabs, a lone combining mark, special tokens in text
TRICKY = [
    unicodedata.normalize("NFD", "한국어를 맥에서 입력하면 자모가 나뉩니다"),
    "  앞뒤에 공백  ", "공백   여러   칸", "it's we'll they've I'M", "2024년 12월 3일 10,000원",
    "이모지 😀👍🏽 섞인 리뷰!!!", "ㅋㅋㅋㅋㅋㅋ ㅠㅠ...?!", "탭\t문자", "\u0301로 시작", "",
    "본문 중간의 <|endoftext|> 토큰", "<|user|> 역할 표시", "ascii only: Hello, World.", "끝에 마침표 없음 ",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter(make_corpus() + TRICKY * 3), vocab_size=700)


def reference(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    return np.asarray([i for d in docs for i in [tok.eos_id, *tok.encode(d)]], dtype=np.uint32)


def test_fast_encoder_gives_the_hf_ids(tokenizer):
    assert shards._tiktoken_encoding(tokenizer.backend.to_str(), tokenizer.eos_token) is not None
    docs = make_corpus(50, seed=1) + TRICKY
    clean = [d for d in docs if "<|" not in d]  # a batch without special-token text takes the tiktoken path
    for batch in (clean, docs):
        ids, lengths = shards._encoder(tokenizer)(batch)
        assert np.array_equal(ids, reference(tokenizer, batch))
        assert lengths.tolist() == [1 + len(tokenizer.encode(d)) for d in batch]


def test_whitespace_runs_give_the_hf_ids():
    """Random runs of every kind of whitespace (and \\x1c, which Python but not Unicode counts as
    space) next to letters, digits, apostrophes and punctuation: where GPT-2's `\\s+(?!\\S)` splits."""
    rng = random.Random(0)
    alphabet = [" ", " ", "\t", "\u3000", "\xa0", "\x0b", "\x0c", "\r", "\x85", "\u2028", "\x1c",
                "가", "나다", "a", "é", "1", "٣", "'s", "'", ".", "!", "😀"]
    docs = ["".join(rng.choices(alphabet, k=rng.randint(0, 12))) for _ in range(3000)]
    tok = train_tokenizer(iter(docs), vocab_size=600)
    with mock.patch.object(tok, "encode_batch", side_effect=AssertionError("took the HF path")):
        ids, lengths = shards._encoder(tok)(docs)
    assert np.array_equal(ids, reference(tok, docs))


def test_shards_identical_with_and_without_the_fast_path(tmp_path, tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(300, seed=2) + [t for t in TRICKY if t.strip()]) + "\n", encoding="utf-8")
    fast = build_shards([corpus], tokenizer, tmp_path / "fast", val_fraction=0.1)
    with mock.patch.object(shards, "_tiktoken_encoding", lambda *a: None):
        slow = build_shards([corpus], tokenizer, tmp_path / "slow", val_fraction=0.1)
    assert fast.info == slow.info
    for name in ("train.bin", "val.bin", "val_docs.npy"):
        assert (fast.folder / name).read_bytes() == (slow.folder / name).read_bytes()
    docs = corpus.read_text(encoding="utf-8").splitlines()
    assert np.array_equal(fast.tokens("val"), reference(tokenizer, docs[9::10]))


def test_progress_bar_counts_text_bytes(tmp_path, tokenizer, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(100)) + "\n", encoding="utf-8")
    build_shards([corpus], tokenizer, tmp_path / "cache", val_fraction=0.1, progress=True)
    err = capsys.readouterr().err
    assert "tokenizing" in err and f"{corpus.stat().st_size / 1000:.1f}k" in err


def test_sentencepiece_style_tokenizer_takes_the_hf_path(tmp_path):
    tok = Tokenizer.load(kogpt2_folder(tmp_path / "kogpt2"))
    assert shards._tiktoken_encoding(tok.backend.to_str(), tok.eos_token) is None
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(60)) + "\n", encoding="utf-8")
    built = build_shards([corpus], tok, tmp_path / "cache", val_fraction=0.1)
    docs = corpus.read_text(encoding="utf-8").splitlines()
    assert np.array_equal(built.tokens("val"), reference(tok, docs[9::10]))


def prefetch_threads_end(timeout: float = 5.0) -> bool:
    for thread in [t for t in threading.enumerate() if t.name == "prefetch"]:
        thread.join(timeout)
    return not any(t.name == "prefetch" for t in threading.enumerate())


def test_batches_cut_blocks_between_documents():
    rng = random.Random(0)
    blocks = [["가" * rng.randint(1, 40) for _ in range(rng.randint(0, 30))] for _ in range(20)]
    with mock.patch.object(shards, "BATCH_CHARS", 100):
        batches = list(shards._batches(blocks))
    assert [d for _, batch in batches for d in batch] == [d for block in blocks for d in block]  # all, in order
    assert [first for first, _ in batches] == list(np.cumsum([0] + [len(b) for _, b in batches[:-1]]))
    sizes = [sum(map(len, batch)) for _, batch in batches]
    assert all(100 <= size < 140 for size in sizes[:-1]) and 0 < sizes[-1] < 140  # full, never past one document


def test_prefetch_yields_the_items_in_order():
    items = [[i] * (i % 5) for i in range(1000)]
    assert list(prefetch(iter(items), depth=3)) == items
    assert list(prefetch([], depth=1)) == []
    assert prefetch_threads_end()


def test_prefetch_raises_the_producers_error_in_the_consumer():
    def produce():
        yield 1
        yield 2
        raise InputError("corpus.txt: line 3 is not valid UTF-8")

    got = []
    with pytest.raises(InputError) as caught:
        for item in prefetch(produce()):
            got.append(item)
    assert got == [1, 2] and str(caught.value) == "corpus.txt: line 3 is not valid UTF-8"
    assert prefetch_threads_end()


def test_prefetch_stops_its_thread_when_the_consumer_stops_early():
    produced = 0

    def endless():
        nonlocal produced
        while True:
            produced += 1
            yield produced

    items = prefetch(endless(), depth=2)
    assert [next(items) for _ in range(5)] == [1, 2, 3, 4, 5]
    time.sleep(0.05)  # the producer fills the queue and waits
    items.close()
    assert prefetch_threads_end()
    assert produced <= 5 + 2 + 1  # the items consumed, the queue's, and the one being made


def test_bad_utf8_line_stops_build_shards_with_its_file_and_line(tmp_path, tokenizer):
    """Small read blocks and batches: the bad line is reached with batches being encoded and written."""
    lines = [line.encode("utf-8") for line in make_corpus(300, seed=3)]
    lines[249] = "깨진 줄".encode("cp949")
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    with mock.patch.object(text, "BLOCK_BYTES", 4096), mock.patch.object(shards, "BATCH_CHARS", 1000):
        with pytest.raises(InputError) as caught:
            build_shards([corpus], tokenizer, tmp_path / "cache", val_fraction=0.1)
    assert str(caught.value) == (f"{corpus}: line 250 is not valid UTF-8 (it looks like cp949/euc-kr: "
                                 f"convert it with `iconv -f cp949 -t utf-8`)")
    assert prefetch_threads_end()
    assert list((tmp_path / "cache").iterdir()) == []  # the partial folder is removed
