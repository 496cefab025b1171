"""Loading a 6B-class checkpoint on a 24 GiB machine: a model with GPT-J 6B's shape as KoGPT has it
(n_embd 4096, 28 layers, 16 heads, rotary_dim 64, vocab 64512) in bf16.

    python benchmarks/load_6b.py [--tokens 4] [--dir DIR]

Random bf16 weights are written straight to safetensors shards, one layer at a time (torch.randn
in bf16: no model, let alone an fp32 one, is ever built), ~12.3 GB in a temp folder under --dir
that is removed afterwards; the free disk space is checked first. A fresh process then runs
`load_checkpoint(folder, dtype="bfloat16")` and greedy-decodes a few tokens from an 8-token prompt
(prefill, then one token at a time through the KV cache), timing each. Memory is that process's
peak resident set (ru_maxrss) minus its own peak after importing torch and hangpt, against the
bytes of the weights: once right after loading, once after the tokens (every weight read at least
once). Major page faults count the weight pages read from disk rather than the page cache: when
they are many, the tokens are timed at disk speed. Prints a table and, last, `RESULT load_6b ...`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

KOGPT = dict(vocab_size=64512, n_positions=2048, n_embd=4096, n_layer=28, n_head=16, rotary_dim=64,
             bos_token_id=0, eos_token_id=1, pad_token_id=3)

PROBE = """
import json, resource, sys, time
import torch
from hangpt.checkpoint import load_checkpoint
from hangpt.engine import Engine

def peak_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

base = peak_kb()
start = time.perf_counter()
ckpt = load_checkpoint(sys.argv[1], dtype="bfloat16")
load_s, loaded_kb = time.perf_counter() - start, peak_kb() - base
assert ckpt.model.lm_head.weight.dtype == torch.bfloat16
engine = Engine(ckpt.model, ckpt.tokenizer)
prompt, n = list(range(10, 18)), int(sys.argv[2])
tokens, times = [], []
start = time.perf_counter()
batch, logits = engine.prefill([prompt], len(prompt) + n)
times.append(time.perf_counter() - start)
for _ in range(n):
    tokens.append(int(logits.argmax(-1)))
    start = time.perf_counter()
    logits = engine.step(batch, torch.tensor(tokens[-1:]))
    times.append(time.perf_counter() - start)
print(json.dumps({"load_s": load_s, "loaded_kb": loaded_kb, "generated_kb": peak_kb() - base,
                  "prefill_s": times[0], "token_s": times[1:], "tokens": tokens,
                  "major_faults": resource.getrusage(resource.RUSAGE_SELF).ru_majflt}))
"""


def shard_tensors(names_shapes: dict[str, tuple], std: float = 0.02) -> dict[str, torch.Tensor]:
    """Random bf16 tensors: N(0, std) matrices and embeddings, LayerNorm weights 1, biases 0."""
    out = {}
    for name, shape in names_shapes.items():
        if name.endswith("ln_1.weight") or name.endswith("ln_f.weight"):
            out[name] = torch.ones(shape, dtype=torch.bfloat16)
        elif name.endswith(".bias"):
            out[name] = torch.zeros(shape, dtype=torch.bfloat16)
        else:
            out[name] = torch.randn(shape, dtype=torch.bfloat16).mul_(std)
    return out


def write_random_checkpoint(folder: Path, shape: dict) -> int:
    """config.json, a small tokenizer and bf16 shards (one per layer, one for embeddings + head) with
    model.safetensors.index.json, never holding more than one layer in memory; returns the bytes."""
    from safetensors.torch import save_file

    from hangpt.models import GPTJConfig
    from hangpt.tokenizer import train_tokenizer

    cfg = GPTJConfig(**shape)
    d, inner, V = cfg.n_embd, cfg.mlp_width, cfg.vocab_size
    groups = {"outer": {"transformer.wte.weight": (V, d), "transformer.ln_f.weight": (d,),
                        "transformer.ln_f.bias": (d,), "lm_head.weight": (V, d), "lm_head.bias": (V,)}}
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        groups[f"layer{i:02d}"] = {
            **{p + f"attn.{n}_proj.weight": (d, d) for n in ("q", "k", "v", "out")},
            p + "mlp.fc_in.weight": (inner, d), p + "mlp.fc_in.bias": (inner,),
            p + "mlp.fc_out.weight": (d, inner), p + "mlp.fc_out.bias": (d,),
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
        }
    torch.manual_seed(0)
    weight_map, total = {}, 0
    for k, (group, names_shapes) in enumerate(groups.items(), 1):
        file = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        tensors = shard_tensors(names_shapes)
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, file))
        print(f"  wrote {file} ({group})", file=sys.stderr, flush=True)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps({**cfg.to_hf_dict(), "torch_dtype": "bfloat16"}, indent=2))
    train_tokenizer(iter(["오늘 날씨가 정말 좋네요. 한국어 모델을 불러옵니다."] * 50), vocab_size=300).save(folder)
    return total


def expected_bytes(shape: dict) -> int:
    d, V, L = shape["n_embd"], shape["vocab_size"], shape["n_layer"]
    per_layer = 4 * d * d + 2 * 4 * d * d + 4 * d + d + 2 * d
    return 2 * (L * per_layer + 2 * V * d + V + 2 * d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4, help="greedy tokens to time after the prompt")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary checkpoint is written")
    args = ap.parse_args()

    need = expected_bytes(KOGPT)
    free = shutil.disk_usage(args.dir).free
    if free < need * 1.1:
        sys.exit(f"error: {args.dir} has {free / 1e9:.1f} GB free; the checkpoint needs {need / 1e9:.1f} GB")
    folder = Path(tempfile.mkdtemp(prefix="hangpt-6b-", dir=args.dir))
    try:
        start = time.perf_counter()
        weights = write_random_checkpoint(folder, KOGPT)
        write_s = time.perf_counter() - start
        proc = subprocess.run([sys.executable, "-c", PROBE, str(folder), str(args.tokens)], capture_output=True,
                              text=True)
        if proc.returncode:
            sys.exit(f"error: the loading process failed:\n{proc.stderr}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    gib = 2**30
    loaded, generated = r["loaded_kb"] * 1024, r["generated_kb"] * 1024
    per_token = sorted(r["token_s"])[len(r["token_s"]) // 2]
    print(f"GPT-J 6B shape (KoGPT): {weights / 1e9:.2f} GB of bf16 weights, written in {write_s:.0f} s")
    print("| measure | value |\n|---|---|")
    print(f"| load_checkpoint(dtype=bfloat16) time | {r['load_s']:.2f} s |")
    print(f"| peak RSS after loading | {loaded / gib:.2f} GiB ({loaded / weights:.2f}x weights) |")
    print(f"| peak RSS after {args.tokens} greedy tokens | {generated / gib:.2f} GiB ({generated / weights:.2f}x weights) |")
    print(f"| prefill (8 tokens) | {r['prefill_s']:.2f} s |")
    print(f"| per token (median of {args.tokens}) | {per_token:.2f} s ({', '.join(f'{t:.2f}' for t in r['token_s'])}) |")
    print(f"| tokens | {r['tokens']} |")
    print(f"| major page faults (pages read from disk) | {r['major_faults']} |")
    print(f"RESULT load_6b weight_gb={weights / 1e9:.2f} load_s={r['load_s']:.2f} "
          f"peak_loaded_x={loaded / weights:.3f} peak_generated_x={generated / weights:.3f} "
          f"prefill_s={r['prefill_s']:.2f} token_s={per_token:.2f}")


if __name__ == "__main__":
    main()
