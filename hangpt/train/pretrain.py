"""Pretraining by next-token prediction on token shards, and scoring a model on text.

Bits per byte (bpb) = summed token losses in nats / ln 2 / UTF-8 bytes of the text those tokens
cover. Unlike perplexity it does not depend on the tokenizer, so models with different vocabularies
compare on the same text.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data.shards import TokenShards, TokenWindows, build_shards, corpus_key, is_val_document, iter_corpus, split_every
from ..data.text import expand_paths
from ..errors import InputError
from ..models import CausalLM, build_model, preset_config
from ..tokenizer import Tokenizer, bytes_per_token, train_tokenizer
from .loop import TrainConfig, Trainer, distributed, resume_state, seed_everything
from .losses import vocab_cross_entropy

VAL_TOKENS = 1 << 16  # validation during training scores at most this many tokens (whole documents)
# What `hangpt pretrain` trains with unless flags say otherwise, chosen by measuring validation bits
# per byte after a fixed time on 2 CPU cores (benchmarks/pretrain_quality.py): the Llama layout,
# Muon for the blocks' matrices, and the learning rate decayed linearly to zero. The 2019 recipe
# is `--arch gpt2 --optimizer adamw --lr-schedule cosine --lr 1e-3`.
RECIPE = {"optimizer": "muon", "lr_schedule": "linear"}


def default_lr(hidden_size: int, optimizer: str) -> float:
    """Peak learning rate when --lr is not given: small models take larger steps, and Muon's
    orthogonalised updates stay stable at about 3x AdamW's."""
    lr = 1e-3 if hidden_size <= 512 else 3e-4
    return 3 * lr if optimizer == "muon" else lr


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def lm_loss(model, batch: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy of a (B, T+1) batch of token windows."""
    batch = batch.to(next(model.parameters()).device)
    x, y = batch[:, :-1], batch[:, 1:]
    hidden = model(x, return_logits=False).logits
    lm_head = getattr(model, "module", model).lm_head  # DDP wraps the model
    return vocab_cross_entropy(lm_head, hidden.flatten(0, 1), y.flatten()), {"tokens": y.numel()}


@torch.no_grad()
def score_tokens(model: CausalLM, tokens: np.ndarray, n_bytes: int, context: int | None = None,
                 batch_size: int = 8) -> dict:
    """Loss, perplexity and bits per byte of a token stream, in non-overlapping windows of the
    model's context (each window also sees the token before it, so every token but the first is
    predicted exactly once)."""
    context = context or model.config.context_length
    if len(tokens) < 2:
        raise InputError("too little text to score (fewer than 2 tokens)")
    n_pred = len(tokens) - 1
    starts = list(range(0, n_pred, context))
    total = 0.0
    was_training = model.training
    model.eval()
    for i in range(0, len(starts), batch_size):
        group = starts[i : i + batch_size]
        full = [s for s in group if s + context + 1 <= len(tokens)]
        rows = [np.asarray(tokens[s : s + context + 1], dtype=np.int64) for s in full]
        batches = [np.stack(rows)] if rows else []
        batches += [np.asarray(tokens[s:], dtype=np.int64)[None] for s in group if s not in full]
        for b in batches:
            t = torch.from_numpy(b).to(next(model.parameters()).device)
            logits = model(t[:, :-1]).logits
            total += F.cross_entropy(logits.flatten(0, 1).float(), t[:, 1:].flatten(), reduction="sum").item()
    model.train(was_training)
    loss = total / n_pred
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": total / math.log(2) / n_bytes,
            "tokens": n_pred, "bytes": n_bytes}


def evaluate_text(model: CausalLM, tokenizer: Tokenizer, paths: Iterable[str | Path], *, text_column: str | None = None,
                  batch_size: int = 8) -> dict:
    """Score a model on text files (tokenized to a temporary shard, so large files stream)."""
    with tempfile.TemporaryDirectory(prefix="hangpt-eval-") as tmp:
        shards = build_shards(paths, tokenizer, tmp, val_fraction=0.0, text_column=text_column)
        return score_tokens(model, shards.tokens("train"), shards.info["train"]["bytes"], batch_size=batch_size)


def _rank0_first(fn: Callable[[], object]):
    """Run fn on rank 0 first (it fills a cache), then on the other ranks (which reuse it)."""
    rank, world = distributed()
    if world == 1:
        return fn()
    import torch.distributed as dist

    result = fn() if rank == 0 else None
    dist.barrier()
    return result if rank == 0 else fn()


def _corpus_tokenizer(data, cache: Path, vocab_size: int, val_fraction: float, text_column: str | None) -> tuple[Tokenizer, dict]:
    """Train a tokenizer on the training documents (cached in the run's data folder) and measure
    bytes per token on the held-out documents."""
    files = expand_paths(data)
    folder = cache / f"tokenizer-{corpus_key(files, vocab_size, val_fraction, text_column)}"
    every = split_every(val_fraction)
    if (folder / "tokenizer.json").exists():
        tok = Tokenizer.load(folder)
    else:
        _log(f"training a {vocab_size}-token BPE tokenizer on {len(files)} file(s)")
        docs = (d for i, d in enumerate(iter_corpus(files, text_column)) if not is_val_document(i, every))
        tok = train_tokenizer(docs, vocab_size=vocab_size)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=cache))
        tok.save(tmp)
        os.replace(tmp, folder)  # a killed run never leaves a half-written tokenizer behind
    held_out = list(islice((d for i, d in enumerate(iter_corpus(files, text_column)) if is_val_document(i, every)), 5000))
    info = {"vocab_size": tok.vocab_size}
    if held_out:
        info["held_out_bytes_per_token"] = round(bytes_per_token(tok, held_out), 3)
        _log(f"tokenizer: {info['held_out_bytes_per_token']} bytes per token on {len(held_out)} held-out documents")
    return tok, info


def pretrain(data: list[str], out: str | Path, cfg: TrainConfig, **options) -> dict | None:
    """Pretrain (or continue pretraining) a GPT on text; returns the training summary (None on DDP
    ranks other than 0). options: the keywords of _pretrain. A new run that fails before its first
    checkpoint leaves no --out folder behind, not even its token cache."""
    out = Path(out)
    fresh = not out.exists()
    try:
        return _pretrain(data, out, cfg, **options)
    except BaseException:
        if fresh and not (out / "config.json").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _pretrain(
    data: list[str],
    out: Path,
    cfg: TrainConfig,
    *,
    preset: str = "tiny",
    arch: str = "gpt2",
    model_dir: str | None = None,
    tokenizer_dir: str | None = None,
    vocab_size: int | None = None,
    max_length: int | None = None,
    val_fraction: float = 0.02,
    text_column: str | None = None,
    overwrite: bool = False,
) -> dict | None:
    rank, world = distributed()
    cfg.overwrite = cfg.overwrite or overwrite
    state = resume_state(cfg)
    cache = out / "data"
    tok_info: dict = {}
    if model_dir and tokenizer_dir:
        raise InputError("--tokenizer cannot be combined with --model (the checkpoint has its own tokenizer)")
    if vocab_size and (model_dir or tokenizer_dir):
        raise InputError("--vocab-size sizes a new tokenizer; it cannot be combined with --model or --tokenizer")
    if state is not None or model_dir:
        ckpt = load_checkpoint(out if state is not None else model_dir)
        model, tok = ckpt.model, ckpt.tokenizer
        tok_info = ckpt.meta.get("tokenizer", {}) if state is not None else {}
    else:
        if tokenizer_dir:
            tok = Tokenizer.load(tokenizer_dir)
        else:
            vocab = vocab_size or preset_config(preset, arch).vocab_size
            tok, tok_info = _rank0_first(lambda: _corpus_tokenizer(data, cache, vocab, val_fraction, text_column))
        if tok.eos_id is None:
            raise InputError(f"{tokenizer_dir}: tokenizer has no end-of-text token")
        seed_everything(cfg.seed)
        model = build_model(preset_config(preset, arch, vocab_size=tok.vocab_size, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id))
    if tok.vocab_size > model.config.vocab_size:
        raise InputError(f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {model.config.vocab_size}")
    length = max_length or model.config.context_length
    if length > model.config.context_length:
        raise InputError(f"--max-length {length} is longer than the model's context ({model.config.context_length})")
    if cfg.lr is None:
        cfg.lr = default_lr(model.config.hidden_size, cfg.optimizer)
    shards: TokenShards = _rank0_first(
        lambda: build_shards(data, tok, cache, val_fraction=val_fraction, text_column=text_column, log=_log,
                             progress=cfg.progress and rank == 0))
    info = shards.info
    if rank == 0:
        _log(f"data: {info['train']['tokens']:,} train tokens, {info['val']['tokens']:,} validation tokens "
             f"({info['train']['documents']:,} + {info['val']['documents']:,} documents); "
             f"model: {model.num_parameters():,} parameters")
    micro = max(1, cfg.batch_size // cfg.grad_accum)
    batches = TokenWindows(shards.tokens("train"), micro, length, seed=cfg.seed, rank=rank, world_size=world)
    val_tokens, val_bytes = shards.val_prefix(VAL_TOKENS)

    def eval_fn(m) -> dict:
        if len(val_tokens) < 2:
            return {}
        r = score_tokens(m, val_tokens, val_bytes, context=length)
        return {"val_loss": r["loss"], "val_ppl": r["perplexity"], "val_bpb": r["bits_per_byte"]}

    cfg.extra = {"preset": None if model_dir or state else preset, "arch": None if model_dir or state else arch, "max_length": length, "batch_size": cfg.batch_size,
                 "grad_accum": cfg.grad_accum, "lr": cfg.lr, "optimizer": cfg.optimizer,
                 "lr_schedule": cfg.lr_schedule, "world_size": world, "bf16": cfg.bf16,
                 "data": [str(p) for p in data], "text_column": text_column, "val_fraction": val_fraction,
                 "train_tokens": info["train"]["tokens"], "val_tokens": int(len(val_tokens))}

    def save_fn(path, train_state, summary, files):
        meta = {"stage": "pretrain", "training": summary, "tokenizer": tok_info}
        save_checkpoint(path, model, tok, meta, train_state=train_state, files=files)

    trainer = Trainer(cfg, model, batches, lm_loss, save_fn, eval_fn if val_fraction > 0 else None, stage="pretrain")
    if state is not None:
        trainer.load_train_state(state)
        _log(f"resuming at step {trainer.step} ({trainer.tokens:,} tokens, {trainer.elapsed / 60:.1f} min)")
    summary = trainer.fit()
    if rank != 0:
        return None
    return {"out": str(out), **summary, **({"tokenizer": tok_info} if tok_info else {})}
