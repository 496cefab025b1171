"""The formulas of preference learning and RLHF, as pure functions of tensors.

Kept apart from the training code so each can be checked on hand-made numbers: the pairwise reward
loss (InstructGPT), the sigmoid DPO loss (as TRL defines it), per-token log-probs, the KL-shaped
PPO rewards, GAE, advantage whitening, and PPO's clipped policy and value losses.
Masks are float or bool tensors of the same shape, 1 where a token counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                         margin: torch.Tensor | None = None) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected [- margin]), averaged over pairs."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO: per-pair losses -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), and
    the implicit rewards beta * (pi - ref) of chosen and rejected (detached), as TRL logs them.
    Inputs are summed log-probs of each answer."""
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def next_token_loss(lm_head, hidden: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ids[:, 1:] predicted from hidden[:, :-1] where keep (B, T-1) is True.

    The vocabulary projection runs only at the kept positions, which skips most of the lm_head work
    (prompts, padding) on a CPU."""
    return vocab_cross_entropy(lm_head, hidden[:, :-1][keep], ids[:, 1:][keep], reduction)


def vocab_cross_entropy(lm_head, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """F.cross_entropy(lm_head(hidden), targets) for hidden (N, H) and targets (N,), through the
    fused `LinearCrossEntropy` when the head is a plain nn.Linear (a LoRA-wrapped head goes the
    ordinary way)."""
    if type(lm_head) is not torch.nn.Linear or not torch.is_grad_enabled():
        return F.cross_entropy(lm_head(hidden).float(), targets, reduction=reduction)
    total = LinearCrossEntropy.apply(hidden, lm_head.weight, lm_head.bias, targets)
    return total / max(len(targets), 1) if reduction == "mean" else total


def _onednn_linear():
    """oneDNN's fp32 GEMM (torch's private `mkldnn::_linear_pointwise`, which inductor uses), or None.
    For the head's shapes it is 20-30% faster than the MKL GEMM behind F.linear on a CPU whose
    vector units MKL does not use fully (AMD EPYC with AVX-512: one 4096-token head pass, forward
    and both gradients, 341 instead of 444 ms)."""
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


ONEDNN_LINEAR = _onednn_linear()


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T + bias` against `targets`, with the gradients
    computed in the same pass, a chunk of rows at a time.

    The logits of a whole batch (tokens x vocabulary, 134 MB for 16 x 256 tokens and 8192 words)
    are never stored: each chunk's logits become its softmax in place, minus one at the target is
    d(loss)/d(logits), and two matmuls turn that into the gradients of hidden and of the head, while
    the chunk is still in the CPU's last-level cache. The matmuls are the ones autograd would run;
    what is saved is log_softmax's separate passes over memory, forward and backward. Since the loss
    is a sum, the backward pass only scales the stored gradients by the incoming scalar.

    Under autocast the head is cast to the autocast dtype once per call, not once per chunk (autocast
    caches casts only where autograd records them, which it does not inside a Function).

    A chunk has at least MIN_ROWS rows: each chunk reads the whole head twice, and with a large
    vocabulary (Qwen2.5's 151,936 words x 896: 544 MB) 16-row chunks made those reads, not the
    arithmetic, the cost (252 answer tokens: 3.9 s of CPU time in 16-row chunks, 1.7 s in one chunk
    of 256 rows, with other processes sharing the memory bus)."""

    # logits per chunk (32 MB in fp32) when that is at least MIN_ROWS rows; with freed memory kept
    # (hangpt/memory.py), 1024-row chunks of an 8192-word head beat 256-row ones by 3% (fp32) and 5% (bf16)
    CHUNK_ELEMENTS = 1 << 23
    MIN_ROWS = 256

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        rows = max(LinearCrossEntropy.MIN_ROWS, LinearCrossEntropy.CHUNK_ELEMENTS // weight.shape[0])
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        x, w = hidden.to(dtype), weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        onednn = ONEDNN_LINEAR is not None and device == "cpu" and dtype == torch.float32 == weight.dtype
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want_bias else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, x.shape[0], rows):
            h, t = x[start:start + rows], targets[start:start + rows]
            logits = ONEDNN_LINEAR(h, w, b, "none", [], "") if onednn else F.linear(h, w, b)
            grad_logits = logits.float()
            picked = grad_logits.gather(1, t[:, None])
            top = grad_logits.amax(1, keepdim=True)
            norm = grad_logits.sub_(top).exp_().sum(1, keepdim=True)  # no copy for logsumexp
            total += (top + norm.log() - picked).sum()
            grad_logits.div_(norm)  # the softmax, in place
            grad_logits[torch.arange(len(t), device=t.device), t] -= 1  # softmax - one-hot
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
            grad_logits = grad_logits.to(dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + rows] = (ONEDNN_LINEAR(grad_logits, w.t(), None, "none", [], "")
                                                   if onednn else grad_logits @ w)
            if grad_weight is not None:
                if dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.t(), h)  # no product temporary to add
                else:
                    grad_weight += grad_logits.t() @ h
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = hidden.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grads = ctx.saved_tensors
        dtypes = (*ctx.dtypes, ctx.dtypes[1])
        return (*(None if g is None else (g * grad_total).to(d) for g, d in zip(grads, dtypes)), None)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[b, t]) under logits[b, t] (logits already aligned with the tokens they predict)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position (nats)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (TRL's whitening of advantages)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.to(x.dtype).sum()
    if n > 1:
        var = var * n / (n - 1)  # unbiased, as TRL
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def kl_penalized_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (logp - logp_ref) on every response token, plus the reward
    model's score on the last one. Returns (rewards, per-token kl); both are 0 outside the mask."""
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards[torch.arange(rewards.shape[0]), last] += scores.to(rewards.dtype)
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over response tokens (B, T), responses left-aligned and
    padded on the right. The value after the last token is 0. Returns (advantages, returns)."""
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, advantages + values


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1-e, 1+e)), r = pi/pi_old.
    Returns (loss, fraction of tokens where the clipped term was the larger)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip_range: float) -> torch.Tensor:
    """0.5 * mean max((v - R)^2, (v_clipped - R)^2), v_clipped = old + clip(v - old, -e, e)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """GRPO's advantage of each completion: its reward minus the mean reward of its group (the
    num_generations consecutive completions of one prompt), divided by std + 1e-4 with the std
    (Bessel-corrected) taken per group ("group"), over the batch ("batch") or not at all ("none"),
    as TRL's GRPOTrainer computes it. A group of one completion has advantage 0."""
    grouped = rewards.view(-1, num_generations)
    advantages = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    if scale_rewards == "group":
        std = grouped.std(1, keepdim=True) if num_generations > 1 else torch.zeros_like(grouped)
        return advantages / (std.expand_as(grouped).reshape(-1) + 1e-4)
    if scale_rewards == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.zeros_like(rewards[0])
        return advantages / (std + 1e-4)
    return advantages


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate exp(ref - logp) - (ref - logp) - 1 on samples of pi
    (Schulman's k3: unbiased, never negative, low variance)."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              epsilon_low: float, epsilon_high: float, beta: float = 0.0, ref_logprobs: torch.Tensor | None = None,
              loss_type: str = "dapo", max_completion_length: int | None = None) -> tuple[torch.Tensor, dict]:
    """TRL's GRPO loss: per token -min(r A, clip(r, 1-eps_low, 1+eps_high) A) + beta * k3 KL to the
    reference, r = pi/pi_old, A the completion's advantage (B,), reduced as `loss_type` says:
    "grpo" the mean over completions of each one's token mean; "bnpo" and "dapo" the mean over all
    tokens of the batch; "dr_grpo" the sum over tokens / (B * max_completion_length).
    Returns (loss, {"kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"})."""
    mask = mask.to(logprobs.dtype)
    advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    stats = {}
    if ref_logprobs is not None:
        kl = k3_kl(logprobs, ref_logprobs)
        stats["kl"] = masked_mean(kl.detach(), mask)
        if beta:
            per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = masked_mean(per_token, mask)
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    low = (ratio < 1 - epsilon_low) & (advantages < 0)
    high = (ratio > 1 + epsilon_high) & (advantages > 0)
    stats.update({"clip_ratio/low_mean": masked_mean(low.float(), mask), "clip_ratio/high_mean": masked_mean(high.float(), mask),
                  "clip_ratio/region_mean": masked_mean((low | high).float(), mask)})
    return loss, stats
