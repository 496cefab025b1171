"""Load test of `hangpt serve`: N concurrent streaming clients on loopback vs the same requests sent
one at a time, with continuous batching and with static batching.

Starts the real server (`hangpt serve --batching continuous`, then `--batching static`, in a
subprocess) on a random-weight model of the `tiny` preset (4 layers, 256 wide) with a tokenizer
trained on the package's demo text, and measures on each
  - sequential: the requests one after another (aggregate tokens/s),
  - concurrent 8 and 32: all requests at once (aggregate tokens/s, per-request latency, time to
    first token, errors),
  - 64 staggered: 64 requests arriving evenly over --stagger seconds (a server under steady load).
Every request streams exactly --max-tokens tokens (the end-of-text token is banned with
logit_bias), so the runs do the same work. Medians of --repeats runs after a warm-up; both servers
run side by side and take turns load by load (the order alternating every repeat), so a machine
shared with other work slows both alike.

    python benchmarks/serve_load.py [--max-tokens 48] [--repeats 3] [--batching both|continuous|static]

Last line: RESULT serve_load ttft_p50_ms=... ttft_p99_ms=... p50_ms=... p99_ms=... tokens_per_s32=...
errors32=... ttft64_p50_ms=... ttft64_p99_ms=... errors64=... concurrent8_ratio=..., the same with a
static_ prefix for static batching, and tokens_ratio32 (continuous / static tokens/s, 32 clients:
the median of the repeats' ratios) (p50/p99: request latency, first byte sent to [DONE]; ttft: to
the first text chunk; in the 32-client run unless named 64).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

PROMPTS = ["오늘 날씨가", "주말에 친구와", "인공지능은", "봄에는 꽃이", "저는 한국어를", "배가 고파서", "언어 모델은", "영화를"]


def make_model(out: Path) -> None:
    import torch

    from hangpt.checkpoint import save_checkpoint
    from hangpt.models import preset_config, GPT
    from hangpt.tokenizer import train_tokenizer

    text = (Path(__file__).resolve().parents[1] / "hangpt" / "demo_data" / "korean_text.txt").read_text("utf-8")
    tok = train_tokenizer(iter(text.splitlines()), vocab_size=2048)
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=tok.vocab_size, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    save_checkpoint(out, GPT(cfg), tok, {"stage": "pretrain"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, eos: int,
                      delay: float = 0.0) -> tuple[float, float, int]:
    """Stream one completion after `delay` seconds; returns (latency seconds, seconds to the first
    text, tokens received). Raises on any error."""
    await asyncio.sleep(delay)
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "stream": True,
            "stream_options": {"include_usage": True}, "logit_bias": {str(eos): -100}}
    start = time.perf_counter()
    tokens = first = None
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        done = False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None and any(c.get("text") for c in chunk.get("choices") or []):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if not done or tokens is None:
        raise RuntimeError("stream ended early")
    return time.perf_counter() - start, first, tokens


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


async def run(url: str, n: int, concurrent: bool, max_tokens: int, eos: int, stagger: float = 0.0) -> dict:
    """n requests, all at once (arriving evenly over `stagger` seconds) or one by one; aggregate
    tokens/s, latencies, times to first token and errors."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(180.0), limits=limits) as client:
        start = time.perf_counter()
        if concurrent:
            results = await asyncio.gather(*(one_request(client, url, p, max_tokens, eos, stagger * i / n)
                                             for i, p in enumerate(prompts)), return_exceptions=True)
        else:
            results = []
            for p in prompts:
                try:
                    results.append(await one_request(client, url, p, max_tokens, eos))
                except Exception as e:  # counted below
                    results.append(e)
        wall = time.perf_counter() - start
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    for e in errors[:3]:
        print(f"  error: {type(e).__name__}: {e}", file=sys.stderr)
    latencies, ttfts = [lat for lat, _, _ in ok], [first for _, first, _ in ok]
    return {
        "tokens_per_s": sum(t for _, _, t in ok) / wall,
        "wall_s": wall,
        "errors": len(errors),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "ttft_p50_ms": percentile(ttfts, 0.5),
        "ttft_p99_ms": percentile(ttfts, 0.99),
    }


