"""Conversation data for SFT, read from the real files unchanged: every example becomes a list of
OpenAI-style messages ending with the assistant's answer, which a chat template then renders.

Formats (detected from the file name and the first character):
- `.csv` / `.tsv`: question/answer columns, as ChatbotData's `Q,A,label` (extra columns ignored);
- `.json` / `.jsonl`: a JSON array or JSON lines of `{prompt, completion}` (KoChatGPT's SFT file is a
  JSON array named `.jsonl`, with a BOM), of `{messages: [{role, content}, ...]}` (multi-turn), or
  Alpaca's `{instruction, input, output}` (the user message keeps `input`, so Alpaca templates
  render the prompt_input variant when it is not empty).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import InputError
from .records import Records, has_blank_text

_ROLES = ("system", "user", "assistant")


def read_conversations(path: str | Path, *, question_column: str = "Q", answer_column: str = "A") -> Records:
    """Each example as messages ending with the assistant's answer. Errors name file and line/record;
    JSON records with an empty prompt or completion are skipped and counted (`.skipped`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    text = _read_utf8(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        examples = Records(_read_table(path, text, "\t" if suffix == ".tsv" else ",", question_column, answer_column))
    elif suffix in (".json", ".jsonl"):
        examples = _read_json_records(path, text)
    else:
        raise InputError(f"{path}: unknown conversation format (use .csv/.tsv with {question_column}/{answer_column} "
                         f"columns, or .json/.jsonl with prompt/completion or messages)")
    if not examples:
        raise InputError(f"{path}: no examples in this file{examples.skipped_note()}")
    return examples


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line} is not valid UTF-8 (convert it with `iconv -f cp949 -t utf-8` "
                         f"if it was saved as cp949/euc-kr)") from None


def _read_table(path: Path, text: str, delimiter: str, q_col: str, a_col: str) -> list[list[dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in (q_col, a_col) if c not in header]
    if missing:
        raise InputError(f"{path}: line 1: no column {missing[0]!r} in the header (columns: {', '.join(header) or 'none'}); "
                         f"choose with --question-column/--answer-column")
    qi, ai = header.index(q_col), header.index(a_col)
    examples = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        if len(row) <= max(qi, ai):
            raise InputError(f"{path}: line {line}: expected {len(header)} fields, found {len(row)}")
        question, answer = row[qi].strip(), row[ai].strip()
        for name, value in ((q_col, question), (a_col, answer)):
            if not value:
                raise InputError(f"{path}: line {line}: field {name!r} is empty")
        examples.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return examples


def _read_json_records(path: Path, text: str) -> Records:
    stripped = text.lstrip()
    examples = Records()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        for i, record in enumerate(records, start=1):
            _add_record(examples, record, f"{path}: record {i}")
        return examples
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {line_no}: invalid JSON ({e.msg})") from None
        _add_record(examples, record, f"{path}: line {line_no}")
    return examples


def _add_record(examples: Records, record, where: str) -> None:
    if has_blank_text(record, ("prompt", "completion")):
        examples.skip(where)
    else:
        examples.append(_record_messages(record, where))


def _record_messages(record, where: str) -> list[dict]:
    """One record as messages: {prompt, completion} or {messages: [...]}, ending with an answer."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected an object with prompt/completion, messages or instruction/output")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise InputError(f"{where}: field 'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in _ROLES:
                raise InputError(f"{where}: messages[{i}].role must be one of {', '.join(_ROLES)}")
            if not isinstance(m.get("content"), str):
                raise InputError(f"{where}: messages[{i}].content must be a string")
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] != "assistant":
            raise InputError(f"{where}: the last message must be the assistant's answer")
        return out
    if "instruction" in record:
        return _alpaca_messages(record, where)
    for key in ("prompt", "completion"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise InputError(f"{where}: field {key!r} is missing or empty (expected prompt/completion, messages "
                             f"or instruction/output)")
    return [{"role": "user", "content": record["prompt"].strip()},
            {"role": "assistant", "content": record["completion"].strip()}]


def _alpaca_messages(record: dict, where: str) -> list[dict]:
    """Alpaca's {instruction, input, output}: the fields as the recipe formats them (unstripped)."""
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise InputError(f"{where}: field {key!r} is missing or empty")
    if not isinstance(record.get("input", ""), str):
        raise InputError(f"{where}: field 'input' must be a string")
    user = {"role": "user", "content": record["instruction"]}
    if record.get("input"):
        user["input"] = record["input"]
    return [user, {"role": "assistant", "content": record["output"]}]
