"""Pure-Python references for the native batching modules (csrc/task_queue.pyx and
csrc/batch_assembler.pyx): the same interfaces and results, written plainly.

Tests check the native modules against these; bench/native_vs_reference.py shows what
the native versions buy. Nothing on the serving path uses them.
"""
import threading
from collections import deque

import numpy as np


class TaskQueue:
    """A bounded FIFO of tasks with a row quota, guarded by one lock."""

    def __init__(self, max_rows: int):
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.max_rows = max_rows
        self._tasks: deque[tuple[object, int]] = deque()
        self._rows = 0
        self._lock = threading.Lock()

    def push(self, task, rows: int) -> bool:
        if rows < 1:
            raise ValueError("a task has at least one row")
        with self._lock:
            if self._rows + rows > self.max_rows:
                return False
            self._rows += rows
            self._tasks.append(task)
            return True

    def pop_many(self, limit: int) -> list:
        with self._lock:
            return [self._tasks.popleft() for _ in range(min(limit, len(self._tasks)))]

    def rows_done(self, rows: int) -> None:
        with self._lock:
            self._rows -= rows

    @property
    def rows(self) -> int:
        return self._rows

    def __len__(self) -> int:
        return len(self._tasks)


def gather_rows(arrays: list, out: np.ndarray, padded_rows: int) -> int:
    total = sum(a.shape[0] for a in arrays)
    if total > padded_rows:
        raise ValueError(f"{total} rows do not fit a batch of {padded_rows}")
    out[:total] = np.concatenate(arrays) if arrays else out[:0]
    if total:
        out[total:padded_rows] = out[0]
    return total


def gather_padded(arrays: list, out: np.ndarray, padded_rows: int) -> int:
    total = sum(a.shape[0] for a in arrays)
    if total > padded_rows:
        raise ValueError(f"{total} rows do not fit a batch of {padded_rows}")
    out[:padded_rows] = 0
    row = 0
    for a in arrays:
        corner = (slice(row, row + a.shape[0]), *(slice(0, d) for d in a.shape[1:]))
        out[corner] = a
        row += a.shape[0]
    return total
