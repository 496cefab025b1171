"""Reward model training on a tiny model, its checkpoint layout, and transformers agreement."""

import json
import random

import pytest
import torch

from hangpt.data.preferences import PreferencePair
from hangpt.train.loop import TrainConfig

from conftest import KOREAN_SENTENCES


def synthetic_pairs(n: int, seed: int) -> list[PreferencePair]:
    """Chosen answers are polite ("감사합니다"), rejected ones rude: easy for a tiny model to tell."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt, body = rng.sample(KOREAN_SENTENCES, 2)
        out.append(PreferencePair(prompt, f"{body} 감사합니다.", f"{body} 싫어!"))
    return out


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, tiny_checkpoint):
    from hangpt.train.reward import train_reward_model

    out = tmp_path_factory.mktemp("rm") / "rm"
    cfg = TrainConfig(out=out, batch_size=8, lr=2e-3, max_steps=25, eval_every=1000, save_every=1000,
                      log_every=5, progress=False, seed=0)
    summary = train_reward_model(tiny_checkpoint, synthetic_pairs(160, 0), cfg, max_length=64,
                                 val_fraction=0.2, log=lambda *a: None)
    return out, summary


def test_rm_learns_held_out_preferences(trained_rm):
    out, summary = trained_rm
    assert summary["final"]["val_accuracy"] >= 0.9
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("accuracy" in h for h in history)


def test_rm_checkpoint_layout(trained_rm):
    from hangpt.checkpoint import load_checkpoint

    out, _ = trained_rm
    config = json.loads((out / "config.json").read_text())
    meta = json.loads((out / "hangpt.json").read_text())
    ckpt = load_checkpoint(out)
    assert meta["stage"] == "rm" and meta["head"]["type"] == "reward" and meta["chat_template"]["name"] == "default"
    assert config["pad_token_id"] == ckpt.tokenizer.pad_id != ckpt.tokenizer.eos_id
    assert tuple(ckpt.extra_tensors["score.weight"].shape) == (1, 64)
    assert not (out / "train_state.pt").exists()


def test_rm_scores_match_transformers_sequence_classification(trained_rm):
    transformers = pytest.importorskip("transformers")
    from hangpt.train.reward import load_reward_model, score_texts

    out, _ = trained_rm
    rm, tok, template, _ = load_reward_model(out)
    prompts = ["오늘 날씨가 정말 좋네요.", "오늘 날씨가 정말 좋네요."]
    answers = ["주말에 친구와 영화를 봤어요. 감사합니다.", "주말에 친구와 영화를 봤어요. 싫어!"]
    ours = score_texts(rm, tok, template, prompts, answers)
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(out, num_labels=1).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf.config.pad_token_id == tok.pad_id
    texts = [template.render([{"role": "user", "content": p}, {"role": "assistant", "content": a}], tok)
             for p, a in zip(prompts, answers)]
    batch = hf_tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = hf(**batch).logits.squeeze(-1).tolist()
    assert ours == pytest.approx(ref, abs=1e-4)
    assert ours[0] > ours[1]


def test_rm_rejects_a_plain_model(tiny_checkpoint):
    from hangpt.errors import InputError
    from hangpt.train.reward import load_reward_model

    with pytest.raises(InputError, match="not a reward model"):
        load_reward_model(tiny_checkpoint)


def test_pad_token_added_when_tokenizer_pads_with_eos():
    from conftest import make_corpus
    from hangpt.models import GPT, GPTConfig
    from hangpt.tokenizer import EOS, train_tokenizer
    from hangpt.train.reward import ensure_pad_token

    tok = train_tokenizer(iter(make_corpus(50)), vocab_size=300, special_tokens=[EOS])
    assert tok.pad_id == tok.eos_id  # GPT-2 style: no pad token of its own
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    ensure_pad_token(tok, model)
    assert tok.pad_id != tok.eos_id and model.config.pad_token_id == tok.pad_id
    assert model.config.vocab_size == tok.vocab_size
