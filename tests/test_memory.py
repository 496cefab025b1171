"""keep_freed_memory: after it, blocks freed and allocated again every step stop taking page faults
(glibc settles within a few steps; by default every step faults on every page)."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from hangpt.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = []
for _ in range(12):  # a "step": a block above glibc's largest mmap threshold (64 MB) and one below (12 MB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    big, small = torch.ones(16 << 20), torch.ones(3 << 20)
    del big, small
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[-4:]))
"""


def faults_per_block(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_without_page_faults():
    assert faults_per_block("default") > 10_000  # at least the 16,384 pages of 4 KB of the big block
    assert faults_per_block("keep") < 100
