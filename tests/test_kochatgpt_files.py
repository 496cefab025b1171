"""KoChatGPT's real file shapes (SFT array in a .jsonl with a BOM, RM rankings, 12,000 PPO prompts
with a few empty ones) load; empty records are skipped and their count printed, never fatal."""

import json

import pytest

from hangpt.cli import main
from hangpt.data.conversations import read_conversations
from hangpt.data.preferences import read_preferences, read_prompts
from hangpt.errors import InputError


def _array_with_bom(path, records):
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(records, ensure_ascii=False, indent=2).encode())
    return path


def _ppo_prompts(tmp_path, n=12000, empty=(6330, 9000, 11999)):
    records = [{"prompt": "" if i in empty else f"질문 {i}"} for i in range(n)]
    return _array_with_bom(tmp_path / "kochatgpt_3_PPO.jsonl", records)


def test_ppo_prompt_file_skips_and_counts_empty_prompts(tmp_path):
    prompts = read_prompts(_ppo_prompts(tmp_path))
    assert len(prompts) == 11997 and prompts[-1] == "질문 11998" and prompts.skipped == 3
    assert prompts.skipped_note("prompts").endswith("3 prompts with an empty text skipped, the first at "
                                                    f"{tmp_path / 'kochatgpt_3_PPO.jsonl'}: record 6331)")


def test_sft_and_rm_files_skip_empty_records(tmp_path):
    sft = _array_with_bom(tmp_path / "kochatgpt_1_SFT.jsonl", [
        {"prompt": "불고기용 고기 한우에요?", "completion": "'저는 AI입니다.", "tokens": 193},
        {"prompt": "빈 답", "completion": "", "tokens": 0},
        {"prompt": "  ", "completion": "빈 질문", "tokens": 3},
        {"prompt": "쿠키 만드는 법", "completion": "'밀가루를 준비하세요.", "tokens": 40}])
    conversations = read_conversations(sft)
    assert [c[0]["content"] for c in conversations] == ["불고기용 고기 한우에요?", "쿠키 만드는 법"]
    assert conversations.skipped == 2 and conversations.first_skipped.endswith("record 2")

    rm = _array_with_bom(tmp_path / "kochatgpt_2_RM.jsonl", [
        {"prompt": "q", "completion_0": "b", "completion_1": "a", "completion_2": "c", "ranking": [1, 0, 2]},
        {"prompt": "q2", "completion_0": "", "completion_1": "a", "completion_2": "c", "ranking": [2, 0, 1]}])
    pairs = read_preferences(rm)
    assert len(pairs) == 3 and pairs.skipped == 1


def test_a_file_of_only_empty_records_is_one_error(tmp_path):
    path = _array_with_bom(tmp_path / "p.jsonl", [{"prompt": ""}, {"prompt": " "}])
    with pytest.raises(InputError, match=r"no prompts in this file \(2 prompts with an empty text skipped, "
                                         r"the first at .*record 1\)"):
        read_prompts(path)


def test_wrong_shape_still_names_the_record(tmp_path):
    path = _array_with_bom(tmp_path / "p.jsonl", [{"prompt": "a"}, {"text": "b"}])
    with pytest.raises(InputError, match='record 2: expected an object with a "prompt" field'):
        read_prompts(path)


def _run(args, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_prints_the_skipped_count(tmp_path, tiny_checkpoint, capsys):
    sft = _array_with_bom(tmp_path / "sft.jsonl", [{"prompt": "안녕", "completion": "반가워요"},
                                                    {"prompt": "배고파", "completion": ""}] * 4)
    code, _, err = _run(["sft", "--model", tiny_checkpoint, "--data", sft, "--out", tmp_path / "sft", "--max-steps",
                         "1", "--batch-size", "2", "--no-progress"], capsys)
    assert code == 0 and "4 conversations from" in err and "4 records with an empty text skipped" in err

    rm = _array_with_bom(tmp_path / "rm.jsonl", [
        {"prompt": "q", "completion_0": "b", "completion_1": "a", "completion_2": "c", "ranking": [1, 0, 2]},
        {"prompt": "", "completion_0": "b", "completion_1": "a", "completion_2": "c", "ranking": [1, 0, 2]}] * 2)
    code, _, err = _run(["rm", "train", "--model", tiny_checkpoint, "--data", rm, "--out", tmp_path / "rm",
                         "--max-steps", "1", "--batch-size", "2", "--no-progress"], capsys)
    assert code == 0 and "6 preference pairs from" in err and "2 records with an empty text skipped" in err

    prompts = _ppo_prompts(tmp_path, n=40, empty=(5, 17))
    code, _, err = _run(["ppo", "--model", tiny_checkpoint, "--reward-model", tmp_path / "rm", "--prompts", prompts,
                         "--out", tmp_path / "ppo", "--max-steps", "1", "--batch-size", "2", "--max-new-tokens", "3",
                         "--ppo-epochs", "1", "--no-progress"], capsys)
    assert code == 0 and "38 prompts from" in err and "2 prompts with an empty text skipped, the first at" in err
    assert "record 6)" in err
