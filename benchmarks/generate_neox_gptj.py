"""GPT-NeoX / GPT-J decoding speed: hangpt's fused C step against its PyTorch forward and against
`transformers.generate` (same weights, same run).

    HANGPT_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/generate_neox_gptj.py --threads 1 \
        [--arch gpt_neox|gptj] [--dtype float32|bfloat16] [--small] [--repeats 3] [--quick]

Random weights (no download), made by transformers and saved once to a temp folder: a modest
polyglot-ko-like shape (hidden 1024, 8 layers, 16 heads, MLP 4096, vocab 30003; GPT-NeoX with its
parallel residual and rotary on a quarter of each head, GPT-J with rotary_dim 64), or with --small
hidden 256, 4 layers, 4 heads, MLP 1024, vocab 8192 (where PyTorch's per-operation dispatch, not
memory bandwidth, sets a step's time). Greedy, batch 1,
a 16-token prompt, no eos, so every run decodes exactly max_new_tokens. The three are run in turn
every repeat (alternating keeps a shared machine's drift out of the ratios); prints ms per new token
(prompt included: one short prefill) and, last, `RESULT generate_neox_gptj ...` with the medians.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from generate_throughput import arguments, once

# (hidden, layers, heads, MLP width, vocabulary)
SIZES = {"modest": (1024, 8, 16, 4096, 30003), "small": (256, 4, 4, 1024, 8192)}


def shape(arch: str, size: str) -> tuple[str, str, dict]:
    """transformers' config and model class names and the config's arguments."""
    hidden, layers, heads, mlp, vocab = SIZES[size]
    if arch == "gpt_neox":
        return "GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
            vocab_size=vocab, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True)
    return "GPTJConfig", "GPTJForCausalLM", dict(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=mlp,
                                                 vocab_size=vocab, n_positions=2048, rotary_dim=hidden // heads // 4)


def build(folder: Path, arch: str, size: str, dtype: torch.dtype) -> None:
    """A random transformers model of the arch's shape + a small tokenizer, saved to folder."""
    import transformers

    from hangpt.tokenizer import train_tokenizer

    config_class, model_class, shape_args = shape(arch, size)
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**shape_args, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    getattr(transformers, model_class)(config).to(dtype).save_pretrained(folder)
    train_tokenizer(iter(["오늘 날씨가 정말 좋네요. The stock market is unpredictable."] * 50), vocab_size=300).save(folder)


def main() -> None:
    args = arguments(__doc__, 3, lambda parser: (
        parser.add_argument("--arch", choices=["gpt_neox", "gptj"], default="gpt_neox"),
        parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32"),
        parser.add_argument("--small", action="store_true", help="The small shape instead of the modest one.")))
    import transformers

    from hangpt.checkpoint import load_checkpoint
    from hangpt.engine import Engine, GenerationConfig

    transformers.logging.set_verbosity_error()
    dtype, size, threads = getattr(torch, args.dtype), "small" if args.small else "modest", torch.get_num_threads()
    new = 8 if args.quick else 32
    prompt = torch.randint(1, SIZES[size][4], (16,), generator=torch.Generator().manual_seed(0)).tolist()
    config = GenerationConfig(max_new_tokens=new, eos_token_id=[])
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp), args.arch, size, dtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype).eval()
        ckpt = load_checkpoint(tmp, dtype=args.dtype)
        c_step, pytorch = Engine(ckpt.model, ckpt.tokenizer), Engine(ckpt.model, ckpt.tokenizer, fast_decode=False)
        assert c_step.fast_decoder() is not None, "the C step is unavailable here (no compiler?)"
        outputs = {}

        def ours(engine, name):
            def run():
                outputs[name] = engine.generate([prompt], config)[0][0].token_ids
            return run

        def theirs():
            with torch.inference_mode():
                out = hf.generate(torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  pad_token_id=0)
            outputs["transformers"] = out[0, len(prompt):].tolist()

        runs = {"hangpt C step": ours(c_step, "c"), "hangpt PyTorch": ours(pytorch, "pytorch"), "transformers": theirs}
        for run in runs.values():  # warm-up
            run()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(once(run) / new * 1000)
        ms = {name: statistics.median(t) for name, t in times.items()}
    same = outputs["c"] == outputs["pytorch"] and (dtype != torch.float32 or outputs["c"] == outputs["transformers"])
    print(f"{args.arch} {size} {args.dtype}, {threads} thread(s), {new} new tokens, "
          f"tokens equal: {'yes' if same else 'NO'}")
    for name, value in ms.items():
        print(f"{name:<16} {value:8.1f} ms/token  (C step {value / ms['hangpt C step']:.2f}x faster)")
    c = ms["hangpt C step"]
    print(f"RESULT generate_neox_gptj arch={args.arch} size={size} dtype={args.dtype} c_ms={c:.1f} "
          f"pytorch_ms={ms['hangpt PyTorch']:.1f} transformers_ms={ms['transformers']:.1f} "
          f"c_vs_pytorch={ms['hangpt PyTorch'] / c:.2f} c_vs_transformers={ms['transformers'] / c:.2f}")


if __name__ == "__main__":
    main()
