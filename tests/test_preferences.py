"""Preference and prompt readers, the synthetic pair maker, and the shared answer encoding."""

import json

import pytest

from hangpt.data.preferences import encode_answer, make_pairs, read_preferences, read_prompts
from hangpt.errors import InputError
from hangpt.templates import IGNORE_INDEX, get_template, prepare_tokenizer


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_trl_jsonl_with_margin(tmp_path):
    p = _write(tmp_path, "p.jsonl", "\n".join([
        json.dumps({"prompt": "안녕", "chosen": "안녕하세요", "rejected": "몰라", "margin": 1.5}, ensure_ascii=False),
        "",
        json.dumps({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
                    "rejected": [{"role": "assistant", "content": "no"}]}),
    ]))
    pairs = read_preferences(p)
    assert [(x.chosen, x.rejected, x.margin) for x in pairs] == [("안녕하세요", "몰라", 1.5), ("hello", "no", None)]
    assert pairs[1].prompt == [{"role": "user", "content": "hi"}]


def test_kochatgpt_ranking_array_expands_to_ordered_pairs(tmp_path):
    record = {"prompt": "q", "completion_0": "b", "completion_1": "a", "completion_2": "c", "ranking": [1, 0, 2]}
    p = tmp_path / "rm.jsonl"  # KoChatGPT: a JSON array despite the name, with a BOM
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps([record]).encode())
    pairs = read_preferences(p)
    assert sorted((x.chosen, x.rejected) for x in pairs) == [("a", "b"), ("a", "c"), ("b", "c")]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "q", "chosen": "a"}', 'line 2: missing field "rejected"'),
    ('{"chosen": "a", "rejected": "b"}', 'line 2: missing field "prompt"'),
    ('{"prompt": "q", "chosen": "a", "rejected": 3}', 'line 2: "rejected" must be text'),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "x"}', 'line 2: "margin" must be a number'),
    ('{"prompt": "q", "completion_0": "a", "completion_1": "b", "ranking": [0]}', 'line 2: "ranking" must be a list of 2'),
    ('{"prompt": "q", "chosen": ', "line 2: invalid JSON"),
    ('[1, 2]', "line 2: expected a JSON object"),
])
def test_bad_records_name_the_line(tmp_path, line, message):
    good = '{"prompt": "q", "chosen": "a", "rejected": "b"}'
    p = _write(tmp_path, "bad.jsonl", good + "\n" + line + "\n")
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        read_preferences(p)


def test_array_errors_name_the_record(tmp_path):
    p = _write(tmp_path, "a.json", json.dumps([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q"}]))
    with pytest.raises(InputError, match="record 2"):
        read_preferences(p)


def test_prompts_jsonl_array_and_text(tmp_path):
    assert read_prompts(_write(tmp_path, "p.txt", "첫째\n\n둘째\n")) == ["첫째", "둘째"]
    assert read_prompts(_write(tmp_path, "p.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n')) == ["a", "b"]
    assert read_prompts(_write(tmp_path, "p.json", '[{"prompt": "a"}]')) == ["a"]
    with pytest.raises(InputError, match="line 1"):
        read_prompts(_write(tmp_path, "q.jsonl", '{"text": "a"}\n'))


def test_make_pairs_chosen_is_the_real_answer():
    convs = [[{"role": "user", "content": f"질문 {i}"}, {"role": "assistant", "content": f"대답 번호 {i} 입니다"}]
             for i in range(20)]
    pairs = make_pairs(convs, seed=3)
    assert [p.prompt for p in pairs] == [f"질문 {i}" for i in range(20)]
    assert all(p.chosen == f"대답 번호 {i} 입니다" for i, p in enumerate(pairs))
    assert all(p.rejected != p.chosen and p.rejected for p in pairs)
    assert make_pairs(convs, seed=3) == pairs  # seeded
    for mode in ("mismatched", "corrupted"):
        assert all(p.rejected != p.chosen for p in make_pairs(convs, seed=1, rejected=mode))
    mismatched = make_pairs(convs, seed=1, rejected="mismatched")
    assert all(p.rejected in {c[-1]["content"] for c in convs} for p in mismatched)


def test_corrupted_answers_go_wrong_in_each_way_a_policy_does():
    answers = [f"대답 번호 {i} 입니다" for i in range(40)]
    convs = [[{"role": "user", "content": f"질문 {i}"}, {"role": "assistant", "content": a}] for i, a in enumerate(answers)]
    kinds = set()
    for p in make_pairs(convs, seed=0, rejected="corrupted") + make_pairs(convs, seed=1, rejected="corrupted"):
        words, bad = p.chosen.split(), p.rejected.split()
        if p.rejected.startswith(p.chosen + " ") and p.rejected[len(p.chosen) + 1 :] in answers:
            kinds.add("padded")  # another question's answer appended
        elif bad[: len(words)] == words and len(set(bad[len(words) :])) == 1 and 3 <= len(bad) - len(words) <= 6:
            kinds.add("repeated")  # one of its words said over and over
        elif sorted(bad) == sorted(words):
            kinds.add("shuffled")
        elif p.chosen.startswith(p.rejected) and len(p.rejected) < len(p.chosen):
            kinds.add("cut")
        else:
            kinds.add("mismatched")  # the fallback when the drawn corruption leaves the answer as it is
    assert {"padded", "repeated", "shuffled", "cut"} <= kinds


def test_encode_answer_marks_answer_and_end_marker(tiny_tokenizer, tiny_checkpoint):
    from hangpt.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    template = get_template("default")
    prepare_tokenizer(template, ckpt.tokenizer, ckpt.model)
    tok = ckpt.tokenizer
    ids, mask = encode_answer(template, tok, "오늘 날씨", "좋네요", 128)
    _, labels = template.encode_example(tok, [{"role": "user", "content": "오늘 날씨"},
                                              {"role": "assistant", "content": "좋네요"}])
    assert mask == [int(x != IGNORE_INDEX) for x in labels]
    assert ids[-1] == tok.eos_id and mask[-1] == 1
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "좋네요" + tok.eos_token
    short, short_mask = encode_answer(template, tok, "오늘 날씨 " * 30, "좋네요", 16)
    assert len(short) == 16 and short[-1] == tok.eos_id and sum(short_mask) == sum(mask)
