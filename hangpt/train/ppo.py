"""RLHF with PPO, as in InstructGPT: the policy (actor) samples answers to prompts, a frozen reward
model scores them, a per-token KL penalty keeps it near the frozen reference (the starting
policy), and a value head on the same body (critic) gives the baseline for GAE.

One step = one batch of rollouts with the engine (plain sampling), then several epochs of
minibatch updates of the clipped policy loss + clipped value loss. The outer loop, rollouts and
checkpoints are rollout.py's, shared with GRPO.
The saved folder is a plain causal LM plus `v_head.weight`/`v_head.bias`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..errors import InputError
from .loop import TrainConfig, device, lr_at
from .losses import (
    entropy_from_logits,
    gae,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from .rewards import ScoreFn, build_scorer
from .rollout import Rollout, RolloutRun, open_policy, response_hidden, response_logprobs


@dataclass
class PPOConfig:
    mini_batch_size: int = 8
    ppo_epochs: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    sampling: dict = field(default_factory=dict)  # more GenerationConfig settings for rollouts: top_k, top_p, ...
    kl_coef: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True


class PolicyWithValue(nn.Module):
    """The GPT and a scalar value head on its final hidden states (one forward for both)."""

    def __init__(self, gpt: nn.Module, v_weight: torch.Tensor | None = None, v_bias: torch.Tensor | None = None):
        super().__init__()
        self.gpt = gpt
        self.v_head = nn.Linear(gpt.config.hidden_size, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)
        if v_weight is not None:
            self.v_head.weight.data.copy_(v_weight.reshape(1, -1))
            self.v_head.bias.data.copy_(v_bias.reshape(1))

    def forward(self, roll: "Rollout") -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, values) at the positions that predict each response token, (B, R, V) and (B, R)."""
        hidden = response_hidden(self.gpt, roll)
        return self.gpt.lm_head(hidden), self.v_head(hidden).squeeze(-1)


class PPOTrainer(RolloutRun):
    stage = "ppo"

    def __init__(self, cfg: TrainConfig, ppo: PPOConfig, policy: PolicyWithValue, reference: nn.Module | None, tokenizer,
                 prompts: list, encode_prompt: Callable[[object], list[int]], score_fn: ScoreFn,
                 save_fn: Callable[[Path, dict | None, dict, dict], None], log=print):
        if ppo.mini_batch_size > cfg.batch_size:
            raise InputError(f"--mini-batch-size {ppo.mini_batch_size} is larger than --batch-size {cfg.batch_size}")
        super().__init__(cfg, ppo, policy, policy.gpt, reference, tokenizer, prompts, encode_prompt, score_fn,
                         save_fn, log)
        self.ppo, self.policy = ppo, policy

    def train_step(self) -> dict:
        dev, ppo = device(), self.ppo
        roll, scores, _ = self.rollout(ppo.max_new_tokens, ppo.temperature, ppo.sampling)
        mask = roll.response_mask.float()
        with torch.no_grad():
            logits, old_values = self.policy(roll)
            old_logp = response_logprobs(logits, roll, ppo.temperature)
            ref_logp = self.reference_logprobs(roll, ppo.temperature)
            rewards, kl = kl_penalized_rewards(old_logp, ref_logp, scores, mask, ppo.kl_coef)
            advantages, returns = gae(rewards, old_values, mask, ppo.gamma, ppo.lam)
            if ppo.whiten_advantages:
                advantages = masked_whiten(advantages, mask) * mask
        lr = lr_at(self.step, self.progress(), self.cfg, self.cfg.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clipfrac": [], "entropy": [], "approx_kl": []}
        B = roll.ids.shape[0]
        for _ in range(ppo.ppo_epochs):
            order = torch.randperm(B)
            for start in range(0, B, ppo.mini_batch_size):
                idx = order[start : start + ppo.mini_batch_size].to(dev)
                mb, m = roll.select(idx), mask[idx]
                logits, values = self.policy(mb)
                logp = response_logprobs(logits, mb, ppo.temperature)
                pg_loss, clipfrac = ppo_policy_loss(logp, old_logp[idx], advantages[idx], m, ppo.clip_range)
                vf_loss = ppo_value_loss(values, old_values[idx], returns[idx], m, ppo.clip_range_value)
                loss = pg_loss + ppo.vf_coef * vf_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip)
                self.optimizer.step()
                with torch.no_grad():
                    entropy = masked_mean(entropy_from_logits(logits / ppo.temperature), m)
                    approx_kl = masked_mean(0.5 * (logp - old_logp[idx]) ** 2, m)
                for k, v in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("clipfrac", clipfrac),
                             ("entropy", entropy), ("approx_kl", approx_kl)):
                    stats[k].append(v.item())
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens += int(mask.sum().item())
        out = {"reward": scores.mean().item(), "kl": kl.sum(-1).mean().item(),
               "response_length": mask.sum(-1).mean().item(), "lr": lr}
        out.update({k: sum(v) / len(v) for k, v in stats.items()})
        return out


def train_ppo(model_dir: str | Path, prompts: list, score_fn: ScoreFn | None, cfg: TrainConfig, ppo: PPOConfig, *,
              reward_model: str | Path | None = None, rewards: list[str] = (), log=print) -> dict:
    """PPO from the SFT checkpoint in `model_dir` (also the frozen reference), or resume cfg.out.
    Rewards come from `score_fn`, or from the reward specs `rewards` (see rewards.py) and the
    reward model folder `reward_model`."""
    pol = open_policy(model_dir, cfg, log)
    ckpt = pol.ckpt
    policy = PolicyWithValue(ckpt.model, ckpt.extra_tensors.get("v_head.weight"), ckpt.extra_tensors.get("v_head.bias"))
    specs = [*([f"rm:{reward_model}"] if reward_model else []), *rewards]
    if score_fn is None:
        score_fn = build_scorer(specs, ckpt.tokenizer)
    cfg.extra.update(template=pol.template.name, prompts=len(prompts), reward_model=str(reward_model) if reward_model else None,
                     rewards=list(rewards))
    save_fn = pol.save_fn("ppo", lambda: {"v_head.weight": policy.v_head.weight, "v_head.bias": policy.v_head.bias})
    trainer = PPOTrainer(cfg, ppo, policy, pol.reference, ckpt.tokenizer, prompts, pol.encode_prompt, score_fn, save_fn, log)
    if pol.state is not None:
        trainer.load_train_state(pol.state)
    return trainer.fit()
