"""Training throughput: hangpt vs transformers on the same model, for the GPT-2 layout
(GPT2LMHeadModel) and the Llama layout (LlamaForCausalLM), each at the `tiny` preset's shape.

One training step = forward + loss + backward + gradient clipping + AdamW step, on random token
windows. hangpt runs its own stage code (`lm_loss`, `make_optimizer`); transformers runs the
standard `model(input_ids, labels=input_ids).loss` with `torch.optim.AdamW`. Both use
`torch.autocast(bfloat16)` in the bf16 rows, which run only on CPUs with native bf16 (AVX512-BF16
or AMX; elsewhere bf16 is emulated and slower than fp32, so there is no target). The two models
alternate step by step so load from other processes hits both alike; the figures are medians
after a warm-up.

    python benchmarks/train_throughput.py [--steps 10] [--warmup 3] [--layouts gpt2 llama]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

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
    model = build_model(preset_config("tiny", arch)).train()
    opt = make_optimizer(model, TrainConfig(out=None, lr=1e-3))
    return train_step(model, opt, lambda m, b: lm_loss(m, b)[0], dtype)


def transformers_step(arch: str, dtype: str):
    import transformers

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


def measure(arch: str, dtype: str, steps: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    runners = {"hangpt": hangpt_step(arch, dtype), "transformers": transformers_step(arch, dtype)}
    shape = preset_config("tiny", arch)
    times: dict[str, list[float]] = {name: [] for name in runners}
    g = torch.Generator().manual_seed(0)
    for i in range(warmup + steps):
        batch = torch.randint(0, shape.vocab_size, (BATCH, shape.context_length + 1), generator=g)
        for name, step in runners.items():
            t0 = time.perf_counter()
            step(batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    tokens = BATCH * shape.context_length
    return {name: tokens / statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--layouts", nargs="+", choices=["gpt2", "llama"], default=["gpt2", "llama"])
    args = ap.parse_args()
    bf16 = native_bf16()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH} x the preset's context; "
          f"native bf16: {', '.join(bf16) or 'none (bf16 rows skipped)'}")
    print(f"{'layout':<7} {'dtype':<6} {'hangpt tok/s':>13} {'transformers tok/s':>19} {'ratio':>6}")
    ratios = {}
    for arch in args.layouts:
        for dtype in ("fp32", "bf16") if bf16 else ("fp32",):
            r = measure(arch, dtype, args.steps, args.warmup)
            ratios[f"{arch}_{dtype}_ratio"] = r["hangpt"] / r["transformers"]
            print(f"{arch:<7} {dtype:<6} {r['hangpt']:>13.0f} {r['transformers']:>19.0f} "
                  f"{ratios[f'{arch}_{dtype}_ratio']:>6.2f}", flush=True)
    shown = " ".join(f"{k}={v:.2f}" for k, v in ratios.items())
    print(f"RESULT train_throughput {shown} native_bf16={'+'.join(bf16) or 'none'}")


if __name__ == "__main__":
    main()
