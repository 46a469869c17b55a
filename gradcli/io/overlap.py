"""Overlap around the tape: the next batch is read while the tape runs, results are written
while the next batch computes.

TensorFlow releases the GIL inside its kernels, and so do NumPy's copies and casts and file
writes: a thread reading and converting the next batch (memory map -> float32) and one
writing the previous results run while the main thread waits on a tape call. Order is kept
(one thread each, FIFO), so results and output files are byte-identical to the sequential
path; queues are short (one batch ahead, two behind), so memory stays bounded.

Both threads are daemons: Ctrl-C, SIGTERM or a lost supervisor stop the main thread, and the
threads never keep the process alive. An error in a thread is raised in the main thread at
its next call.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

OVERLAP_VAR = "GRADCLI_OVERLAP"  # 0: read, compute and write one after the other (for tests)
_END = object()
_POLL = 0.1  # seconds between checks of the stop flag while a queue is full or empty


def enabled() -> bool:
    """Whether reads and writes overlap the tape (GRADCLI_OVERLAP=0 turns it off)."""
    return os.environ.get(OVERLAP_VAR, "1") != "0"


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetch(Generic[T]):
    """Iterate `items` in a background thread, at most `ahead` items in advance."""

    def __init__(self, items: Iterable[T], ahead: int = 1, name: str = "gradcli-read") -> None:
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._put(_Failed(exc))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Failed):
            self.close()
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the thread (it finishes the item it is reading) and drop what it read."""
        self._done = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)


def prefetch(items: Iterable[T], ahead: int = 1) -> Iterator[T]:
    """`items`, read in a background thread; the thread stops when the loop ends, however."""
    reader = Prefetch(items, ahead)
    try:
        yield from reader
    finally:
        reader.close()


class BackgroundSink:
    """A sink (NpzStreamWriter, MemorySink) whose `write`s run in a background thread.

    Writes happen in call order. The rows passed to `write` are written later, so they are
    made read-only: changing them afterwards raises instead of corrupting the file.
    `commit` waits for every write, then commits in the calling thread (under the worker's
    commit guard, as before); `abort` drops pending writes and aborts the sink.
    """

    def __init__(self, sink: Any, behind: int = 2, name: str = "gradcli-write") -> None:
        self.sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, behind))
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:  # path, arrays, ... of the wrapped sink
        return getattr(self.sink, name)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _END:
                    return
                if self._error is None and not self._stop.is_set():
                    key, rows = item
                    self.sink.write(key, rows)
            except BaseException as exc:  # noqa: BLE001 - raised in the main thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            self._finish()
            raise exc

    def write(self, key: str, rows: Any) -> None:
        self._raise()
        try:
            rows.flags.writeable = False
        except (AttributeError, ValueError):  # not a NumPy array: written as given
            pass
        while True:
            try:
                self._queue.put((key, rows), timeout=_POLL)
                return
            except queue.Full:
                if not self._thread.is_alive():  # pragma: no cover - the writer died
                    raise RuntimeError("the output writer thread stopped") from None
                self._raise()

    def _finish(self) -> None:
        """Let the thread end after what is queued (or dropped, once stopped)."""
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()

    def commit(self) -> Any:
        self._finish()
        self._raise()
        return self.sink.commit()

    def abort(self) -> None:
        self._stop.set()
        self._finish()
        self._error = None
        self.sink.abort()
