"""SIGKILL during training and during saves, for every training stage: running the same command again
(with --resume once a checkpoint exists) ends with weights bit-identical to a run that was never
killed, and no temp folder is left beside the output.

Adding a stage is one line in STAGES.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

STEPS = 6
COMMON = ["--max-steps", STEPS, "--save-every", 1, "--batch-size", 4, "--seed", 7, "--no-progress"]

# stage -> its command line without --out (the files come from the `inputs` fixture)
STAGES = {
    "sft": lambda f: ["sft", "--model", f["base"], "--data", f["qa"], "--max-length", 48],
    "rm": lambda f: ["rm", "train", "--model", f["base"], "--data", f["prefs"], "--max-length", 48],
    "dpo": lambda f: ["dpo", "--model", f["base"], "--data", f["prefs"], "--max-length", 48],
    "ppo": lambda f: ["ppo", "--model", f["base"], "--reward-model", f["reward"], "--prompts", f["prompts"],
                      "--mini-batch-size", 2, "--ppo-epochs", 1, "--max-new-tokens", 6],
    "grpo": lambda f: ["grpo", "--model", f["base"], "--reward", f"rm:{f['reward']}", "--prompts", f["prompts"],
                       "--num-generations", 2, "--max-new-tokens", 6],
}
ENV = {**os.environ, "HANGPT_THREADS": "1", "OMP_NUM_THREADS": "1", "HANGPT_FAST_DECODE": "1"}


def _hangpt(args) -> list[str]:
    return [sys.executable, "-m", "hangpt", *[str(a) for a in args]]


def _finish(args, out: Path) -> None:
    """Run the stage to the end: resume the checkpoint in `out` if there is one, else start over."""
    resume = ["--resume"] if (out / "train_state.pt").exists() else []
    subprocess.run(_hangpt([*args, "--out", out, *resume]), env=ENV, check=True, capture_output=True, timeout=300)


def _finished(out: Path) -> bool:
    return (out / "hangpt.json").exists() and not (out / "train_state.pt").exists()


def _run_until(args, out: Path, kill_now) -> bool:
    """Start (or resume) the run and SIGKILL it once kill_now() is true; True if it was killed."""
    resume = ["--resume"] if (out / "train_state.pt").exists() else []
    proc = subprocess.Popen(_hangpt([*args, "--out", out, *resume]), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if kill_now():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _saved_step(out: Path) -> int:
    try:
        return json.loads((out / "hangpt.json").read_text())["training"]["steps"]
    except (OSError, ValueError, KeyError):
        return 0


def _after_step(out: Path, step: int, delay: float):
    """A kill_now for _run_until: true `delay` seconds after the checkpoint of `step` was saved."""
    seen: list[float] = []

    def kill_now() -> bool:
        if not seen and _saved_step(out) >= step:
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() >= seen[0] + delay

    return kill_now


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-inputs")
    files = {"base": tiny_checkpoint, "qa": root / "qa.csv", "prefs": root / "prefs.jsonl",
             "prompts": root / "prompts.txt"}
    files["qa"].write_text("Q,A\n" + "".join(f"질문 {i}번 뭐예요,답은 {i % 5}번이에요.\n" for i in range(24)),
                           encoding="utf-8")
    files["prefs"].write_text("".join(json.dumps({"prompt": f"질문 {i}", "chosen": f"좋은 답 {i}",
                                                  "rejected": "몰라요"}, ensure_ascii=False) + "\n"
                                      for i in range(24)), encoding="utf-8")
    files["prompts"].write_text("".join(f"질문 {i}번 뭐예요\n" for i in range(12)), encoding="utf-8")
    files["reward"] = root / "reward"
    subprocess.run(_hangpt([*STAGES["rm"](files), "--out", files["reward"], "--max-steps", 2, "--no-progress"]),
                   env=ENV, check=True, capture_output=True, timeout=300)
    return files


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_anywhere_then_rerun_gives_identical_weights(stage, inputs, tmp_path):
    args = [*STAGES[stage](inputs), *COMMON]
    reference = tmp_path / "reference" / "out"
    _finish(args, reference)

    out = tmp_path / "killed" / "out"
    in_a_save = lambda: any(out.parent.glob(".out.tmp-*"))  # noqa: E731
    assert _run_until(args, out, in_a_save), "the run ended before its first save"
    assert in_a_save(), "the kill was meant to leave a half-written save"
    # then at a random moment after a random later step: inside a step or a save
    rng = random.Random(stage)
    step, delay = rng.randint(_saved_step(out) + 1, STEPS - 1), rng.uniform(0.0, 0.3)
    _run_until(args, out, _after_step(out, step, delay))
    if not _finished(out):  # a kill after the final save leaves a finished checkpoint: nothing to resume
        _finish(args, out)

    ours, theirs = _weights(out), _weights(reference)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), f"{stage}: weights differ from the uninterrupted run"
    assert not (out / "train_state.pt").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"], "temp folders left beside the output"
    summary = json.loads((out / "hangpt.json").read_text())["training"]
    assert summary["steps"] == STEPS
