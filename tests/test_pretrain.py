"""Token shards, pretraining, evaluation (bits per byte) and the pretrain/eval commands."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import make_corpus
from hangpt.cli import cli
from hangpt.data.shards import TokenWindows, build_shards, iter_corpus
from hangpt.errors import InputError


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(make_corpus(200)) + "\n", encoding="utf-8")
    return path


def run_cli(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


# -- shards ------------------------------------------------------------------------------------


def test_shards_split_every_nth_document_and_count_bytes(tmp_path, corpus, tiny_tokenizer):
    shards = build_shards([corpus], tiny_tokenizer, tmp_path / "cache", val_fraction=0.1)
    docs = corpus.read_text(encoding="utf-8").splitlines()
    val_docs = docs[9::10]
    info = shards.info
    assert info["dtype"] == "uint16"
    assert (info["train"]["documents"], info["val"]["documents"]) == (180, 20)
    assert info["val"]["bytes"] == sum(len(d.encode()) + 1 for d in val_docs)
    val = shards.tokens("val")
    assert len(val) == info["val"]["tokens"]
    eos = tiny_tokenizer.eos_id
    assert val[0] == eos
    assert tiny_tokenizer.decode(val[1:]).split("<|endoftext|>")[0] == val_docs[0]
    # a prefix of whole documents, with their exact byte count
    tokens, n_bytes = shards.val_prefix(50)
    n_docs = int((np.asarray(tokens) == eos).sum())
    assert tokens[0] == eos and 1 <= n_docs < 20
    assert n_bytes == sum(len(d.encode()) + 1 for d in val_docs[:n_docs])


def test_shards_are_cached_by_content(tmp_path, corpus, tiny_tokenizer):
    a = build_shards([corpus], tiny_tokenizer, tmp_path / "cache", val_fraction=0.1)
    stamp = (a.folder / "train.bin").stat().st_mtime_ns
    b = build_shards([corpus], tiny_tokenizer, tmp_path / "cache", val_fraction=0.1)
    assert b.folder == a.folder and (b.folder / "train.bin").stat().st_mtime_ns == stamp
    with corpus.open("a", encoding="utf-8") as f:
        f.write("새로운 문장이 추가되었습니다.\n")
    c = build_shards([corpus], tiny_tokenizer, tmp_path / "cache", val_fraction=0.1)
    assert c.folder != a.folder


def test_gz_and_tsv_column(tmp_path, tiny_tokenizer):
    with gzip.open(tmp_path / "reviews.txt.gz", "wt", encoding="utf-8") as f:
        f.write('id\tdocument\tlabel\n1\t"따옴표가 하나뿐인 리뷰\t0\n2\t\t1\n3\t정말 재미있어요\t1\n')
    (tmp_path / "plain.txt").write_text("\ufeff첫 줄\n\n둘째 줄\n", encoding="utf-8")
    files = [tmp_path / "reviews.txt.gz", tmp_path / "plain.txt"]
    assert list(iter_corpus(files, "document")) == ['"따옴표가 하나뿐인 리뷰', "정말 재미있어요", "첫 줄", "둘째 줄"]
    with pytest.raises(InputError, match="no input file has a header"):
        list(iter_corpus([tmp_path / "plain.txt"], "review"))


def test_too_small_for_validation(tmp_path, tiny_tokenizer):
    (tmp_path / "one.txt").write_text("한 줄뿐\n", encoding="utf-8")
    with pytest.raises(InputError, match="too few to hold out"):
        build_shards([tmp_path / "one.txt"], tiny_tokenizer, tmp_path / "cache", val_fraction=0.1)


def test_windows_resume_exactly_and_differ_by_rank():
    tokens = np.arange(1000, dtype=np.uint16)
    a = TokenWindows(tokens, 4, 16, seed=1)
    first = [a.next_batch() for _ in range(3)]
    assert first[0].shape == (4, 17) and first[0].dtype == torch.int64
    assert torch.equal(first[0][:, 1:] - first[0][:, :-1], torch.ones(4, 16, dtype=torch.int64))
    b = TokenWindows(tokens, 4, 16, seed=1)
    b.load_state_dict({"index": 2})
    assert torch.equal(b.next_batch(), first[2])
    other_rank = TokenWindows(tokens, 4, 16, seed=1, rank=1, world_size=2)
    assert not torch.equal(other_rank.next_batch(), first[0])
    with pytest.raises(InputError, match="fewer than one window"):
        TokenWindows(tokens[:10], 4, 16)


# -- scoring -----------------------------------------------------------------------------------


def test_bits_per_byte_matches_a_direct_computation(tiny_checkpoint, corpus):
    from hangpt.checkpoint import load_checkpoint
    from hangpt.train.pretrain import evaluate_text

    ckpt = load_checkpoint(tiny_checkpoint)
    docs = corpus.read_text(encoding="utf-8").splitlines()[:30]
    small = corpus.with_name("small.txt")
    small.write_text("\n".join(docs) + "\n", encoding="utf-8")
    result = evaluate_text(ckpt.model, ckpt.tokenizer, [small], batch_size=3)
    eos = ckpt.tokenizer.eos_id
    stream = [t for d in docs for t in [eos, *ckpt.tokenizer.encode(d)]]
    ctx = ckpt.model.config.context_length
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(stream) - 1, ctx):
            w = torch.tensor(stream[s : s + ctx + 1])[None]
            logits = ckpt.model(w[:, :-1]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, w[0, 1:], reduction="sum").item()
    n_bytes = sum(len(d.encode()) + 1 for d in docs)
    assert result["tokens"] == len(stream) - 1 and result["bytes"] == n_bytes
    assert result["bits_per_byte"] == pytest.approx(total / math.log(2) / n_bytes, rel=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(total / (len(stream) - 1)), rel=1e-4)


def test_eval_command_json(tiny_checkpoint, corpus):
    out = run_cli("eval", "--model", tiny_checkpoint, "--data", corpus, "--json").output
    result = json.loads(out)
    assert set(result) >= {"loss", "perplexity", "bits_per_byte", "tokens"}
    assert result["loss"] == pytest.approx(math.log(result["perplexity"]), rel=1e-6)


# -- pretrain command --------------------------------------------------------------------------


def test_pretrain_from_a_new_tokenizer_and_preset_shape(tmp_path, corpus, monkeypatch):
    """No --tokenizer: one is trained on the data and saved with the model."""
    from hangpt.models import gpt2 as model_module

    monkeypatch.setitem(model_module.PRESETS, "test", dict(vocab_size=300, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    out = tmp_path / "run"
    result = run_cli("pretrain", "--data", corpus, "--out", out, "--arch", "gpt2", "--preset", "test", "--max-steps", 4,
                     "--batch-size", 4, "--eval-every", 2, "--val-fraction", 0.1, "--no-progress", "--json")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["tokens"] == 4 * 4 * 32
    assert "held_out_bytes_per_token" in summary["tokenizer"]
    assert "val_bpb" in summary["final"]
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "train_state.pt").exists()
    meta = json.loads((out / "hangpt.json").read_text())
    assert meta["stage"] == "pretrain" and meta["training"]["steps"] == 4
    config = json.loads((out / "config.json").read_text())
    assert config["n_layer"] == 1 and config["vocab_size"] <= 300


def test_vocab_size_sizes_the_new_tokenizer_and_the_model(tmp_path, corpus, monkeypatch):
    """--vocab-size overrides the preset's vocabulary: the tokenizer trained on the data and the
    model's embedding follow it; it cannot resize an existing tokenizer."""
    from hangpt.models import gpt2 as model_module

    monkeypatch.setitem(model_module.PRESETS, "test", dict(vocab_size=2000, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    out = tmp_path / "run"
    run_cli("pretrain", "--data", corpus, "--out", out, "--arch", "gpt2", "--preset", "test", "--vocab-size", 320,
            "--max-steps", 1, "--batch-size", 2, "--no-progress")
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    assert 256 < len(tokenizer["model"]["vocab"]) <= 320
    assert json.loads((out / "config.json").read_text())["vocab_size"] <= 320
    r = CliRunner().invoke(cli, ["pretrain", "--data", str(corpus), "--out", str(tmp_path / "b"), "--tokenizer", str(out),
                                 "--vocab-size", "320", "--max-steps", "1", "--no-progress"])
    assert "--vocab-size sizes a new tokenizer" in str(r.exception)


def test_pretrain_refuses_to_clobber_or_resume_wrong_things(tmp_path, corpus, tiny_checkpoint):
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(corpus), "--model", str(tiny_checkpoint), "--out", str(out), "--max-steps", "2",
            "--batch-size", "2", "--max-length", "16", "--no-progress"]
    runner = CliRunner()
    r = runner.invoke(cli, args + ["--resume"])
    assert r.exit_code != 0 and "no checkpoint with a training state" in str(r.exception)
    run_cli(*args)
    r = runner.invoke(cli, args)
    assert "already holds a finished checkpoint" in str(r.exception)
    r = runner.invoke(cli, args + ["--resume"])
    assert "already finished" in str(r.exception)
    run_cli(*args, "--overwrite")
    r = runner.invoke(cli, args + ["--max-length", "999", "--overwrite"])
    assert "longer than the model's context" in str(r.exception)
