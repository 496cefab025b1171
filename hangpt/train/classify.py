"""Classification as GPT-1 did downstream tasks: the pretrained transformer plus one linear layer
on the final hidden state of the last real token (the only position that has seen the whole text).

The head is saved as `score.weight` (no bias) with `num_labels`/`id2label`/`pad_token_id` in
config.json, exactly what `transformers.GPT2ForSequenceClassification` expects, so the folder loads
there too; hangpt.json records `{"stage": "classify", "head": {"type": "classification", "labels"}}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data.batches import ShuffledBatches, pad_batch
from ..errors import InputError
from ..models import CausalLM
from .loop import TrainConfig, Trainer, apply_lora, device, resume_state, seed_everything
from .losses import next_token_loss
from .sft import holdout_split

HEAD = "score.weight"


class SequenceClassifier(nn.Module):
    def __init__(self, gpt: CausalLM, num_labels: int):
        super().__init__()
        self.gpt = gpt
        self.score = nn.Linear(gpt.config.hidden_size, num_labels, bias=False)
        nn.init.normal_(self.score.weight, std=0.02)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, lm_loss: bool = False):
        """Logits (B, num_labels) from right-padded ids; the causal mask alone keeps pads (after the
        last real token) out of every real position, so no padding mask is needed.

        lm_loss=True also returns the next-token loss over the real tokens: GPT-1's auxiliary
        language-modelling objective, which regularises fine-tuning on a small model."""
        hidden = self.gpt(ids, return_logits=False).logits
        last = hidden[torch.arange(ids.shape[0], device=ids.device), lengths - 1]
        logits = self.score(last)
        if not lm_loss:
            return logits
        real = torch.arange(ids.shape[1] - 1, device=ids.device)[None, :] < (lengths - 1)[:, None]
        if not real.any():  # one-token texts only: nothing to predict
            return logits, hidden.sum() * 0.0
        return logits, next_token_loss(self.gpt.lm_head, hidden, ids, real)


@dataclass
class Classifier:
    model: SequenceClassifier
    tokenizer: object
    labels: list[str]
    meta: dict


def load_classifier(model_dir: str | Path, merge_adapter: bool = True) -> Classifier:
    """A checkpoint written by `hangpt classify train` (or transformers' GPT2ForSequenceClassification),
    or its LoRA adapter folder (merge_adapter=False keeps the adapters apart, to resume training them)."""
    ckpt = load_checkpoint(model_dir, merge_adapter=merge_adapter)
    head = ckpt.extra_tensors.get(HEAD)
    if head is None:
        raise InputError(f"{model_dir}: no classification head ({HEAD}) in this checkpoint; train one with "
                         f"`hangpt classify train`")
    labels = ckpt.meta.get("head", {}).get("labels") or [str(i) for i in range(head.shape[0])]
    if len(labels) != head.shape[0]:
        raise InputError(f"{model_dir}: hangpt.json lists {len(labels)} labels but {HEAD} has {head.shape[0]} rows")
    clf = SequenceClassifier(ckpt.model, len(labels))
    clf.score.weight.data.copy_(head)
    return Classifier(clf.eval(), ckpt.tokenizer, labels, ckpt.meta)


def encode_texts(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each text, cut to the first max_length tokens; (ids, how many were cut)."""
    seqs = tokenizer.encode_batch(texts)
    truncated = sum(len(s) > max_length for s in seqs)
    return [s[:max_length] or [tokenizer.pad_id] for s in seqs], truncated


def label_indices(labels: list[str], known: list[str], where: str) -> list[int]:
    index = {label: i for i, label in enumerate(known)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise InputError(f"{where}: label {unknown[0]!r} is not one the classifier knows ({', '.join(known)})")
    return [index[label] for label in labels]


def collate(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_batch(seqs, pad_id), torch.tensor([len(s) for s in seqs])


@torch.no_grad()
def predict_proba(model: SequenceClassifier, seqs: list[list[int]], pad_id: int, batch_size: int = 128) -> torch.Tensor:
    """(N, num_labels) probabilities; batches of similar length so little time goes to padding."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), model.score.out_features)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, lengths = collate([seqs[i] for i in idx], pad_id)
        out[idx] = model(ids.to(dev), lengths.to(dev)).float().softmax(-1).cpu()
    model.train(was_training)
    return out


def evaluate(model: SequenceClassifier, seqs: list[list[int]], targets: list[int], pad_id: int,
             batch_size: int = 128) -> dict:
    """Accuracy, mean cross-entropy and the confusion matrix (rows = true label, columns = predicted)."""
    probs = predict_proba(model, seqs, pad_id, batch_size)
    y = torch.tensor(targets)
    pred = probs.argmax(-1)
    n = probs.shape[1]
    confusion = torch.bincount(y * n + pred, minlength=n * n).view(n, n)
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), y).item()
    return {"accuracy": (pred == y).float().mean().item(), "loss": loss, "n": len(targets),
            "confusion": confusion.tolist()}


def save_classifier(out: Path, clf: SequenceClassifier, tokenizer, labels: list[str], meta: dict, **kwargs) -> None:
    gpt = clf.gpt
    gpt.config.pad_token_id = tokenizer.pad_id  # transformers finds the last real token by it
    extra_config = {
        "architectures": ["GPT2ForSequenceClassification"],
        "num_labels": len(labels),
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    meta = {"stage": "classify", "head": {"type": "classification", "labels": labels}, **meta}
    save_checkpoint(out, gpt, tokenizer, meta, extra_tensors={HEAD: clf.score.weight}, extra_config=extra_config,
                    **kwargs)


def train_classifier(model_dir: str | Path, texts: list[str], labels: list[str], cfg: TrainConfig, *,
                       max_length: int = 128, val_fraction: float = 0.05, eval_batch_size: int = 128,
                       dropout: float | None = None, lm_coef: float = 0.0, log=print) -> dict:
    """Train GPT + head on (text, label) pairs and save to cfg.out; returns the training summary.

    dropout (None keeps the model's) and lm_coef (weight of the auxiliary next-token loss) are
    GPT-1's fine-tuning recipe: 0.1 and 0.5 in the paper. With cfg.lora the base gets adapters and
    the head trains whole; the result is an adapter folder."""
    seed_everything(cfg.seed)
    state = resume_state(cfg)
    if state is not None:
        clf = load_classifier(cfg.out, merge_adapter=False)
        base = clf.meta.get("base_model", {})
    else:
        ckpt = load_checkpoint(model_dir)
        apply_lora(ckpt.model, cfg, log)  # before the head is made: it trains in full
        label_set = sorted(set(labels))
        clf = Classifier(SequenceClassifier(ckpt.model, len(label_set)), ckpt.tokenizer, label_set, ckpt.meta)
        head = ckpt.extra_tensors.get(HEAD)
        if head is not None and ckpt.meta.get("head", {}).get("labels") == label_set:
            clf.model.score.weight.data.copy_(head)  # continue training an existing classifier
        base = {"path": str(model_dir), "stage": ckpt.meta.get("stage")}
    if dropout is not None:
        clf.model.gpt.set_dropout(dropout)
    if len(clf.labels) < 2:
        raise InputError(f"classification needs at least two labels; the data has only {clf.labels}")
    tokenizer, pad_id = clf.tokenizer, clf.tokenizer.pad_id
    max_length = min(max_length, clf.model.gpt.config.context_length)
    seqs, truncated = encode_texts(tokenizer, texts, max_length)
    if truncated:
        log(f"{truncated} texts were longer than --max-length {max_length} and were cut to their first tokens")
    examples = list(zip(seqs, label_indices(labels, clf.labels, "training data")))
    train, val = holdout_split(examples, val_fraction, cfg.seed)
    cfg.extra.update(max_length=max_length, train_examples=len(train), val_examples=len(val), truncated=truncated,
                     dropout=clf.model.gpt.config.dropout, lm_coef=lm_coef)
    model = clf.model.to(device())
    dev = device()

    def collate_examples(batch):
        ids, lengths = collate([s for s, _ in batch], pad_id)
        return ids, lengths, torch.tensor([y for _, y in batch])

    def loss_fn(m, batch):
        ids, lengths, y = (t.to(dev) for t in batch)
        if lm_coef:
            logits, lm = m(ids, lengths, lm_loss=True)
        else:
            logits, lm = m(ids, lengths), None
        loss = F.cross_entropy(logits.float(), y)
        metrics = {"tokens": int(lengths.sum()), "acc": (logits.argmax(-1) == y).float().mean().item()}
        if lm is not None:
            metrics.update(class_loss=loss.item(), lm_loss=lm.item())
            loss = loss + lm_coef * lm
        return loss, metrics

    def eval_fn(m):
        r = evaluate(m, [s for s, _ in val], [y for _, y in val], pad_id, eval_batch_size)
        return {"val_loss": round(r["loss"], 6), "val_acc": round(r["accuracy"], 6)}

    def save_fn(out, train_state, summary, files):
        save_classifier(out, model, tokenizer, clf.labels, {"base_model": base, "training": summary},
                        train_state=train_state, files=files)

    batches = ShuffledBatches(train, cfg.batch_size, collate_examples, seed=cfg.seed,
                              length=lambda e: len(e[0]))
    trainer = Trainer(cfg, model, batches, loss_fn, save_fn, eval_fn if val else None, stage="classify")
    if state is not None:
        trainer.load_train_state(state)
    return trainer.fit()
