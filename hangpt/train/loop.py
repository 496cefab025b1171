"""The one training loop every stage uses (pretrain, sft, rm, dpo, classify; ppo and grpo drive
their own rollouts, rollout.py, but reuse the pieces here).

A stage hands the Trainer a model, a batch source that can report and restore its position, a loss
function and a save function. The Trainer does the rest: AdamW (or Adam, or Muon + AdamW), warmup + a
cosine, linear or constant learning rate,
gradient accumulation and clipping, bf16 autocast, on the device chosen with --device, periodic validation, a tqdm progress bar,
periodic atomic checkpoints with everything needed for an exact resume (optimizer, step, data
position, RNG, elapsed time, loss history), a loss-curve PNG, and DDP under `torchrun`.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from ..data.batches import BatchSource
from ..device import current_device, distributed
from ..errors import InputError, Interrupted
from ..plotting import loss_curve_png
from ..models import CausalLM
from ..memory import keep_freed_memory
from ..threads import ThreadPolicy
from .muon import MuonAdamW


@dataclass
class TrainConfig:
    out: Path
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-4
    lr_schedule: str = "cosine"  # after warmup: cosine to min_lr_ratio * lr, linear to 0, or constant
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.03
    warmup_steps: int | None = None  # when set, replaces warmup_fraction
    optimizer: str = "adamw"  # a name in OPTIMIZERS
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    max_steps: int | None = None
    epochs: float | None = None
    time_budget: float | None = None  # minutes
    eval_every: int = 200
    save_every: int = 200
    log_every: int = 10
    seed: int = 1234
    resume: bool = False
    overwrite: bool = False  # replace a finished or resumable run in out
    bf16: bool = False
    gradient_checkpointing: bool = False
    lora: dict | None = None  # add_lora's r, alpha, dropout, targets (--lora-r): only adapters train
    progress: bool = True
    extra: dict = field(default_factory=dict)  # stage-specific settings, recorded in the summary


def device() -> torch.device:
    """Where training runs: the --device choice (auto: a GPU when there is one)."""
    return current_device()


def lr_at(step: int, progress: float, cfg: TrainConfig, total_steps: int | None = None) -> float:
    """Linear warmup (over --warmup-steps, else the first `warmup_fraction` of training), then the
    schedule over the rest: cosine down to min_lr_ratio * lr, linear down to 0 (transformers'
    get_linear_schedule_with_warmup), or constant."""
    if cfg.warmup_steps is not None:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        warmup = cfg.warmup_steps / total_steps if total_steps else 0.0
    else:
        warmup = cfg.warmup_fraction
        if progress < warmup:
            return cfg.lr * max(progress, 1e-3) / warmup
    p = min(1.0, max(0.0, (progress - warmup) / max(1e-9, 1 - warmup)))
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1 - p)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * p))


# --optimizer NAME -> the optimizer class
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "muon": MuonAdamW}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    """cfg.optimizer with weight decay on matrices only (not biases, norms), as in GPT-2/nanoGPT.
    AdamW decays the weights directly; Adam (the KoGPT2 lab's) adds the decay to the gradient.
    Muon takes the matrices of the transformer blocks and leaves the rest to AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    seen, decay, no_decay = set(), [], []
    for p in params:
        if id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer not in OPTIMIZERS:
        raise InputError(f"--optimizer {cfg.optimizer!r}: choose {', '.join(OPTIMIZERS)}")
    if cfg.optimizer == "muon":
        in_blocks = {id(p) for lm in model.modules() if isinstance(lm, CausalLM) for p in lm.blocks.parameters()}
        groups[0]["params"] = [p for p in decay if id(p) not in in_blocks]
        return MuonAdamW([p for p in decay if id(p) in in_blocks], groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         betas=cfg.betas, eps=cfg.adam_eps)
    # the fused kernel (CUDA, and CPU since torch 2.4) is several times faster than the per-tensor loop
    return OPTIMIZERS[cfg.optimizer](groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, fused=True)


# what each stage's loss measures (the y axis of its curve); other stages: next-token cross-entropy
LOSS_LABELS = {"rm": "pairwise loss  -log sigmoid(r_chosen - r_rejected)",
               "dpo": "DPO loss  -log sigmoid(beta x log-ratio margin)",
               "classify": "loss (classification + auxiliary LM)"}


SaveFn = Callable[[Path, dict | None, dict, dict], None]
"""save(out, train_state or None for the final save, summary, files) writes the stage's checkpoint."""


class ResumableRun:
    """What every training run saves for an exact resume, and its summary; the Trainer and the RL
    stages (rollout.py's outer loop) share it. Needs step, elapsed, tokens, optimizer, batches, history."""

    window: list[dict] | tuple = ()  # metrics of the steps since the last log line (PPO logs every step)

    def train_state(self) -> dict:
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "tokens": self.tokens,
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "history": json.dumps(self.history),
            "window": json.dumps(self.window),  # so the first log line after a resume averages the same steps
        }

    def load_train_state(self, state: dict) -> None:
        self.step, self.elapsed, self.tokens = state["step"], state["elapsed"], state.get("tokens", 0)
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.history = json.loads(state["history"])
        self.window = json.loads(state.get("window", "[]"))

    def stop_if_requested(self, stop: "StepBoundaryStop", bar) -> None:
        """After a step: on Ctrl-C, save a resumable checkpoint and end with a one-line message."""
        if stop.requested:
            bar.close()
            self._save(final=False)
            raise Interrupted(f"interrupted at step {self.step}; checkpoint saved in {self.cfg.out} "
                             f"(continue with --resume)")

    def run_steps(self, loop: Callable[["StepBoundaryStop"], None], bar) -> None:
        """Run the step loop with Ctrl-C deferred to the next step boundary (see StepBoundaryStop).
        A second Ctrl-C stops at once: nothing is saved mid-step, since that could not resume exactly."""
        keep_freed_memory()  # no page faults for activations every step (see hangpt/memory.py)
        with StepBoundaryStop() as stop:
            try:
                loop(stop)
            except KeyboardInterrupt:
                bar.close()
                raise Interrupted(f"stopped during step {self.step + 1} without saving; {self.cfg.out} holds the "
                                 f"last periodic checkpoint, if any (continue with --resume)") from None
        bar.close()


    def run_summary(self, settings: dict) -> dict:
        """Steps, tokens, minutes, the last value of every logged metric, and the settings."""
        last = {k: v for h in self.history for k, v in h.items() if k != "step"}
        return {"steps": self.step, "tokens": self.tokens, "minutes": round(self.elapsed / 60, 2),
                "final": last, **({"settings": settings} if settings else {})}


