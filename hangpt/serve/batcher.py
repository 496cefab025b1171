"""Decode concurrent HTTP requests together: an asyncio front queues jobs, one worker thread
decodes them and hands each event back to the request's own asyncio queue.

Continuous batching (the default): the worker keeps one engine session (engine/session.py); between
two decoding steps, the jobs waiting join it together (Session.add_many: prompts of equal length in
one prefill; up to max_batch_size rows) and the rows of clients that went away leave, so a request
arriving mid-answer gets its first token after its prefill and one step, not after the whole batch.
Static batching (for comparison) runs `Engine.stream_batch` over whatever is queued, to its end.

Each job is one sequence (the app splits `n` > 1 into n jobs). Beam-search jobs produce all their
sequences at once through `Engine.generate`, one at a time. A request that cannot be prefilled fails
alone; a static batch that fails before it produced anything is decoded again one request at a
time, so the others never see its error.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from ..engine import Engine, GenerationConfig, StreamEvent
from ..engine.batch import evaluating


@dataclass
class Job:
    prompt_ids: list[int]
    config: GenerationConfig
    choices: list[int]  # the response's choice index of each sequence (several only for beam search)
    ticket: "Ticket | None" = None
    done: bool = False

    @property
    def is_beam(self) -> bool:
        return self.config.num_beams > 1


class Ticket:
    """One HTTP request's view of its jobs: an asyncio queue of (choice, StreamEvent)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, n_choices: int):
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._remaining = n_choices
        self.cancelled = False

    def push(self, item) -> None:
        """Called from the worker thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def cancel(self) -> None:
        self.cancelled = True

    async def events(self):
        """(choice, StreamEvent) until every choice has finished; re-raises the worker's error."""
        while self._remaining:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            choice, event = item
            if event.finish_reason is not None:
                self._remaining -= 1
            yield choice, event


