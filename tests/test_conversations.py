"""Conversation readers on good and bad files of every supported shape."""

import json

import pytest

from conftest import SHARED_DATA
from hangpt.data.conversations import read_conversations
from hangpt.errors import InputError


def _qa(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_chatbotdata_csv_quirks(tmp_path):
    # BOM, a quoted comma, a label with trailing spaces, last line without newline
    f = tmp_path / "chat.csv"
    f.write_bytes('\ufeffQ,A,label\n12시 땡!,하루가 또 가네요.,0\n"안녕, 반가워",반가워요.,2   \n마지막,끝이에요.,1'.encode())
    assert read_conversations(f) == [_qa("12시 땡!", "하루가 또 가네요."), _qa("안녕, 반가워", "반가워요."),
                                     _qa("마지막", "끝이에요.")]


def test_tsv_and_custom_columns(tmp_path):
    f = tmp_path / "chat.tsv"
    f.write_text("question\tanswer\nhi\thello\n", encoding="utf-8")
    assert read_conversations(f, question_column="question", answer_column="answer") == [_qa("hi", "hello")]


@pytest.mark.parametrize("text, message", [
    ("Question,A\nhi,hello\n", "line 1: no column 'Q'"),
    ("Q,A\nhi,hello\nbye,\n", "line 3: field 'A' is empty"),
    ("Q,A,label\nhi\n", "line 2: expected 3 fields, found 1"),
])
def test_bad_csv_names_line(tmp_path, text, message):
    f = tmp_path / "bad.csv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_conversations(f)


def test_kochatgpt_json_array_named_jsonl_with_bom(tmp_path):
    f = tmp_path / "kochatgpt_1_SFT.jsonl"
    records = [{"prompt": "불고기용 고기 한우에요?", "completion": "'저는 AI입니다.", "tokens": 193}]
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps(records, ensure_ascii=False, indent=2).encode())
    assert read_conversations(f) == [_qa("불고기용 고기 한우에요?", "'저는 AI입니다.")]


def test_jsonl_prompt_completion_and_messages(tmp_path):
    f = tmp_path / "mixed.jsonl"
    multi = [{"role": "system", "content": "친절하게"}, {"role": "user", "content": "안녕"},
             {"role": "assistant", "content": "안녕하세요"}, {"role": "user", "content": "이름은?"},
             {"role": "assistant", "content": "한GPT예요"}]
    f.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n\n" + json.dumps({"messages": multi}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    assert read_conversations(f) == [_qa("p", "c"), multi]


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "p", "completion": "c"}', '{"prompt": "p",'], "line 2: invalid JSON"),
    (['{"prompt": "p"}'], "line 1: field 'completion' is missing"),
    (['{"messages": [{"role": "user", "content": "hi"}]}'], "line 1: the last message must be the assistant's"),
    (['{"messages": [{"role": "bot", "content": "hi"}]}'], r"line 1: messages\[0\].role must be one of"),
    (['"not an object"'], "line 1: expected an object"),
])
def test_bad_jsonl_names_line(tmp_path, lines, message):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_conversations(f)


def test_bad_json_array_names_record(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "a"}]), encoding="utf-8")
    with pytest.raises(InputError, match="record 2: field 'completion'"):
        read_conversations(f)


def test_not_utf8_and_unknown_format(tmp_path):
    f = tmp_path / "cp949.csv"
    f.write_bytes("Q,A\n안녕,반가워\n".encode("cp949"))
    with pytest.raises(InputError, match="line 2 is not valid UTF-8"):
        read_conversations(f)
    g = tmp_path / "data.xml"
    g.write_text("<x/>")
    with pytest.raises(InputError, match="unknown conversation format"):
        read_conversations(g)


def test_real_chatbotdata():
    path = SHARED_DATA / "chatbot_data" / "ChatbotData.csv"
    if not path.exists():
        pytest.skip("shared ChatbotData.csv not present (../shared/data)")
    data = read_conversations(path)
    assert len(data) == 11823
    assert all(m[1]["content"] for m in data)


def test_alpaca_records_keep_their_input(tmp_path):
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps([{"instruction": "요약하세요", "input": "긴 글", "output": "짧은 글"},
                                {"instruction": "인사해", "input": "", "output": "안녕!"}], ensure_ascii=False),
                    encoding="utf-8")
    assert read_conversations(path) == [
        [{"role": "user", "content": "요약하세요", "input": "긴 글"}, {"role": "assistant", "content": "짧은 글"}],
        [{"role": "user", "content": "인사해"}, {"role": "assistant", "content": "안녕!"}]]
    jsonl = tmp_path / "alpaca.jsonl"
    jsonl.write_text('{"instruction": "인사해", "output": "안녕!"}\n{"instruction": "요약", "input": "글"}\n')
    with pytest.raises(InputError, match=r"alpaca.jsonl: line 2: field 'output' is missing or empty"):
        read_conversations(jsonl)