class StepBoundaryStop:
    """Ctrl-C during training asks the loop to stop after the current step, so the checkpoint it
    saves is exactly a step boundary and a resumed run matches an uninterrupted one; a second
    Ctrl-C stops at once. Only the main thread can own the signal; elsewhere Ctrl-C is untouched."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StepBoundaryStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._request)
        return self

    def _request(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Trainer(ResumableRun):
    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        batches: BatchSource,
        loss_fn: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict]],
        save_fn: SaveFn,
        eval_fn: Callable[[torch.nn.Module], dict] | None = None,
        stage: str = "train",
    ):
        self.cfg, self.model, self.batches = cfg, model, batches
        self.loss_fn, self.save_fn, self.eval_fn, self.stage = loss_fn, save_fn, eval_fn, stage
        self.rank, self.world = distributed()
        model.to(device())
        if cfg.gradient_checkpointing:
            checkpoint_blocks(model)
        self.optimizer = make_optimizer(model, cfg)
        self.step, self.elapsed, self.tokens = 0, 0.0, 0
        self.history: list[dict] = []
        self.total_steps = self._total_steps()

    def _total_steps(self) -> int | None:
        c = self.cfg
        if c.max_steps:
            return c.max_steps
        if c.epochs:
            return max(1, math.ceil(c.epochs * self.batches.steps_per_epoch / c.grad_accum))
        if c.time_budget:
            return None
        raise InputError("give --max-steps, --epochs or --time-budget")

    def progress(self) -> float:
        by_steps = self.step / self.total_steps if self.total_steps else 0.0
        by_time = self.elapsed / (self.cfg.time_budget * 60) if self.cfg.time_budget else 0.0
        return min(1.0, max(by_steps, by_time))

    def summary(self) -> dict:
        return self.run_summary(self.cfg.extra)

    def _save(self, final: bool) -> None:
        if self.rank != 0:
            return
        files = {
            "train_log.jsonl": "".join(json.dumps(h) + "\n" for h in self.history).encode(),
            "loss_curve.png": loss_curve_png(self.history, f"hangpt {self.stage}",
                                             LOSS_LABELS.get(self.stage, "loss (nats/token)")),
        }
        self.save_fn(self.cfg.out, None if final else self.train_state(), self.summary(), files)

    # -- loop ----------------------------------------------------------------------------------
    def _micro_step(self, model) -> dict:
        batch = self.batches.next_batch()
        with torch.autocast(device_type=device().type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            loss, metrics = self.loss_fn(model, batch)
        (loss / self.cfg.grad_accum).backward()
        return {"loss": loss.item(), **metrics}

    def _evaluate(self) -> dict:
        if self.eval_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad(), torch.autocast(device_type=device().type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            metrics = self.eval_fn(self.model)
        self.model.train()
        return metrics

    def fit(self) -> dict:
        """Train until max steps / epochs / time budget; returns the training summary."""
        from tqdm.auto import tqdm

        model = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model)
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.stage, unit="step", dynamic_ncols=True,
                   disable=not self.cfg.progress or self.rank != 0)
        self.run_steps(lambda stop: self._loop(model, bar, stop), bar)
        if self.eval_fn:
            self.history.append({"step": self.step, "minutes": round(self.elapsed / 60, 4), **self._evaluate()})
        self._save(final=True)
        return self.summary()

    def _loop(self, model, bar, stop: StepBoundaryStop) -> None:
        window = self.window = list(self.window)
        threads = ThreadPolicy()  # busy machine: fewer threads may step faster (see hangpt/threads.py)
        while self.progress() < 1.0:
            threads.before()
            t0 = time.perf_counter()
            lr = lr_at(self.step, self.progress(), self.cfg, self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            micro = [self._micro_step(model) for _ in range(self.cfg.grad_accum)]
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip).item()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            threads.after(dt)
            self.step += 1
            self.elapsed += dt
            step_tokens = sum(m.get("tokens", 0) for m in micro) * self.world
            self.tokens += step_tokens
            metrics = {k: sum(m[k] for m in micro) / len(micro) for k in micro[0] if k != "tokens"}
            metrics.update(lr=lr, grad_norm=grad_norm, tokens_per_s=step_tokens / dt if dt else 0.0)
            window.append(metrics)
            bar.update(1)
            if self.step % self.cfg.log_every == 0 or self.progress() >= 1.0:
                avg = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                self.history.append({"step": self.step, "minutes": round(self.elapsed / 60, 4),
                                     **{k: round(v, 6) for k, v in avg.items()}})
                bar.set_postfix(loss=f"{avg['loss']:.3f}", tok_s=f"{avg['tokens_per_s']:.0f}", lr=f"{lr:.1e}")
                window = self.window = []
                if bar.disable and self.rank == 0 and self.step % (10 * self.cfg.log_every) == 0:  # plain lines
                    of = f"/{self.total_steps}" if self.total_steps else ""
                    print(f"{self.stage} step {self.step}{of}: loss {avg['loss']:.3f}, "
                          f"{avg['tokens_per_s']:.0f} tokens/s", file=sys.stderr, flush=True)
            if self.eval_fn and self.step % self.cfg.eval_every == 0 and self.progress() < 1.0:
                self.history.append({"step": self.step, "minutes": round(self.elapsed / 60, 4), **self._evaluate()})
                if self.rank == 0:
                    bar.write(_format_metrics(self.step, self.history[-1]), file=sys.stderr)  # stdout is for --json
            if self.step % self.cfg.save_every == 0 and self.progress() < 1.0:
                self._save(final=False)
            self.stop_if_requested(stop, bar)


def _format_metrics(step: int, metrics: dict) -> str:
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k != "step")
    return f"step {step}: {shown}"


def resume_state(cfg: TrainConfig) -> dict | None:
    """Every training command starts here, before any work: --out must be writable, and a finished or
    resumable run in it is replaced only with --overwrite; returns the train state to continue from
    with --resume (else None). Folders left by killed saves are removed."""
    from ..checkpoint import load_train_state, remove_interrupted_saves

    out = cfg.out
    check_writable(out)
    remove_interrupted_saves(out)
    has_model, resumable = (out / "config.json").exists(), (out / "train_state.pt").exists()
    if cfg.resume:
        if resumable:
            return load_train_state(out)
        if has_model:
            raise InputError(f"{out}: training there already finished, nothing to resume (continue it with "
                             f"--model {out} --out NEW_DIR)")
        raise InputError(f"{out}: no checkpoint with a training state to resume")
    if has_model and not cfg.overwrite:
        if resumable:
            raise InputError(f"{out}: holds an unfinished run; add --resume to continue it or --overwrite to start over")
        raise InputError(f"{out}: already holds a finished checkpoint; pass --overwrite to replace it")
    return None


class OpenedRun(NamedTuple):
    """A chat stage's starting point, as `open_run` loads it."""

    ckpt: Any  # the checkpoint to train (model, tokenizer, meta, extra_tensors)
    template: Any  # the chat template its conversations are rendered with
    base: dict  # where the starting model came from (hangpt.json base_model)
    state: dict | None  # the train state to resume from; None for a fresh run


