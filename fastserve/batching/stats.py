"""What the batcher reports: one BatchRecord per executed batch, running totals per
queue, and the current queue lengths. The metrics exporter reads these; observers
(callables) registered with BatchStats.add_observer get every record as it happens,
on the batch thread, so they must be quick and must not raise.
"""
import threading
from dataclasses import dataclass
from collections.abc import Callable

QueueKey = tuple[str, int, str]  # model name, version, signature key


@dataclass(frozen=True)
class BatchRecord:
    queue: QueueKey
    tasks: int  # requests (or request pieces) in the batch
    rows: int  # real rows
    padded_rows: int  # rows the model ran (rows + padding)
    queue_wait_seconds: tuple[float, ...]  # per task: from enqueue to the batch's start
    execution_seconds: float  # assembling, running and splitting the batch
    closed: str = "full"  # why it closed: full, timeout, target (latency target), idle (nothing worth waiting for)


@dataclass
class QueueTotals:
    batches: int = 0
    tasks: int = 0
    rows: int = 0
    padded_rows: int = 0
    queue_wait_seconds: float = 0.0  # summed over tasks
    execution_seconds: float = 0.0  # summed over batches


class BatchStats:
    def __init__(self):
        self._lock = threading.Lock()
        self._totals: dict[QueueKey, QueueTotals] = {}
        self._observers: list[Callable[[BatchRecord], None]] = []
        self._queue_lengths: dict[QueueKey, Callable[[], tuple[int, int]]] = {}

    def add_observer(self, observer: Callable[[BatchRecord], None]) -> None:
        self._observers.append(observer)

    def record(self, record: BatchRecord) -> None:
        with self._lock:
            totals = self._totals.setdefault(record.queue, QueueTotals())
            totals.batches += 1
            totals.tasks += record.tasks
            totals.rows += record.rows
            totals.padded_rows += record.padded_rows
            totals.queue_wait_seconds += sum(record.queue_wait_seconds)
            totals.execution_seconds += record.execution_seconds
        for observer in self._observers:
            observer(record)

    def totals(self) -> dict[QueueKey, QueueTotals]:
        """A copy of the running totals of every queue that has run a batch."""
        with self._lock:
            return {k: QueueTotals(**vars(v)) for k, v in self._totals.items()}

    def watch_queue(self, key: QueueKey, length: Callable[[], tuple[int, int]] | None) -> None:
        """Register (or, with None, forget) a queue's (tasks, rows) waiting right now."""
        with self._lock:
            if length is None:
                self._queue_lengths.pop(key, None)
            else:
                self._queue_lengths[key] = length

    def queue_lengths(self) -> dict[QueueKey, tuple[int, int]]:
        with self._lock:
            watched = dict(self._queue_lengths)
        return {k: length() for k, length in watched.items()}
