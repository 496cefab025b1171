"""Reward model: the GPT body with a scalar head read at the last real token (the answer's end
marker), trained on preference pairs with the pairwise loss -log sigmoid(r_chosen - r_rejected).

Saved like transformers' GPT2ForSequenceClassification with one label: the body under GPT-2 names,
the head as `score.weight` (1, n_embd), `pad_token_id` in config.json. The pad token must differ
from the end-of-text token, or the end marker itself would be taken for padding by transformers.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data.batches import ShuffledBatches, pad_batch
from ..data.preferences import PreferencePair, chat_template, encode_answer
from ..errors import InputError
from ..templates import ChatTemplate, template_for
from ..tokenizer import PAD
from .loop import TrainConfig, Trainer, apply_lora, device, resume_state, seed_everything
from .losses import pairwise_reward_loss
from .sft import holdout_split

# (chosen_ids, chosen_mask, rejected_ids, rejected_mask, extra numbers per pair)
PairExample = tuple[list[int], list[int], list[int], list[int], list[float]]


class RewardModel(nn.Module):
    """GPT body + linear score head; one scalar per sequence."""

    def __init__(self, gpt: nn.Module, score_weight: torch.Tensor | None = None):
        super().__init__()
        self.gpt = gpt
        self.score = nn.Linear(gpt.config.hidden_size, 1, bias=False)
        if score_weight is None:
            nn.init.normal_(self.score.weight, std=0.02)
        else:
            self.score.weight.data.copy_(score_weight.reshape(1, -1))

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) of right-padded rows with `lengths` real tokens (causal attention means the
        padding after a row's last token never influences it)."""
        hidden = self.gpt(input_ids, return_logits=False).logits
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
        return self.score(last).squeeze(-1)


def ensure_pad_token(tokenizer, model) -> None:
    """Give the tokenizer a pad token of its own (not EOS) and record it in the model config."""
    if tokenizer.pad_id == tokenizer.eos_id:
        tokenizer.add_special_tokens([PAD])
        tokenizer.pad_token = PAD
        if tokenizer.vocab_size > model.config.vocab_size:
            model.resize_token_embeddings(tokenizer.vocab_size)
    model.config.pad_token_id = tokenizer.pad_id


def load_reward_model(path: str | Path, merge_adapter: bool = True) -> tuple[RewardModel, object, ChatTemplate, dict]:
    """(reward model, tokenizer, chat template, hangpt.json) of a folder written by `rm train`."""
    ckpt = load_checkpoint(path, merge_adapter=merge_adapter)
    weight = ckpt.extra_tensors.get("score.weight")
    if weight is None or weight.numel() != ckpt.model.config.hidden_size:
        raise InputError(f"{path}: not a reward model (no score.weight of shape (1, {ckpt.model.config.hidden_size}); "
                         f"train one with `hangpt rm train`)")
    rm = RewardModel(ckpt.model, weight).eval()
    return rm, ckpt.tokenizer, template_for(ckpt.meta, ckpt.tokenizer), ckpt.meta


def save_reward_model(out: Path, rm: RewardModel, tokenizer, template: ChatTemplate, meta: dict, **kwargs) -> None:
    meta = {"stage": "rm", "head": {"type": "reward", "tensor": "score.weight"},
            "chat_template": template.to_dict(), **meta}
    save_checkpoint(out, rm.gpt, tokenizer, meta, extra_tensors={"score.weight": rm.score.weight},
                    extra_config={"id2label": {"0": "reward"}, "label2id": {"reward": 0}}, **kwargs)


def encode_pairs(pairs: list[PreferencePair], template: ChatTemplate, tokenizer, max_length: int,
                 extra=lambda p: [p.margin or 0.0]) -> list[PairExample]:
    out = []
    for p in pairs:
        c_ids, c_mask = encode_answer(template, tokenizer, p.prompt, p.chosen, max_length)
        r_ids, r_mask = encode_answer(template, tokenizer, p.prompt, p.rejected, max_length)
        out.append((c_ids, c_mask, r_ids, r_mask, extra(p)))
    return out


def pair_length(example: PairExample) -> int:
    """Padded width of a pair's rows (for length-bucketed batches)."""
    return max(len(example[0]), len(example[2]))


def collate_pairs(examples: list[PairExample], pad_id: int):
    """One right-padded batch of the chosen rows followed by the rejected rows:
    (ids (2B, T), answer_mask (2B, T), lengths (2B,), extra (B, k))."""
    rows = [e[0] for e in examples] + [e[2] for e in examples]
    masks = [e[1] for e in examples] + [e[3] for e in examples]
    lengths = torch.tensor([len(r) for r in rows])
    extra = torch.tensor([e[4] for e in examples], dtype=torch.float32)
    return pad_batch(rows, pad_id), pad_batch(masks, 0), lengths, extra


