"""The alignment commands end to end on a tiny model: make-pairs -> rm train/score/eval -> dpo, ppo."""

import json

import pytest

from hangpt.cli import main


def _run(args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _qa_csv(path):
    rows = [("배고파", "맛있는 거 챙겨 드세요."), ("비 온대", "우산 꼭 챙기세요."), ("졸려", "잠깐 쉬었다 하세요."),
            ("심심해", "산책 어때요?"), ("추워", "따뜻하게 입고 나가세요."), ("피곤해", "오늘은 일찍 주무세요.")] * 4
    path.write_text("Q,A,label\n" + "".join(f"{q},{a},0\n" for q, a in rows), encoding="utf-8")


def test_alignment_commands(tmp_path, tiny_checkpoint, capsys):
    _qa_csv(tmp_path / "qa.csv")
    code, out, _ = _run(["rm", "make-pairs", "--data", tmp_path / "qa.csv", "--out", tmp_path / "prefs.jsonl",
                         "--seed", "1", "--json"], capsys)
    assert code == 0 and json.loads(out) == {"out": str(tmp_path / "prefs.jsonl"), "pairs": 24}
    pairs = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(p["chosen"] != p["rejected"] for p in pairs)

    code, out, _ = _run(["rm", "train", "--model", tiny_checkpoint, "--data", tmp_path / "prefs.jsonl", "--out",
                         tmp_path / "rm", "--max-steps", "3", "--batch-size", "4", "--eval-every", "1", "--json"], capsys)
    summary = json.loads(out)  # validation lines went to stderr
    assert code == 0 and summary["steps"] == 3 and "val_accuracy" in summary["final"]

    code, out, _ = _run(["rm", "score", "--model", tmp_path / "rm", "--prompt", "배고파", "--response", "밥 드세요",
                         "--response", "싫어", "--json"], capsys)
    rewards = json.loads(out)["rewards"]
    assert code == 0 and [r["response"] for r in rewards] == ["밥 드세요", "싫어"]

    code, out, _ = _run(["rm", "eval", "--model", tmp_path / "rm", "--data", tmp_path / "prefs.jsonl", "--json"], capsys)
    metrics = json.loads(out)
    assert code == 0 and metrics["pairs"] == 24 and 0 <= metrics["accuracy"] <= 1

    code, out, _ = _run(["dpo", "--model", tiny_checkpoint, "--data", tmp_path / "prefs.jsonl", "--out", tmp_path / "dpo",
                         "--max-steps", "2", "--batch-size", "4", "--json"], capsys)
    assert code == 0 and "rewards/margins" in json.loads(out)["final"]

    (tmp_path / "prompts.jsonl").write_text('{"prompt": "배고파"}\n{"prompt": "추워"}\n', encoding="utf-8")
    code, out, err = _run(["ppo", "--model", tiny_checkpoint, "--reward-model", tmp_path / "rm", "--prompts",
                           tmp_path / "prompts.jsonl", "--out", tmp_path / "ppo", "--max-steps", "2", "--batch-size", "2",
                           "--max-new-tokens", "4", "--ppo-epochs", "1", "--json"], capsys)
    summary = json.loads(out)  # stdout holds only the JSON summary
    assert code == 0 and summary["steps"] == 2 and {"reward", "kl", "entropy", "clipfrac"} <= set(summary["final"])
    assert (tmp_path / "ppo" / "reward_curve.png").exists()


def test_bad_input_is_one_line_exit_2(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q"}\n')
    code, _, err = _run(["rm", "train", "--model", tiny_checkpoint, "--data", tmp_path / "bad.jsonl", "--out",
                         tmp_path / "rm", "--max-steps", "1"], capsys)
    assert code == 2 and err.strip() == f'error: {tmp_path / "bad.jsonl"}: line 2: missing field "chosen" ' \
        '(expected prompt/chosen/rejected or completion_0.. with ranking)'
    (tmp_path / "p.txt").write_text("안녕\n")
    code, _, err = _run(["ppo", "--model", tiny_checkpoint, "--reward-model", tiny_checkpoint, "--prompts",
                         tmp_path / "p.txt", "--out", tmp_path / "ppo", "--max-steps", "1"], capsys)
    assert code == 2 and "not a reward model" in err and "Traceback" not in err
