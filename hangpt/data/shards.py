"""Token shards: a text corpus tokenized once into flat memory-mapped token arrays.

Documents are streamed (a corpus larger than memory works), encoded in batches, and appended to
`train.bin` / `val.bin` as `<eos> doc <eos> doc ...` (uint16 when the vocabulary fits, else
uint32). Every Nth document goes to validation, so the split is deterministic. The folder is keyed
by a hash of the file list (paths, sizes, mtimes), the tokenizer and the split, so a resumed or
repeated run reuses it instead of re-tokenizing.

A byte-level BPE as hangpt trains it is encoded by tiktoken with the same merges: the Hugging Face
tokenizer's ids exactly, in a sixth of the CPU time. Each call encodes a batch of documents joined
by <eos> (~64K characters) and gives the shard's layout directly; tiktoken releases the GIL, so one
thread per core encodes while a reading thread reads ahead and the main thread writes in order, a
few batches in flight.
Tokenizers tiktoken cannot reproduce (SentencePiece-style, BPE variants) go through `tokenizers`.

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
import unicodedata
from bisect import bisect_left
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from itertools import accumulate, chain
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import InputError
from .prefetch import prefetch
from .text import expand_paths, iter_document_blocks, read_lines

FORMAT_VERSION = 1
BATCH_CHARS = 1 << 16  # characters per tokenizer call (~10 ms of encoding): a short tail, bounded memory
# the regex of `tokenizers`' ByteLevel pre-tokenizer (GPT-2's), for tiktoken
GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def iter_corpus(paths: Iterable[str | Path], text_column: str | None = None) -> Iterator[str]:
    """Documents of plain-text files, and of the `text_column` of TSV/CSV files with a header that
    has it (e.g. NSMC's `document`), so review data can be pretrained on without its ids/labels."""
    return chain.from_iterable(iter_corpus_blocks(paths, text_column))


def iter_corpus_blocks(paths: Iterable[str | Path], text_column: str | None = None) -> Iterator[list[str]]:
    """The documents of `iter_corpus` as the files are read, a block at a time."""
    files = expand_paths(paths)
    if text_column is None:
        yield from iter_document_blocks(files)
        return
    from .classification import iter_columns

    matched = False
    for path in files:
        header = next(iter(read_lines(path)), "")
        cells = [c.strip() for c in header.split("," if path.name.lower().endswith((".csv", ".csv.gz")) else "\t")]
        if text_column in cells:
            matched = True
            for texts, _ in iter_columns(path, text_column):
                yield list(filter(None, texts))
        else:
            yield from iter_document_blocks([path])
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
    progress: bool = False,
    workers: int | None = None,
) -> TokenShards:
    """Tokenize the corpus into `cache_dir/<key>/` (or reuse it if it is already there); `progress`
    shows a bar of the text bytes done on stderr; `workers` threads encode (default: one per core)."""
    files = expand_paths(paths)
    if tokenizer.eos_id is None:
        raise InputError("the tokenizer has no end-of-text token to separate documents")
    folder = Path(cache_dir) / corpus_key(files, tokenizer.backend.to_str(), val_fraction, text_column)
    if (folder / "index.json").exists():
        return TokenShards(folder, json.loads((folder / "index.json").read_text()))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        info = _write_shards(files, tokenizer, tmp, val_fraction, text_column, log, progress, workers or usable_cores())
        (tmp / "index.json").write_text(json.dumps(info, ensure_ascii=False, indent=2))
        if folder.exists():  # a stale partial folder (index.json is written last)
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenShards(folder, info)


