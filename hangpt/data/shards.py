"""Token shards: a text corpus tokenized once into flat memory-mapped token arrays.

Documents are streamed (a corpus larger than memory works), encoded in batches, and appended to
`train.bin` / `val.bin` as `<eos> doc <eos> doc ...` (uint16 when the vocabulary fits, else
uint32). Every Nth document goes to validation, so the split is deterministic. The folder is keyed
by a hash of the file list (paths, sizes, mtimes), the tokenizer and the split, so a resumed or
repeated run reuses it instead of re-tokenizing.

Bits per byte needs the UTF-8 size of the text the validation tokens cover: `val_docs.npy` holds,
per validation document, the cumulative token end and byte count (each document counts one extra
byte for the line break its <eos> stands for).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import InputError
from .text import expand_paths, iter_documents, read_lines

FORMAT_VERSION = 1
ENCODE_BATCH = 2048  # documents per tokenizer call


def iter_corpus(paths: Iterable[str | Path], text_column: str | None = None) -> Iterator[str]:
    """Documents of plain-text files, and of the `text_column` of TSV/CSV files with a header that
    has it (e.g. NSMC's `document`), so review data can be pretrained on without its ids/labels."""
    files = expand_paths(paths)
    if text_column is None:
        yield from iter_documents(files)
        return
    from .classification import read_labeled_texts

    matched = False
    for path in files:
        header = next(iter(read_lines(path)), "")
        cells = [c.strip() for c in header.split("," if path.name.lower().endswith((".csv", ".csv.gz")) else "\t")]
        if text_column in cells:
            matched = True
            yield from read_labeled_texts(path, text_column=text_column, label_column=None).texts
        else:
            yield from iter_documents([path])
    if not matched:
        raise InputError(f"--text-column {text_column!r}: no input file has a header with that column")


def split_every(val_fraction: float) -> int:
    """Every Nth document is held out (0: no validation split)."""
    return int(round(1 / val_fraction)) if val_fraction > 0 else 0


def is_val_document(index: int, every: int) -> bool:
    return bool(every) and index % every == every - 1


def corpus_key(files: list[Path], *settings) -> str:
    """A short hash of the files (path, size, mtime) and the settings that shape what is built."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update("|".join(map(str, (*settings, FORMAT_VERSION))).encode())
    return h.hexdigest()[:16]


@dataclass
class TokenShards:
    """A prepared corpus: train/val token arrays (read-only memmaps) and the split's statistics."""

    folder: Path
    info: dict

    def tokens(self, split: str) -> np.ndarray:
        n = self.info[split]["tokens"]
        if n == 0:
            return np.zeros(0, dtype=self.info["dtype"])
        return np.memmap(self.folder / f"{split}.bin", dtype=self.info["dtype"], mode="r", shape=(n,))

    def val_prefix(self, max_tokens: int | None) -> tuple[np.ndarray, int]:
        """The validation tokens of the first whole documents that fit in max_tokens, and their bytes."""
        tokens = self.tokens("val")
        docs = np.load(self.folder / "val_docs.npy")
        if max_tokens is None or max_tokens >= len(tokens) or len(docs) == 0:
            return tokens, self.info["val"]["bytes"]
        k = max(1, int(np.searchsorted(docs[:, 0], max_tokens, side="right")))
        end, n_bytes = docs[k - 1]
        return tokens[: int(end)], int(n_bytes)


def build_shards(
    paths: Iterable[str | Path],
    tokenizer,
    cache_dir: str | Path,
    *,
    val_fraction: float = 0.02,
    text_column: str | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> TokenShards:
    """Tokenize the corpus into `cache_dir/<key>/` (or reuse it if it is already there)."""
    files = expand_paths(paths)
    if tokenizer.eos_id is None:
        raise InputError("the tokenizer has no end-of-text token to separate documents")
    folder = Path(cache_dir) / corpus_key(files, tokenizer.backend.to_str(), val_fraction, text_column)
    if (folder / "index.json").exists():
        return TokenShards(folder, json.loads((folder / "index.json").read_text()))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        info = _write_shards(files, tokenizer, tmp, val_fraction, text_column, log)
        (tmp / "index.json").write_text(json.dumps(info, ensure_ascii=False, indent=2))
        if folder.exists():  # a stale partial folder (index.json is written last)
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenShards(folder, info)


def _write_shards(files, tokenizer, folder: Path, val_fraction, text_column, log) -> dict:
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    eos = tokenizer.eos_id
    every = split_every(val_fraction)
    stats = {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in ("train", "val")}
    val_docs: list[tuple[int, int]] = []
    outs = {s: open(folder / f"{s}.bin", "wb") for s in ("train", "val")}

    def flush(batch: list[tuple[int, str]]) -> None:
        for (index, text), ids in zip(batch, tokenizer.encode_batch([t for _, t in batch])):
            split = "val" if is_val_document(index, every) else "train"
            s = stats[split]
            outs[split].write(np.asarray([eos, *ids], dtype=dtype).tobytes())
            s["documents"] += 1
            s["tokens"] += len(ids) + 1
            s["bytes"] += len(text.encode("utf-8")) + 1
            if split == "val":
                val_docs.append((s["tokens"], s["bytes"]))

    try:
        batch: list[tuple[int, str]] = []
        for index, text in enumerate(iter_corpus(files, text_column)):
            batch.append((index, text))
            if len(batch) == ENCODE_BATCH:
                flush(batch)
                batch = []
                if stats["train"]["documents"] % (ENCODE_BATCH * 50) < ENCODE_BATCH:
                    log(f"tokenized {stats['train']['documents'] + stats['val']['documents']:,} documents")
        flush(batch)
    finally:
        for f in outs.values():
            f.close()
    np.save(folder / "val_docs.npy", np.asarray(val_docs, dtype=np.int64).reshape(-1, 2))
    if every and stats["val"]["documents"] == 0:
        raise InputError(f"{files[0]}: corpus has {stats['train']['documents']} documents, too few to hold out "
                         f"a validation split (raise --val-fraction or add text)")
    return {
        "version": FORMAT_VERSION,
        "dtype": np.dtype(dtype).name,
        "files": [str(f) for f in files],
        "val_fraction": val_fraction,
        "text_column": text_column,
        "vocab_size": tokenizer.vocab_size,
        **stats,
    }


class TokenWindows:
    """Random windows of `length + 1` tokens from a token array: (batch_size, length + 1) int64.

    Batch k of rank r comes from a generator seeded by (seed, rank, k), so the whole state is the
    counter k: a resume continues the exact sequence on every DDP rank, and ranks never share windows.
    "Epoch" means train tokens seen once on average.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, length: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if len(tokens) < length + 1:
            raise InputError(f"training data has {len(tokens)} tokens, fewer than one window of {length + 1} "
                             f"(lower --max-length or add text)")
        self.tokens, self.batch_size, self.length = tokens, batch_size, length
        self.seed, self.rank = seed, rank
        self.steps_per_epoch = max(1, len(tokens) // (batch_size * length * world_size))
        self.index = 0

    def next_batch(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.rank) * 1_000_000_007 + self.index) % (1 << 63))
        starts = torch.randint(0, len(self.tokens) - self.length, (self.batch_size,), generator=g).tolist()
        self.index += 1
        rows = np.stack([self.tokens[s : s + self.length + 1] for s in starts]).astype(np.int64)
        return torch.from_numpy(rows)

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]
