"""Keep memory that a training step frees inside the process, so the next step reuses it.

glibc's malloc serves large blocks (from 128 KB, rising as it adapts, and always above 32 MB) with
fresh pages from the kernel and hands them back on free. A training step allocates and frees the
same activations every step, so each step paid a page fault for every 4 KB page it touched first:
the tiny Llama preset's bf16 step took 29,000 faults (113 MB), and transformers' LlamaForCausalLM
145,000 in fp32, whose whole-batch logits alone are 128 MB. With both thresholds raised, freed
blocks stay in the heap and later steps take no faults (benchmarks/train_throughput.py). The cost
is that the process keeps its peak memory until it ends, which a training run reaches every step
anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from the heap; freed memory is never trimmed


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where malloc is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
