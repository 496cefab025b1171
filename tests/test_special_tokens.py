"""Special tokens survive every stage: a folder's bos/eos/unk/pad/mask and added tokens, as
`AutoTokenizer` reports them, are the same after hangpt loads and saves it (KoGPT2's layout, with
or without tokenizer_config.json; Llama 2 and Llama 3/Qwen style tokenizers), and the sft -> rm ->
ppo -> dpo pipeline keeps them in every folder it writes."""

from __future__ import annotations

import json

import pytest

from hangpt.cli import main
from hangpt.tokenizer import Tokenizer
from tokenizer_folders import KOGPT2_ROLES, byte_level_tokenizer, kogpt2_folder, llama2_tokenizer

transformers = pytest.importorskip("transformers")

KOGPT2_IDS = {"bos_token": 0, "eos_token": 1, "pad_token": 3, "unk_token": 5, "mask_token": 6}
ROLES = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")
TEXTS = ["<s><usr>안녕하세요<sys>저는 한국어를</s>", "오늘 날씨가 정말 좋네요 Hello world 😀 ÷", "  두 칸  띄어쓰기\n줄바꿈"]


def reported(folder) -> dict:
    """What AutoTokenizer says: each role's token and id, and the additional special tokens."""
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    roles = {k: (getattr(hf, k), getattr(hf, k + "_id")) for k in ROLES if getattr(hf, k) is not None}
    return {"roles": roles, "extra": list(hf.extra_special_tokens or []), "size": len(hf)}


KOGPT2_REPORT = {"roles": {k: (KOGPT2_ROLES[k], KOGPT2_IDS[k]) for k in ROLES}, "extra": [], "size": 51200}


@pytest.mark.parametrize("with_config", [True, False])
def test_kogpt2_layout_survives_load_and_save(tmp_path, with_config):
    base = kogpt2_folder(tmp_path / "base", with_config)
    tok = Tokenizer.load(base)
    assert (tok.bos_token, tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id, tok.mask_id) == ("<s>", 0, 1, 5, 3, 6)
    out = tmp_path / "out"
    out.mkdir()
    tok.save(out)
    assert reported(out) == KOGPT2_REPORT
    if with_config:  # the files come back as they were, but for model_max_length
        assert reported(base) == KOGPT2_REPORT
        assert json.loads((out / "special_tokens_map.json").read_text()) == KOGPT2_ROLES
    hf = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert tok.encode(text) == hf(text)["input_ids"]
        assert tok.decode(tok.encode(text)) == hf.decode(hf(text)["input_ids"])


def test_config_ids_name_the_roles_when_only_tokenizer_json_has_them(tmp_path):
    """KoGPT2's hub folder: config.json's ids decide, then the conventional names."""
    base = kogpt2_folder(tmp_path / "base", with_config=False)
    (base / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 3}))
    tok = Tokenizer.load(base)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("</s>", "</s>", "<pad>", "<unk>")


def test_verbatim_config_with_added_role_tokens_and_template(tmp_path):
    """Only what hangpt changed is written: added role markers become additional special tokens,
    the chat template and model_max_length are set; every other key stays as the base had it."""
    base = byte_level_tokenizer(tmp_path / "base", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
                                 "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]},
                                extra_config={"errors": "replace", "split_special_tokens": False})
    before = reported(base)
    tok = Tokenizer.load(base)
    assert tok.add_special_tokens(["<|user|>", "<|im_end|>"]) == ["<|user|>"]
    tok.chat_template = "{{ messages[0]['content'] }}"
    out = tmp_path / "out"
    out.mkdir()
    tok.save(out, model_max_length=128)
    config = json.loads((out / "tokenizer_config.json").read_text())
    base_config = json.loads((base / "tokenizer_config.json").read_text())
    changed = {k for k in config if config[k] != base_config.get(k)}
    assert changed == {"additional_special_tokens", "chat_template", "model_max_length"}
    after = reported(out)
    assert after["roles"] == before["roles"] and after["extra"] == before["extra"] + ["<|user|>"]
    assert tok.additional_special_tokens == ["<|im_start|>", "<|im_end|>", "<|user|>"]


