"""Training throughput: hangpt's GPT vs transformers' GPT2LMHeadModel on the same config.

One training step = forward + loss + backward + gradient clipping + AdamW step, on random token
windows. hangpt runs its own stage code (`lm_loss`, `make_optimizer`); transformers runs the
standard `model(input_ids, labels=input_ids).loss` with `torch.optim.AdamW`. Both use
`torch.autocast(bfloat16)` in the bf16 rows. The two models alternate step by step so load from
other processes hits both alike; the figures are medians after a warm-up.

    python benchmarks/train_throughput.py [--steps 10] [--warmup 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hangpt.models import GPT, GPTConfig
from hangpt.train.loop import TrainConfig, make_optimizer
from hangpt.train.pretrain import lm_loss

SHAPE = dict(vocab_size=8192, n_positions=256, n_embd=256, n_layer=4, n_head=4)
BATCH = 16


def hangpt_step(dtype):
    model = GPT(GPTConfig(**SHAPE)).train()
    opt = make_optimizer(model, TrainConfig(out=None, lr=1e-3))

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss, _ = lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def transformers_step(dtype):
    import transformers

    cfg = transformers.GPT2Config(**SHAPE, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))

    def step(batch):
        ids = batch[:, :-1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(dtype: str, steps: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    runners = {"hangpt": hangpt_step(dtype), "transformers": transformers_step(dtype)}
    times: dict[str, list[float]] = {name: [] for name in runners}
    g = torch.Generator().manual_seed(0)
    for i in range(warmup + steps):
        batch = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["n_positions"] + 1), generator=g)
        for name, step in runners.items():
            t0 = time.perf_counter()
            step(batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    tokens = BATCH * SHAPE["n_positions"]
    return {name: tokens / statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; config {SHAPE}, batch {BATCH}")
    print(f"{'dtype':<6} {'hangpt tok/s':>13} {'transformers tok/s':>19} {'ratio':>6}")
    ratios = {}
    for dtype in ("fp32", "bf16"):
        r = measure(dtype, args.steps, args.warmup)
        ratios[dtype] = r["hangpt"] / r["transformers"]
        print(f"{dtype:<6} {r['hangpt']:>13.0f} {r['transformers']:>19.0f} {ratios[dtype]:>6.2f}", flush=True)
    print(f"RESULT train_throughput fp32_ratio={ratios['fp32']:.2f} bf16_ratio={ratios['bf16']:.2f}")


if __name__ == "__main__":
    main()
