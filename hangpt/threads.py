"""How many threads a step should use on a machine that other work may be using too.

OpenMP splits every matmul across torch's threads and waits for the slowest; when another
process holds a core, the thread that shares it makes every step wait (2 threads on 2 busy cores:
decoding 2-17 ms/token instead of ~1 with 1 thread, training steps 2x slower). No setting is best
both idle and busy, so the count is chosen by measurement: every `period` steps a few steps are
timed with the current count and a few with one thread fewer or more, and the faster one is kept
until the next probe. Set HANGPT_THREADS=N to fix the count instead.
"""

from __future__ import annotations

import os

import torch


class ThreadPolicy:
    """Call `before()` ahead of each step (it sets torch's thread count, which the C decoding step
    also follows) and `after(seconds)` with the step's time. The first step (warm-up) is never a probe."""

    def __init__(self, period: int = 50, probe: int = 2, max_threads: int | None = None):
        self.max = max_threads or torch.get_num_threads()
        fixed = os.environ.get("HANGPT_THREADS")
        self.best = min(int(fixed), self.max) if fixed else self.max
        self.neighbours = [] if fixed else [n for n in (self.best - 1, self.best + 1) if 1 <= n <= self.max]
        self.period, self.probe = period, probe
        self.step = -1
        self.rounds = 0
        self.other = self.current = self.best
        self.times: dict[int, list[float]] = {}

    def _probing(self) -> bool:
        return bool(self.neighbours) and 0 <= self.step % self.period < 2 * self.probe

    def before(self) -> int:
        self.current = self.best
        if self._probing():
            k = self.step % self.period
            if k == 0:
                self.times = {}
                self.neighbours = [n for n in (self.best - 1, self.best + 1) if 1 <= n <= self.max]
                self.other = self.neighbours[self.rounds % len(self.neighbours)]
                self.rounds += 1
            # the two counts alternate, so a change in the machine's load hits both alike
            self.current = self.other if k % 2 else self.best
        if torch.get_num_threads() != self.current:
            torch.set_num_threads(self.current)
        return self.current

    def after(self, seconds: float) -> None:
        if self._probing():
            self.times.setdefault(self.current, []).append(seconds)
            if self.step % self.period == 2 * self.probe - 1:
                self.best = min(self.times, key=lambda n: min(self.times[n]))
        self.step += 1
