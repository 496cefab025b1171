"""GRPO (Group Relative Policy Optimization, DeepSeekMath), as TRL's GRPOTrainer does it: each
prompt gets num_generations sampled answers, each answer's advantage is its reward standardised
within its group, and the policy takes the clipped surrogate step with a k3 KL penalty to the frozen
reference. No value head and no reward model needed: the group is the baseline, so rule rewards
(`python:FILE:FUNCTION`) and classifier probabilities work as they are.

One step = batch_size / num_generations prompts, batch_size answers, num_iterations gradient steps
on them (1, TRL's default: the ratio is then exactly 1 and only the KL term and the advantages
shape the gradient). The saved folder is a plain causal LM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from .loop import TrainConfig, lr_at
from .losses import entropy_from_logits, group_advantages, grpo_loss, masked_mean
from .rewards import ScoreFn, build_scorer
from .rollout import RolloutRun, lm_logprobs, open_policy, response_hidden, response_logprobs

LOSS_TYPES = ("dapo", "grpo", "bnpo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")


@dataclass
class GRPOConfig:
    """TRL GRPOConfig's names; defaults are TRL's except beta (TRL: 0, no reference model) and
    max_completion_length (TRL: 512), chosen for small models trained on a CPU."""

    num_generations: int = 8
    beta: float = 0.04
    epsilon: float = 0.2
    epsilon_high: float | None = None  # upper clip bound; None: epsilon
    temperature: float = 1.0
    max_completion_length: int = 64
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    num_iterations: int = 1
    sampling: dict = field(default_factory=dict)  # more GenerationConfig settings for rollouts: top_k, top_p, ...

    def check(self, batch_size: int) -> None:
        if batch_size % self.num_generations:
            raise InputError(f"--batch-size {batch_size} must be a multiple of --num-generations "
                             f"{self.num_generations} (it counts answers: num_generations per prompt)")
        if self.loss_type not in LOSS_TYPES:
            raise InputError(f"--loss-type {self.loss_type!r}: choose {', '.join(LOSS_TYPES)}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise InputError(f"--scale-rewards {self.scale_rewards!r}: choose {', '.join(SCALE_REWARDS)}")


class GRPOTrainer(RolloutRun):
    stage = "grpo"

    def __init__(self, cfg: TrainConfig, grpo: GRPOConfig, policy, reference, tokenizer, prompts: list, encode_prompt,
                 score_fn: ScoreFn, save_fn, log=print):
        grpo.check(cfg.batch_size)
        super().__init__(cfg, grpo, policy, policy, reference, tokenizer, prompts, encode_prompt, score_fn, save_fn, log,
                         prompts_per_step=cfg.batch_size // grpo.num_generations)
        self.grpo, self.policy = grpo, policy

    def train_step(self) -> dict:
        g = self.grpo
        G = g.num_generations
        roll, rewards, _ = self.rollout(g.max_completion_length, g.temperature, g.sampling, per_prompt=G)
        mask = roll.response_mask.float()
        advantages = group_advantages(rewards, G, g.scale_rewards)
        with torch.no_grad():
            ref_logp = self.reference_logprobs(roll, g.temperature)
            old_logp = lm_logprobs(self.policy, roll, g.temperature) if g.num_iterations > 1 else None
        lr = lr_at(self.step, self.progress(), self.cfg, self.cfg.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        stats: dict[str, list[float]] = {}
        for _ in range(g.num_iterations):
            logits = self.policy.lm_head(response_hidden(self.policy, roll))
            logp = response_logprobs(logits, roll, g.temperature)
            loss, parts = grpo_loss(logp, logp.detach() if old_logp is None else old_logp, advantages, mask, g.epsilon,
                                    g.epsilon if g.epsilon_high is None else g.epsilon_high, g.beta, ref_logp,
                                    g.loss_type, g.max_completion_length)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            with torch.no_grad():
                parts["entropy"] = masked_mean(entropy_from_logits(logits / g.temperature), mask)
            for k, v in {"loss": loss, **parts}.items():
                stats.setdefault(k, []).append(v.item())
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens += int(mask.sum().item())
        group_std = rewards.view(-1, G).std(1) if G > 1 else torch.zeros(rewards.numel() // G)
        out = {"reward": rewards.mean().item(), "reward_std": group_std.mean().item(),
               "frac_reward_zero_std": (group_std < 1e-6).float().mean().item(),
               "completion_length": mask.sum(-1).mean().item(), "lr": lr}
        out.update({k: sum(v) / len(v) for k, v in stats.items()})
        out["kl"] = out["kl"] * out["completion_length"]  # per answer (summed over its tokens), as ppo logs it
        return out


def train_grpo(model_dir: str | Path | None, prompts: list, score_fn: ScoreFn | None, cfg: TrainConfig,
               grpo: GRPOConfig, *, rewards: list[str] = (), log=print) -> dict:
    """GRPO from the SFT checkpoint in `model_dir` (also the frozen reference), or resume cfg.out.
    Rewards come from `score_fn`, or from the reward specs `rewards` (see rewards.py)."""
    grpo.check(cfg.batch_size)
    pol = open_policy(model_dir, cfg, log)
    if score_fn is None:
        score_fn = build_scorer(list(rewards), pol.ckpt.tokenizer)
    cfg.extra.update(template=pol.template.name, prompts=len(prompts), rewards=list(rewards))
    trainer = GRPOTrainer(cfg, grpo, pol.ckpt.model, pol.reference, pol.ckpt.tokenizer, prompts, pol.encode_prompt,
                          score_fn, pol.save_fn("grpo"), log)
    if pol.state is not None:
        trainer.load_train_state(pol.state)
    return trainer.fit()
