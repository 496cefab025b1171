"""Rankings from the playground -> SQLite -> preference pairs that the reward-model reader accepts."""

from __future__ import annotations

import json

import pytest

from hangpt.errors import InputError
from hangpt.serve.feedback import FeedbackStore, export_pairs, preference_pairs


def test_ranking_becomes_every_ordered_pair(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    store.add("질문", ["좋음", "보통", "나쁨"], [0, 1, 2], params={"temperature": 0.8})
    store.add("시스템 질문", ["A", "B", "C"], [1, 0, 1], system="친절한 도우미")  # a tie: A and C
    rankings = list(store.rankings())
    assert rankings[0]["params"] == {"temperature": 0.8}
    first = list(preference_pairs(rankings[0]))
    assert {(p["chosen"], p["rejected"]) for p in first} == {("좋음", "보통"), ("좋음", "나쁨"), ("보통", "나쁨")}
    second = list(preference_pairs(rankings[1]))
    assert {(p["chosen"], p["rejected"]) for p in second} == {("B", "A"), ("B", "C")}
    assert second[0]["prompt"] == [{"role": "system", "content": "친절한 도우미"},
                                   {"role": "user", "content": "시스템 질문"}]


@pytest.mark.parametrize("answers, ranks, message", [
    (["one"], [0], "at least two"),
    (["a", "b"], [0], "2 answers"),
    (["a", "b"], [1, 1], "same rank"),
    (["a", "b"], [0, -1], "non-negative"),
])
def test_bad_rankings_are_refused(tmp_path, answers, ranks, message):
    with pytest.raises(InputError, match=message):
        FeedbackStore(tmp_path / "fb.sqlite").add("q", answers, ranks)


def test_export_command_writes_pairs_the_reward_reader_reads(tmp_path, capsys):
    from hangpt.cli import main
    from hangpt.data.preferences import read_preferences

    db = tmp_path / "fb.sqlite"
    FeedbackStore(db).add("오늘 뭐 먹을까?", ["김치찌개", "아무거나", "김치찌개"], [0, 2, 1])
    with pytest.raises(SystemExit) as e:
        main(["feedback", "export", "--db", str(db), "--out", str(tmp_path / "prefs.jsonl"), "--json"])
    assert e.value.code == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 2  # identical texts give no pair
    pairs = read_preferences(tmp_path / "prefs.jsonl")
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("오늘 뭐 먹을까?", "김치찌개", "아무거나"),
                                                                ("오늘 뭐 먹을까?", "김치찌개", "아무거나")]
    with pytest.raises(InputError, match="no such feedback database"):
        export_pairs(tmp_path / "missing.sqlite", tmp_path / "x.jsonl")
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(InputError, match="not a feedback database"):
        export_pairs(tmp_path / "junk.sqlite", tmp_path / "x.jsonl")
