"""Training throughput: hangpt vs transformers on the same model, for the GPT-2 layout
(GPT2LMHeadModel) and the Llama layout (LlamaForCausalLM), each at the `tiny` preset's shape.

One training step = forward + loss + backward + gradient clipping + AdamW step, on random token
windows. hangpt runs its own stage code (`lm_loss`, `make_optimizer`, and `keep_freed_memory` as
its trainer does); transformers runs the standard `model(input_ids, labels=input_ids).loss` with
`torch.optim.AdamW`. Both use `torch.autocast(bfloat16)` in the bf16 rows, which run only on CPUs
with native bf16 (AVX512-BF16 or AMX; elsewhere bf16 is emulated and slower than fp32, so there is
no target).

Each runner lives in its own process, as a user's training run would: memory that one frees never
serves the other (glibc's heap is per process, and its state changed transformers' speed by up to
2x when both shared one). The processes take turns step by step, so load from other work hits all
alike; the figures are medians after a warm-up. A third runner, transformers with hangpt's malloc
settings, separates what hangpt's code gains from what keeping freed memory gains.

    python benchmarks/train_throughput.py [--steps 10] [--warmup 3] [--layouts gpt2 llama]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from hangpt.memory import keep_freed_memory
from hangpt.models import build_model, preset_config
from hangpt.train.loop import TrainConfig, make_optimizer
from hangpt.train.pretrain import lm_loss

BATCH = 16


def native_bf16() -> list[str]:
    """The CPU's bf16 instruction sets among AVX512-BF16 and AMX (Linux /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo")
    flags = set(info.read_text().split()) if info.exists() else set()
    return sorted(flags & {"avx512_bf16", "amx_bf16"})


def train_step(model, opt, loss_fn, dtype):
    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hangpt_step(arch: str, dtype: str):
    keep_freed_memory()
    model = build_model(preset_config("tiny", arch)).train()
    opt = make_optimizer(model, TrainConfig(out=None, lr=1e-3))
    return train_step(model, opt, lambda m, b: lm_loss(m, b)[0], dtype)


def transformers_step(arch: str, dtype: str, keep_memory: bool = False):
    import transformers

    if keep_memory:
        keep_freed_memory()

    shape = preset_config("tiny", arch)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=shape.vocab_size, n_positions=shape.n_positions, n_embd=shape.n_embd,
                                      n_layer=shape.n_layer, n_head=shape.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(**{k: v for k, v in shape.to_hf_dict().items() if k not in ("architectures",)})
        model = transformers.LlamaForCausalLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))

    def loss_fn(m, batch):
        ids = batch[:, :-1]
        return m(input_ids=ids, labels=ids).loss

    return train_step(model, opt, loss_fn, dtype)


RUNNERS = {"hangpt": hangpt_step, "transformers": transformers_step,
           "transformers_kept": lambda arch, dtype: transformers_step(arch, dtype, keep_memory=True)}


def worker(name: str, arch: str, dtype: str) -> None:
    """Build one runner, then run one step per line read from stdin and print its seconds."""
    torch.manual_seed(0)
    step = RUNNERS[name](arch, dtype)
    shape = preset_config("tiny", arch)
    g = torch.Generator().manual_seed(0)
    print("ready", flush=True)
    for _ in sys.stdin:
        batch = torch.randint(0, shape.vocab_size, (BATCH, shape.context_length + 1), generator=g)
        t0 = time.perf_counter()
        step(batch)
        print(json.dumps(time.perf_counter() - t0), flush=True)


def measure(arch: str, dtype: str, steps: int, warmup: int) -> dict[str, float]:
    """Tokens/s of each runner: medians of `steps` steps after `warmup`, the processes taking turns."""
    procs = {name: subprocess.Popen([sys.executable, __file__, "--worker", name, arch, dtype], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for name in RUNNERS}
    times: dict[str, list[float]] = {name: [] for name in procs}
    try:
        for name, proc in procs.items():
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"the {name} runner failed to start (run it alone: --worker {name} {arch} {dtype})")
        for i in range(warmup + steps):
            for name, proc in procs.items():
                proc.stdin.write("\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    raise SystemExit(f"the {name} runner stopped (run it alone: --worker {name} {arch} {dtype})")
                seconds = json.loads(line)
                if i >= warmup:
                    times[name].append(seconds)
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    tokens = BATCH * preset_config("tiny", arch).context_length
    return {name: tokens / statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--layouts", nargs="+", choices=["gpt2", "llama"], default=["gpt2", "llama"])
    ap.add_argument("--worker", nargs=3, metavar=("RUNNER", "ARCH", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)
    bf16 = native_bf16()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH} x the preset's context; "
          f"native bf16: {', '.join(bf16) or 'none (bf16 rows skipped)'}")
    print(f"{'layout':<7} {'dtype':<6} {'hangpt tok/s':>13} {'transformers tok/s':>19} {'ratio':>6}"
          f" {'transformers, kept memory':>26} {'ratio':>6}")
    ratios = {}
    for arch in args.layouts:
        for dtype in ("fp32", "bf16") if bf16 else ("fp32",):
            r = measure(arch, dtype, args.steps, args.warmup)
            ratios[f"{arch}_{dtype}_ratio"] = r["hangpt"] / r["transformers"]
            ratios[f"{arch}_{dtype}_kept_ratio"] = r["hangpt"] / r["transformers_kept"]
            print(f"{arch:<7} {dtype:<6} {r['hangpt']:>13.0f} {r['transformers']:>19.0f} "
                  f"{ratios[f'{arch}_{dtype}_ratio']:>6.2f} {r['transformers_kept']:>26.0f} "
                  f"{ratios[f'{arch}_{dtype}_kept_ratio']:>6.2f}", flush=True)
    shown = " ".join(f"{k}={v:.2f}" for k, v in ratios.items())
    print(f"RESULT train_throughput {shown} native_bf16={'+'.join(bf16) or 'none'}")


if __name__ == "__main__":
    main()
