"""Plain text corpora: files or folders of `.txt` (and `.gz`), read as a stream of lines.

UTF-8 with or without BOM is accepted. Undecodable bytes stop with the file and line named, and a
hint when the file looks like cp949/euc-kr (common for Korean text saved on Windows).
"""

from __future__ import annotations

import codecs
import gzip
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError

TEXT_SUFFIXES = (".txt", ".txt.gz", ".gz", ".text", ".md")


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files given directly, plus the text files found (sorted, recursively) in given folders."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(TEXT_SUFFIXES))
            if not found:
                raise InputError(f"{p}: folder has no text files ({', '.join(TEXT_SUFFIXES)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not files:
        raise InputError("no input files given")
    return files


BLOCK_BYTES = 1 << 20  # lines are decoded a block at a time: one C call per block, not per line


def read_line_blocks(path: Path) -> Iterator[list[str]]:
    """Lists of consecutive lines of one file, without their line breaks. An undecodable byte is
    reported at its exact line (a block that fails to decode is re-read line by line to find it)."""
    line_no = 0  # lines before the current block
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
            rest = b""
            while True:
                chunk = f.read(BLOCK_BYTES)
                data = rest + chunk
                if not chunk:
                    rest = b""
                elif (cut := data.rfind(b"\n") + 1) > 0:
                    data, rest = data[:cut], data[cut:]
                else:  # one line longer than a block: keep reading
                    rest = data
                    continue
                if not data:
                    return
                if line_no == 0 and data.startswith(codecs.BOM_UTF8):
                    data = data[len(codecs.BOM_UTF8):]
                lines = _decode_lines(path, line_no, data)
                line_no += len(lines)
                yield lines
    except (OSError, EOFError) as e:  # truncated gzip and the like
        raise InputError(f"{path}: cannot read line {line_no + 1} ({e})") from None


def _decode_lines(path: Path, lines_before: int, data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        for i, raw in enumerate(data.split(b"\n"), start=lines_before + 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(_decode_hint(path, i, raw)) from None
        raise
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return [line.rstrip("\r") for line in lines] if "\r" in text else lines


def read_lines(path: Path) -> Iterator[str]:
    """Lines of one file without their line break."""
    for lines in read_line_blocks(path):
        yield from lines


def _decode_hint(path: Path, line_no: int, raw: bytes) -> str:
    msg = f"{path}: line {line_no} is not valid UTF-8"
    try:
        raw.decode("cp949")
        msg += " (it looks like cp949/euc-kr: convert it with `iconv -f cp949 -t utf-8`)"
    except UnicodeDecodeError:
        pass
    return msg


def iter_documents(paths: Iterable[str | Path]) -> Iterator[str]:
    """Each non-empty line of every file, the unit a tokenizer or a token shard is fed."""
    return chain.from_iterable(iter_document_blocks(paths))


def iter_document_blocks(paths: Iterable[str | Path]) -> Iterator[list[str]]:
    """The documents of `iter_documents` a block of lines at a time (no per-document step)."""
    for path in expand_paths(paths):
        empty = True
        for lines in read_line_blocks(path):
            documents = [line for line in lines if line and not line.isspace()]
            empty = empty and not documents
            yield documents
        if empty:
            raise InputError(f"{path}: file is empty")
