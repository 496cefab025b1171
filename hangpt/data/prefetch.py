"""Read ahead: an iterator run in a background thread, a few items ahead of its consumer.

Reading a corpus (file reads, gzip, UTF-8 decoding, column splits) took most of the main thread's
time while the encoding threads waited for work; run in its own thread, it overlaps encoding and
writing instead (file reads and gzip release the GIL). The queue is bounded, so memory stays a few
items however large the corpus is.
"""

from __future__ import annotations

import threading
from queue import Empty, Queue
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of `items` in order, produced by a daemon thread at most `depth` items ahead. An
    exception the producer raises is raised again, as is, in the consumer; when the consumer stops
    early (break, an error, Ctrl-C, `close()`), the thread stops after the item it is producing."""
    queue: Queue = Queue(depth)
    stopped = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                queue.put((item, None))
                if stopped.is_set():  # the consumer has emptied the queue: this put did not block
                    return
            queue.put((_END, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.put((_END, error))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stopped.set()
        try:  # unblock a producer waiting on a full queue; it then sees `stopped`
            while True:
                queue.get_nowait()
        except Empty:
            pass
