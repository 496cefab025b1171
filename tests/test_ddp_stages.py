"""classify, rm and dpo under torchrun: each of two CPU ranks trains on its half of every batch
(--batch-size is per rank) and DDP averages the gradients. Their losses are means over examples
(pairs), so without dropout the saved model equals one process's with twice the --batch-size."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hangpt.cli import main


def _write_data(tmp_path):
    rng = random.Random(0)
    rows = ["id\tdocument\tlabel"]
    for i in range(80):
        label = rng.choice(["neg", "pos"])
        rows.append(f"{i}\t영화 정말 {'좋아요' if label == 'pos' else '싫어요'}\t{label}")
    (tmp_path / "cls.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    pairs = [{"prompt": f"질문 {i % 5}", "chosen": f"좋은 답 {i % 5}", "rejected": f"나쁜 답 {i % 7}"}
             for i in range(60)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs),
                                          encoding="utf-8")


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's CPU backend")
@pytest.mark.parametrize("command", [["classify", "train", "--data", "cls.tsv", "--dropout", "0", "--lm-coef", "0"],
                                     ["rm", "train", "--data", "pairs.jsonl"],
                                     ["dpo", "--data", "pairs.jsonl"]], ids=["classify", "rm", "dpo"])
def test_two_ranks_equal_one_process_with_the_whole_batch(tmp_path, tiny_checkpoint, command, monkeypatch):
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun is not on PATH")
    _write_data(tmp_path)
    args = [*command, "--model", str(tiny_checkpoint), "--max-steps", "3", "--val-fraction", "0.1", "--no-progress"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(args + ["--batch-size", "8", "--out", "single"])
    assert e.value.code == 0
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "hangpt", *args,
                             "--batch-size", "4", "--out", "ddp"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    base = load_file(str(tiny_checkpoint / "model.safetensors"))
    single, ddp = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("single", "ddp"))
    assert single.keys() == ddp.keys()
    moved = max((single[k] - base[k]).abs().max().item() for k in base if k in single)
    assert moved > 1e-5  # trained
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-5, rtol=1e-4)
