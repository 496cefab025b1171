"""Chat: history cut to the context, and a tiny sft -> chat run that learns to answer fixed questions."""

import pytest

from hangpt.cli import main
from hangpt.templates import fit_conversation, get_template

PAIRS = [("너 이름이 뭐야?", "저는 한GPT예요."), ("오늘 날씨 어때?", "정말 좋네요."), ("배고파", "김치찌개를 먹었어요.")]


def test_fit_conversation_drops_oldest_turns_keeps_system(tiny_tokenizer):
    template = get_template("kogpt2")
    system = {"role": "system", "content": "친절하게"}
    turns = []
    for q, a in PAIRS:
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages = [system] + turns + [{"role": "user", "content": "마지막 질문"}]
    full = template.encode_prompt(tiny_tokenizer, messages)
    assert fit_conversation(template, tiny_tokenizer, messages, len(full)) == (full, 0)
    ids, dropped = fit_conversation(template, tiny_tokenizer, messages, len(full) - 1)
    assert dropped == 2 and ids == template.encode_prompt(tiny_tokenizer, [system] + turns[2:] + messages[-1:])
    last = template.encode_prompt(tiny_tokenizer, [system, messages[-1]])
    ids, dropped = fit_conversation(template, tiny_tokenizer, messages, len(last) - 2)
    assert dropped == 6 and ids == last[2:]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, tiny_checkpoint):
    tmp = tmp_path_factory.mktemp("chat")
    rows = ["Q,A,label"] + [f"{q},{a},0" for q, a in PAIRS] * 8
    (tmp / "qa.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["sft", "--model", str(tiny_checkpoint), "--data", str(tmp / "qa.csv"), "--out", str(tmp / "sft"),
              "--template", "kogpt2", "--max-steps", "60", "--batch-size", "8", "--lr", "3e-3", "--val-fraction", "0"])
    assert e.value.code == 0
    return tmp / "sft"


def test_sft_then_chat_answers_fixed_questions(chat_model, capsys, monkeypatch):
    import io

    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("너 이름이 뭐야?\n/reset\n배고파\n/system 짧게\n오늘 날씨 어때?\n/quit\n안녕\n"))
    with pytest.raises(SystemExit) as e:
        main(["chat", "--model", str(chat_model), "--greedy", "--max-new-tokens", "20"])
    assert e.value.code == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[:2] == ["저는 한GPT예요.", "김치찌개를 먹었어요."]
    assert len(out.out.splitlines()) == 3  # nothing after /quit
    assert "(conversation reset)" in out.err and "(system message set)" in out.err
