"""PPO on a tiny model with a synthetic reward: the reward rises while KL stays bounded; the run
checkpoints, resumes after an interruption, and saves a causal LM plus the value head."""

import json
import signal

import pytest
import torch

from hangpt.train.loop import TrainConfig
from hangpt.train.ppo import PPOConfig
from hangpt.train.rollout import Rollout

PROMPTS = ["오늘 날씨", "주말에 뭐 해?", "배고파", "공부하기 싫어", "영화 추천해 줘", "봄이 좋아", "잠이 안 와", "안녕"]


def _target_tokens(tokenizer):
    """About a tenth of the vocabulary: the reward counts how many answer tokens fall in it."""
    return {i for i in range(tokenizer.vocab_size) if i % 10 == 3}


def _counting_scorer(targets, calls=None, interrupt_at=None):
    def score(prompts, responses):
        if calls is not None:
            calls.append(1)
            if interrupt_at and len(calls) == interrupt_at:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C: the step finishes, then the run saves and stops
        return [float(sum(t in targets for t in r)) for r in responses]

    return score


def _cfg(out, **kw):
    base = dict(out=out, batch_size=16, lr=3e-3, max_steps=30, save_every=1000, log_every=1000, progress=False,
                seed=0, warmup_fraction=0.0, min_lr_ratio=1.0, weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


def test_rollout_layout_aligns_responses():
    roll = Rollout.build([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], pad_id=0)
    assert roll.prompt_width == 3
    assert roll.ids.tolist() == [[5, 6, 7, 1, 2, 0], [0, 0, 8, 3, 4, 9]]
    assert roll.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert roll.position_ids.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]


def test_ppo_raises_synthetic_reward_with_bounded_kl(tmp_path, tiny_checkpoint):
    from hangpt.checkpoint import load_checkpoint
    from hangpt.train.ppo import train_ppo

    targets = _target_tokens(load_checkpoint(tiny_checkpoint).tokenizer)
    ppo = PPOConfig(mini_batch_size=8, ppo_epochs=2, max_new_tokens=8, kl_coef=0.1)
    out = tmp_path / "ppo"
    summary = train_ppo(tiny_checkpoint, PROMPTS, _counting_scorer(targets), _cfg(out, lr=1e-2, max_steps=16),
                        ppo, log=lambda *a: None)
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    mean = lambda hs, k: sum(h[k] for h in hs) / len(hs)  # noqa: E731
    start, end = mean(history[:3], "reward"), mean(history[-3:], "reward")
    assert end > start + 1.5, (start, end)  # 8 answer tokens, ~0.8 target tokens at the start
    # bounded: PPO maximises reward - kl_coef * KL, which the reference already scores at `start`
    assert max(h["kl"] for h in history) < 40.0
    assert mean(history[-3:], "kl") <= (end - start) / ppo.kl_coef + 5.0
    assert {"reward", "kl", "entropy", "clipfrac", "value_loss", "policy_loss"} <= set(history[-1])
    assert summary["steps"] == 16
    assert (out / "reward_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_ppo_interrupt_resume_and_checkpoint_layout(tmp_path, tiny_checkpoint):
    from hangpt.checkpoint import load_checkpoint
    from hangpt.errors import Interrupted
    from hangpt.train.ppo import train_ppo

    targets = _target_tokens(load_checkpoint(tiny_checkpoint).tokenizer)
    ppo = PPOConfig(mini_batch_size=4, ppo_epochs=1, max_new_tokens=6)
    out = tmp_path / "ppo"
    calls = []
    with pytest.raises(Interrupted, match="interrupted at step 3"):
        train_ppo(tiny_checkpoint, PROMPTS, _counting_scorer(targets, calls, interrupt_at=3),
                  _cfg(out, batch_size=4, max_steps=4), ppo, log=lambda *a: None)
    assert (out / "train_state.pt").exists()
    summary = train_ppo(tiny_checkpoint, PROMPTS, _counting_scorer(targets), _cfg(out, batch_size=4, max_steps=4,
                        resume=True), ppo, log=lambda *a: None)
    assert summary["steps"] == 4
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    straight = tmp_path / "straight"
    train_ppo(tiny_checkpoint, PROMPTS, _counting_scorer(targets), _cfg(straight, batch_size=4, max_steps=4), ppo,
              log=lambda *a: None)
    ckpt = load_checkpoint(out)
    assert torch.equal(ckpt.model.lm_head.weight, load_checkpoint(straight).model.lm_head.weight)  # exact resume
    assert ckpt.meta["stage"] == "ppo" and ckpt.meta["base_model"]["path"] == str(tiny_checkpoint)
    assert tuple(ckpt.extra_tensors["v_head.weight"].shape) == (1, 64)
    assert tuple(ckpt.extra_tensors["v_head.bias"].shape) == (1,)
    assert not (out / "train_state.pt").exists()
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([ckpt.tokenizer.encode("오늘 날씨")])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ckpt.model(ids).logits, atol=1e-4)
