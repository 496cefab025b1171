"""Human rankings from the playground's compare mode, kept in SQLite and exported as preference
pairs: the human-ranking step of RLHF, whose output `hangpt rm train` reads.

A ranking gives each answer a rank (lower = better, ties allowed, as in KoChatGPT's `ranking`);
every two answers with different ranks make one `{prompt, chosen, rejected}` pair. The prompt is
the user's message, or (with a system prompt) the messages list TRL's conversational format uses.
"""

from __future__ import annotations

import json
import sqlite3
import time
from itertools import combinations
from pathlib import Path

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

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

    def rankings(self) -> list[dict]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM rankings ORDER BY id").fetchall()
        return [{**dict(r), "answers": json.loads(r["answers"]), "ranks": json.loads(r["ranks"]),
                 "params": json.loads(r["params"])} for r in rows]


def check_ranking(answers: list[str], ranks: list[int]) -> None:
    if len(answers) < 2:
        raise InputError("answers: a ranking needs at least two answers")
    if len(ranks) != len(answers):
        raise InputError(f"ranking: {len(ranks)} ranks for {len(answers)} answers")
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in ranks):
        raise InputError("ranking: ranks must be non-negative integers (lower = better)")
    if len(set(ranks)) < 2:
        raise InputError("ranking: all answers have the same rank, so nothing is preferred")


def preference_pairs(ranking: dict) -> list[dict]:
    """Every (better, worse) pair of one ranking; identical texts give no pair."""
    prompt = ranking["prompt"]
    if ranking.get("system"):  # TRL's conversational prompt keeps the system message with it
        prompt = [{"role": "system", "content": ranking["system"]}, {"role": "user", "content": prompt}]
    pairs = []
    for (a, ra), (b, rb) in combinations(zip(ranking["answers"], ranking["ranks"]), 2):
        if ra == rb or a == b:
            continue
        chosen, rejected = (a, b) if ra < rb else (b, a)
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def export_pairs(db_path: str | Path, out: str | Path) -> dict:
    """Write all pairs as JSONL (atomically); returns counts for the summary line."""
    from ..checkpoint import write_file_atomic

    db_path = Path(db_path)
    if not db_path.is_file():
        raise InputError(f"{db_path}: no such feedback database")
    try:
        rankings = FeedbackStore(db_path).rankings()
    except sqlite3.DatabaseError as e:
        raise InputError(f"{db_path}: not a feedback database ({e})") from None
    pairs = [p for r in rankings for p in preference_pairs(r)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs).encode("utf-8"))
    return {"db": str(db_path), "out": str(out), "rankings": len(rankings), "pairs": len(pairs)}
