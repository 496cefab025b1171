"""`hangpt pretrain` under torchrun: two CPU ranks (gloo) train one model and rank 0 saves it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import make_corpus

STEPS = 6


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's CPU backend")
def test_torchrun_two_ranks_train_and_save_one_checkpoint(tmp_path, tiny_checkpoint):
    from hangpt.checkpoint import load_checkpoint

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(300)) + "\n", encoding="utf-8")
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun is not on PATH")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "hangpt", "pretrain", "--data", str(corpus),
         "--model", str(tiny_checkpoint), "--out", str(out), "--max-steps", str(STEPS), "--batch-size", "4",
         "--max-length", "32", "--save-every", "3", "--eval-every", "3", "--val-fraction", "0.05", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    settings = json.loads((out / "hangpt.json").read_text())["training"]
    assert settings["steps"] == STEPS
    assert settings["settings"]["world_size"] == 2
    assert settings["tokens"] == STEPS * 2 * 4 * 32  # both ranks' batches count
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # one writer: no line twice
    assert any("val_loss" in r for r in log)
    load_checkpoint(out)  # a complete folder
