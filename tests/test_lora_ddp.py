"""LoRA under torchrun: two CPU ranks (gloo) train the adapters through DistributedDataParallel
(only the adapter weights are synchronised; the frozen base is not) and rank 0 saves the adapter
folder, which equals a single-process run's. SFT gives every rank the same batches (only pretraining
splits its data between ranks), so the averaged gradient is the single process's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_lora import _qa_file, _run


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's CPU backend")
def test_torchrun_lora_sft_adapter_equals_single_process(tmp_path, tiny_checkpoint):
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun is not on PATH")
    data = tmp_path / "qa.csv"
    _qa_file(data)
    args = ["sft", "--model", str(tiny_checkpoint), "--data", str(data), "--template", "kogpt2", "--lora-r", "4",
            "--lora-dropout", "0", "--max-steps", "4", "--batch-size", "4", "--val-fraction", "0.1", "--no-progress"]
    _run(args + ["--out", tmp_path / "single"])
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "hangpt", *args,
                             "--out", str(tmp_path / "ddp")],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("single", "ddp"))
    assert single.keys() == ddp.keys() and any(".lora_B." in k for k in ddp)
    assert any(ddp[k].abs().sum() > 0 for k in ddp if ".lora_B." in k)  # the adapters trained
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-6, rtol=1e-5)
    assert not (tmp_path / "ddp" / "model.safetensors").exists()  # an adapter folder, the base not copied
