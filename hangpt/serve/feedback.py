"""Human rankings from the playground's compare mode, kept in SQLite and exported as preference
pairs: the human-ranking step of RLHF, whose output `hangpt rm train` reads.

A ranking gives each answer a rank (lower = better, ties allowed, as in KoChatGPT's `ranking`);
every two answers with different ranks make one `{prompt, chosen, rejected}` pair. The prompt is
the user's message, or (with a system prompt) the messages list TRL's conversational format uses.
A ranking of n answers gives up to n(n-1)/2 pairs, so the server caps n and the export streams.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Iterator

from ..errors import InputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rankings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    system TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answers TEXT NOT NULL,   -- JSON list of answer texts, in the order shown
    ranks TEXT NOT NULL,     -- JSON list, rank of each answer (lower = better)
    params TEXT NOT NULL     -- JSON object: the sampling settings that produced the answers
)
"""


class FeedbackStore:
    """One SQLite file; a connection per call, so the server's threads never share one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path}: not a feedback database ({e})") from None
        except (OSError, sqlite3.Error) as e:  # a read-only or missing folder
            raise InputError(f"{self.path}: cannot create the feedback database "
                             f"({getattr(e, 'strerror', None) or e})") from None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def add(self, prompt: str, answers: list[str], ranks: list[int], *, system: str = "", model: str = "",
            params: dict | None = None) -> int:
        """Store one ranking; returns its id."""
        check_ranking(answers, ranks)
        with self._connect() as db:
            cur = db.execute(
                "INSERT INTO rankings (created, model, system, prompt, answers, ranks, params) VALUES (?,?,?,?,?,?,?)",
                (time.time(), model, system, prompt, json.dumps(answers, ensure_ascii=False), json.dumps(ranks),
                 json.dumps(params or {}, ensure_ascii=False)),
            )
            return int(cur.lastrowid)

    def rankings(self) -> Iterator[dict]:
        """Every ranking, oldest first, read one row at a time."""
        db = self._connect()
        try:
            db.row_factory = sqlite3.Row
            for r in db.execute("SELECT * FROM rankings ORDER BY id"):
                yield {**dict(r), "answers": json.loads(r["answers"]), "ranks": json.loads(r["ranks"]),
                       "params": json.loads(r["params"])}
        finally:
            db.close()


def check_ranking(answers: list[str], ranks: list[int]) -> None:
    if len(answers) < 2:
        raise InputError("answers: a ranking needs at least two answers")
    if len(ranks) != len(answers):
        raise InputError(f"ranking: {len(ranks)} ranks for {len(answers)} answers")
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in ranks):
        raise InputError("ranking: ranks must be non-negative integers (lower = better)")
    if len(set(ranks)) < 2:
        raise InputError("ranking: all answers have the same rank, so nothing is preferred")


def preference_pairs(ranking: dict) -> Iterator[dict]:
    """Every (better, worse) pair of one ranking; identical texts give no pair."""
    prompt = ranking["prompt"]
    if ranking.get("system"):  # TRL's conversational prompt keeps the system message with it
        prompt = [{"role": "system", "content": ranking["system"]}, {"role": "user", "content": prompt}]
    for (a, ra), (b, rb) in combinations(zip(ranking["answers"], ranking["ranks"]), 2):
        if ra == rb or a == b:
            continue
        chosen, rejected = (a, b) if ra < rb else (b, a)
        yield {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def export_pairs(db_path: str | Path, out: str | Path) -> dict:
    """Write all pairs as JSONL, one at a time into a temp file renamed into place at the end (memory
    stays flat however many there are); returns counts for the summary line."""
    db_path, out = Path(db_path), Path(out)
    if not db_path.is_file():
        raise InputError(f"{db_path}: no such feedback database")
    store = FeedbackStore(db_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    n_rankings = n_pairs = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ranking in store.rankings():
                n_rankings += 1
                for pair in preference_pairs(ranking):
                    f.write(json.dumps(pair, ensure_ascii=False) + "\n")
                    n_pairs += 1
        os.replace(tmp, out)
    except sqlite3.DatabaseError as e:
        raise InputError(f"{db_path}: not a feedback database ({e})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"db": str(db_path), "out": str(out), "rankings": n_rankings, "pairs": n_pairs}