def usable_cores() -> int:
    """The cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write_shards(files, tokenizer, folder: Path, val_fraction, text_column, log, progress, workers: int) -> dict:
    from tqdm.auto import tqdm

    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    every = split_every(val_fraction)
    stats = {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in ("train", "val")}
    val_docs: list[tuple[int, int]] = []
    outs = {s: open(folder / f"{s}.bin", "wb") for s in ("train", "val")}
    encode = _encoder(tokenizer)
    bar = tqdm(desc="tokenizing", unit="B", unit_scale=True, disable=not progress, dynamic_ncols=True)
    batches = prefetch(_batches(iter_corpus_blocks(files, text_column)), depth=2)  # read while encoding and writing

    def write(first: int, batch: list[str], encoded: tuple[np.ndarray, np.ndarray]) -> None:
        ids, n_tokens = encoded
        held_out = (np.arange(first, first + len(batch)) % every == every - 1) if every else np.zeros(len(batch), bool)
        n_bytes = np.fromiter(map(len, map(str.encode, batch)), np.int64, len(batch)) + 1  # +1: the <eos>
        token_held_out = np.repeat(held_out, n_tokens)
        for split, docs, tokens in (("train", ~held_out, ~token_held_out), ("val", held_out, token_held_out)):
            s = stats[split]
            outs[split].write(ids[tokens].astype(dtype).tobytes())
            if split == "val":
                val_docs.extend(zip((s["tokens"] + np.cumsum(n_tokens[docs])).tolist(),
                                    (s["bytes"] + np.cumsum(n_bytes[docs])).tolist()))
            s["documents"] += int(docs.sum())
            s["tokens"] += int(n_tokens[docs].sum())
            s["bytes"] += int(n_bytes[docs].sum())
        bar.update(int(n_bytes.sum()))

    # batches are encoded on every core while the next ones are read; `pending` keeps their order
    try:
        with ThreadPoolExecutor(workers) as pool:
            pending: deque = deque()
            for first, batch in batches:
                pending.append((first, batch, pool.submit(encode, batch)))
                while len(pending) > 2 * workers or (pending and pending[0][2].done()):  # bounded memory
                    write(*_resolved(pending.popleft()))
            while pending:
                write(*_resolved(pending.popleft()))
    finally:
        batches.close()  # stops the reading thread
        bar.close()
        for f in outs.values():
            f.close()
    log(f"tokenized {stats['train']['documents'] + stats['val']['documents']:,} documents")
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


def _batches(blocks: Iterable[list[str]]) -> Iterator[tuple[int, list[str]]]:
    """(index of the first document, documents joined up to BATCH_CHARS characters). A block read
    from a file is cut between documents too, so the encoders get many small batches: the last
    one, encoded while the other cores have nothing left to do, is short."""
    first, batch, size = 0, [], 0
    for block in blocks:
        ends = list(accumulate(map(len, block)))  # characters up to the end of each document
        start, done = 0, 0
        while start < len(block):
            stop = min(bisect_left(ends, done + BATCH_CHARS - size, lo=start) + 1, len(block))
            batch += block[start:stop]
            size += ends[stop - 1] - done
            start, done = stop, ends[stop - 1]
            if size >= BATCH_CHARS:
                yield first, batch
                first, batch, size = first + len(batch), [], 0
    if batch:
        yield first, batch


def _resolved(item):
    first, batch, future = item
    return first, batch, future.result()


def _encoder(tokenizer) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
    """documents -> (their `<eos> ids <eos> ids ...`, each document's token count with its <eos>):
    tiktoken where it reproduces the tokenizer exactly, else `tokenizers`' batch encode."""
    eos = tokenizer.eos_id

    def reference(batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
        docs = [[eos, *ids] for ids in tokenizer.encode_batch(batch)]
        return np.fromiter(chain.from_iterable(docs), np.uint32), np.fromiter(map(len, docs), np.int64, len(docs))

    fast = _tiktoken_encoding(tokenizer.backend.to_str(), tokenizer.eos_token)
    if fast is None:
        return reference
    encoding, normalize, added = fast
    eos_token = tokenizer.eos_token

    def encode(batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
        # the batch as one text "<eos>doc<eos>doc...": one call, and the ids come out in the shard's layout
        raw = "\n".join(batch)  # lines hold no line break, so no token is found across two documents
        if any(token in raw for token in added):  # `tokenizers` matches these inside text
            return reference(batch)
        if normalize and not unicodedata.is_normalized("NFC", raw):  # "\n" composes with nothing
            batch = [unicodedata.normalize("NFC", t) for t in batch]
        ids = encoding.encode_to_numpy(eos_token + eos_token.join(batch), allowed_special={eos_token})
        return ids, np.diff(np.flatnonzero(ids == eos), append=len(ids))

    return encode


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character byte-level BPE vocabularies spell it with."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


@cache
def _tiktoken_encoding(tokenizer_json: str, eos: str):
    """(tiktoken Encoding, NFC first?, added tokens' texts) for a byte-level BPE that
    tiktoken reproduces exactly (GPT-2's pre-tokenizer regex, no dropout or word prefixes/suffixes,
    optional NFC; merge order = token id order), else None."""
    try:
        import tiktoken
    except ImportError:
        return None
    spec = json.loads(tokenizer_json)
    model, pre, norm = spec.get("model") or {}, spec.get("pre_tokenizer") or {}, spec.get("normalizer")
    if (model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix") or model.get("byte_fallback") or model.get("ignore_merges")
            or pre != {**pre, "type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
            or norm not in (None, {"type": "NFC"})):
        return None
    to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    vocab, merges = model["vocab"], model["merges"]
    try:
        ranks = {bytes(to_byte[c] for c in token): i for token, i in vocab.items()}
    except KeyError:  # a token outside the byte alphabet
        return None
    # tiktoken merges the adjacent pair whose concatenation has the lowest id; that is the BPE's merge
    # order only when each merge makes a new token whose id follows its merge rank
    made = [vocab.get("".join(m.split(" ")) if isinstance(m, str) else "".join(m)) for m in merges]
    if len(ranks) != len(vocab) or any(b is None or a is None or a >= b for a, b in zip(made, made[1:])):
        return None
    added = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
    if eos not in added or sum(len(token) == 1 for token in ranks) != 256:
        return None
    ranks = {token: i for token, i in ranks.items() if i not in added.values()}  # matched as text, never merged
    encoding = tiktoken.Encoding("hangpt", pat_str=GPT2_SPLIT, mergeable_ranks=ranks, special_tokens={eos: added[eos]})
    return encoding, norm is not None, tuple(added)



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
