"""What `valid_utf8` decoding costs per token: the same tiny GPT (vocabulary 8192, a byte-level BPE
trained on the demo's Korean text) decoding 64 tokens, greedy and sampled, with and without it.

    python benchmarks/valid_utf8_cost.py

Medians of 7 runs after a warm-up, the two settings alternating; the one-off cost of building the
mask tables for the tokenizer is printed separately, and so is the mask's own work per step
(gather the banned row of each row's state, mask the logits, advance the states), which does not
depend on how busy the machine is the way whole decoding steps do.
"""

from __future__ import annotations

import time

import torch

from hangpt.demo import embedded_data
from hangpt.engine import Engine, GenerationConfig
from hangpt.models import build_model, preset_config
from hangpt.tokenizer import train_tokenizer


def main() -> None:
    lines = embedded_data().text[0].read_text(encoding="utf-8").splitlines()
    tokenizer = train_tokenizer(iter(lines), vocab_size=8192)
    torch.manual_seed(0)
    model = build_model(preset_config("tiny", vocab_size=tokenizer.vocab_size)).eval()
    engine = Engine(model, tokenizer)
    t0 = time.perf_counter()
    engine.utf8_mask()
    build_ms = (time.perf_counter() - t0) * 1000
    prompts = ["오늘 날씨가", "점심으로 뭐가 좋을까?", "주말에", "저는", "요즘 잠을", "안녕", "배고파", "비 온다"]
    rows = []
    for label, batch, sample in (("greedy, 1 prompt", 1, False), ("sampling, 1 prompt", 1, True),
                                 ("greedy, 8 prompts", 8, False)):
        times = {False: [], True: []}
        for rep in range(8):
            for valid in (False, True):
                config = GenerationConfig(max_new_tokens=64, eos_token_id=[], do_sample=sample, seed=rep,
                                          valid_utf8=valid)
                t = time.perf_counter()
                engine.generate(prompts[:batch], config)
                if rep:  # the first round warms up
                    times[valid].append((time.perf_counter() - t) / 64 * 1000)
        plain, safe = (sorted(times[v])[len(times[v]) // 2] for v in (False, True))
        rows.append((label, plain, safe))
    mask_us = mask_step_us(engine)
    print(f"mask tables for {tokenizer.vocab_size} tokens: built once per engine in {build_ms:.0f} ms")
    print(f"the mask's own work per step: {mask_us[1]:.1f} us (1 row), {mask_us[8]:.1f} us (8 rows)")
    print(f"{'case':<20} {'plain ms/token':>15} {'valid_utf8 ms/token':>20} {'extra ms/token':>15}")
    for label, plain, safe in rows:
        print(f"{label:<20} {plain:>15.3f} {safe:>20.3f} {safe - plain:>15.3f}")
    print("RESULT valid_utf8_cost " + " ".join(
        f"{label.split(',')[0]}_{label.split()[-2]}_extra_ms={safe - plain:.3f}" for label, plain, safe in rows)
        + f" build_ms={build_ms:.0f} mask_us_1row={mask_us[1]:.1f} mask_us_8rows={mask_us[8]:.1f}")


def mask_step_us(engine: Engine) -> dict[int, float]:
    """Microseconds of Processor.penalize + advance with only valid_utf8 on, per step, by batch size."""
    from hangpt.engine.processors import Processor

    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # elementwise work on a few rows gains nothing from more threads
    for batch in (1, 8):
        proc = Processor([GenerationConfig(valid_utf8=True)] * batch, engine.vocab_size, utf8=engine.utf8_mask())
        logits = torch.randn(batch, engine.vocab_size)
        seqs = torch.zeros(batch, 1, dtype=torch.long)
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(200):
                proc.advance(proc.penalize(logits, seqs, 0).argmax(-1))
            runs.append((time.perf_counter() - t) / 200 * 1e6)
        out[batch] = sorted(runs)[2]
    torch.set_num_threads(threads)
    return out


if __name__ == "__main__":
    main()
