"""SFT: answer-only loss masks, truncation, the loss itself, template round trip, a tiny run end to end."""

import json

import pytest
import torch
import torch.nn.functional as F

from hangpt.checkpoint import load_checkpoint
from hangpt.cli import main
from hangpt.templates import IGNORE_INDEX, get_template, prepare_tokenizer
from hangpt.train.sft import answer_loss, collate, encode_conversations, fit_length, holdout_split

QA = [{"role": "user", "content": "오늘 날씨 어때?"}, {"role": "assistant", "content": "정말 좋네요."}]


@pytest.mark.parametrize("name", ["default", "kogpt2", "alpaca-ko"])
def test_labels_cover_answer_and_end_token_only(tiny_tokenizer, tiny_checkpoint, name):
    ckpt = load_checkpoint(tiny_checkpoint)
    template = get_template(name)
    prepare_tokenizer(template, ckpt.tokenizer, ckpt.model)
    tok = ckpt.tokenizer
    (ids, labels), = encode_conversations([QA], template, tok, 4096).examples
    prompt = template.encode_prompt(tok, QA[:1])
    assert ids[: len(prompt)] == prompt  # training text starts with exactly the generation prompt
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    answer = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert labels[len(prompt):] == ids[len(prompt):]
    assert tok.decode(answer).startswith("정말 좋네요.")
    assert tok.eos_id in answer  # the end token is trained on, so generation learns to stop


def test_multi_turn_labels_each_answer(tiny_tokenizer):
    template = get_template("kogpt2")
    conv = QA + [{"role": "user", "content": "주말에 뭐 해?"}, {"role": "assistant", "content": "영화를 봤어요."}]
    ids, labels = template.encode_example(tiny_tokenizer, conv)
    answered = tiny_tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert "정말 좋네요." in answered and "영화를 봤어요." in answered and "주말" not in answered


def test_fit_length_cuts_prompt_keeps_answer_or_drops():
    ids, labels = list(range(10)), [IGNORE_INDEX] * 6 + [6, 7, 8, 9]
    assert fit_length(ids, labels, 10) == (ids, labels)
    assert fit_length(ids, labels, 6) == (ids[-6:], labels[-6:])
    assert fit_length(ids, labels, 5) == (ids[-5:], labels[-5:])  # last prompt token predicts the answer start
    assert fit_length(ids, labels, 4) is None


def test_encode_counts_truncated_and_dropped(tiny_tokenizer):
    template = get_template("kogpt2")
    long_q = [{"role": "user", "content": "오늘 날씨 " * 40}, {"role": "assistant", "content": "네."}]
    long_a = [{"role": "user", "content": "네?"}, {"role": "assistant", "content": "오늘 날씨 " * 40}]
    enc = encode_conversations([QA, long_q, long_a], template, tiny_tokenizer, 32)
    assert (len(enc.examples), enc.truncated, enc.dropped) == (2, 1, 1)
    assert all(len(ids) <= 32 for ids, _ in enc.examples)


def test_answer_loss_matches_full_cross_entropy(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint).model
    examples = [([5, 6, 7, 8, 9], [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9]), ([3, 4, 5], [IGNORE_INDEX, 4, 5])]
    ids, labels = collate(examples, pad_id=1)
    assert ids[1].tolist() == [3, 4, 5, 1, 1] and labels[1].tolist() == [IGNORE_INDEX, 4, 5, IGNORE_INDEX, IGNORE_INDEX]
    with torch.no_grad():
        loss, n = answer_loss(model, ids, labels)
        logits = model(ids).logits[:, :-1]
        ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
        # right padding needs no mask: each row's real tokens give the same logits alone
        alone = model(ids[1:, :3]).logits
    assert n == 5
    assert abs(loss.item() - ref.item()) < 1e-5
    assert torch.allclose(alone[0], model(ids).logits[1, :3], atol=1e-5)


def test_holdout_split_is_seeded():
    a = holdout_split(list(range(100)), 0.1, seed=1)
    assert a == holdout_split(list(range(100)), 0.1, seed=1)
    assert len(a[1]) == 10 and sorted(a[0] + a[1]) == list(range(100))


def _write_qa(path, pairs, repeat):
    rows = ["Q,A,label"] + [f"{q},{a},0" for q, a in pairs] * repeat
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_sft_cli_writes_chat_checkpoint_and_resume_needs_state(tmp_path, tiny_checkpoint, capsys):
    data = tmp_path / "qa.csv"
    _write_qa(data, [("안녕", "반가워요."), ("배고파", "김치찌개를 먹었어요.")], 4)
    out = tmp_path / "sft"
    with pytest.raises(SystemExit) as e:
        main(["sft", "--model", str(tiny_checkpoint), "--data", str(data), "--out", str(out), "--template", "kogpt2",
              "--max-steps", "3", "--batch-size", "2", "--val-fraction", "0.25", "--json"])
    assert e.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and "val_loss" in summary["final"]
    ckpt = load_checkpoint(out)
    assert ckpt.meta["stage"] == "sft" and ckpt.meta["chat_template"] == get_template("kogpt2").to_dict()
    assert ckpt.tokenizer.token_to_id("<usr>") is not None
    assert ckpt.model.config.vocab_size == ckpt.tokenizer.vocab_size
    assert not (out / "train_state.pt").exists()
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"].startswith("{{ bos_token }}{%")
    with pytest.raises(SystemExit) as e:
        main(["sft", "--data", str(data), "--out", str(out), "--max-steps", "3", "--resume"])
    assert e.value.code == 2
    assert "already finished, nothing to resume" in capsys.readouterr().err


def test_sft_bad_data_is_one_line_error(tmp_path, tiny_checkpoint, capsys):
    data = tmp_path / "qa.csv"
    data.write_text("Q,A\n안녕,\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["sft", "--model", str(tiny_checkpoint), "--data", str(data), "--out", str(tmp_path / "o"), "--max-steps", "1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith("line 2: field 'A' is empty")


@pytest.mark.parametrize("name", ["default", "kogpt2", "alpaca-ko"])
def test_autotokenizer_chat_template_renders_the_same_text(tmp_path, tiny_checkpoint, name):
    transformers = pytest.importorskip("transformers")
    ckpt = load_checkpoint(tiny_checkpoint)
    template = get_template(name)
    prepare_tokenizer(template, ckpt.tokenizer, ckpt.model)
    ckpt.tokenizer.chat_template = template.to_jinja()
    ckpt.tokenizer.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    conv = [{"role": "system", "content": "짧게"}] + QA + [{"role": "user", "content": "주말에 뭐 해?"}]
    for messages, gen in ((QA, False), (conv, True), (conv[1:], True)):
        assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == \
            template.render(messages, ckpt.tokenizer, add_generation_prompt=gen)
