"""GRPO: the formulas equal TRL GRPOTrainer's (transcribed below from trl/trainer/grpo_trainer.py and
utils.nanstd) on hand-made tensors, and GRPO with a rule reward raises that reward on held-out
prompts with the KL to the reference bounded."""

import json

import pytest
import torch

from hangpt.train.losses import group_advantages, grpo_loss, k3_kl, masked_mean


# -- TRL's definitions, as its code writes them ----------------------------------------------------
def _trl_nanstd(x, dim):
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    return torch.sqrt(variance * count / (count - 1)).squeeze(dim)


def _trl_advantages(rewards, G, scale_rewards):
    mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G)
    if scale_rewards == "group":
        std = _trl_nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)
    else:
        std = _trl_nanstd(rewards, dim=0).expand_as(rewards)
    return (rewards - mean) / (std + 1e-4)


def _trl_loss(logps, old_logps, ref_logps, advantages, mask, eps_low, eps_high, beta, loss_type, max_len):
    coef_1 = torch.exp(logps - old_logps)
    per_token_kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    advantages = advantages.unsqueeze(1)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages) + beta * per_token_kl
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_len)
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)  # bnpo; dapo with one process, no accumulation


REWARDS = torch.tensor([1.0, 0.0, 0.5, 2.0, -1.0, -1.0, 3.0, 0.25])


@pytest.mark.parametrize("G", [2, 4, 8])
@pytest.mark.parametrize("scale", ["group", "batch"])
def test_group_advantages_equal_trl(G, scale):
    assert torch.allclose(group_advantages(REWARDS, G, scale), _trl_advantages(REWARDS, G, scale), atol=1e-6)


def test_group_advantages_by_hand():
    # group (1, 0): mean 0.5, unbiased std 0.7071 -> +-0.5 / 0.7072
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5]) / (2 ** -0.5 + 1e-4))
    assert torch.equal(group_advantages(REWARDS, 4, "none"), REWARDS - REWARDS.view(2, 4).mean(1).repeat_interleave(4))


def test_one_answer_per_prompt_or_equal_rewards_give_zero_advantage():
    assert torch.equal(group_advantages(REWARDS, 1), torch.zeros(8))
    equal = torch.tensor([0.7, 0.7, 0.7, 0.7, 2.0, 2.0, 2.0, 2.0])
    assert torch.equal(group_advantages(equal, 4), torch.zeros(8))


def test_k3_kl():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5, -3.0]), torch.tensor([-1.0, -1.0, -2.0, -0.1])
    d = ref - logp
    assert torch.allclose(k3_kl(logp, ref), torch.exp(d) - d - 1)
    assert k3_kl(logp, ref)[0] == 0 and (k3_kl(logp, ref) >= 0).all()
    # unbiased: the mean of k3 over samples of p is KL(p || q)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    exact = (p * (p / q).log()).sum()
    assert torch.allclose((p * k3_kl(p.log(), q.log())).sum(), exact, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_equals_trl(loss_type, beta):
    g = torch.Generator().manual_seed(0)
    B, T = 4, 5
    old = -torch.rand(B, T, generator=g) * 3
    logp = old + torch.randn(B, T, generator=g) * 0.4  # ratios far enough from 1 to clip
    ref = old + torch.randn(B, T, generator=g) * 0.3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)
    adv = torch.tensor([1.5, -0.5, -1.0, 0.2])
    loss, stats = grpo_loss(logp, old, adv, mask, 0.2, 0.28, beta, ref, loss_type, max_completion_length=T)
    assert torch.allclose(loss, _trl_loss(logp, old, ref, adv, mask, 0.2, 0.28, beta, loss_type, T), atol=1e-6)
    ratio = torch.exp(logp - old)
    low = ((ratio < 0.8) & (adv[:, None] < 0)).float()
    high = ((ratio > 1.28) & (adv[:, None] > 0)).float()
    assert 0 < stats["clip_ratio/region_mean"] < 1
    assert torch.allclose(stats["clip_ratio/region_mean"], masked_mean(torch.maximum(low, high), mask))
    assert torch.allclose(stats["kl"], masked_mean(k3_kl(logp, ref), mask))


def test_grpo_loss_gradient_at_ratio_one_is_advantage_weighted_logprob():
    """num_iterations=1: old = logp.detach(), so the policy term's gradient is -A * grad log pi."""
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    adv, mask = torch.tensor([2.0, -1.0]), torch.ones(2, 2)
    loss, _ = grpo_loss(logp, logp.detach(), adv, mask, 0.2, 0.2, loss_type="bnpo")
    loss.backward()
    assert torch.allclose(logp.grad, -adv[:, None].expand(2, 2) / 4)


