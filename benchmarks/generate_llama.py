"""Llama-family decoding speed vs `transformers.generate` (same weights, same run); memory of a bf16 load.

hangpt's engine against transformers on the same saved folders, and the peak memory of loading a
Qwen2.5-0.5B-shaped checkpoint in bf16.

    python benchmarks/generate_llama.py [--repeats 5] [--quick] [--skip-large]

Random weights (no download), made by transformers from a config and saved once to a temp folder:
a tiny Llama (4 layers x 256, GQA 4/2 heads, vocab 8192) and a model with Qwen2.5-0.5B's shape
(hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936, tied head). Greedy,
batch 1, no eos, so both decode exactly max_new_tokens. float32 and bfloat16, both through hangpt's
fused C step (bf16: from the bf16 weights, with AVX512-BF16 dot products where this CPU and compiler
have them, widened to float32 otherwise; transformers' bf16 is emulated, slow, on a CPU without
native bf16). Each bf16 row also gives hangpt's bf16 speed against its own float32 speed.
Memory: a fresh process loads the bf16 folder with `load_checkpoint(folder, dtype="bfloat16")`;
its peak resident set minus its own peak after importing torch and hangpt, against the bytes of
the weights; once right after loading, once after one generated token (every weight read). The
peak is /proc/self/status's VmHWM: on Linux a child's ru_maxrss starts at its parent's peak (the
benchmark's, with models loaded), which would hide the load.
Prints a table and, last, `RESULT generate_llama ...` (medians of alternating repeats).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from generate_throughput import arguments, run_case

TINY = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=8192, max_position_embeddings=512, tie_word_embeddings=True)
QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True,
                rope_theta=1000000.0, rms_norm_eps=1e-6)

MEMORY_PROBE = """
import json, re, sys, torch
from pathlib import Path
from hangpt.checkpoint import load_checkpoint
from hangpt.engine import Engine, GenerationConfig

def peak_kb():  # this process's own peak resident set (ru_maxrss would include the parent's, from fork)
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))

base = peak_kb()
ckpt = load_checkpoint(sys.argv[1], dtype="bfloat16")
loaded = peak_kb()
assert ckpt.model.lm_head.weight.dtype == torch.bfloat16
Engine(ckpt.model, ckpt.tokenizer).generate([[5, 6, 7]], GenerationConfig(max_new_tokens=1, eos_token_id=[]))
print(json.dumps({"loaded_kb": loaded - base, "generated_kb": peak_kb() - base}))
"""


def cpu_features() -> str:
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    return ", ".join(f"{f} {'yes' if f in flags.split() else 'no'}" for f in wanted)


def build(folder: Path, model_type: str, shape: dict, dtype: torch.dtype = torch.float32) -> None:
    """A random transformers model of this shape + a small tokenizer, saved to folder."""
    import transformers

    from hangpt.tokenizer import train_tokenizer

    torch.manual_seed(0)
    config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[model_type]
    config = config_class(**shape, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    train_tokenizer(iter(["오늘 날씨가 정말 좋네요. The stock market is unpredictable."] * 50), vocab_size=300).save(folder)


def load_pair(folder: Path, dtype: torch.dtype):
    import transformers

    from hangpt.checkpoint import load_checkpoint
    from hangpt.engine import Engine

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    ckpt = load_checkpoint(folder, dtype=str(dtype).removeprefix("torch."))
    return hf, Engine(ckpt.model, ckpt.tokenizer)


def weight_bytes(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            for name in f.keys():
                t = f.get_slice(name)
                total += torch.Size(t.get_shape()).numel() * {"BF16": 2, "F16": 2, "F32": 4}[t.get_dtype()]
    return total


def memory(folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(folder)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = arguments(__doc__, 5, lambda parser: parser.add_argument(
        "--skip-large", action="store_true", help="Only the tiny model (no 2 GB temp folder)."))
    import transformers

    from hangpt.device import native_bf16

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    rng = torch.Generator().manual_seed(0)
    prompt = [torch.randint(1, 8192, (16,), generator=rng).tolist()]
    from hangpt.engine import fast

    lib = fast.library()
    kernel = "none (PyTorch forward)" if lib is None else (
        "AVX512-BF16 dot products" if lib.hangpt_native_bf16() else "portable (bf16 widened to float32)")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads")
    print(f"CPU: {cpu_features()}; native bf16: {'yes' if native_bf16() else 'no'}; C step's bf16 path: {kernel}")
    print(f"{'case':<22} {'hangpt tok/s':>12} {'transformers tok/s':>16} {'ratio':>9}")
    ratios, mem = {}, None
    cases = [("tiny", "llama", TINY, 16 if args.quick else 64, args.repeats)]
    if not args.skip_large:
        cases.append(("qwen0.5b", "qwen2", QWEN_05B, 4 if args.quick else 16, max(2, args.repeats // 2 + 1)))
    with tempfile.TemporaryDirectory() as tmp:
        for name, model_type, shape, new, repeats in cases:
            folder = Path(tmp) / name
            build(folder, model_type, shape)
            speed = {}
            for dtype in (torch.float32, torch.bfloat16):
                label = f"{name} {str(dtype).removeprefix('torch.')}"
                hf, engine = load_pair(folder, dtype)
                key = label.replace(" ", "_").replace("float32", "fp32").replace("bfloat16", "bf16").replace(".", "")
                ratios[key], (speed[dtype], _) = run_case(label, hf, engine, prompt, new, repeats)
                del hf, engine
            key = f"{name.replace('.', '')}_bf16_vs_fp32"
            ratios[key] = speed[torch.bfloat16] / speed[torch.float32]
            print(f"{name} hangpt bf16 / hangpt float32: {ratios[key]:.2f}x")
            if name == "qwen0.5b":
                bf16_folder = Path(tmp) / "qwen0.5b-bf16"
                build(bf16_folder, model_type, shape, torch.bfloat16)
                size = weight_bytes(bf16_folder)
                mem = memory(bf16_folder)
                print(f"qwen0.5b bf16 weights {size / 2**20:.0f} MiB; peak RSS above a process with torch imported: "
                      f"{mem['loaded_kb'] / 1024:.0f} MiB after load_checkpoint ({mem['loaded_kb'] * 1024 / size:.2f}x), "
                      f"{mem['generated_kb'] / 1024:.0f} MiB after one generated token "
                      f"({mem['generated_kb'] * 1024 / size:.2f}x)")
                mem = (mem["loaded_kb"] * 1024 / size, mem["generated_kb"] * 1024 / size)
    line = " ".join(f"{k}{'' if k.endswith('vs_fp32') else '_ratio'}={v:.2f}" for k, v in ratios.items())
    if mem is not None:
        line += f" bf16_load_rss_ratio={mem[0]:.2f} bf16_first_token_rss_ratio={mem[1]:.2f}"
    print("RESULT generate_llama " + line)


if __name__ == "__main__":
    main()
