"""The model's log-probabilities of a prompt's own tokens (`echo` with `logprobs`), what evaluation
tools (lm-evaluation-harness's local-completions) read to score text through the API."""

from __future__ import annotations

import torch

from ..engine.batch import evaluating


def prompt_logprobs(model, tokenizer, ids: list[int], k: int) -> list[dict]:
    """One entry per prompt token in the engine's logprob shape; the first token has nothing before
    it, so its logprob is None."""
    with evaluating(model), torch.inference_mode():
        logits = model(torch.tensor([ids], device=next(model.parameters()).device)).logits[0, :-1]
        logprobs = logits.float().log_softmax(dim=-1)
    chosen = logprobs.gather(1, torch.tensor(ids[1:], device=logprobs.device).unsqueeze(1)).squeeze(1).tolist()
    top = logprobs.topk(k, dim=-1) if k else None
    entries = [{"token": tokenizer.decode([ids[0]]), "id": ids[0], "logprob": None, "top": []}]
    for i, (token, lp) in enumerate(zip(ids[1:], chosen)):
        alternatives = [] if top is None else [
            {"token": tokenizer.decode([t]), "id": t, "logprob": v}
            for t, v in zip(top.indices[i].tolist(), top.values[i].tolist())]
        entries.append({"token": tokenizer.decode([token]), "id": token, "logprob": lp, "top": alternatives})
    return entries
