"""Plain text corpora: files or folders of `.txt` (and `.gz`), read as a stream of lines.

UTF-8 with or without BOM is accepted. Undecodable bytes stop with the file and line named, and a
hint when the file looks like cp949/euc-kr (common for Korean text saved on Windows).
"""

from __future__ import annotations

import codecs
import gzip
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


def read_lines(path: Path) -> Iterator[str]:
    """Lines of one file without their line break. Each line is decoded on its own, so an
    undecodable byte is reported at its exact line (a decoding text stream would name the line
    where its 8 KB read buffer started)."""
    line_no = 0
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                try:
                    yield raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    raise InputError(_decode_hint(path, line_no, raw)) from None
    except (OSError, EOFError) as e:  # truncated gzip and the like
        raise InputError(f"{path}: cannot read line {line_no + 1} ({e})") from None


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
    for path in expand_paths(paths):
        empty = True
        for line in read_lines(path):
            if line.strip():
                empty = False
                yield line
        if empty:
            raise InputError(f"{path}: file is empty")
