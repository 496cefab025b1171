"""Classification: NSMC-style reader, GPT + head training, eval/predict CLI, transformers parity."""

import json
import random

import pytest
import torch

from conftest import SHARED_DATA
from hangpt.cli import main
from hangpt.data.classification import read_labeled_texts
from hangpt.errors import InputError
from hangpt.train.classify import encode_texts, load_classifier


def test_nsmc_tsv_quotes_and_empty_documents(tmp_path):
    f = tmp_path / "ratings.txt"
    f.write_text('id\tdocument\tlabel\n1\t"따옴표로 시작하는 리뷰\t1\n2\t\t0\n3\t그냥 "그래요"\t0\n', encoding="utf-8")
    rows = read_labeled_texts(f)
    assert rows.texts == ['"따옴표로 시작하는 리뷰', '그냥 "그래요"']
    assert rows.labels == ["1", "0"] and rows.skipped_empty == 1


def test_csv_and_custom_columns(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('text,sentiment\n"좋아요, 정말",pos\n', encoding="utf-8")
    rows = read_labeled_texts(f, text_column="text", label_column="sentiment")
    assert (rows.texts, rows.labels) == (["좋아요, 정말"], ["pos"])


@pytest.mark.parametrize("text, message", [
    ("id\treview\tlabel\n1\tx\t0\n", "line 1: no column 'document'"),
    ("id\tdocument\tlabel\n1\tx\t0\n2\ty\n", "line 3: expected 3 fields, found 2"),
    ("id\tdocument\tlabel\n1\tx\t\n", "line 2: field 'label' is empty"),
    ("", "file is empty"),
])
def test_bad_tsv_names_line(tmp_path, text, message):
    f = tmp_path / "bad.tsv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_labeled_texts(f)


def test_tsv_blocks_split_whole_or_row_by_row_read_the_same(tmp_path, monkeypatch):
    """Blocks of whole rows are split in one call, blocks with a blank line row by row: the same
    texts either way, and an empty label in a late block is named at its line."""
    from hangpt.data import text

    rows = [f"{i}\t {'리뷰 ' * (i % 4)}{i} \t{i % 2}" for i in range(200)]
    rows[50] = rows[120] = "  "
    f = tmp_path / "r.tsv"
    f.write_text("id\tdocument\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    expected = [row.split("\t")[1].strip() for row in rows if row.strip()]
    for block in (1 << 20, 7, 64):  # the last: the late block is whole rows
        monkeypatch.setattr(text, "BLOCK_BYTES", block)
        assert read_labeled_texts(f).texts == expected
    rows[150] = "150\t아무개\t "
    f.write_text("id\tdocument\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 152: field 'label' is empty"):
        read_labeled_texts(f)


def _sentiment_file(path, n, seed):
    rng = random.Random(seed)
    subjects = ["영화", "배우", "음악", "이야기", "연기"]
    lines = ["id\tdocument\tlabel"]
    for i in range(n):
        label = rng.choice(["neg", "pos"])
        word = "좋아요" if label == "pos" else "싫어요"
        lines.append(f"{i}\t{rng.choice(subjects)} 정말 {word}\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory, tiny_checkpoint):
    tmp = tmp_path_factory.mktemp("cls")
    _sentiment_file(tmp / "train.tsv", 200, 0)
    _sentiment_file(tmp / "test.tsv", 60, 1)
    with pytest.raises(SystemExit) as e:
        main(["classify", "train", "--model", str(tiny_checkpoint), "--data", str(tmp / "train.tsv"),
              "--out", str(tmp / "clf"), "--max-steps", "40", "--batch-size", "16", "--lr", "3e-3",
              "--val-fraction", "0.1", "--eval-every", "20"])
    assert e.value.code == 0
    return tmp


def test_train_eval_predict(trained_classifier, capsys):
    capsys.readouterr()
    tmp = trained_classifier
    meta = json.loads((tmp / "clf" / "hangpt.json").read_text())
    assert meta["stage"] == "classify" and meta["head"] == {"type": "classification", "labels": ["neg", "pos"]}
    with pytest.raises(SystemExit):
        main(["classify", "eval", "--model", str(tmp / "clf"), "--data", str(tmp / "test.tsv"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] >= 0.9 and result["n"] == 60
    assert sum(map(sum, result["confusion"])) == 60
    with pytest.raises(SystemExit):
        main(["classify", "eval", "--model", str(tmp / "clf"), "--data", str(tmp / "test.tsv")])
    shown = capsys.readouterr().out
    assert "accuracy" in shown and "true \\ predicted" in shown
    with pytest.raises(SystemExit):
        main(["classify", "predict", "--model", str(tmp / "clf"), "--text", "배우 정말 좋아요"])
    line = capsys.readouterr().out.strip()
    assert line.endswith("label pos: 배우 정말 좋아요") and "%" in line


def test_eval_rejects_unknown_label(trained_classifier, tmp_path, capsys):
    f = tmp_path / "odd.tsv"
    f.write_text("id\tdocument\tlabel\n1\t영화\tmaybe\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["classify", "eval", "--model", str(trained_classifier / "clf"), "--data", str(f)])
    assert e.value.code == 2 and "label 'maybe' is not one the classifier knows" in capsys.readouterr().err


def test_predict_needs_a_head(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as e:
        main(["classify", "predict", "--model", str(tiny_checkpoint), "--text", "x"])
    assert e.value.code == 2 and "no classification head" in capsys.readouterr().err


def test_transformers_sequence_classification_gives_same_logits(trained_classifier):
    transformers = pytest.importorskip("transformers")
    path = trained_classifier / "clf"
    clf = load_classifier(path)
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(path).eval()
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    seqs, _ = encode_texts(clf.tokenizer, ["영화 정말 좋아요", "싫어요", "이야기 연기 음악 정말 싫어요"], 64)
    width = max(map(len, seqs))
    pad = clf.tokenizer.pad_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    lengths = torch.tensor([len(s) for s in seqs])
    with torch.no_grad():
        ours = clf.model(ids, lengths)
        ref = hf(ids).logits
    assert (ours - ref).abs().max().item() < 1e-4


def test_real_nsmc_reader():
    path = SHARED_DATA / "nsmc" / "ratings_test.txt.gz"
    if not path.exists():
        pytest.skip("shared NSMC files not present (../shared/data)")
    rows = read_labeled_texts(path)
    assert len(rows.texts) + rows.skipped_empty == 50000 and set(rows.labels) == {"0", "1"}


def test_auxiliary_lm_loss_is_next_token_cross_entropy_over_real_tokens(tiny_checkpoint):
    """GPT-1's auxiliary objective: mean next-token loss over each text's own tokens, pads excluded."""
    from hangpt.checkpoint import load_checkpoint
    from hangpt.train.classify import SequenceClassifier, collate

    gpt = load_checkpoint(tiny_checkpoint).model.eval()
    clf = SequenceClassifier(gpt, 2)
    seqs = [[5, 9, 13, 2, 7], [4, 8], [11]]
    ids, lengths = collate(seqs, pad_id=0)
    logits, lm = clf(ids, lengths, lm_loss=True)
    torch.testing.assert_close(logits, clf(ids, lengths))
    losses = []
    for s in seqs:
        out = gpt(torch.tensor([s])).logits[0]
        losses += [torch.nn.functional.cross_entropy(out[i : i + 1], torch.tensor([s[i + 1]])) for i in range(len(s) - 1)]
    torch.testing.assert_close(lm, torch.stack(losses).mean())


def test_dropout_is_applied_while_training_and_recorded(tiny_checkpoint):
    from hangpt.checkpoint import load_checkpoint

    gpt = load_checkpoint(tiny_checkpoint).model
    gpt.set_dropout(0.3)
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    gpt.train()
    torch.manual_seed(0)
    a = gpt(ids).logits
    assert not torch.equal(a, gpt(ids).logits)  # random masks
    gpt.eval()
    assert torch.equal(gpt(ids).logits, gpt(ids).logits)
    assert gpt.config.to_hf_dict()["resid_pdrop"] == 0.3
