"""Which device a command runs its model on (`--device cpu|cuda|mps|auto`)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA, else Apple's MPS, else the CPU. Asking for one this machine lacks is an
    InputError, not a crash deep inside PyTorch. Under torchrun each rank takes its LOCAL_RANK GPU."""
    if name not in DEVICES:
        raise InputError(f"--device {name!r}: choose {', '.join(DEVICES)}")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if name == "cuda":
        if not cuda:
            raise InputError("--device cuda: no CUDA GPU is available here (PyTorch sees none); use --device cpu or auto")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name == "mps" and not mps:
        raise InputError("--device mps: Apple's MPS backend is not available here; use --device cpu or auto")
    return torch.device(name)


_chosen = "auto"


def use_device(name: str) -> torch.device:
    """Make `name` the device of this process (the CLI's --device; like torch.set_default_device,
    one choice for the whole run, so every stage and helper that places tensors agrees)."""
    global _chosen
    found = resolve_device(name)
    _chosen = name
    return found


def current_device() -> torch.device:
    """The device chosen with use_device (auto when none was)."""
    return resolve_device(_chosen)


def distributed() -> tuple[int, int]:
    """(rank, world_size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), world
    return 0, 1


@cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and runs slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