# -- behaviour -------------------------------------------------------------------------------------
QUESTIONS = ["오늘 날씨 어때", "주말에 뭐 했어", "배고파", "무엇을 공부해", "영화 봤어", "봄은 어때", "모델은 뭐 해", "친구 만났어"]
HELD_OUT = ["오늘 기분 어때", "뭐 먹었어", "어디 갔어", "뭐 좋아해"]
POLITE = ["날씨가 정말 좋네요.", "영화를 봤어요.", "김치찌개를 먹었어요.", "한국어를 공부하고 있어요."]
PLAIN = ["날씨가 정말 좋다.", "영화를 봤다.", "김치찌개를 먹었다.", "한국어를 공부한다."]


@pytest.fixture(scope="module")
def sft_both_styles(tiny_checkpoint, tmp_path_factory):
    """The tiny model fine-tuned on answers that end in 요. or in 다., half each."""
    from hangpt.train.loop import TrainConfig
    from hangpt.train.sft import train_sft

    out = tmp_path_factory.mktemp("grpo") / "sft"
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q in QUESTIONS for a in POLITE + PLAIN]
    train_sft(tiny_checkpoint, convs, TrainConfig(out=out, batch_size=16, lr=3e-3, max_steps=60, progress=False,
                                                save_every=1000, log_every=1000, seed=0), log=lambda *a: None)
    return out


def _ends_polite(tokenizer):
    def score(prompts, responses):
        texts = [tokenizer.decode([t for t in r if t != tokenizer.eos_id]) for r in responses]
        return [1.0 if t.strip().endswith("요.") else 0.0 for t in texts]

    return score


def _held_out_reward(model_dir) -> float:
    from hangpt.checkpoint import load_checkpoint
    from hangpt.templates import template_for
    from hangpt.train.rollout import sample_responses

    ckpt = load_checkpoint(model_dir)
    template = template_for(ckpt.meta, ckpt.tokenizer)
    ids = [template.encode_prompt(ckpt.tokenizer, [{"role": "user", "content": p}]) for p in HELD_OUT]
    responses = sample_responses(ckpt.model, ckpt.tokenizer, ids, 16, 1.0, seed=123, per_prompt=16)
    rewards = _ends_polite(ckpt.tokenizer)(HELD_OUT, responses)
    return sum(rewards) / len(rewards)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_raises_rule_reward_on_held_out_prompts(seed, sft_both_styles, tmp_path):
    from hangpt.checkpoint import load_checkpoint
    from hangpt.train.grpo import GRPOConfig, train_grpo
    from hangpt.train.loop import TrainConfig

    tokenizer = load_checkpoint(sft_both_styles).tokenizer
    out = tmp_path / "grpo"
    cfg = TrainConfig(out=out, batch_size=16, lr=3e-3, max_steps=20, progress=False, save_every=1000, log_every=1000,
                      seed=seed, weight_decay=0.0)
    summary = train_grpo(sft_both_styles, QUESTIONS, _ends_polite(tokenizer), cfg,
                         GRPOConfig(num_generations=8, max_completion_length=16), log=lambda *a: None)
    before, after = _held_out_reward(sft_both_styles), _held_out_reward(out)
    assert after > before + 0.15, (before, after)
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    kl = [h["kl"] for h in history]  # nats per answer of at most 16 tokens, on the rollouts
    assert max(kl) < 30.0 and sum(kl[-5:]) / 5 < 15.0, kl
    assert {"reward", "reward_std", "kl", "clip_ratio/region_mean", "completion_length", "entropy"} <= set(history[-1])
    assert summary["steps"] == 20 and summary["settings"]["num_generations"] == 8
    assert load_checkpoint(out).meta["stage"] == "grpo"


def test_compare_reports_reward_judges_kl_length_and_diversity(sft_both_styles, tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    rules = tmp_path / "rules.py"
    rules.write_text("def polite(p, c):\n    return float(c.strip().endswith('요.'))\n"
                     "def short(p, c):\n    return -len(c)\n", encoding="utf-8")
    prompts = tmp_path / "held_out.txt"
    prompts.write_text("\n".join(HELD_OUT * 8), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "hangpt", "compare", "--policy", f"sft={sft_both_styles}",
                           "--policy", f"base={tiny_checkpoint}", "--prompts", str(prompts), "--reward",
                           f"python:{rules}:polite", "--judge", f"python:{rules}:short", "--judge",
                           f"python:{rules}:polite", "--max-new-tokens", "12", "--samples", "2", "--json"],
                          capture_output=True, text=True, timeout=600, check=True)
    table = json.loads(proc.stdout)
    sft, base = table["policies"]["sft"], table["policies"]["base"]
    assert sft["kl"] == 0.0 and base["kl"] > 1.0  # KL to the first policy: zero for itself
    assert sft["win/python:" + f"{rules}:short"] == 0.5  # the baseline ties with itself
    assert sft["reward"] == sft[f"judge/python:{rules}:polite"] > base["reward"]  # same spec, same samples
    assert sft["length"] <= 12 and 0 < sft["distinct2"] <= 1 and 0 < base["distinct2"] <= 1
    assert [s["prompt"] for s in table["samples"]] == HELD_OUT[:2]
