"""Compare chat policies (SFT, DPO, PPO) the way RLHF papers do: mean reward-model score of their
sampled answers to held-out prompts, and how far each moved from the SFT model (KL on those samples)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..engine import Engine, GenerationConfig
from ..templates import template_for
from .rewards import ScoreFn, reward_model_scorer
from .rollout import Rollout, response_hidden, response_logprobs


@torch.no_grad()
def evaluate_policy(policy_dir: str | Path, reference, prompts: list[str], score_fn: ScoreFn,
                    max_new_tokens: int = 24, seed: int = 0, batch_size: int = 32) -> dict:
    """Mean reward of sampled answers, mean KL to `reference` (sum over answer tokens of
    log pi - log pi_ref, on the policy's own samples) and mean answer length in tokens."""
    ckpt = load_checkpoint(policy_dir)
    template, tok = template_for(ckpt.meta, ckpt.tokenizer), ckpt.tokenizer
    eos = ckpt.model.config.eos_token_id
    engine = Engine(ckpt.model, tok)
    rewards, kls, lengths = [], [], []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        prompt_ids = [template.encode_prompt(tok, [{"role": "user", "content": p}]) for p in chunk]
        gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, seed=seed + i)
        completions = [c[0] for c in engine.generate(prompt_ids, gen)]
        responses = [c.token_ids + ([eos] if c.finish_reason == "stop" else []) or [eos] for c in completions]
        rewards += score_fn(chunk, responses)
        roll = Rollout.build(prompt_ids, responses, tok.pad_id)
        mask = roll.response_mask.float()
        logp = response_logprobs(ckpt.model.lm_head(response_hidden(ckpt.model, roll)), roll, 1.0)
        ref = response_logprobs(reference.lm_head(response_hidden(reference, roll)), roll, 1.0)
        kls += ((logp - ref) * mask).sum(-1).tolist()
        lengths += mask.sum(-1).tolist()
    n = max(len(prompts), 1)
    return {"reward": sum(rewards) / n, "kl": sum(kls) / n, "length": sum(lengths) / n}


def greedy_answers(policy_dir: str | Path, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    ckpt = load_checkpoint(policy_dir)
    template, tok = template_for(ckpt.meta, ckpt.tokenizer), ckpt.tokenizer
    prompt_ids = [template.encode_prompt(tok, [{"role": "user", "content": p}]) for p in prompts]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, stop=template.stop_strings(tok), valid_utf8=True)
    return [c[0].text.strip() for c in Engine(ckpt.model, tok).generate(prompt_ids, gen)]


def compare_policies(policies: dict[str, Path], reference_dir: Path, reward_model_dir: Path, prompts: list[str],
                     seed: int = 0, max_new_tokens: int = 24, n_samples: int = 8) -> dict:
    """{"policies": {name: {reward, kl, length}}, "samples": [{"prompt", "answers": {name: text}}]}."""
    reference = load_checkpoint(reference_dir)
    score_fn = reward_model_scorer(reward_model_dir, reference.tokenizer)
    table = {name: evaluate_policy(path, reference.model, prompts, score_fn, max_new_tokens, seed)
             for name, path in policies.items()}
    shown = prompts[:n_samples]
    answers = {name: greedy_answers(path, shown, max_new_tokens) for name, path in policies.items()}
    samples = [{"prompt": p, "answers": {name: answers[name][i] for name in policies}} for i, p in enumerate(shown)]
    return {"policies": table, "samples": samples}
