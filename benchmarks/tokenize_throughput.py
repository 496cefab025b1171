"""Corpus preparation speed: text -> the memory-mapped token files pretraining reads.

`build_shards` on the Korean texts + NSMC training reviews (about 17 MB of UTF-8), once through
Hugging Face `tokenizers`' batch encode (the reference) and once through the fast path (tiktoken
with the same merges, in `--workers` threads while a thread reads ahead and the main thread writes). The two
`train.bin` / `val.bin` must be byte-identical: the ids are the HF tokenizer's on the whole corpus.
The two paths alternate, so load from other processes hits both alike; MB/s is of UTF-8 text per
wall-clock second (the median of the repeats), and per CPU-second (all threads), which load on a
shared machine changes less. The stages alone (reading the corpus into documents, and the fast encoder
on one thread) are timed too: the build can be no faster than the slower of reading and encoding / workers.

    python benchmarks/tokenize_throughput.py [--data-dir ../shared/data] [--tokenizer DIR] [--repeats 2] [--workers N]

Without --tokenizer, an 8192-token BPE is trained on the corpus first (as `hangpt pretrain` does).
Last line: RESULT tokenize hf_mb_s=... fast_mb_s=... fast_mb_cpu_s=... ratio=... identical=yes|no workers=... cpus=...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

from hangpt.data import shards
from hangpt.data.shards import build_shards, iter_corpus, iter_corpus_blocks, usable_cores
from hangpt.tokenizer import Tokenizer, train_tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def prepare(files, tok, text_column, fast: bool, out: Path, workers: int) -> tuple[float, float, Path]:
    """(wall seconds, CPU seconds, shard folder) of one build."""
    with contextlib.nullcontext() if fast else mock.patch.object(shards, "_tiktoken_encoding", lambda *a: None):
        w0, c0 = time.perf_counter(), time.process_time()
        built = build_shards(files, tok, out, val_fraction=0.02, text_column=text_column, workers=workers)
        return time.perf_counter() - w0, time.process_time() - c0, built.folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: train one on the corpus)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=usable_cores(), help="encoding threads (default: one per usable core)")
    args = ap.parse_args()
    files = [args.data_dir / "korean_text", args.data_dir / "nsmc" / "ratings_train.txt.gz"]
    column = "document"
    w0, c0 = time.perf_counter(), time.process_time()
    blocks = list(iter_corpus_blocks(files, column))
    read_wall, read_cpu = time.perf_counter() - w0, time.process_time() - c0
    n_bytes = sum(len(d.encode("utf-8")) for block in blocks for d in block)
    with tempfile.TemporaryDirectory(prefix="hangpt-tokbench-") as tmp:
        tmp = Path(tmp)
        if args.tokenizer:
            tok = Tokenizer.load(args.tokenizer)
        else:
            t0 = time.perf_counter()
            tok = train_tokenizer(iter_corpus(files, column), vocab_size=8192)
            print(f"trained an 8192-token BPE in {time.perf_counter() - t0:.0f} s")
        fast_ok = shards._tiktoken_encoding(tok.backend.to_str(), tok.eos_token) is not None
        print(f"{n_bytes / 1e6:.1f} MB of UTF-8 text; {args.workers} encoding workers, {os.cpu_count()} CPUs "
              f"({usable_cores()} usable), load average {os.getloadavg()[0]:.1f}; fast path "
              f"{'applies' if fast_ok else 'does not apply'} to this tokenizer")
        if fast_ok:
            encode = shards._encoder(tok)
            c0 = time.process_time()
            for _, batch in shards._batches(blocks):
                encode(batch)
            encode_cpu = time.process_time() - c0
            print(f"stages alone: reading {n_bytes / 1e6 / read_wall:.1f} MB/s ({n_bytes / 1e6 / read_cpu:.1f} MB/CPU-s), "
                  f"fast encoding {n_bytes / 1e6 / encode_cpu:.1f} MB/CPU-s on one thread")
        del blocks
        runs: dict[str, list[tuple[float, float]]] = {"hf": [], "fast": []}
        folders = {}
        for r in range(args.repeats):
            for name in ("hf", "fast"):
                wall, cpu, folders[name] = prepare(files, tok, column, name == "fast", tmp / f"{name}{r}", args.workers)
                runs[name].append((wall, cpu))
        identical = all(np.array_equal(np.fromfile(folders["hf"] / f, dtype=np.uint8), np.fromfile(folders["fast"] / f, dtype=np.uint8))
                        for f in ("train.bin", "val.bin", "val_docs.npy"))
        print(f"{'path':<28} {'MB/s':>7} {'MB/CPU-s':>9} {'wall s':>7} {'CPU s':>7}")
        rate, cpu_rate = {}, {}
        for name, label in (("hf", "tokenizers encode_batch"), ("fast", "tiktoken, same merges")):
            wall = statistics.median(w for w, _ in runs[name])
            cpu = statistics.median(c for _, c in runs[name])
            rate[name], cpu_rate[name] = n_bytes / 1e6 / wall, n_bytes / 1e6 / cpu
            print(f"{label:<28} {rate[name]:>7.2f} {cpu_rate[name]:>9.2f} {wall:>7.2f} {cpu:>7.2f}")
        info = folders["fast"] / "index.json"
        tokens = sum(v["tokens"] for k, v in json.loads(info.read_text()).items() if k in ("train", "val"))
        print(f"ids identical on the whole corpus ({tokens:,} tokens): {'yes' if identical else 'NO'}")
    print(f"RESULT tokenize hf_mb_s={rate['hf']:.2f} fast_mb_s={rate['fast']:.2f} fast_mb_cpu_s={cpu_rate['fast']:.2f} ratio={rate['fast'] / rate['hf']:.2f} "
          f"identical={'yes' if identical else 'no'} workers={args.workers} cpus={os.cpu_count()}")


if __name__ == "__main__":
    main()
