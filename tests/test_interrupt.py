"""Ctrl-C in the middle of `hangpt sft` / `hangpt classify train`: the step finishes, a resumable
checkpoint is saved, and `--resume` ends with exactly the weights of a run that was never stopped."""

from __future__ import annotations

import random
import signal

import pytest
import torch
from safetensors.torch import load_file

from hangpt.cli import main
from hangpt.train.loop import Trainer

STEPS = 6


def _qa_file(path):
    rows = ["Q,A"] + [f"질문 {i}번 뭐예요,답은 {i % 7}번이에요." for i in range(40)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _labeled_file(path):
    rng = random.Random(0)
    rows = ["id\tdocument\tlabel"]
    for i in range(80):
        label = rng.choice("01")
        rows.append(f"{i}\t{'정말 좋아요' if label == '1' else '너무 싫어요'} {'!' * rng.randint(0, 9)}\t{label}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _run(args, code=0):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code == code


def _ctrl_c_during_step(monkeypatch, step: int):
    """Deliver a real SIGINT while the given step (1-based) is computing its loss."""
    original = Trainer._micro_step

    def micro_step(self, model):
        if self.step == step - 1:
            signal.raise_signal(signal.SIGINT)
        return original(self, model)

    monkeypatch.setattr(Trainer, "_micro_step", micro_step)


@pytest.mark.parametrize("command", ["sft", "classify"])
def test_ctrl_c_then_resume_equals_uninterrupted(tmp_path, tiny_checkpoint, monkeypatch, capsys, command):
    if command == "sft":
        data = tmp_path / "qa.csv"
        _qa_file(data)
        head = ["sft", "--model", tiny_checkpoint, "--data", data, "--template", "kogpt2"]
    else:
        data = tmp_path / "reviews.tsv"
        _labeled_file(data)
        head = ["classify", "train", "--model", tiny_checkpoint, "--data", data]
    common = ["--max-steps", STEPS, "--batch-size", 4, "--val-fraction", 0.1, "--save-every", 100, "--no-progress"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _run(head + ["--out", straight] + common)

    with monkeypatch.context() as m:
        _ctrl_c_during_step(m, 3)
        _run(head + ["--out", stopped] + common, code=130)
    err = capsys.readouterr().err
    assert "interrupted at step 3" in err and "--resume" in err and "error:" not in err  # calm, exit 130
    assert (stopped / "train_state.pt").exists()
    _run(head + ["--out", stopped, "--resume"] + common)

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(stopped / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (stopped / "train_state.pt").exists()
