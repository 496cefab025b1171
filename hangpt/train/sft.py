"""Supervised fine-tuning: a pretrained GPT learns to answer, from conversations rendered by a chat
template. The loss covers only the assistant's answers and their end marker (the prompt tokens are
labelled -100), so the model learns to answer and to stop, not to imitate the questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..data.batches import ShuffledBatches, pad_batch
from ..templates import IGNORE_INDEX, ChatTemplate, prepare_tokenizer, template_for
from .loop import TrainConfig, Trainer, apply_lora, device, open_run
from .losses import next_token_loss

Example = tuple[list[int], list[int]]  # (input_ids, labels)


@dataclass
class EncodedConversations:
    examples: list[Example]
    truncated: int  # prompts cut from the left to fit max_length
    dropped: int  # answers alone longer than max_length


def holdout_split(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded random `val_fraction` of the items is held out."""
    n_val = int(round(len(items) * val_fraction))
    if val_fraction > 0 and n_val == 0 and len(items) > 1:
        n_val = 1
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def fit_length(ids: list[int], labels: list[int], max_length: int) -> Example | None:
    """Cut the oldest tokens so the example fits, keeping the whole last answer; None when the last
    answer alone (plus one prompt token to predict its first token from) does not fit."""
    if len(ids) <= max_length:
        return ids, labels
    prompt_end = max((i for i, label in enumerate(labels) if label == IGNORE_INDEX), default=-1)
    if len(ids) - prompt_end > max_length:
        return None
    return ids[-max_length:], labels[-max_length:]


def encode_conversations(conversations: list[list[dict]], template: ChatTemplate, tokenizer,
                         max_length: int) -> EncodedConversations:
    examples, truncated, dropped = [], 0, 0
    for messages in conversations:
        ids, labels = template.encode_example(tokenizer, messages)
        fitted = fit_length(ids, labels, max_length)
        if fitted is None:
            dropped += 1
            continue
        truncated += len(fitted[0]) < len(ids)
        examples.append(fitted)
    return EncodedConversations(examples, truncated, dropped)


def whole_sequence(examples: list[Example]) -> list[Example]:
    """Labels = input ids: every token is learned, the prompt's too."""
    return [(ids, list(ids)) for ids, _ in examples]


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: pads get label -100 so they carry no loss.

    No padding mask is needed: with right padding every pad comes after all real tokens of its row,
    so the causal mask alone already stops real tokens from attending to pads (the pads' own
    outputs are never used), and the model keeps SDPA's fast is_causal path.
    """
    return pad_batch([x for x, _ in examples], pad_id), pad_batch([y for _, y in examples], IGNORE_INDEX)


def answer_loss(model, ids: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> tuple[torch.Tensor, int]:
    """Cross-entropy of each answer token given everything before it; (loss, number of answer tokens)."""
    hidden = model(ids, return_logits=False).logits
    keep = labels[:, 1:] != IGNORE_INDEX
    lm_head = getattr(model, "module", model).lm_head  # DDP wraps the model
    return next_token_loss(lm_head, hidden, labels, keep, reduction), int(keep.sum())


def validation_loss(model, examples: list[Example], pad_id: int, batch_size: int) -> float:
    """Mean answer-token loss over the held-out examples (batched by length for speed)."""
    ordered = sorted(examples, key=lambda e: len(e[0]))
    total, count = 0.0, 0
    dev = next(model.parameters()).device
    for i in range(0, len(ordered), batch_size):
        ids, labels = collate(ordered[i : i + batch_size], pad_id)
        loss, n = answer_loss(model, ids.to(dev), labels.to(dev), reduction="sum")
        total, count = total + loss.item(), count + n
    return total / max(count, 1)


def train_sft(model_dir: str | Path, conversations: list[list[dict]], cfg: TrainConfig, *,
            template_name: str | None = None, max_length: int | None = None, val_fraction: float = 0.1,
            loss: str = "answer", log=print) -> dict:
    """Fine-tune the checkpoint in `model_dir` (or continue the run in cfg.out with cfg.resume) and
    write the result to cfg.out; returns the training summary. loss="all" learns every token of
    each example, prompt included (the KoGPT2 lab's labels=input_ids), instead of the answers only."""
    ckpt, template, base, state = open_run(model_dir, cfg, lambda c: template_for(c.meta, c.tokenizer, template_name))
    model, tokenizer = ckpt.model, ckpt.tokenizer
    if state is None:
        apply_lora(model, cfg, log)
    added = prepare_tokenizer(template, tokenizer, model)
    if added:
        log(f"added tokens {', '.join(added)} to the tokenizer; embeddings resized to {model.config.vocab_size}")
    max_length = min(max_length or model.config.context_length, model.config.context_length)
    train_convs, val_convs = holdout_split(conversations, val_fraction, cfg.seed)
    train = encode_conversations(train_convs, template, tokenizer, max_length)
    val = encode_conversations(val_convs, template, tokenizer, max_length)
    if loss == "all":
        train.examples, val.examples = whole_sequence(train.examples), whole_sequence(val.examples)
    truncated, dropped = train.truncated + val.truncated, train.dropped + val.dropped
    if truncated or dropped:
        log(f"{truncated} examples had their prompt cut from the left and {dropped} were dropped "
            f"(answer longer than --max-length {max_length})")
    pad_id = tokenizer.pad_id
    cfg.extra.update(template=template.name, loss=loss, max_length=max_length, train_examples=len(train.examples),
                     val_examples=len(val.examples), truncated=truncated, dropped=dropped)
    batches = ShuffledBatches(train.examples, cfg.batch_size, lambda b: collate(b, pad_id), seed=cfg.seed,
                              length=lambda e: len(e[0]))

    def loss_fn(m, batch):
        ids, labels = batch
        loss, n = answer_loss(m, ids.to(dev), labels.to(dev))
        return loss, {"tokens": n}

    def eval_fn(m):
        return {"val_loss": round(validation_loss(m, val.examples, pad_id, cfg.batch_size), 6)}

    def save_fn(out, train_state, summary, files):
        meta = {"stage": "sft", "base_model": base, "chat_template": template.to_dict(), "training": summary}
        save_checkpoint(out, model, tokenizer, meta, train_state=train_state, files=files)

    dev = device()
    model.to(dev)
    trainer = Trainer(cfg, model, batches, loss_fn, save_fn, eval_fn if val.examples else None, stage="sft")
    if state is not None:
        trainer.load_train_state(state)
    return trainer.fit()

