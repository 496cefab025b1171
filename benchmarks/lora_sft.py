"""SFT step throughput and peak memory: hangpt with LoRA, hangpt full fine-tuning, and transformers +
peft with the same LoRA, on a random model of a real checkpoint's shape (--arch):

    gpt2      KoGPT2 (skt/kogpt2-base-v2): 12 layers x 768, 12 heads, vocab 51200
    qwen2     Qwen2.5-0.5B: 24 layers x 896, 14 heads (2 key/value heads), MLP 4864, vocab 151936, tied
    llama     the same shape as a Llama (no q/k/v biases)
    gpt_neox  polyglot-ko-1.3b: 24 layers x 2048, 16 heads, MLP 8192, vocab 30080, rotary on half of each head

One step = forward + answer-only loss (the first half of each row is prompt, labelled -100) +
backward + gradient clipping + AdamW step, batch 4 x 128 tokens, fp32. LoRA: r 8, alpha 16, dropout
0.05 on PEFT's default targets for the family (c_attn; q_proj,v_proj; query_key_value) in both
libraries. hangpt runs its SFT stage's code (`answer_loss`, `make_optimizer`); transformers runs
`model(input_ids, labels=labels).loss` with `torch.optim.AdamW` over the trainable parameters, as
its Trainer does. Each configuration runs in its own process, so its peak resident memory
(ru_maxrss, weights included) is its own; tokens/s counts every token of the batch, median of the
measured steps after a warm-up. On a shared machine --rounds N runs the configurations N times in
alternation (A B, B A, ...) so a change in the machine's load hits each alike; the median is then over
the steps of all rounds. Full fine-tuning keeps fp32 weights, gradients and two AdamW moments: 16 bytes
a parameter, about 21 GB for polyglot-ko-1.3b (--no-full skips it).

    python benchmarks/lora_sft.py [--arch gpt2|qwen2|llama|gpt_neox] [--layers N] [--steps 4] [--warmup 2]
                                  [--batch 4] [--length 128] [--rounds 1] [--no-full]
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

# config.json of each shape, as transformers writes it (hangpt and transformers build from the same dict)
SHAPES = {
    "gpt2": dict(model_type="gpt2", vocab_size=51200, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "qwen2": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768, rope_theta=1000000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu"),
    "gpt_neox": dict(model_type="gpt_neox", vocab_size=30080, hidden_size=2048, num_hidden_layers=24,
                     num_attention_heads=16, intermediate_size=8192, rotary_pct=0.5, rotary_emb_base=10000,
                     max_position_embeddings=2048, use_parallel_residual=True, tie_word_embeddings=False,
                     hidden_act="gelu", layer_norm_eps=1e-5),
}
SHAPES["llama"] = {**SHAPES["qwen2"], "model_type": "llama"}
LAYERS_KEY = {"gpt2": "n_layer"}
LORA = dict(r=8, alpha=16, dropout=0.05)


def shape(arch: str, layers: int | None) -> dict:
    d = dict(SHAPES[arch])
    if layers:
        d[LAYERS_KEY.get(arch, "num_hidden_layers")] = layers
    return d


def targets(arch: str) -> list[str]:
    from hangpt.models.lora import DEFAULT_TARGETS

    return DEFAULT_TARGETS[arch]


def hangpt_step(config: dict, lora: bool):
    from hangpt.models import build_model, config_from_hf
    from hangpt.models.lora import add_lora
    from hangpt.train.loop import TrainConfig, make_optimizer
    from hangpt.train.sft import answer_loss

    model = build_model(config_from_hf(config)).train()
    if lora:
        add_lora(model, **LORA, targets=targets(config["model_type"]))
    opt = make_optimizer(model, TrainConfig(out=None, lr=1e-4))
    params = [p for p in model.parameters() if p.requires_grad]

    def step(ids, labels):
        loss, _ = answer_loss(model, ids, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def peft_step(config: dict):
    import peft
    import transformers

    kind = config["model_type"]
    cfg = transformers.AutoConfig.for_model(kind, **{k: v for k, v in config.items() if k != "model_type"})
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    model = peft.get_peft_model(model, peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                       target_modules=targets(kind), task_type="CAUSAL_LM")).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))

    def step(ids, labels):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def measure(name: str, config: dict, steps: int, warmup: int, batch: int, length: int) -> dict:
    """Run one configuration in this process; its timings and peak memory."""
    torch.manual_seed(0)
    step, trainable = peft_step(config) if name == "peft-lora" else hangpt_step(config, lora=name == "hangpt-lora")
    ids = torch.randint(0, config["vocab_size"], (batch, length))
    labels = ids.clone()
    labels[:, : length // 2] = -100
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step(ids, labels)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"config": name, "trainable": trainable, "times": times,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(SHAPES), default="gpt2", help="whose shape (see above)")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers than the real model, for a quick run")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1, help="run the configurations this many times, alternating")
    ap.add_argument("--no-full", action="store_true", help="skip hangpt full fine-tuning (16 bytes a parameter)")
    ap.add_argument("--only", help=argparse.SUPPRESS)  # the child process: one configuration
    args = ap.parse_args()
    config = shape(args.arch, args.layers)
    if args.only:
        print(json.dumps(measure(args.only, config, args.steps, args.warmup, args.batch, args.length)))
        return
    names = ["hangpt-lora", "peft-lora"] + ([] if args.no_full else ["hangpt-full"])
    rows = {}
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            cmd = [sys.executable, __file__, "--only", name, "--arch", args.arch, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch", str(args.batch), "--length", str(args.length)]
            if args.layers:
                cmd += ["--layers", str(args.layers)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            row = rows.setdefault(name, {**run, "times": []})
            row["times"] += run["times"]
            row["peak_mib"] = max(row["peak_mib"], run["peak_mib"])
    for row in rows.values():
        row["step_s"] = statistics.median(row["times"])
        row["tokens_per_s"] = args.batch * args.length / row["step_s"]
    layers = config.get("n_layer", config.get("num_hidden_layers"))
    width = config.get("n_embd", config.get("hidden_size"))
    print(f"{args.arch} {layers} layers x {width}, vocab {config['vocab_size']}; batch {args.batch} x {args.length} "
          f"tokens; LoRA r {LORA['r']} alpha {LORA['alpha']} on {','.join(targets(config['model_type']))}; "
          f"{torch.get_num_threads()} threads")
    print(f"{'config':<14}{'trainable':>14}{'s/step':>10}{'tokens/s':>11}{'peak MiB':>11}")
    for r in rows.values():
        print(f"{r['config']:<14}{r['trainable']:>14,}{r['step_s']:>10.2f}{r['tokens_per_s']:>11.1f}{r['peak_mib']:>11.0f}")
    lora, ref = rows["hangpt-lora"], rows["peft-lora"]
    full = rows.get("hangpt-full")
    result = (f"RESULT lora_sft arch={args.arch} layers={layers} lora_tok_s={lora['tokens_per_s']:.1f} "
              f"peft_tok_s={ref['tokens_per_s']:.1f} speed_vs_peft={lora['tokens_per_s'] / ref['tokens_per_s']:.2f} "
              f"lora_peak_mib={lora['peak_mib']:.0f} peft_peak_mib={ref['peak_mib']:.0f} "
              f"memory_vs_peft={lora['peak_mib'] / ref['peak_mib']:.2f}")
    if full:
        result += (f" full_tok_s={full['tokens_per_s']:.1f} speed_vs_full={lora['tokens_per_s'] / full['tokens_per_s']:.2f}"
                   f" full_peak_mib={full['peak_mib']:.0f}")
    print(result)


if __name__ == "__main__":
    main()
