"""Random transformers models saved as checkpoint folders, the reference side of golden tests."""

from __future__ import annotations

import torch


def save_random_model(folder, tokenizer, config_cls, model_cls, perturb=0.3, seed=0, **config):
    """A random `model_cls` saved with `tokenizer` in `folder`; returns the transformers model.
    Weights are perturbed so distributions are peaked: no near-ties between tokens."""
    torch.manual_seed(seed)
    hf = model_cls(config_cls(vocab_size=tokenizer.vocab_size, **config)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * perturb)
    hf.save_pretrained(folder)
    tokenizer.save(folder)
    return hf
