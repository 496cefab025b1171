"""Compare chat policies (SFT, DPO, PPO, GRPO) the way RLHF papers do, on held-out prompts: the mean
training reward of their sampled answers, and beside it what the policy could not have gamed:
judges it was not trained against (another classifier, a rule, a held-out reward model) with
their win rate over the first policy, how far each moved from the reference (KL on its own
samples), mean answer length and distinct-2 (diversity: distinct token bigrams / all bigrams)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..data.preferences import prompt_messages
from ..engine import Engine, GenerationConfig
from ..templates import template_for
from .rewards import ScoreFn, build_scorer
from .rollout import Rollout, lm_logprobs, sample_responses


def distinct_n(responses: list[list[int]], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over a set of answers (Li et al. 2016); 0 when there are none."""
    grams = [tuple(r[i : i + n]) for r in responses for i in range(len(r) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def sample_policy(policy_dir: str | Path, reference, prompts: list[str], max_new_tokens: int = 24, seed: int = 0,
                  batch_size: int = 32) -> tuple[list[list[int]], list[float], object]:
    """One sampled answer per prompt (token ids, EOS kept when it stopped), the KL to `reference`
    of each (sum over its tokens of log pi - log pi_ref) and the policy's tokenizer."""
    ckpt = load_checkpoint(policy_dir)
    template, tok = template_for(ckpt.meta, ckpt.tokenizer), ckpt.tokenizer
    responses, kls = [], []
    for i in range(0, len(prompts), batch_size):
        prompt_ids = [template.encode_prompt(tok, prompt_messages(p)) for p in prompts[i : i + batch_size]]
        chunk = sample_responses(ckpt.model, tok, prompt_ids, max_new_tokens, 1.0, seed + i)
        roll = Rollout.build(prompt_ids, chunk, tok.pad_id)
        kls += ((lm_logprobs(ckpt.model, roll) - lm_logprobs(reference, roll)) * roll.response_mask).sum(-1).tolist()
        responses += chunk
    return responses, kls, tok


def evaluate_policy(policy_dir: str | Path, reference, prompts: list[str], score_fn: ScoreFn,
                    max_new_tokens: int = 24, seed: int = 0, batch_size: int = 32,
                    judges: dict[str, ScoreFn] | None = None) -> dict:
    """Mean reward of sampled answers, mean KL to `reference`, mean answer length in tokens,
    distinct-2, and the mean score of each judge ("judge/NAME"); "_scores" keeps each judge's
    per-prompt scores for win rates."""
    responses, kls, tok = sample_policy(policy_dir, reference, prompts, max_new_tokens, seed, batch_size)
    n = max(len(prompts), 1)
    eos = tok.eos_id
    row = {"reward": sum(score_fn(prompts, responses)) / n, "kl": sum(kls) / n,
           "length": sum(map(len, responses)) / n, "distinct2": distinct_n([[t for t in r if t != eos] for r in responses])}
    scores = {name: judge(prompts, responses) for name, judge in (judges or {}).items()}
    row.update({f"judge/{name}": sum(s) / n for name, s in scores.items()})
    return {**row, "_scores": scores}


def greedy_answers(policy_dir: str | Path, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    ckpt = load_checkpoint(policy_dir)
    template, tok = template_for(ckpt.meta, ckpt.tokenizer), ckpt.tokenizer
    prompt_ids = [template.encode_prompt(tok, prompt_messages(p)) for p in prompts]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, stop=template.stop_strings(tok), valid_utf8=True)
    return [c[0].text.strip() for c in Engine(ckpt.model, tok).generate(prompt_ids, gen)]


def compare_policies(policies: dict[str, Path], reference_dir: Path, reward_model_dir: Path | None, prompts: list[str],
                     seed: int = 0, max_new_tokens: int = 24, n_samples: int = 8, rewards: list[str] = (),
                     judges: list[str] = (), samples_per_prompt: int = 1) -> dict:
    """{"policies": {name: {reward, kl, length, distinct2, judge/J, win/J}}, "samples": [{"prompt",
    "answers": {name: text}}]}. The training reward is the reward model in `reward_model_dir`
    plus the `rewards` specs; each judge spec is scored on its own, and win/J is the share of
    sampled answers that beat the first policy's to the same prompt by judge J (ties count half).
    The means are over `samples_per_prompt` sampled answers to each prompt: with one answer to
    a few dozen prompts, sampling noise alone can hide the difference between two policies."""
    shown = prompts[:n_samples]
    prompts = [p for p in prompts for _ in range(samples_per_prompt)]
    reference = load_checkpoint(reference_dir)
    tok = reference.tokenizer
    specs = [*([f"rm:{reward_model_dir}"] if reward_model_dir else []), *rewards]
    score_fn = build_scorer(specs, tok)
    judge_fns = {spec: build_scorer([spec], tok) for spec in judges}
    table = {name: evaluate_policy(path, reference.model, prompts, score_fn, max_new_tokens, seed, judges=judge_fns)
             for name, path in policies.items()}
    baseline = next(iter(table.values()))["_scores"]
    for row in table.values():
        scores = row.pop("_scores")
        for spec in judges:
            pairs = list(zip(scores[spec], baseline[spec]))
            row[f"win/{spec}"] = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / max(len(pairs), 1)
    answers = {name: greedy_answers(path, shown, max_new_tokens) for name, path in policies.items()}
    samples = [{"prompt": p, "answers": {name: answers[name][i] for name in policies}} for i, p in enumerate(shown)]
    return {"policies": table, "samples": samples}