def open_run(model_dir: str | Path | None, cfg: TrainConfig, fresh_template: Callable[[Any], Any]) -> OpenedRun:
    """The seed/resume/load preamble of the stages that train a chat model (sft, dpo, ppo, grpo):
    with --resume the run in cfg.out (adapters kept apart, so training continues on them) and the
    template it recorded; else the checkpoint in `model_dir` and fresh_template(ckpt)."""
    from ..checkpoint import load_checkpoint
    from ..templates import template_for

    seed_everything(cfg.seed)
    state = resume_state(cfg)
    if state is not None:
        ckpt = load_checkpoint(cfg.out, merge_adapter=False)
        return OpenedRun(ckpt, template_for(ckpt.meta, ckpt.tokenizer), ckpt.meta.get("base_model", {}), state)
    ckpt = load_checkpoint(model_dir)
    return OpenedRun(ckpt, fresh_template(ckpt), {"path": str(model_dir), "stage": ckpt.meta.get("stage")}, None)


def check_writable(out: Path) -> None:
    """Fail at the start, not at the first save after all the training, when --out cannot be written
    (a save writes a folder beside it and renames it into place)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.check-", dir=out.parent))
    except OSError as e:
        raise InputError(f"--out {out}: cannot be written ({e.strerror or e})") from None


def load_reference(ckpt, out: Path):
    """The frozen starting model of a resumed DPO/PPO run, rebuilt from hangpt.json's base_model."""
    from ..checkpoint import load_checkpoint

    path = ckpt.meta.get("base_model", {}).get("path")
    if not path:
        raise InputError(f"{out}/hangpt.json: no base_model.path; cannot rebuild the reference model")
    reference = load_checkpoint(path).model
    if reference.config.vocab_size != ckpt.model.config.vocab_size:
        reference.resize_token_embeddings(ckpt.model.config.vocab_size)
    return reference


