"""The RLHF formulas against hand computations on small made-up tensors."""

import math

import pytest
import torch

from hangpt.train.losses import (
    dpo_loss,
    entropy_from_logits,
    gae,
    kl_penalized_rewards,
    masked_whiten,
    pairwise_reward_loss,
    ppo_policy_loss,
    ppo_value_loss,
    token_logprobs,
)


def _logsig(x):
    return -math.log1p(math.exp(-x))


def test_pairwise_reward_loss_by_hand():
    rc, rr = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.5])
    expected = -(_logsig(1.0) + _logsig(-1.0) + _logsig(0.0)) / 3
    assert abs(pairwise_reward_loss(rc, rr).item() - expected) < 1e-6
    margin = torch.tensor([0.5, 0.0, 1.0])
    expected = -(_logsig(0.5) + _logsig(-1.0) + _logsig(-1.0)) / 3
    assert abs(pairwise_reward_loss(rc, rr, margin).item() - expected) < 1e-6


def test_dpo_loss_matches_trl_sigmoid_definition():
    pc, pr = torch.tensor([-10.0, -3.0]), torch.tensor([-12.0, -2.5])
    rc, rr = torch.tensor([-11.0, -3.2]), torch.tensor([-11.5, -2.0])
    beta = 0.1
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta)
    for i in range(2):
        # TRL: logits = (pi_c - pi_r) - (ref_c - ref_r); loss = -logsigmoid(beta * logits)
        logits = (pc[i] - pr[i]).item() - (rc[i] - rr[i]).item()
        assert abs(losses[i].item() + _logsig(beta * logits)) < 1e-6
        assert abs(chosen_rewards[i].item() - beta * (pc[i] - rc[i]).item()) < 1e-6
        assert abs(rejected_rewards[i].item() - beta * (pr[i] - rr[i]).item()) < 1e-6
    # at the reference the loss is log 2
    same = dpo_loss(pc, pr, pc, pr, beta)[0]
    assert torch.allclose(same, torch.full((2,), math.log(2.0)))


def test_token_logprobs_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    lp = token_logprobs(logits, torch.tensor([[1, 0]]))
    assert torch.allclose(lp, torch.tensor([[math.log(0.5), math.log(0.75)]]))


def test_entropy_uniform_and_peaked():
    assert abs(entropy_from_logits(torch.zeros(4)).item() - math.log(4)) < 1e-6
    assert entropy_from_logits(torch.tensor([100.0, 0.0, 0.0])).item() < 1e-6


def test_kl_penalized_rewards_puts_score_on_last_token():
    logp = torch.tensor([[-1.0, -2.0, -1.0], [-0.5, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalized_rewards(logp, ref, torch.tensor([2.0, -1.0]), mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [0.5, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 2.0], [-0.05, -1.0, 0.0]]))


def _gae_reference(rewards, values, length, gamma, lam):
    adv = [0.0] * length
    last = 0.0
    for t in reversed(range(length)):
        next_v = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values[:length])]


def test_gae_against_a_plain_loop():
    torch.manual_seed(1)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    lengths = [6, 4, 1]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for b, n in enumerate(lengths):
        ref_adv, ref_ret = _gae_reference(rewards[b].tolist(), values[b].tolist(), n, 0.9, 0.8)
        assert torch.allclose(adv[b, :n], torch.tensor(ref_adv), atol=1e-5)
        assert torch.allclose(ret[b, :n], torch.tensor(ref_ret), atol=1e-5)
        assert (adv[b, n:] == 0).all()


def test_masked_whiten_zero_mean_unit_std():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 6.0, -100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    w = masked_whiten(x, mask)[mask.bool()]
    assert abs(w.mean().item()) < 1e-6
    assert abs(w.std().item() - 1.0) < 1e-4


def test_ppo_policy_loss_clips_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, clipfrac = ppo_policy_loss(new, old, adv, mask, clip_range=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped); token 2: -2.2
    assert abs(loss.item() - (-1.2 + 0.8 - 2.2) / 3) < 1e-6
    assert abs(clipfrac.item() - 2 / 3) < 1e-6
    # the mask drops the third token
    loss, _ = ppo_policy_loss(new, old, adv, torch.tensor([[1, 1, 0]]), clip_range=0.2)
    assert abs(loss.item() - (-1.2 + 0.8) / 2) < 1e-6


def test_ppo_value_loss_clips_by_hand():
    values = torch.tensor([[2.0, 0.0]])
    old = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[3.0, 0.0]])
    loss = ppo_value_loss(values, old, returns, torch.ones(1, 2), clip_range=0.2)
    # token 0: max((2-3)^2, (1.2-3)^2) = 3.24; token 1: max(0, (0.0-0)^2 for clip 0.1-0.1=0.0) = 0
    assert abs(loss.item() - 0.5 * (3.24 + 0.0) / 2) < 1e-6


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn-gemm", "torch-gemm"])
def test_fused_vocab_cross_entropy_equals_cross_entropy_of_the_head(monkeypatch, onednn):
    """Loss and every gradient equal F.cross_entropy(head(h)) across chunk boundaries, with and
    without a head bias, mean and sum, a head tied to an embedding, and under bf16 autocast; through
    oneDNN's fp32 GEMM where torch has it, and through torch's own."""
    import torch.nn.functional as F

    from hangpt.train import losses
    from hangpt.train.losses import LinearCrossEntropy, vocab_cross_entropy

    if onednn and losses.ONEDNN_LINEAR is None:
        pytest.skip("this torch build has no oneDNN linear")
    if not onednn:
        monkeypatch.setattr(losses, "ONEDNN_LINEAR", None)
    monkeypatch.setattr(LinearCrossEntropy, "CHUNK_ELEMENTS", 7 * 97)
    monkeypatch.setattr(LinearCrossEntropy, "MIN_ROWS", 16)  # 16-row chunks, the last one short
    torch.manual_seed(0)
    for bias in (False, True):
        for reduction in ("mean", "sum"):
            head = torch.nn.Linear(24, 97, bias=bias)
            hidden = torch.randn(53, 24, requires_grad=True)
            targets = torch.randint(0, 97, (53,))
            ours = vocab_cross_entropy(head, hidden, targets, reduction)
            theirs = F.cross_entropy(head(hidden), targets, reduction=reduction)
            torch.testing.assert_close(ours, theirs)
            params = [hidden, *head.parameters()]
            for a, b in zip(torch.autograd.grad(2.5 * ours, params), torch.autograd.grad(2.5 * theirs, params)):
                torch.testing.assert_close(a, b)
    emb = torch.nn.Embedding(97, 24)
    head = torch.nn.Linear(24, 97, bias=False)
    head.weight = emb.weight  # tied: the embedding's use and the head's add up
    ids, targets = torch.randint(0, 97, (40,)), torch.randint(0, 97, (40,))
    grads = [torch.autograd.grad(loss_fn(head, emb(ids), targets), emb.weight)[0]
             for loss_fn in (vocab_cross_entropy, lambda h, x, t: F.cross_entropy(h(x), t))]
    torch.testing.assert_close(*grads)
    hidden, targets = torch.randn(53, 24, requires_grad=True), torch.randint(0, 97, (53,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = vocab_cross_entropy(head, hidden, targets)
        theirs = F.cross_entropy(head(hidden).float(), targets)
    torch.testing.assert_close(ours, theirs, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(torch.autograd.grad(ours, hidden)[0], torch.autograd.grad(theirs, hidden)[0],
                               atol=2e-3, rtol=5e-2)
