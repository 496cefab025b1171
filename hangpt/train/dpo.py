"""Direct Preference Optimization: the policy learns to prefer the chosen answer over the rejected
one relative to a frozen reference (the starting model), with the sigmoid loss of the DPO paper.

The reference's answer log-probs are computed once before training and stored with each pair, so
no second model sits in memory while training. Log-probs cover the answer tokens only (the answer
and its end marker, as the chat template marks them).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..data.batches import ShuffledBatches
from ..data.preferences import PreferencePair, chat_template
from ..errors import InputError
from ..models.lora import adapters_disabled, has_lora
from .loop import TrainConfig, Trainer, apply_lora, device, load_reference, open_run
from .losses import dpo_loss, token_logprobs
from .reward import PairExample, collate_pairs, encode_pairs, pair_length
from .sft import holdout_split


def answer_logprobs(model, ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of each row's answer tokens (right-padded rows, causal attention). The
    vocabulary projection is applied only where an answer token is predicted (position t predicts
    token t+1), which skips the prompts and padding."""
    hidden = model(ids, return_logits=False).logits[:, :-1]
    keep = answer_mask[:, 1:].bool()
    lm_head = getattr(model, "module", model).lm_head  # DDP wraps the model
    lp = token_logprobs(lm_head(hidden[keep]), ids[:, 1:][keep])
    rows = keep.nonzero()[:, 0]
    return torch.zeros(ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)


@torch.no_grad()
def with_reference_logprobs(model, examples: list[PairExample], pad_id: int, batch_size: int) -> list[PairExample]:
    """The pairs with extra = [ref_chosen, ref_rejected] computed by `model` (the reference)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        ids, mask, _, _ = collate_pairs(chunk, pad_id)
        lp = answer_logprobs(model, ids.to(dev), mask.to(dev)).tolist()
        n = len(chunk)
        out += [(*e[:4], [lp[j], lp[n + j]]) for j, e in enumerate(chunk)]
    model.train(was_training)
    return out


def dpo_metrics(m, batch, beta: float, dev, rpo_alpha: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Loss and TRL's logged quantities for one collated batch of pairs with reference log-probs.

    rpo_alpha > 0 adds TRL's RPO term: rpo_alpha x the cross-entropy of the chosen answers' tokens
    (their mean negative log-prob), which keeps the policy writing the chosen answers while DPO
    pushes the rejected ones down, instead of pushing both down and drifting into text the
    reference never wrote."""
    ids, mask, _, ref = batch
    lp = answer_logprobs(m, ids.to(dev), mask.to(dev))
    b = ref.shape[0]
    ref = ref.to(dev)
    losses, r_chosen, r_rejected = dpo_loss(lp[:b], lp[b:], ref[:, 0], ref[:, 1], beta)
    loss, extra = losses.mean(), {}
    if rpo_alpha:
        nll = -lp[:b].sum() / mask[:b, 1:].sum().clamp(min=1).to(dev)
        loss = loss + rpo_alpha * nll
        extra["nll_loss"] = nll.item()
    return loss, {**extra,
        "rewards/chosen": r_chosen.mean().item(),
        "rewards/rejected": r_rejected.mean().item(),
        "rewards/margins": (r_chosen - r_rejected).mean().item(),
        "rewards/accuracies": (r_chosen > r_rejected).float().mean().item(),
        "logps/chosen": lp[:b].mean().item(),
        "logps/rejected": lp[b:].mean().item(),
    }


@torch.no_grad()
def evaluate_dpo(model, examples: list[PairExample], pad_id: int, beta: float, batch_size: int,
                 rpo_alpha: float = 0.0) -> dict:
    """Held-out loss, reward accuracy/margin and the policy's chosen-minus-rejected log-prob margin."""
    dev = next(model.parameters()).device
    totals: dict[str, float] = {}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        loss, metrics = dpo_metrics(model, collate_pairs(chunk, pad_id), beta, dev, rpo_alpha)
        metrics["loss"] = loss.item()
        metrics["logp_margin"] = metrics["logps/chosen"] - metrics["logps/rejected"]
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + v * len(chunk)
    return {f"val_{k}": round(v / max(len(examples), 1), 6) for k, v in totals.items()}


def train_dpo(model_dir: str | Path, pairs: list[PreferencePair], cfg: TrainConfig, *, beta: float = 0.1,
              rpo_alpha: float = 0.0, max_length: int | None = None, val_fraction: float = 0.1, log=print) -> dict:
    """DPO from the checkpoint in `model_dir` (its weights are also the reference), or resume cfg.out."""
    if beta <= 0:
        raise InputError(f"--beta {beta}: must be positive")
    if rpo_alpha < 0:
        raise InputError(f"--rpo-alpha {rpo_alpha}: must be 0 or more")
    ckpt, template, base, state = open_run(model_dir, cfg, chat_template)
    model, tokenizer = ckpt.model, ckpt.tokenizer
    # the starting weights are the reference; a resumed LoRA run's base never trained: with its
    # adapters off it is the reference, no second copy
    reference = model if state is None or has_lora(model) else load_reference(ckpt, cfg.out)
    max_length = min(max_length or model.config.context_length, model.config.context_length)
    pad_id = tokenizer.pad_id
    dev = device()
    model.to(dev)
    reference.to(dev)
    train_pairs, val_pairs = holdout_split(pairs, val_fraction, cfg.seed)
    log(f"dpo: {len(train_pairs)} training pairs, {len(val_pairs)} held out; computing reference log-probs")
    with adapters_disabled(reference):
        train = with_reference_logprobs(reference, encode_pairs(train_pairs, template, tokenizer, max_length), pad_id,
                                        cfg.batch_size)
        val = with_reference_logprobs(reference, encode_pairs(val_pairs, template, tokenizer, max_length), pad_id,
                                      cfg.batch_size)
    del reference
    if state is None:
        apply_lora(model, cfg, log)
    cfg.extra.update(template=template.name, beta=beta, rpo_alpha=rpo_alpha, max_length=max_length, train_pairs=len(train), val_pairs=len(val))
    batches = ShuffledBatches(train, cfg.batch_size, lambda b: collate_pairs(b, pad_id), seed=cfg.seed,
                              length=pair_length)

    def loss_fn(m, batch):
        loss, metrics = dpo_metrics(m, batch, beta, dev, rpo_alpha)
        return loss, {"tokens": int(batch[2].sum()), **metrics}

    def save_fn(out, train_state, summary, files):
        meta = {"stage": "dpo", "base_model": base, "chat_template": template.to_dict(), "training": summary}
        save_checkpoint(out, model, tokenizer, meta, train_state=train_state, files=files)

    eval_fn = (lambda m: evaluate_dpo(m, val, pad_id, beta, cfg.batch_size, rpo_alpha)) if val else None
    trainer = Trainer(cfg, model, batches, loss_fn, save_fn, eval_fn, stage="dpo")
    if state is not None:
        trainer.load_train_state(state)
    return trainer.fit()
