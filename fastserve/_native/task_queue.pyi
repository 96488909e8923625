"""A bounded lock-free queue of request tasks (csrc/task_queue.pyx, csrc/mpmc_ring.h)."""
from typing import final

@final
class TaskQueue:
    def __new__(cls, max_rows: int) -> TaskQueue: ...  # a cdef class: its __cinit__ takes the arguments
    @property
    def max_rows(self) -> int: ...
    def push(self, task: object, rows: int) -> bool:
        """Queue `task` (holding `rows` rows, at least 1); False when that would pass max_rows."""
    def pop_many(self, limit: int) -> list:
        """Up to `limit` tasks in FIFO order (empty when the queue is empty); the GIL is released while it walks."""
    def rows_done(self, rows: int) -> None:
        """Rows that left the queue (the consumer says so once it has taken their tasks)."""
    @property
    def rows(self) -> int:
        """Rows queued and not yet done."""
    def __len__(self) -> int: ...
