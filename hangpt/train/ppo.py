"""RLHF with PPO, as in InstructGPT: the policy (actor) samples answers to prompts, a frozen reward
model scores them, a per-token KL penalty keeps it near the frozen reference (the starting
policy), and a value head on the same body (critic) gives the baseline for GAE.

One step = one batch of rollouts with the engine (plain sampling), then several epochs of
minibatch updates of the clipped policy loss + clipped value loss. The loop is its own (rollouts do
not fit the Trainer) but uses the same optimizer, LR schedule, atomic checkpoints and resume state.
The saved folder is a plain causal LM plus `v_head.weight`/`v_head.bias`.
"""

from __future__ import annotations

import copy
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data.preferences import chat_template
from ..errors import InputError
from ..templates import template_for
from ..models.lora import has_lora
from .loop import (ResumableRun, ShuffledBatches, StepBoundaryStop, TrainConfig, apply_lora, checkpoint_blocks, device,
                   load_reference, lr_at, make_optimizer, resume_state, seed_everything)
from .losses import (
    entropy_from_logits,
    gae,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    token_logprobs,
)

# score_fn(prompts, responses as token ids (ending with EOS when the policy stopped)) -> rewards
ScoreFn = Callable[[list, list[list[int]]], list[float]]


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


@dataclass
class Rollout:
    ids: torch.Tensor  # (B, P+R): left-padded prompts, then right-padded responses
    padding_mask: torch.Tensor  # (B, P+R)
    position_ids: torch.Tensor
    response_mask: torch.Tensor  # (B, R)
    prompt_width: int  # P

    @classmethod
    def build(cls, prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> "Rollout":
        P, R = max(map(len, prompts)), max(map(len, responses))
        ids = torch.full((len(prompts), P + R), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, (p, r) in enumerate(zip(prompts, responses)):
            ids[b, P - len(p) : P + len(r)] = torch.tensor(p + r)
            mask[b, P - len(p) : P + len(r)] = 1
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        return cls(ids, mask, position_ids, mask[:, P:].clone(), P)

    def select(self, index: torch.Tensor) -> "Rollout":
        return Rollout(self.ids[index], self.padding_mask[index], self.position_ids[index],
                       self.response_mask[index], self.prompt_width)

    def to(self, dev) -> "Rollout":
        return Rollout(self.ids.to(dev), self.padding_mask.to(dev), self.position_ids.to(dev),
                       self.response_mask.to(dev), self.prompt_width)


def response_hidden(gpt: nn.Module, roll: Rollout) -> torch.Tensor:
    """Final hidden states at the positions that predict each response token (B, R, n_embd); the
    vocabulary projection is then applied to these only, not to the prompts."""
    hidden = gpt(roll.ids, padding_mask=roll.padding_mask, position_ids=roll.position_ids, return_logits=False).logits
    return hidden[:, roll.prompt_width - 1 : -1]


def response_logprobs(logits: torch.Tensor, roll: Rollout, temperature: float) -> torch.Tensor:
    """log pi(response token t) (B, R) from the response-position logits."""
    return token_logprobs(logits / temperature, roll.ids[:, roll.prompt_width :])


class PPOTrainer(ResumableRun):
    def __init__(self, cfg: TrainConfig, ppo: PPOConfig, policy: PolicyWithValue, reference: nn.Module, tokenizer,
                 prompts: list, encode_prompt: Callable[[object], list[int]], score_fn: ScoreFn,
                 save_fn: Callable[[Path, dict | None, dict, dict], None], log=print):
        if ppo.mini_batch_size > cfg.batch_size:
            raise InputError(f"--mini-batch-size {ppo.mini_batch_size} is larger than --batch-size {cfg.batch_size}")
        self.cfg, self.ppo, self.policy, self.reference = cfg, ppo, policy, reference.eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.tokenizer, self.prompts, self.encode_prompt = tokenizer, prompts, encode_prompt
        self.score_fn, self.save_fn, self.log = score_fn, save_fn, log
        self.batches = ShuffledBatches(list(range(len(prompts))), cfg.batch_size, lambda b: b, seed=cfg.seed)
        if cfg.gradient_checkpointing:
            checkpoint_blocks(policy)
        self.optimizer = make_optimizer(policy, cfg)
        self.step, self.elapsed, self.tokens = 0, 0.0, 0  # tokens: sampled answer tokens
        self.history: list[dict] = []
        if not (cfg.max_steps or cfg.time_budget):
            raise InputError("give --max-steps or --time-budget")

    def progress(self) -> float:
        by_steps = self.step / self.cfg.max_steps if self.cfg.max_steps else 0.0
        by_time = self.elapsed / (self.cfg.time_budget * 60) if self.cfg.time_budget else 0.0
        return min(1.0, max(by_steps, by_time))

    def summary(self) -> dict:
        return self.run_summary({**self.cfg.extra, **asdict(self.ppo)})

    def _save(self, final: bool) -> None:
        files = {"train_log.jsonl": "".join(json.dumps(h) + "\n" for h in self.history).encode(),
                 "reward_curve.png": reward_curve_png(self.history)}
        self.save_fn(self.cfg.out, None if final else self.train_state(), self.summary(), files)

    # -- one PPO step --------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: list) -> tuple[Rollout, torch.Tensor]:
        """Sample one answer per prompt with the engine; (rollout, reward-model scores)."""
        from ..engine import Engine, GenerationConfig

        self.policy.eval()
        n_ctx = self.policy.gpt.config.context_length
        prompt_ids = [self.encode_prompt(p)[-(n_ctx - self.ppo.max_new_tokens) :] for p in prompts]
        gen = GenerationConfig(max_new_tokens=self.ppo.max_new_tokens, do_sample=True,
                               temperature=self.ppo.temperature, seed=self.cfg.seed * 100_003 + self.step,
                               **self.ppo.sampling)
        # the fused C step reads plain weights: a policy with LoRA layers samples with the PyTorch forward
        engine = Engine(self.policy.gpt, self.tokenizer, fast_decode=not has_lora(self.policy.gpt))
        completions = engine.generate(prompt_ids, gen)
        eos = self.policy.gpt.config.eos_token_id
        # the engine drops the EOS it stopped on; it is an action of the policy, so it is kept here
        responses = [c[0].token_ids + ([eos] if c[0].finish_reason == "stop" else []) for c in completions]
        responses = [r or [eos] for r in responses]
        scores = torch.tensor(self.score_fn(prompts, responses), dtype=torch.float32)
        self.policy.train()
        return Rollout.build(prompt_ids, responses, self.tokenizer.pad_id), scores

    def ppo_step(self) -> dict:
        t0 = time.perf_counter()
        dev, ppo = device(), self.ppo
        roll, scores = self.rollout([self.prompts[i] for i in self.batches.next_batch()])
        roll = roll.to(dev)
        mask = roll.response_mask.float()
        with torch.no_grad():
            logits, old_values = self.policy(roll)
            old_logp = response_logprobs(logits, roll, ppo.temperature)
            ref_logits = self.reference.lm_head(response_hidden(self.reference, roll))
            ref_logp = response_logprobs(ref_logits, roll, ppo.temperature)
            rewards, kl = kl_penalized_rewards(old_logp, ref_logp, scores.to(dev), mask, ppo.kl_coef)
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
        self.step += 1
        self.tokens += int(mask.sum().item())
        self.elapsed += time.perf_counter() - t0
        out = {"reward": scores.mean().item(), "kl": kl.sum(-1).mean().item(),
               "response_length": mask.sum(-1).mean().item(), "lr": lr}
        out.update({k: sum(v) / len(v) for k, v in stats.items()})
        return out

    def fit(self) -> dict:
        from tqdm.auto import tqdm

        bar = tqdm(total=self.cfg.max_steps, initial=self.step, desc="ppo", unit="step", dynamic_ncols=True,
                   disable=not self.cfg.progress)
        self.run_steps(lambda stop: self._loop(bar, stop), bar)
        self._save(final=True)
        return self.summary()

    def _loop(self, bar, stop: StepBoundaryStop) -> None:
        while self.progress() < 1.0:
            metrics = self.ppo_step()
            self.history.append({"step": self.step, **{k: round(v, 6) for k, v in metrics.items()}})
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.3f}")
            if self.step % self.cfg.log_every == 0:
                self.log(f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            if self.step % self.cfg.save_every == 0 and self.progress() < 1.0:
                self._save(final=False)
            self.stop_if_requested(stop, bar)


def reward_curve_png(history: list[dict]) -> bytes:
    """Mean reward and KL to the reference against PPO step, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), dpi=100, sharex=True)
    steps = [h["step"] for h in history]
    top.plot(steps, [h["reward"] for h in history], linewidth=1)
    top.set_ylabel("mean reward")
    bottom.plot(steps, [h["kl"] for h in history], color="tab:red", linewidth=1)
    bottom.set_ylabel("KL to reference")
    bottom.set_xlabel("PPO step")
    top.set_title("hangpt ppo")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def reward_model_scorer(rm_dir: str | Path, policy_tokenizer, max_length: int | None = None) -> ScoreFn:
    """Score responses with a reward model folder: decoded to text (EOS dropped) and rendered with
    the reward model's own chat template, so policy and reward model need not share a tokenizer."""
    from .reward import load_reward_model, score_texts

    rm, rm_tok, rm_template, _ = load_reward_model(rm_dir)
    rm.to(device())
    eos = policy_tokenizer.eos_id

    def score(prompts, responses):
        texts = [policy_tokenizer.decode([t for t in r if t != eos]) for r in responses]
        return score_texts(rm, rm_tok, rm_template, prompts, texts, max_length)

    return score


def train_ppo(model_dir: str | Path, prompts: list, score_fn: ScoreFn | None, cfg: TrainConfig, ppo: PPOConfig, *,
              reward_model: str | Path | None = None, log=print) -> dict:
    """PPO from the SFT checkpoint in `model_dir` (also the frozen reference), or resume cfg.out.
    Rewards come from `score_fn`, or from the reward model folder `reward_model`."""
    seed_everything(cfg.seed)
    state = resume_state(cfg)
    if state is not None:
        ckpt = load_checkpoint(cfg.out, merge_adapter=False)
        template = template_for(ckpt.meta, ckpt.tokenizer)
        base = ckpt.meta.get("base_model", {})
        reference = load_reference(ckpt, cfg.out)
        policy = PolicyWithValue(ckpt.model, ckpt.extra_tensors.get("v_head.weight"), ckpt.extra_tensors.get("v_head.bias"))
    else:
        ckpt = load_checkpoint(model_dir)
        template = chat_template(ckpt)
        reference = copy.deepcopy(ckpt.model)
        apply_lora(ckpt.model, cfg, log)
        policy = PolicyWithValue(ckpt.model)
        base = {"path": str(model_dir), "stage": ckpt.meta.get("stage")}
    tokenizer = ckpt.tokenizer
    if score_fn is None:
        if reward_model is None:
            raise InputError("give --reward-model")
        score_fn = reward_model_scorer(reward_model, tokenizer)
    dev = device()
    policy.to(dev)
    reference.to(dev)
    cfg.extra.update(template=template.name, prompts=len(prompts), reward_model=str(reward_model) if reward_model else None)

    def encode_prompt(p):
        return template.encode_prompt(tokenizer, [{"role": "user", "content": p}] if isinstance(p, str) else p)

    def save_fn(out, train_state, summary, files):
        meta = {"stage": "ppo", "base_model": base, "chat_template": template.to_dict(),
                "value_head": {"tensors": ["v_head.weight", "v_head.bias"]}, "training": summary}
        save_checkpoint(out, policy.gpt, tokenizer, meta, train_state=train_state, files=files,
                        extra_tensors={"v_head.weight": policy.v_head.weight, "v_head.bias": policy.v_head.bias})

    trainer = PPOTrainer(cfg, ppo, policy, reference, tokenizer, prompts, encode_prompt, score_fn, save_fn, log)
    if state is not None:
        trainer.load_train_state(state)
    return trainer.fit()
