"""What the online RL stages (PPO, GRPO) share: the policy loaded from an SFT checkpoint (or the run
being resumed) beside its frozen reference, rollouts sampled with the engine and scored, the layout
of prompt + response tokens, the outer step loop with its log, checkpoints and reward curve.

A stage subclasses RolloutRun and writes `train_step` (one batch of rollouts and its updates).
"""

from __future__ import annotations

import copy
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..checkpoint import save_checkpoint
from ..data.batches import ShuffledBatches
from ..data.preferences import chat_template, prompt_messages
from ..errors import InputError
from ..plotting import reward_curve_png
from ..models.lora import adapters_disabled, has_lora
from .loop import (ResumableRun, StepBoundaryStop, TrainConfig, apply_lora, checkpoint_blocks, device,
                   load_reference, make_optimizer, open_run)
from .losses import token_logprobs
from .rewards import ScoreFn


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


def lm_logprobs(gpt: nn.Module, roll: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """log pi(response token t) (B, R) under a causal LM."""
    return response_logprobs(gpt.lm_head(response_hidden(gpt, roll)), roll, temperature)


@torch.no_grad()
def sample_responses(gpt: nn.Module, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float,
                     seed: int, sampling: dict | None = None, per_prompt: int = 1) -> list[list[int]]:
    """`per_prompt` sampled answers to each prompt (consecutive), as token ids ending with EOS when
    the model stopped: the engine drops the EOS it stopped on, but it is an action of the policy."""
    from ..engine import Engine, GenerationConfig

    was_training = gpt.training
    gpt.eval()
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, seed=seed,
                           num_return_sequences=per_prompt, **(sampling or {}))
    # the fused C step reads plain weights: a model with LoRA layers samples with the PyTorch forward
    engine = Engine(gpt, tokenizer, fast_decode=not has_lora(gpt))
    eos = gpt.config.eos_token_id
    responses = [c.token_ids + ([eos] if c.finish_reason == "stop" else []) for group in engine.generate(prompt_ids, gen)
                 for c in group]
    gpt.train(was_training)
    return [r or [eos] for r in responses]


@dataclass
class Policy:
    """A policy to train, as `open_policy` loads it."""

    ckpt: object  # the loaded checkpoint (model, tokenizer, meta, extra_tensors)
    reference: nn.Module | None  # frozen starting model; None with LoRA: the policy with its adapters off
    template: object  # chat template that renders the prompts
    base: dict  # where the starting model came from (hangpt.json base_model)
    state: dict | None  # train state to resume from

    def encode_prompt(self, prompt) -> list[int]:
        return self.template.encode_prompt(self.ckpt.tokenizer, prompt_messages(prompt))

    def save_fn(self, stage: str, extra_tensors: Callable[[], dict] = dict):
        """save(out, train_state, summary, files) for the stage's checkpoints."""

        def save(out, train_state, summary, files):
            tensors = extra_tensors()
            meta = {"stage": stage, "base_model": self.base, "chat_template": self.template.to_dict(), "training": summary}
            if tensors:
                meta["value_head"] = {"tensors": list(tensors)}
            save_checkpoint(out, self.ckpt.model, self.ckpt.tokenizer, meta, train_state=train_state, files=files,
                            extra_tensors=tensors)

        return save


def open_policy(model_dir: str | Path | None, cfg: TrainConfig, log=print) -> Policy:
    """An RL stage's start (open_run): the SFT checkpoint in `model_dir` (LoRA added when asked)
    and a frozen copy as the reference, or the run in cfg.out to resume. With LoRA no
    copy is made: the base under the adapters, which never trains, is the reference."""
    ckpt, template, base, state = open_run(model_dir, cfg, chat_template)
    if state is not None:
        reference = None if has_lora(ckpt.model) else load_reference(ckpt, cfg.out)
    else:
        reference = None if cfg.lora else copy.deepcopy(ckpt.model)
        apply_lora(ckpt.model, cfg, log)
    if reference is not None:
        reference.eval().to(device())
        for p in reference.parameters():
            p.requires_grad_(False)
    return Policy(ckpt, reference, template, base, state)