@pytest.mark.parametrize("add_bos_token", [None, True, False])
def test_sentencepiece_style_tokenizer_encodes_as_autotokenizer(tmp_path, add_bos_token):
    """Llama 2 / Mistral style: the post-processor's <s>, byte fallback for an emoji, and spaces."""
    base = llama2_tokenizer(tmp_path / "base", add_bos_token)
    tok = Tokenizer.load(base)
    hf = transformers.AutoTokenizer.from_pretrained(base)
    for text in TEXTS:
        ids = hf(text)["input_ids"]
        assert tok.encode(text) == ids and ids[0] == tok.bos_id == 1
        assert tok.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == hf.decode(ids) and tok.decode(ids, True) == hf.decode(ids, skip_special_tokens=True)
    out = tmp_path / "out"
    out.mkdir()
    tok.save(out)
    assert reported(out) == reported(base)
    assert transformers.AutoTokenizer.from_pretrained(out)(TEXTS[1])["input_ids"] == hf(TEXTS[1])["input_ids"]


def test_byte_level_tokenizer_with_added_tokens(tmp_path):
    """Llama 3 / Qwen style: byte-level BPE with ChatML markers; chat_template.jinja kept as a file."""
    base = byte_level_tokenizer(tmp_path / "base", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    (base / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    tok = Tokenizer.load(base)
    hf = transformers.AutoTokenizer.from_pretrained(base)
    text = "<|im_start|>user\n안녕하세요 😀<|im_end|>\n"
    assert tok.encode(text) == hf(text)["input_ids"] and tok.decode(tok.encode(text)) == text
    assert tok.eos_id == hf.eos_token_id and tok.bos_token is None
    out = tmp_path / "out"
    out.mkdir()
    tok.save(out)
    assert (out / "chat_template.jinja").read_text() == (base / "chat_template.jinja").read_text()
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    assert reported(out) == reported(base)


def _run(capsys, *args) -> dict:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args] + ["--json"])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return json.loads(out.out)


@pytest.mark.parametrize("with_config", [True, False])
def test_every_stage_keeps_the_base_special_tokens(tmp_path, capsys, with_config):
    """A KoGPT2-layout folder (vocab 51200, a random tiny GPT-2 saved by transformers) through
    sft -> rm -> ppo -> dpo: every folder's AutoTokenizer has exactly the base's special tokens."""
    base = kogpt2_folder(tmp_path / "base", with_config)
    config = transformers.GPT2Config(vocab_size=51200, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=1, pad_token_id=3)
    transformers.GPT2LMHeadModel(config).save_pretrained(base)
    qa = [("배고파", "밥 먹으러 가요"), ("날씨 어때", "오늘 날씨가 정말 좋네요"), ("뭐 해", "한국어를 공부하고 있어요")] * 4
    (tmp_path / "qa.csv").write_text("Q,A,label\n" + "".join(f"{q},{a},0\n" for q, a in qa), encoding="utf-8")
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps({"prompt": q, "chosen": a, "rejected": "싫어"},
                                                             ensure_ascii=False) + "\n" for q, a in qa), encoding="utf-8")
    (tmp_path / "prompts.txt").write_text("배고파\n뭐 해\n", encoding="utf-8")
    steps = ["--max-steps", 2, "--batch-size", 2]
    _run(capsys, "sft", "--model", base, "--data", tmp_path / "qa.csv", "--out", tmp_path / "sft", "--template",
         "kogpt2", *steps)
    _run(capsys, "rm", "train", "--model", tmp_path / "sft", "--data", tmp_path / "prefs.jsonl", "--out",
         tmp_path / "rm", *steps)
    _run(capsys, "ppo", "--model", tmp_path / "sft", "--reward-model", tmp_path / "rm", "--prompts",
         tmp_path / "prompts.txt", "--out", tmp_path / "ppo", "--max-new-tokens", 3, "--ppo-epochs", 1, *steps)
    _run(capsys, "dpo", "--model", tmp_path / "sft", "--data", tmp_path / "prefs.jsonl", "--out", tmp_path / "dpo",
         *steps)
    for stage in ("sft", "rm", "ppo", "dpo"):
        assert reported(tmp_path / stage) == KOGPT2_REPORT, stage
        assert transformers.AutoTokenizer.from_pretrained(tmp_path / stage)(TEXTS[0])["input_ids"] == \
            Tokenizer.load(base).encode(TEXTS[0])
