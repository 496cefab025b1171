"""Checkpoint folders: round trip, atomic saves, recovery of an interrupted swap, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from hangpt.checkpoint import (
    drop_train_state,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
    write_file_atomic,
)
from hangpt.errors import InputError
from hangpt.models import GPT, GPTConfig


def _model(tok, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                         bos_token_id=tok.eos_id, eos_token_id=tok.eos_id))


def test_round_trip_keeps_weights_meta_and_train_state(tmp_path, tiny_tokenizer):
    model = _model(tiny_tokenizer)
    state = {"step": 7, "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "c", model, tiny_tokenizer, {"stage": "pretrain", "note": "한국어"},
                    train_state=state, files={"report.txt": b"hi"})
    ckpt = load_checkpoint(tmp_path / "c")
    ids = torch.randint(0, tiny_tokenizer.vocab_size, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(ids).logits, model.eval()(ids).logits)
    assert ckpt.meta["stage"] == "pretrain" and ckpt.meta["note"] == "한국어"
    assert ckpt.tokenizer.encode("안녕하세요") == tiny_tokenizer.encode("안녕하세요")
    assert load_train_state(tmp_path / "c")["step"] == 7
    assert (tmp_path / "c" / "report.txt").read_bytes() == b"hi"
    drop_train_state(tmp_path / "c")
    assert load_train_state(tmp_path / "c") is None


def test_resave_carries_over_files_and_folders_but_not_train_state(tmp_path, tiny_tokenizer):
    out = tmp_path / "c"
    model = _model(tiny_tokenizer)
    save_checkpoint(out, model, tiny_tokenizer, {"stage": "pretrain"}, train_state={"step": 1},
                    files={"loss_curve.png": b"old"})
    (out / "data").mkdir()
    (out / "data" / "train.bin").write_bytes(b"\x00\x01")
    save_checkpoint(out, model, tiny_tokenizer, {"stage": "pretrain"}, files={"train_log.jsonl": b"{}\n"})
    assert (out / "loss_curve.png").read_bytes() == b"old"
    assert (out / "data" / "train.bin").read_bytes() == b"\x00\x01"
    assert load_train_state(out) is None  # the final save of a run has no training state


def test_failed_save_leaves_the_old_checkpoint_untouched(tmp_path, tiny_tokenizer, monkeypatch):
    out = tmp_path / "c"
    save_checkpoint(out, _model(tiny_tokenizer, 0), tiny_tokenizer, {"stage": "pretrain", "v": 1})
    before = (out / "model.safetensors").read_bytes()

    class Boom(Exception):
        pass

    def fail(*a, **k):
        raise Boom

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(Boom):
        save_checkpoint(out, _model(tiny_tokenizer, 1), tiny_tokenizer, {"stage": "pretrain", "v": 2},
                        train_state={"step": 1})
    assert (out / "model.safetensors").read_bytes() == before
    assert json.loads((out / "hangpt.json").read_text())["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temp folder left behind


def test_crash_between_the_two_renames_is_recovered(tmp_path, tiny_tokenizer):
    out = tmp_path / "c"
    save_checkpoint(out, _model(tiny_tokenizer), tiny_tokenizer, {"stage": "pretrain"})
    out.rename(tmp_path / "c.old-checkpoint")  # the state right after "rename old aside"
    assert load_checkpoint(out).meta["stage"] == "pretrain"
    assert not (tmp_path / "c.old-checkpoint").exists()


def test_write_file_atomic(tmp_path):
    f = tmp_path / "plot.png"
    write_file_atomic(f, b"one")
    write_file_atomic(f, b"two")
    assert f.read_bytes() == b"two" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_not_a_checkpoint_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a checkpoint folder \\(no config.json\\)"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a checkpoint folder"):
        load_checkpoint(tmp_path / "file")
    with pytest.raises(InputError, match="no such checkpoint folder"):
        load_checkpoint(tmp_path / "nope" / "deeper")


def test_tokenizer_that_does_not_match_the_model(tmp_path, tiny_tokenizer):
    from hangpt.tokenizer import train_tokenizer

    out = tmp_path / "c"
    save_checkpoint(out, _model(tiny_tokenizer), tiny_tokenizer, {"stage": "pretrain"})
    bigger = train_tokenizer(iter(["가나다라마바사 아자차카타파하"] * 50 + ["abcdefghijklmnop"] * 50),
                             vocab_size=tiny_tokenizer.vocab_size + 40, min_frequency=1)
    if bigger.vocab_size <= tiny_tokenizer.vocab_size:
        bigger.add_special_tokens([f"<extra_{i}>" for i in range(tiny_tokenizer.vocab_size - bigger.vocab_size + 1)])
    bigger.save(out)
    with pytest.raises(InputError, match="tokenizer has \\d+ tokens but the model's vocab_size is"):
        load_checkpoint(out)


def test_broken_config_json_names_file_and_line(tmp_path, tiny_tokenizer):
    out = tmp_path / "c"
    save_checkpoint(out, _model(tiny_tokenizer), tiny_tokenizer, {"stage": "pretrain"})
    (out / "config.json").write_text('{\n  "n_layer": 2,\n  oops\n}')
    with pytest.raises(InputError, match="config.json: invalid JSON at line 3"):
        load_checkpoint(out)