class Batcher:
    def __init__(self, engine: Engine, max_batch_size: int = 16, batching: str = "continuous",
                 gather_seconds: float = 0.01, max_gather_seconds: float = 0.1):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.continuous = batching == "continuous"
        self.gather_seconds = gather_seconds  # start once no request arrived for this long...
        self.max_gather_seconds = max_gather_seconds  # ...or the first one has waited this long
        self._pending: list[Job] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="hangpt-batcher", daemon=True)
        self.batches = 0  # decoded batches (continuous: runs from idle to idle), and the largest one (for /health)
        self.largest_batch = 0
        self.dropped = 0  # sequences abandoned mid-decoding because their client went away
        self._current: list[Job] = []

    @property
    def running(self) -> int:
        """Sequences being decoded right now for clients that are still there."""
        return sum(1 for j in self._current if not j.done and not j.ticket.cancelled)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def submit(self, jobs: list[Job]) -> Ticket:
        ticket = Ticket(asyncio.get_running_loop(), sum(len(j.choices) for j in jobs))
        with self._cond:
            for job in jobs:
                job.ticket = ticket
                self._pending.append(job)
            self._cond.notify()
        return ticket

    # -- worker thread -------------------------------------------------------------------------
    def _run(self) -> None:
        if not self.continuous:
            self._run_static()
            return
        with evaluating(self.engine.model):
            self._run_continuous()

    def _run_continuous(self) -> None:
        """One step at a time: waiting jobs join, left ones leave, then every row gets a token."""
        session, rows = self.engine.session(), {}  # session row -> its job
        while not self._stopped:
            taken = self._admit(wait=not session, free=self.max_batch_size - len(session))
            if taken and not session:
                self.batches += 1
            plain = [job for job in taken if not job.is_beam]
            try:
                joins = session.add_many([(job.prompt_ids, job.config) for job in plain])
            except Exception as e:  # no room for them (a bad request alone fails inside add_many)
                joins = [e] * len(plain)
            for job, joined in zip(plain, joins):
                if isinstance(joined, Exception):  # this request alone cannot be decoded
                    _fail([job], joined)
                else:
                    rows.update(dict.fromkeys(joined, job))
            for job in taken:
                if job.is_beam:
                    try:
                        self._beam(job)
                    except Exception as e:
                        _fail([job], e)
            for index in [i for i, job in rows.items() if job.ticket.cancelled]:
                session.cancel(index)
                del rows[index]
                self.dropped += 1
            self._current = list(rows.values())
            if not session:
                continue
            self.largest_batch = max(self.largest_batch, len(session))
            try:
                events = session.step()
            except Exception as e:  # a failed step leaves the session unusable: its rows learn why
                _fail(self._current, e)
                session, rows = self.engine.session(), {}
                continue
            for event in events:
                job = rows[event.index]
                if event.finish_reason is not None:
                    job.done = True
                    del rows[event.index]
                job.ticket.push((job.choices[0], event))
        self._current = []

    def _admit(self, wait: bool, free: int) -> list[Job]:
        """The jobs that join now (FIFO): as many plain ones as there are free rows, or a beam-search
        job at the head of the queue. wait (the batch is empty): block until requests come, and let
        those arriving together start together."""
        with self._cond:
            if wait:
                self._gather()
            self._pending = [j for j in self._pending if not j.ticket.cancelled]
            taken = []
            while self._pending and (self._pending[0].is_beam or len(taken) < free):
                taken.append(self._pending.pop(0))
                if taken[-1].is_beam:
                    break
            return taken

    def _gather(self) -> None:
        """(Lock held.) Wait for work, then for requests arriving together (until a quiet gap)."""
        while not self._pending and not self._stopped:
            self._cond.wait()
        deadline = time.monotonic() + self.max_gather_seconds
        while not self._stopped and len(self._pending) < self.max_batch_size:
            seen = len(self._pending)
            self._cond.wait(min(self.gather_seconds, max(deadline - time.monotonic(), 0)))
            if len(self._pending) == seen or time.monotonic() >= deadline:
                break

    def _take(self) -> list[Job]:
        """Static batching: wait for work, let requests arriving together join, then take one batch
        (FIFO)."""
        with self._cond:
            self._gather()
            if self._stopped:
                return []
            self._pending = [j for j in self._pending if not j.ticket.cancelled]
            if self._pending and self._pending[0].is_beam:
                return [self._pending.pop(0)]
            batch = [j for j in self._pending if not j.is_beam][: self.max_batch_size]
            taken = {id(j) for j in batch}
            self._pending = [j for j in self._pending if id(j) not in taken]
            return batch

    def _run_static(self) -> None:
        while not self._stopped:
            jobs = self._take()
            if not jobs:
                continue
            self._current = jobs
            try:
                if jobs[0].is_beam:
                    self._beam(jobs[0])
                else:
                    self._stream(jobs)
            except BaseException as e:  # the requests learn why; the worker keeps serving
                _fail(jobs, e)
            finally:
                self._current = []

    def _stream(self, jobs: list[Job], isolate: bool = True) -> None:
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        requests = [(j.prompt_ids, j.config) for j in jobs]
        sent = False
        try:
            for event in self.engine.stream_batch(requests, is_cancelled=lambda i: jobs[i].ticket.cancelled):
                sent = True
                job = jobs[event.index]
                job.done = event.finish_reason is not None
                job.ticket.push((job.choices[0], event))
        except Exception:
            by_request = {id(j.ticket): [k for k in jobs if k.ticket is j.ticket] for j in jobs}
            if sent or not isolate or len(by_request) == 1:
                raise
            for group in by_request.values():
                try:
                    self._stream(group, isolate=False)
                except Exception as e:
                    _fail(group, e)
            return
        self.dropped += sum(1 for j in jobs if j.ticket.cancelled and not j.done)

    def _beam(self, job: Job) -> None:
        self.batches += 1
        [completions] = self.engine.generate([job.prompt_ids], job.config)
        for choice, c in zip(job.choices, completions):
            job.ticket.push((choice, StreamEvent(choice, c.text, c.token_ids, c.finish_reason, c.logprobs)))


def _fail(jobs: list[Job], error: BaseException) -> None:
    """Every request with a job here gets the error (once), which ends its stream."""
    for ticket in {id(j.ticket): j.ticket for j in jobs}.values():
        ticket.push(error)