@torch.no_grad()
def score_texts(rm: RewardModel, tokenizer, template: ChatTemplate, prompts: list, answers: list[str],
                max_length: int | None = None, batch_size: int = 16) -> list[float]:
    """The reward of each (prompt, answer), rendered with the reward model's chat template."""
    max_length = min(max_length or rm.gpt.config.context_length, rm.gpt.config.context_length)
    rows = [encode_answer(template, tokenizer, p, a, max_length)[0] for p, a in zip(prompts, answers)]
    dev = next(rm.parameters()).device
    out: list[float] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        out += rm(pad_batch(chunk, tokenizer.pad_id).to(dev), torch.tensor([len(r) for r in chunk], device=dev)).tolist()
    return out


@torch.no_grad()
def evaluate_pairs(rm: RewardModel, examples: list[PairExample], pad_id: int, batch_size: int = 16) -> dict:
    """Pairwise accuracy (share of pairs where chosen scores higher), loss and mean margin."""
    dev = next(rm.parameters()).device
    correct, loss, margin = 0, 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        ids, _, lengths, extra = collate_pairs(chunk, pad_id)
        r = rm(ids.to(dev), lengths.to(dev))
        rc, rr = r[: len(chunk)], r[len(chunk) :]
        correct += int((rc > rr).sum())
        loss += pairwise_reward_loss(rc, rr, extra[:, 0].to(dev)).item() * len(chunk)
        margin += (rc - rr).sum().item()
    n = max(len(examples), 1)
    return {"val_accuracy": round(correct / n, 6), "val_loss": round(loss / n, 6), "val_margin": round(margin / n, 6)}


def train_reward_model(model_dir: str | Path, pairs: list[PreferencePair], cfg: TrainConfig, *,
                       max_length: int | None = None, val_fraction: float = 0.1, log=print) -> dict:
    """Train a reward model from the checkpoint in `model_dir` (or resume the run in cfg.out)."""
    seed_everything(cfg.seed)
    state = resume_state(cfg)
    if state is not None:
        rm, tokenizer, template, meta = load_reward_model(cfg.out, merge_adapter=False)
        base = meta.get("base_model", {})
    else:
        ckpt = load_checkpoint(model_dir)
        template = chat_template(ckpt)
        apply_lora(ckpt.model, cfg, log)
        ensure_pad_token(ckpt.tokenizer, ckpt.model)
        rm, tokenizer = RewardModel(ckpt.model), ckpt.tokenizer
        base = {"path": str(model_dir), "stage": ckpt.meta.get("stage")}
    max_length = min(max_length or rm.gpt.config.context_length, rm.gpt.config.context_length)
    train_pairs, val_pairs = holdout_split(pairs, val_fraction, cfg.seed)
    train = encode_pairs(train_pairs, template, tokenizer, max_length)
    val = encode_pairs(val_pairs, template, tokenizer, max_length)
    pad_id = tokenizer.pad_id
    cfg.extra.update(template=template.name, max_length=max_length, train_pairs=len(train), val_pairs=len(val))
    log(f"reward model: {len(train)} training pairs, {len(val)} held out")
    batches = ShuffledBatches(train, cfg.batch_size, lambda b: collate_pairs(b, pad_id), seed=cfg.seed,
                              length=pair_length)
    dev = device()
    rm.to(dev)

    def loss_fn(m, batch):
        ids, _, lengths, extra = batch
        r = m(ids.to(dev), lengths.to(dev))
        b = extra.shape[0]
        rc, rr = r[:b], r[b:]
        loss = pairwise_reward_loss(rc, rr, extra[:, 0].to(dev))
        return loss, {"tokens": int(lengths.sum()), "accuracy": (rc > rr).float().mean().item(),
                      "margin": (rc - rr).mean().item()}

    def save_fn(out, train_state, summary, files):
        save_reward_model(out, rm, tokenizer, template, {"base_model": base, "training": summary},
                          train_state=train_state, files=files)

    eval_fn = (lambda m: evaluate_pairs(m, val, pad_id, cfg.batch_size)) if val else None
    trainer = Trainer(cfg, rm, batches, loss_fn, save_fn, eval_fn, stage="rm")
    if state is not None:
        trainer.load_train_state(state)
    return trainer.fit()
