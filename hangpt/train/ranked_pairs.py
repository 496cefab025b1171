"""Preference pairs from a policy's own answers ranked by a reward: sample several answers to each
prompt, score them, keep the best finished answer as chosen and the worst as rejected.

DPO learns from the difference between the two answers of a pair. Pairs made from data (the real
answer vs another question's answer or a shuffled copy) differ in ways the policy never writes,
so DPO on them mostly learns to push those strange answers down and moves the policy somewhere no
reward asked for. Pairs from the policy's own samples differ exactly where its answers vary, so
DPO raises what the reward prefers among answers it really gives. This is the pair-making step of
iterative / online DPO (TRL's OnlineDPOTrainer samples and ranks the same way inside training)
and of Llama 2's rejection sampling.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..data.preferences import PreferencePair, chat_template, prompt_messages
from ..errors import InputError
from .rewards import build_scorer
from .rollout import sample_responses


@torch.no_grad()
def rank_samples(model_dir: str | Path, prompts: list, rewards: list[str], num_samples: int = 4,
                 max_new_tokens: int = 64, temperature: float = 1.0, sampling: dict | None = None, seed: int = 0,
                 batch_size: int = 16, device: str = "cpu", log=print) -> list[PreferencePair]:
    """One pair per prompt: chosen = the highest-scored answer that ended (the model wrote its end
    token within max_new_tokens: an answer cut short must not be taught as complete), rejected =
    the lowest-scored answer. A prompt is skipped when none of its answers ended or all score alike."""
    if temperature <= 0:
        raise InputError(f"--temperature {temperature}: must be > 0 (greedy answers to one prompt are all the same)")
    ckpt = load_checkpoint(model_dir)
    model, tokenizer, template = ckpt.model.to(device), ckpt.tokenizer, chat_template(ckpt)
    n_ctx = model.config.context_length
    if max_new_tokens >= n_ctx:
        raise InputError(f"--max-new-tokens {max_new_tokens}: must be below the model's context length {n_ctx}")
    score = build_scorer(rewards, tokenizer, device)
    eos = tokenizer.eos_id
    pairs, skipped = [], 0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        prompt_ids = [template.encode_prompt(tokenizer, prompt_messages(p))[-(n_ctx - max_new_tokens) :] for p in chunk]
        answers = sample_responses(model, tokenizer, prompt_ids, max_new_tokens, temperature, seed + start, sampling,
                                   per_prompt=num_samples)
        scores = score([p for p in chunk for _ in range(num_samples)], answers)
        for i, prompt in enumerate(chunk):
            rows = slice(i * num_samples, (i + 1) * num_samples)
            pair = _best_and_worst(list(zip(scores[rows], answers[rows])), tokenizer, eos)
            if pair is None:
                skipped += 1
            else:
                pairs.append(PreferencePair(prompt, *pair))
        done = min(start + batch_size, len(prompts))
        if done == len(prompts) or (start // batch_size) % 20 == 19:
            log(f"ranked the answers to {done}/{len(prompts)} prompts")
    log(f"{len(pairs)} pairs from {len(prompts)} prompts ({skipped} skipped: no answer ended, or all scored alike)")
    return pairs


def _best_and_worst(group: list[tuple[float, list[int]]], tokenizer, eos: int) -> tuple[str, str] | None:
    """(chosen text, rejected text) of one prompt's scored answers, or None. Empty answers take no
    part: a preference file cannot hold them."""
    texts = [(score, tokenizer.decode([t for t in ids if t != eos]).strip(), ids[-1] == eos) for score, ids in group]
    texts = [t for t in texts if t[1]]
    finished = [t for t in texts if t[2]]
    if not finished:
        return None
    best_score, chosen, _ = max(finished, key=lambda t: t[0])
    worst_score, rejected, _ = min(texts, key=lambda t: t[0])
    if best_score <= worst_score or chosen == rejected:
        return None
    return chosen, rejected
