"""Labeled texts for classification, e.g. NSMC (`id\\tdocument\\tlabel` TSV with a header).

TSV (`.tsv`, `.txt`, and their `.gz`) is read with quoting off, because NSMC reviews contain
unbalanced quotes that a CSV parser would swallow across lines; `.csv` is read as ordinary CSV.
Rows with an empty text are skipped and counted (NSMC has a few), never silently.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .text import read_lines


@dataclass
class LabeledTexts:
    texts: list[str]
    labels: list[str]
    skipped_empty: int  # rows whose text was empty


def read_labeled_texts(path: str | Path, *, text_column: str = "document", label_column: str | None = "label") -> LabeledTexts:
    """Texts and their labels (as strings) from a TSV/CSV file with a header row.

    label_column=None reads texts only (for prediction); labels are then empty strings.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        rows = csv.reader(read_lines(path))
    else:
        rows = csv.reader(read_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows, None)
    if header is None:
        raise InputError(f"{path}: file is empty")
    header = [h.strip() for h in header]
    wanted = [c for c in (text_column, label_column) if c is not None]
    for column in wanted:
        if column not in header:
            raise InputError(f"{path}: line 1: no column {column!r} in the header (columns: {', '.join(header)}); "
                             f"choose with --text-column/--label-column")
    ti = header.index(text_column)
    li = header.index(label_column) if label_column is not None else None
    texts, labels, skipped = [], [], 0
    for line_no, row in enumerate(rows, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(f"{path}: line {line_no}: expected {len(header)} fields, found {len(row)}")
        text = row[ti].strip()
        if not text:
            skipped += 1
            continue
        label = ""
        if li is not None:
            label = row[li].strip()
            if not label:
                raise InputError(f"{path}: line {line_no}: field {label_column!r} is empty")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise InputError(f"{path}: no rows with text in column {text_column!r}")
    return LabeledTexts(texts, labels, skipped)
