"""Shared fixtures: tiny tokenizers, models and checkpoints made on the spot (no downloads)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# a fixed thread count: results (resume == uninterrupted, C step == PyTorch) are exact only without
# hangpt/threads.py switching counts by measured speed
os.environ.setdefault("HANGPT_THREADS", str(torch.get_num_threads()))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

KOREAN_SENTENCES = [
    "오늘 날씨가 정말 좋네요.",
    "저는 한국어를 공부하고 있어요.",
    "인공지능은 다음 단어를 예측하도록 학습됩니다.",
    "주말에 친구와 영화를 봤어요.",
    "배가 고파서 김치찌개를 먹었어요.",
    "The stock market is unpredictable.",
    "언어 모델은 토큰을 하나씩 생성합니다.",
    "봄에는 꽃이 피고 여름에는 비가 많이 와요.",
]


def make_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(KOREAN_SENTENCES, 3)) for _ in range(n_lines)]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from hangpt.tokenizer import train_tokenizer

    return train_tokenizer(iter(make_corpus()), vocab_size=400)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A random tiny hangpt checkpoint folder (2 layers, 64 wide) with our tokenizer."""
    from hangpt.checkpoint import save_checkpoint
    from hangpt.models import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                    bos_token_id=tiny_tokenizer.eos_id, eos_token_id=tiny_tokenizer.eos_id)
    model = GPT(cfg)
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(out, model, tiny_tokenizer, {"stage": "pretrain"})
    return out
