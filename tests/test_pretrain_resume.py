"""Kill `hangpt pretrain` with SIGKILL mid-run, resume it, and get the same model as a run that
was never interrupted (data order, optimizer and RNG are restored exactly)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import make_corpus

STEPS = 60
# one thread: a 2-layer model is too small to gain from two, and a busy machine makes them wait on each other
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _command(corpus, init, out, *extra):
    return [sys.executable, "-m", "hangpt", "pretrain", "--data", str(corpus), "--model", str(init),
            "--out", str(out), "--max-steps", str(STEPS), "--batch-size", "4", "--max-length", "32",
            "--save-every", "20", "--eval-every", "30", "--val-fraction", "0.05", "--no-progress", *extra]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_checkpoint):
    from hangpt.checkpoint import load_checkpoint, load_train_state

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(300)) + "\n", encoding="utf-8")
    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(corpus, tiny_checkpoint, out), stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while not (out / "train_state.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    # whatever moment the kill hit, the folder is a complete, loadable checkpoint of an unfinished run
    state = load_train_state(out)
    assert state is not None and 0 < state["step"] < STEPS
    load_checkpoint(out)

    resumed = subprocess.run(_command(corpus, tiny_checkpoint, out, "--resume"), capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {state['step']}" in resumed.stderr

    straight = tmp_path / "straight"
    done = subprocess.run(_command(corpus, tiny_checkpoint, straight), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr

    a, b = _weights(out), _weights(straight)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    # the loss curve continues: every logged step once, in order, same values as the straight run
    log_a = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    steps = [h["step"] for h in log_a if "loss" in h]
    assert steps == list(range(10, STEPS + 1, 10))
    assert [h.get("loss") for h in log_a] == [h.get("loss") for h in log_b]
    assert not (out / "train_state.pt").exists()
