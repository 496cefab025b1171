"""Labeled texts for classification, e.g. NSMC (`id\\tdocument\\tlabel` TSV with a header).

TSV (`.tsv`, `.txt`, and their `.gz`) is read with quoting off, because NSMC reviews contain
unbalanced quotes that a CSV parser would swallow across lines; `.csv` is read as ordinary CSV.
Rows with an empty text are skipped and counted (NSMC has a few), never silently.
"""

from __future__ import annotations

import csv
from itertools import chain, compress, repeat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from .text import read_line_blocks, read_lines


@dataclass
class LabeledTexts:
    texts: list[str]
    labels: list[str]
    skipped_empty: int  # rows whose text was empty


def read_labeled_texts(path: str | Path, *, text_column: str = "document", label_column: str | None = "label") -> LabeledTexts:
    """Texts and their labels (as strings) from a TSV/CSV file with a header row.

    label_column=None reads texts only (for prediction); labels are then empty strings.
    """
    texts, labels, skipped = [], [], 0
    for block in iter_labeled_rows(path, text_column=text_column, label_column=label_column):
        for text, label in block:
            if text:
                texts.append(text)
                labels.append(label)
            else:
                skipped += 1
    if not texts:
        raise InputError(f"{path}: no rows with text in column {text_column!r}")
    return LabeledTexts(texts, labels, skipped)


def iter_labeled_rows(path: str | Path, *, text_column: str, label_column: str | None) -> Iterator[list[tuple[str, str]]]:
    """(text, label) of the rows, streamed a block of rows at a time; the text is "" for a row whose
    text is empty, the label "" without a label column."""
    for texts, labels in iter_columns(path, text_column, label_column):
        yield list(zip(texts, labels if labels is not None else repeat("")))


def iter_columns(path: str | Path, text_column: str, label_column: str | None = None) -> Iterator[tuple[list[str], list[str] | None]]:
    """The stripped cells of the text column (and of the label column) of the rows, streamed a block
    of rows at a time. Blocks keep the per-row work in C calls: a TSV block whose every line has the
    header's width is split in one call (NSMC's 150,000 rows in a tenth of a second)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    is_csv = path.name.lower().removesuffix(".gz").endswith(".csv")
    # a CSV block is one parsed row (a quoted cell may span lines); a TSV block is lines
    blocks = ([row] for row in csv.reader(read_lines(path))) if is_csv else read_line_blocks(path)
    blocks = (block for block in blocks if block)
    first = next(blocks, None)
    if first is None:
        raise InputError(f"{path}: file is empty")
    header = first.pop(0)
    header = [h.strip() for h in (header if is_csv else header.split("\t"))]
    for column in (text_column, label_column):
        if column is not None and column not in header:
            raise InputError(f"{path}: line 1: no column {column!r} in the header (columns: {', '.join(header)}); "
                             f"choose with --text-column/--label-column")
    ti = header.index(text_column)
    li = header.index(label_column) if label_column is not None else None
    width, line_no = len(header), 2  # line_no: the line of the block's first row
    for block in chain([first], blocks):
        start, line_no = line_no, line_no + len(block)
        if block and not is_csv and list(map(str.count, block, repeat("\t"))).count(width - 1) == len(block):
            rows = None  # every line is a row
            cells = "\t".join(block).split("\t")
            texts = list(map(str.strip, cells[ti::width]))
            labels = list(map(str.strip, cells[li::width])) if li is not None else None
        else:
            rows = block if is_csv else [line.split("\t") for line in block]
            if any(len(row) != width for row in rows):
                rows = _blank_rows_dropped(path, rows, width, start)
            texts = [row[ti].strip() if row else "" for row in rows]
            labels = [row[li].strip() if row else "" for row in rows] if li is not None else None
        if labels is not None:
            for offset, (text, label) in enumerate(zip(texts, labels)):
                if text and not label:
                    raise InputError(f"{path}: line {start + offset}: field {label_column!r} is empty")
        if rows is not None and None in rows:  # blank lines
            kept = [row is not None for row in rows]
            texts = list(compress(texts, kept))
            labels = list(compress(labels, kept)) if labels is not None else None
        yield texts, labels


def _blank_rows_dropped(path: Path, rows: list[list[str]], width: int, start: int) -> list[list[str] | None]:
    """Rows with blank lines as None; a row of the wrong width stops with its line number."""
    checked = []
    for line_no, row in enumerate(rows, start=start):
        if len(row) == width:
            checked.append(row)
        elif not any(cell.strip() for cell in row):
            checked.append(None)
        else:
            raise InputError(f"{path}: line {line_no}: expected {width} fields, found {len(row)}")
    return checked