class RolloutRun(ResumableRun):
    """The outer loop of an online RL stage: sample, score, update, log, checkpoint, until
    --max-steps or --time-budget; resumable exactly and Ctrl-C/SIGKILL safe like every stage.
    One step takes `prompts_per_step` prompts (a seeded shuffle, epoch after epoch)."""

    stage: str = "rl"
    cfg: TrainConfig
    settings: object  # the stage's settings dataclass, recorded in the summary
    lm: nn.Module  # the policy's language model: it samples the rollouts
    reference: nn.Module | None  # None: the policy with its LoRA adapters off
    tokenizer: object
    prompts: list
    encode_prompt: Callable[[object], list[int]]
    score_fn: ScoreFn
    save_fn: Callable
    optimizer: torch.optim.Optimizer
    batches: ShuffledBatches
    step: int
    elapsed: float
    tokens: int  # sampled answer tokens
    history: list[dict]

    def __init__(self, cfg: TrainConfig, settings, trained: nn.Module, lm: nn.Module, reference: nn.Module | None, tokenizer,
                 prompts: list, encode_prompt: Callable[[object], list[int]], score_fn: ScoreFn, save_fn, log=print,
                 prompts_per_step: int | None = None):
        if not (cfg.max_steps or cfg.time_budget):
            raise InputError("give --max-steps or --time-budget")
        self.cfg, self.settings, self.lm, self.reference = cfg, settings, lm, reference
        self.tokenizer, self.prompts, self.encode_prompt = tokenizer, prompts, encode_prompt
        self.score_fn, self.save_fn, self.log = score_fn, save_fn, log
        self.batches = ShuffledBatches(list(range(len(prompts))), prompts_per_step or cfg.batch_size, lambda b: b,
                                       seed=cfg.seed, rank=0, world_size=1)  # one process: no DDP here
        if cfg.gradient_checkpointing:
            checkpoint_blocks(trained)
        trained.to(device()).train()
        self.optimizer = make_optimizer(trained, cfg)
        self.step, self.elapsed, self.tokens = 0, 0.0, 0
        self.history = []

    def train_step(self) -> dict:
        """One batch of rollouts and the updates on it; returns the step's metrics."""
        raise NotImplementedError

    def reference_logprobs(self, roll: Rollout, temperature: float) -> torch.Tensor:
        """log pi_ref(response token t) (B, R) under the frozen reference, or with LoRA under the
        policy with its adapters off, in eval mode as the frozen copy would be."""
        if self.reference is not None:
            return lm_logprobs(self.reference, roll, temperature)
        was_training = self.lm.training
        self.lm.eval()
        try:
            with adapters_disabled(self.lm):
                return lm_logprobs(self.lm, roll, temperature)
        finally:
            self.lm.train(was_training)

    def rollout(self, max_new_tokens: int, temperature: float, sampling: dict | None = None,
                per_prompt: int = 1) -> tuple[Rollout, torch.Tensor, list]:
        """Sample answers to the next batch of prompts and score them: (rollout on the device,
        rewards, the prompt of each row)."""
        prompts = [self.prompts[i] for i in self.batches.next_batch()]
        n_ctx = self.lm.config.context_length
        prompt_ids = [self.encode_prompt(p)[-(n_ctx - max_new_tokens) :] for p in prompts]
        responses = sample_responses(self.lm, self.tokenizer, prompt_ids, max_new_tokens, temperature,
                                     self.cfg.seed * 100_003 + self.step, sampling, per_prompt)
        rows = [p for p in prompts for _ in range(per_prompt)]
        scores = torch.tensor(self.score_fn(rows, responses), dtype=torch.float32)
        roll = Rollout.build([p for p in prompt_ids for _ in range(per_prompt)], responses, self.tokenizer.pad_id)
        return roll.to(device()), scores.to(device()), rows

    def progress(self) -> float:
        by_steps = self.step / self.cfg.max_steps if self.cfg.max_steps else 0.0
        by_time = self.elapsed / (self.cfg.time_budget * 60) if self.cfg.time_budget else 0.0
        return min(1.0, max(by_steps, by_time))

    def summary(self) -> dict:
        return self.run_summary({**self.cfg.extra, **asdict(self.settings)})

    def _save(self, final: bool) -> None:
        files = {"train_log.jsonl": "".join(json.dumps(h) + "\n" for h in self.history).encode(),
                 "reward_curve.png": reward_curve_png(self.history, f"hangpt {self.stage}")}
        self.save_fn(self.cfg.out, None if final else self.train_state(), self.summary(), files)

    def fit(self) -> dict:
        from tqdm.auto import tqdm

        bar = tqdm(total=self.cfg.max_steps, initial=self.step, desc=self.stage, unit="step", dynamic_ncols=True,
                   disable=not self.cfg.progress)
        self.run_steps(lambda stop: self._loop(bar, stop), bar)
        self._save(final=True)
        return self.summary()

    def _loop(self, bar, stop: StepBoundaryStop) -> None:
        while self.progress() < 1.0:
            t0 = time.perf_counter()
            metrics = self.train_step()
            self.step += 1
            self.elapsed += time.perf_counter() - t0
            self.history.append({"step": self.step, **{k: round(v, 6) for k, v in metrics.items()}})
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.3f}")
            if self.step % self.cfg.log_every == 0:
                self.log(f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            if self.step % self.cfg.save_every == 0 and self.progress() < 1.0:
                self._save(final=False)
            self.stop_if_requested(stop, bar)
