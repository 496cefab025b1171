"""Preference data for reward models and DPO, prompt lists for PPO, and how a (prompt, answer)
becomes the tokens those stages score.

Preference files (JSON lines or a JSON array, UTF-8 with or without BOM):
- TRL's shape `{"prompt", "chosen", "rejected"[, "margin"]}`; prompt may also be a list of messages
  and chosen/rejected a one-message list (TRL's conversational shape);
- KoChatGPT's ranking shape `{"prompt", "completion_0", "completion_1", ..., "ranking": [..]}`,
  where `ranking[i]` is the rank of completion_i (lower = better), expanded into every ordered pair.
Prompt files: `{"prompt": ...}` records (JSONL or array), or plain text with one prompt per line.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..templates import ChatTemplate, IGNORE_INDEX, prepare_tokenizer, template_for
from .records import Records, has_blank_text


@dataclass
class PreferencePair:
    prompt: str | list[dict]  # user text, or the conversation so far (messages)
    chosen: str
    rejected: str
    margin: float | None = None

    def to_json(self) -> dict:
        d = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        if self.margin is not None:
            d["margin"] = self.margin
        return d


def preferences_jsonl(pairs: list[PreferencePair]) -> str:
    """Pairs as the JSON lines `read_preferences` reads back (TRL's prompt/chosen/rejected)."""
    return "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in pairs)


def read_preferences(path: str | Path) -> Records:
    """Every preference pair in a file. A record with an empty prompt or answer is skipped and
    counted (`.skipped`); a record of the wrong shape stops with the file and record named."""
    path = Path(path)
    pairs = Records()
    for where, record in _read_records(path):
        if has_blank_text(record):
            pairs.skip(f"{path}: {where}")
            continue
        pairs.extend(_record_pairs(record, f"{path}: {where}"))
    if not pairs:
        raise InputError(f"{path}: no preference pairs in this file{pairs.skipped_note()}")
    return pairs


def read_prompts(path: str | Path) -> Records:
    """Prompts for PPO rollouts: `{"prompt"}` records (JSONL/array) or one prompt per line. Empty
    prompts are skipped and counted (`.skipped`)."""
    path = Path(path)
    text = _read_text(path)
    prompts = Records()
    if path.suffix.lower() in (".json", ".jsonl") or text.lstrip().startswith(("{", "[")):
        for where, record in _read_records(path, text):
            if not isinstance(record, dict) or "prompt" not in record:
                raise InputError(f"{path}: {where}: expected an object with a \"prompt\" field")
            if has_blank_text(record, ("prompt",)):
                prompts.skip(f"{path}: {where}")
                continue
            prompts.append(_prompt(record["prompt"], f"{path}: {where}"))
    else:
        prompts.extend(line.strip() for line in text.splitlines() if line.strip())
    if not prompts:
        raise InputError(f"{path}: no prompts in this file{prompts.skipped_note('prompts')}")
    return prompts


def make_pairs(conversations: list[list[dict]], seed: int = 0, rejected: str = "mixed") -> list[PreferencePair]:
    """Synthetic preferences from Q/A data when no human labels exist: chosen is the real answer,
    rejected the answer of another question ("mismatched"), a corrupted copy ("corrupted": words
    shuffled, cut short, a word repeated, or another answer appended), or either at random ("mixed")."""
    if rejected not in ("mixed", "mismatched", "corrupted"):
        raise InputError(f"--rejected {rejected!r}: choose mixed, mismatched or corrupted")
    rng = random.Random(seed)
    answers = [conv[-1]["content"] for conv in conversations]
    if len(set(answers)) < 2:
        raise InputError("need at least two different answers to make preference pairs")
    pairs = []
    for conv, answer in zip(conversations, answers):
        prompt = conv[0]["content"] if len(conv) == 2 and conv[0]["role"] == "user" else conv[:-1]
        mode = rejected if rejected != "mixed" else rng.choice(("mismatched", "corrupted"))
        bad = _corrupt(answer, rng, answers) if mode == "corrupted" else None
        while bad is None or bad == answer:
            bad = answers[rng.randrange(len(answers))]
        pairs.append(PreferencePair(prompt, answer, bad))
    return pairs


def prompt_messages(prompt: str | list[dict]) -> list[dict]:
    """A prompt as chat messages: user text becomes one user message; a conversation stays as it is."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def encode_answer(template: ChatTemplate, tokenizer, prompt: str | list[dict], answer: str,
                  max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, answer_mask) of prompt + answer rendered with the chat template: the mask marks
    the answer and its end marker, exactly the tokens SFT trains on. The one encoding the reward
    model, DPO and PPO scoring share. Too long: the prompt loses its start, then the answer its end."""
    ids, labels = template.encode_example(tokenizer, prompt_messages(prompt) + [{"role": "assistant", "content": answer}])
    mask = [int(label != IGNORE_INDEX) for label in labels]
    if len(ids) > max_length:
        n_answer = sum(mask)
        keep_prompt = max(max_length - n_answer, max_length // 2)
        n_prompt = len(ids) - n_answer
        start = max(0, n_prompt - keep_prompt)
        ids, mask = ids[start:][:max_length], mask[start:][:max_length]
    return ids, mask


def chat_template(ckpt) -> ChatTemplate:
    """The checkpoint's chat template; a model without one gets "default" and its role tokens."""
    template = template_for(ckpt.meta, ckpt.tokenizer)
    if not ckpt.meta.get("chat_template"):
        prepare_tokenizer(template, ckpt.tokenizer, ckpt.model)
    return template


# -- internals ----------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line} is not valid UTF-8") from None


def _read_records(path: Path, text: str | None = None):
    """(where, record) for a JSON array ("record N") or JSON lines ("line N")."""
    text = _read_text(path) if text is None else text
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        yield from ((f"record {i}", r) for i, r in enumerate(records, start=1))
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {n}", json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {n}: invalid JSON ({e.msg})") from None


def _prompt(value, where: str) -> str | list[dict]:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                                                 and isinstance(m.get("content"), str) for m in value):
        return value
    raise InputError(f"{where}: \"prompt\" must be non-empty text or a list of {{role, content}} messages")