@contextmanager
def serving(model: Path, batching: str, args, tmp: str):
    """`hangpt serve --batching BATCHING` in a subprocess, as a user starts it; yields its URL once
    /health answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-c", "from hangpt.cli import main; main()", "serve", "--model", str(model),
         "--port", str(port), "--model-name", "bench", "--feedback-db", str(Path(tmp) / f"fb-{batching}.sqlite"),
         "--batching", batching, "--max-batch-size", str(args.max_batch_size)],
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("the server did not start")
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure(model: Path, modes: list[str], args, eos: int, tmp: str) -> dict:
    """Every load on a server of each batching mode, the servers taking turns; per mode the runs of
    each load and /health."""
    loads = {  # name -> (clients, all at once, seconds over which they arrive)
        "seq": (8, False, 0.0), "conc8": (8, True, 0.0), "conc32": (32, True, 0.0), "stag64": (64, True, args.stagger),
    }
    with ExitStack() as stack:
        urls = {mode: stack.enter_context(serving(model, mode, args, tmp)) for mode in modes}
        for url in urls.values():
            asyncio.run(run(url, 4, True, 8, eos))  # warm-up
        results = {mode: {name: [] for name in loads} for mode in modes}
        for repeat in range(args.repeats):
            for name, (n, concurrent, stagger) in loads.items():
                for mode in modes if repeat % 2 == 0 else modes[::-1]:
                    results[mode][name].append(asyncio.run(run(urls[mode], n, concurrent, args.max_tokens, eos,
                                                               stagger)))
        for mode, url in urls.items():
            results[mode]["health"] = httpx.get(url + "/health").json()
    return results


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="Checkpoint to serve [default: a random `tiny` model made on the spot].")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stagger", type=float, default=3.0, help="Seconds over which the 64 staggered requests arrive.")
    ap.add_argument("--max-batch-size", type=int, default=32, help="The servers' --max-batch-size.")
    ap.add_argument("--batching", choices=["both", "continuous", "static"], default="both",
                    help="Which server batching to measure (both: side by side, taking turns).")
    args = ap.parse_args()
    modes = ["continuous", "static"] if args.batching == "both" else [args.batching]

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else Path(tmp) / "model"
        if not args.model:
            make_model(model)
        from hangpt.tokenizer import Tokenizer

        eos = Tokenizer.load(model).eos_id
        results = measure(model, modes, args, eos, tmp)

    print(f"{'batching':<12}{'run':<22}{'tokens/s':>10}{'wall s':>9}{'p50 ms':>9}{'p99 ms':>9}{'TTFT p50':>10}"
          f"{'TTFT p99':>10}{'errors':>8}")
    for mode, r in results.items():
        for name, key in (("8 one at a time", "seq"), ("8 concurrent", "conc8"), ("32 concurrent", "conc32"),
                          (f"64 over {args.stagger:g} s", "stag64")):
            runs = r[key]
            print(f"{mode:<12}{name:<22}{med(runs, 'tokens_per_s'):>10.1f}{med(runs, 'wall_s'):>9.2f}"
                  f"{med(runs, 'p50_ms'):>9.0f}{med(runs, 'p99_ms'):>9.0f}{med(runs, 'ttft_p50_ms'):>10.0f}"
                  f"{med(runs, 'ttft_p99_ms'):>10.0f}{sum(x['errors'] for x in runs):>8}")
        print(f"{mode:<12}server: {r['health']['batches']} batches, largest {r['health']['largest_batch']} sequences")
    print(f"{os.cpu_count()} CPUs, {args.max_tokens} tokens per request, --max-batch-size {args.max_batch_size}")
    fields = []
    for mode, r in results.items():
        prefix = "" if mode == "continuous" else "static_"
        c32, s64 = r["conc32"], r["stag64"]
        fields += [f"{prefix}ttft_p50_ms={med(c32, 'ttft_p50_ms'):.0f}",
                   f"{prefix}ttft_p99_ms={med(c32, 'ttft_p99_ms'):.0f}",
                   f"{prefix}p50_ms={med(c32, 'p50_ms'):.0f}", f"{prefix}p99_ms={med(c32, 'p99_ms'):.0f}",
                   f"{prefix}tokens_per_s32={med(c32, 'tokens_per_s'):.1f}",
                   f"{prefix}errors32={sum(x['errors'] for x in c32)}",
                   f"{prefix}ttft64_p50_ms={med(s64, 'ttft_p50_ms'):.0f}",
                   f"{prefix}ttft64_p99_ms={med(s64, 'ttft_p99_ms'):.0f}",
                   f"{prefix}errors64={sum(x['errors'] for x in s64)}",
                   f"{prefix}concurrent8_ratio={med(r['conc8'], 'tokens_per_s') / med(r['seq'], 'tokens_per_s'):.2f}"]
    if len(results) == 2:
        ratios = [c["tokens_per_s"] / s["tokens_per_s"]
                  for c, s in zip(results["continuous"]["conc32"], results["static"]["conc32"])]
        fields.append(f"tokens_ratio32={statistics.median(ratios):.2f}")
    print("RESULT serve_load " + " ".join(fields))


if __name__ == "__main__":
    main()
