"""Generation speed: hangpt's engine vs `transformers.generate` on the same weights, same run.

    python benchmarks/generate_throughput.py [--repeats 9] [--quick]

Random weights (no download): the tiny preset (4 layers, 256 wide, vocab 8192) and the GPT-2
small shape (124M). No eos, so every run decodes exactly max_new_tokens per sequence. Prints a
table and, last, `RESULT generate ...` with the speed ratios (hangpt tokens/s over transformers'),
medians of several alternating repeats after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build(folder: Path, n_layer: int, n_embd: int, n_head: int, vocab: int, n_positions: int):
    """Save a random GPT2LMHeadModel + a small tokenizer; load it back in both libraries."""
    import transformers

    from hangpt.checkpoint import load_checkpoint
    from hangpt.tokenizer import train_tokenizer

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                                  n_head=n_head, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(folder)
    train_tokenizer(iter(["오늘 날씨가 정말 좋네요. The stock market is unpredictable."] * 50), vocab_size=300).save(folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    ckpt = load_checkpoint(folder)
    return hf, ckpt


def once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(once(fn) for _ in range(repeats))


def timed_pair(ours, theirs, repeats: int) -> tuple[float, float]:
    """Medians of the two, run alternately: this VM's speed drifts by 2x over minutes (other
    tenants), and alternating keeps the drift out of the ratio."""
    ours(), theirs()  # warm-up
    pairs = [(once(ours), once(theirs)) for _ in range(repeats)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def run_case(name, hf, engine, prompts, new_tokens, repeats, **kwargs):
    from hangpt.engine import GenerationConfig

    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    config = GenerationConfig(max_new_tokens=new_tokens, **kwargs)

    def ours():
        out = engine.generate(prompts, config)
        assert all(len(c.token_ids) == new_tokens for group in out for c in group)

    def theirs():
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              pad_token_id=0, **kwargs)
        assert out.shape[1] == L + new_tokens

    tokens = len(prompts) * new_tokens
    t_ours, t_theirs = timed_pair(ours, theirs, repeats)
    row = (name, tokens / t_ours, tokens / t_theirs, t_theirs / t_ours)
    print(f"{row[0]:<16} {row[1]:>12.1f} {row[2]:>16.1f} {row[3]:>8.2f}x", flush=True)
    return row[3], (row[1], row[2])


def matmul_floor_ms(model, repeats: int) -> float:
    """Milliseconds per decoding step spent in torch's matmuls alone (every block's weights and the
    LM head applied to one row, in model order, so weights stream from memory as in a real step):
    the least a step built from torch operations can take here. hangpt's fused C step (the default
    on a CPU) does its own matmuls, reading each weight once per step, as these do."""
    weights = [(m.weight, m.bias) for block in model.transformer.h
               for m in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)]
    head = model.lm_head.weight.t().contiguous()
    x = {w.shape[0]: torch.randn(1, w.shape[0]) for w, _ in weights}

    @torch.inference_mode()
    def step():
        for w, b in weights:
            torch.addmm(b, x[w.shape[0]], w)
        x[head.shape[0]] @ head

    return timed(lambda: [step() for _ in range(20)], repeats) / 20 * 1000


def arguments(doc: str, repeats: int, add=None) -> argparse.Namespace:
    """The options the generation benchmarks share (plus those `add(parser)` adds); sets the threads."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--quick", action="store_true", help="Fewer tokens (a smoke run).")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core; 1 is steadier on a busy machine).")
    if add is not None:
        add(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main() -> None:
    args = arguments(__doc__, 9)
    import transformers

    from hangpt.engine import Engine

    transformers.logging.set_verbosity_error()
    new = 16 if args.quick else 64
    rng = torch.Generator().manual_seed(0)

    def prompt(n, vocab):
        return torch.randint(1, vocab, (n,), generator=rng).tolist()

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads")
    print(f"{'case':<16} {'hangpt tok/s':>12} {'transformers tok/s':>16} {'ratio':>9}")
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        hf, ckpt = build(Path(tmp) / "tiny", 4, 256, 4, 8192, 256)
        engine = Engine(ckpt.model, ckpt.tokenizer)
        p1 = [prompt(16, 8192)]
        ratios["tiny_greedy"], hf_greedy = run_case("tiny greedy", hf, engine, p1, new, args.repeats)
        ratios["tiny_beam4"], _ = run_case("tiny beam 4", hf, engine, p1, new, args.repeats, num_beams=4)
        ratios["tiny_sample"], _ = run_case("tiny top-k/top-p", hf, engine, p1, new, args.repeats, do_sample=True,
                                         top_k=50, top_p=0.9, temperature=0.8)
        p8 = [prompt(8 + 2 * i, 8192) for i in range(8)]
        ratios["tiny_batch8"], _ = run_case("tiny batch 8", hf, engine, p8, new, args.repeats)
        floors = {"tiny": (matmul_floor_ms(ckpt.model, args.repeats), hf_greedy)}
        del hf, ckpt, engine
        hf, ckpt = build(Path(tmp) / "gpt2", 12, 768, 12, 50257, 1024)
        engine = Engine(ckpt.model, ckpt.tokenizer)
        ratios["gpt2_greedy"], hf_greedy = run_case("gpt2-124M greedy", hf, engine, [prompt(16, 50257)], new // 2,
                                         max(2, args.repeats // 2))
        floors["gpt2-124M"] = (matmul_floor_ms(ckpt.model, max(2, args.repeats // 2)), hf_greedy)
    for name, (ms, (our_tps, hf_tps)) in floors.items():
        print(f"{name} greedy, ms per token: transformers {1000 / hf_tps:.2f}, hangpt {1000 / our_tps:.2f}; "
              f"torch's float32 matmuls of one step alone take {ms:.2f}")
    print("RESULT generate " + " ".join(f"{k}_ratio={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
