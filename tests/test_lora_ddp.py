"""LoRA SFT under torchrun: two CPU ranks (gloo) train the adapters through DistributedDataParallel
(only the adapter weights are synchronised; the frozen base is not) and rank 0 saves the adapter
folder. --batch-size is per rank: at every step the two ranks take disjoint halves of the batch one
process takes with twice the --batch-size, and DDP averages their gradients. The loss is the mean
over answer tokens, so the average of the two halves' means is the whole batch's mean when both
halves hold as many answer tokens, as here (every answer has the same length): the adapter then
equals the single process's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_lora import _qa_file, _run

# runs the hangpt command in each rank, recording the example indices of every batch it trains on
RECORDING_LAUNCHER = """
import json, os, sys
from hangpt.cli import main
from hangpt.data.batches import ShuffledBatches

record, seen, take = sys.argv.pop(1), [], ShuffledBatches.next_indices
ShuffledBatches.next_indices = lambda self: seen.append(take(self)) or seen[-1]
try:
    main(sys.argv[1:])
finally:
    with open(f"{record}.{os.environ['RANK']}.json", "w") as f:
        json.dump(seen, f)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's CPU backend")
def test_torchrun_lora_sft_splits_each_batch_and_equals_single_process(tmp_path, tiny_checkpoint, monkeypatch):
    from hangpt.data.batches import ShuffledBatches

    torchrun = shutil.which("torchrun") or pytest.skip("torchrun is not on PATH")
    data = tmp_path / "qa.csv"
    _qa_file(data)
    args = ["sft", "--model", str(tiny_checkpoint), "--data", str(data), "--template", "kogpt2", "--lora-r", "4",
            "--lora-dropout", "0", "--max-steps", "4", "--val-fraction", "0.1", "--no-progress"]
    single_seen, take = [], ShuffledBatches.next_indices
    monkeypatch.setattr(ShuffledBatches, "next_indices", lambda self: single_seen.append(take(self)) or single_seen[-1])
    _run(args + ["--batch-size", "4", "--out", tmp_path / "single"])
    launcher = tmp_path / "launch.py"
    launcher.write_text(RECORDING_LAUNCHER, encoding="utf-8")
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(launcher), str(tmp_path / "seen"),
                             *args, "--batch-size", "2", "--out", str(tmp_path / "ddp")],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    rank0, rank1 = (json.loads((tmp_path / f"seen.{r}.json").read_text()) for r in (0, 1))
    assert len(single_seen) == len(rank0) == len(rank1) == 4
    for whole, a, b in zip(single_seen, rank0, rank1):
        assert len(a) == len(b) == 2 and not set(a) & set(b)  # disjoint halves...
        assert a + b == whole  # ...of the single process's batch
    single, ddp = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("single", "ddp"))
    assert single.keys() == ddp.keys() and any(".lora_B." in k for k in ddp)
    assert any(ddp[k].abs().sum() > 0 for k in ddp if ".lora_B." in k)  # the adapters trained
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-5, rtol=1e-5)
    assert not (tmp_path / "ddp" / "model.safetensors").exists()  # an adapter folder, the base not copied
    steps = json.loads((tmp_path / "ddp" / "hangpt.json").read_text())["training"]["steps"]
    assert steps == 4