def apply_lora(model: torch.nn.Module, cfg: TrainConfig, log=print) -> None:
    """--lora-r on a fresh run: freeze the model and add adapters to its target layers. Call it
    before adding heads or tokens: weights created afterwards (a reward head, embeddings grown for
    new tokens) train too, and are saved with the adapter."""
    if not cfg.lora:
        return
    from ..models.lora import add_lora

    n = sum(p.numel() for p in add_lora(model, **cfg.lora))
    total = model.num_parameters()
    log(f"LoRA: {n:,} trainable parameters ({n / total:.2%} of {total:,}); the base stays frozen")


def checkpoint_blocks(model: torch.nn.Module) -> None:
    """--gradient-checkpointing: every transformer block of `model` (or of the LM inside it) keeps
    only its input for the backward pass and recomputes the rest there, trading about a third more
    compute for activation memory that no longer grows with the number of layers."""
    from torch.utils.checkpoint import checkpoint

    from ..models import CausalLM

    def checkpointed(block):
        forward = block.forward

        def run(*args, **kwargs):
            if block.training and torch.is_grad_enabled():
                return checkpoint(forward, *args, use_reentrant=False, **kwargs)
            return forward(*args, **kwargs)

        block.forward = run

    for lm in [m for m in model.modules() if isinstance(m, CausalLM)]:
        for block in lm.blocks:
            checkpointed(block)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