def _answer(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0].get("content")  # TRL conversational: [{"role": "assistant", "content": ...}]
    if not isinstance(value, str):
        raise InputError(f"{where}: \"{key}\" must be text")
    return value


def _record_pairs(record, where: str) -> list[PreferencePair]:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "prompt" not in record:
        raise InputError(f"{where}: missing field \"prompt\"")
    prompt = _prompt(record["prompt"], where)
    if "ranking" in record:
        return _ranking_pairs(record, prompt, where)
    for key in ("chosen", "rejected"):
        if key not in record:
            raise InputError(f"{where}: missing field \"{key}\" (expected prompt/chosen/rejected or "
                             f"completion_0.. with ranking)")
    margin = record.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise InputError(f"{where}: \"margin\" must be a number")
    return [PreferencePair(prompt, _answer(record, "chosen", where), _answer(record, "rejected", where),
                           None if margin is None else float(margin))]


def _ranking_pairs(record: dict, prompt, where: str) -> list[PreferencePair]:
    keys = sorted((k for k in record if re.fullmatch(r"completion_\d+", k)), key=lambda k: int(k.split("_")[1]))
    if [int(k.split("_")[1]) for k in keys] != list(range(len(keys))) or len(keys) < 2:
        raise InputError(f"{where}: expected fields completion_0, completion_1, ... (at least two)")
    ranking = record["ranking"]
    if (not isinstance(ranking, list) or len(ranking) != len(keys)
            or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ranking)):
        raise InputError(f"{where}: \"ranking\" must be a list of {len(keys)} numbers (one rank per completion)")
    texts = [_answer(record, k, where) for k in keys]
    pairs = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if ranking[i] == ranking[j]:
                continue
            better, worse = (i, j) if ranking[i] < ranking[j] else (j, i)
            pairs.append(PreferencePair(prompt, texts[better], texts[worse]))
    return pairs


def _corrupt(answer: str, rng: random.Random, answers: list[str]) -> str | None:
    """A worse copy of the answer, made one of the ways generated answers go wrong: words shuffled,
    cut short, one word repeated over and over (what a policy that games a reward model tends to
    write), or padded with another question's answer (longer, off topic). None when the chosen way
    does not change it."""
    words = answer.split()
    kind = rng.choice(("shuffled", "cut", "repeated", "padded"))
    if kind == "shuffled" and len(words) >= 3:
        shuffled = words[:]
        for _ in range(5):
            rng.shuffle(shuffled)
            if shuffled != words:
                return " ".join(shuffled)
    if kind == "repeated" and words:
        return " ".join(words + [rng.choice(words)] * rng.randint(3, 6))
    if kind == "padded":
        other = answers[rng.randrange(len(answers))]
        return f"{answer} {other}" if other != answer else None
    half = len(answer) // 2
    return answer[:half].rstrip() if half >= 2 else None
