"""SFT step throughput and peak memory: hangpt with LoRA, hangpt full fine-tuning, and transformers +
peft with the same LoRA, on a random GPT-2 of KoGPT2's shape (12 layers x 768, vocab 51200).

One step = forward + answer-only loss (the first half of each row is prompt, labelled -100) +
backward + gradient clipping + AdamW step, batch 4 x 128 tokens. LoRA: r 8, alpha 16, dropout 0.05
on c_attn (PEFT's default for GPT-2) in both libraries. hangpt runs its SFT stage's code
(`answer_loss`, `make_optimizer`); transformers runs `model(input_ids, labels=labels).loss` with
`torch.optim.AdamW` over the trainable parameters, as its Trainer does. Each configuration runs in
its own process, so its peak resident memory (ru_maxrss, weights included) is its own; tokens/s
counts every token of the batch, median of the measured steps after a warm-up.

    python benchmarks/lora_sft.py [--steps 4] [--warmup 2] [--batch 4] [--length 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

SHAPE = dict(vocab_size=51200, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
LORA = dict(r=8, alpha=16, dropout=0.05, targets=["c_attn"])
CONFIGS = ["hangpt-lora", "hangpt-full", "peft-lora"]


def hangpt_step(lora: bool):
    from hangpt.models import GPT, GPTConfig
    from hangpt.models.lora import add_lora
    from hangpt.train.loop import TrainConfig, make_optimizer
    from hangpt.train.sft import answer_loss

    model = GPT(GPTConfig(**SHAPE)).train()
    if lora:
        add_lora(model, **LORA)
    opt = make_optimizer(model, TrainConfig(out=None, lr=1e-4))
    params = [p for p in model.parameters() if p.requires_grad]

    def step(ids, labels):
        loss, _ = answer_loss(model, ids, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def peft_step():
    import peft
    import transformers

    cfg = transformers.GPT2Config(**SHAPE, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg)
    model = peft.get_peft_model(model, peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                       target_modules=LORA["targets"], task_type="CAUSAL_LM")).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))

    def step(ids, labels):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def measure(name: str, steps: int, warmup: int, batch: int, length: int) -> dict:
    """Run one configuration in this process; its timings and peak memory."""
    torch.manual_seed(0)
    step, trainable = peft_step() if name == "peft-lora" else hangpt_step(lora=name == "hangpt-lora")
    ids = torch.randint(0, SHAPE["vocab_size"], (batch, length))
    labels = ids.clone()
    labels[:, : length // 2] = -100
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step(ids, labels)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"config": name, "trainable": trainable, "step_s": statistics.median(times),
            "tokens_per_s": batch * length / statistics.median(times),
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--only", choices=CONFIGS, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.only:
        print(json.dumps(measure(args.only, args.steps, args.warmup, args.batch, args.length)))
        return
    rows = {}
    for name in CONFIGS:
        cmd = [sys.executable, __file__, "--only", name, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch", str(args.batch), "--length", str(args.length)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
    print(f"GPT-2 {SHAPE['n_layer']} layers x {SHAPE['n_embd']}, vocab {SHAPE['vocab_size']}; batch {args.batch} x "
          f"{args.length} tokens; LoRA r {LORA['r']} alpha {LORA['alpha']} on {','.join(LORA['targets'])}; "
          f"{torch.get_num_threads()} threads")
    print(f"{'config':<14}{'trainable':>14}{'s/step':>10}{'tokens/s':>11}{'peak MiB':>11}")
    for r in rows.values():
        print(f"{r['config']:<14}{r['trainable']:>14,}{r['step_s']:>10.2f}{r['tokens_per_s']:>11.0f}{r['peak_mib']:>11.0f}")
    lora, full, ref = rows["hangpt-lora"], rows["hangpt-full"], rows["peft-lora"]
    print(f"RESULT lora_sft lora_tok_s={lora['tokens_per_s']:.0f} full_tok_s={full['tokens_per_s']:.0f} "
          f"peft_tok_s={ref['tokens_per_s']:.0f} speed_vs_peft={lora['tokens_per_s'] / ref['tokens_per_s']:.2f} "
          f"speed_vs_full={lora['tokens_per_s'] / full['tokens_per_s']:.2f} lora_peak_mib={lora['peak_mib']:.0f} "
          f"full_peak_mib={full['peak_mib']:.0f} peft_peak_mib={ref['peak_mib']:.0f} "
          f"memory_vs_peft={lora['peak_mib'] / ref['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
