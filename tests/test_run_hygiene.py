"""What a run leaves behind and reports: folders of killed saves are removed when the next save or
resume starts, a new pretrain that fails leaves no --out folder (nor its token cache), the loss
logged around a resume equals an uninterrupted run's, inspect says when it cut a long text, and
the server's feedback fallback in a folder it cannot write is one error line."""

from __future__ import annotations

import json
import os
import signal

import pytest

from hangpt.cli import main
from hangpt.train.loop import Trainer


def _run(args, code=0):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code == code
    return e


def test_folders_of_killed_saves_go_when_the_next_save_or_resume_starts(tiny_checkpoint, tmp_path):
    import shutil

    from hangpt.checkpoint import load_checkpoint, save_checkpoint
    from hangpt.train.loop import TrainConfig, resume_state

    out = shutil.copytree(tiny_checkpoint, tmp_path / "run")
    (out / "train_state.pt").write_bytes(b"")  # a resumable run (the state itself is not read here)
    stale = [tmp_path / f".run.tmp-{i}" for i in range(3)]
    for folder in stale:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    other = tmp_path / ".runner.tmp-1"  # another output's save: untouched
    other.mkdir()
    with pytest.raises(Exception):
        resume_state(TrainConfig(out=out, overwrite=False))  # refuses (unfinished run), but cleans first
    assert not any(f.exists() for f in stale) and other.exists()

    stale[0].mkdir()
    ckpt = load_checkpoint(tiny_checkpoint)
    save_checkpoint(out, ckpt.model, ckpt.tokenizer, {"stage": "pretrain"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".runner.tmp-1", "run"]


def test_a_new_pretrain_that_fails_leaves_no_out_folder(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("오늘 날씨가 좋네요. 내일은 비가 온대요.\n" * 200, encoding="utf-8")
    out = tmp_path / "run"
    _run(["pretrain", "--data", corpus, "--out", out, "--max-steps", 1, "--max-length", 100_000], code=2)
    assert "--max-length" in capsys.readouterr().err
    assert not out.exists()


def test_logged_loss_around_a_resume_equals_the_uninterrupted_runs(tiny_checkpoint, tmp_path, monkeypatch):
    data = tmp_path / "qa.csv"
    data.write_text("Q,A\n" + "".join(f"질문 {i}번,답 {i % 3}번\n" for i in range(24)), encoding="utf-8")
    common = ["sft", "--model", tiny_checkpoint, "--data", data, "--max-steps", 8, "--batch-size", 4,
              "--val-fraction", 0, "--no-progress"]
    _run(common + ["--out", tmp_path / "straight"])
    original = Trainer._micro_step

    def micro_step(self, model):  # Ctrl-C during step 5: the run saves after it and stops
        if self.step == 4:
            signal.raise_signal(signal.SIGINT)
        return original(self, model)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_micro_step", micro_step)
        _run(common + ["--out", tmp_path / "stopped"], code=130)
    _run(common + ["--out", tmp_path / "stopped", "--resume"])

    def losses(run):
        lines = (tmp_path / run / "train_log.jsonl").read_text().splitlines()
        return [(h["step"], h["loss"]) for h in map(json.loads, lines) if "loss" in h]

    assert losses("stopped") == losses("straight") and losses("straight")


def test_inspect_says_when_it_keeps_only_the_end_of_a_long_text(tiny_checkpoint, capsys):
    _run(["inspect", "--model", tiny_checkpoint, "--text", "오늘 날씨가 좋네요. " * 100, "--json"])
    captured = capsys.readouterr()
    shown = len(json.loads(captured.out)["tokens"])
    assert shown == 128  # the model's context
    assert f"only the last {shown}" in captured.err


def test_feedback_fallback_in_a_folder_that_cannot_be_written(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: mode != os.W_OK)  # a read-only checkpoint
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hangpt-run").write_text("a file where the fallback folder would go")
    _run(["serve", "--model", tiny_checkpoint], code=2)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: hangpt-run/feedback.sqlite: cannot create") and len(err) >= 1
    assert sum(line.startswith("error:") for line in err) == 1 and "Error" not in err[-1]
