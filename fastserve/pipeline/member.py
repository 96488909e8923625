"""One request on its way to a model: its rows, its own deadline and its cancellation.

Requests that arrive together and agree share the work of a group, but each stays a
Member: a member whose deadline passes or whose client goes away is answered at once by
its transport and dropped when its batch is formed, so its rows are never copied into a
batch nor computed, while the rest of its group goes on.
"""
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from grpc import StatusCode

from fastserve.errors import ServingError, invalid_argument

EXPIRED_MESSAGE = "Deadline exceeded: the request expired before the model ran"
CANCELLED_MESSAGE = "Cancelled"


class Member:
    __slots__ = ("inputs", "rows", "deadline", "cancelled", "priority", "trace")

    def __init__(self, inputs: dict[str, np.ndarray], rows: int, deadline: float | None = None, priority: int = 0):
        self.inputs = inputs
        self.rows = rows
        self.deadline = deadline  # on the time.monotonic() clock; None: none
        self.cancelled = False  # set on its event loop when the client has gone (it has been answered)
        self.priority = priority  # 1 = highest; 0 = the model's default level
        self.trace: Any = None  # its request's span, when traced (fastserve/tracing.py)

    def gone(self, now: float) -> StatusCode | None:
        """Why no one waits for this member's answer any more (None: someone does)."""
        if self.cancelled:
            return StatusCode.CANCELLED
        if self.deadline is not None and now >= self.deadline:
            return StatusCode.DEADLINE_EXCEEDED
        return None


PRIORITY_KEY = "fastserve-priority"  # the HTTP header and gRPC metadata key of a request's priority level


def priority_level(value) -> int:
    """A request's priority from a header, metadata or request parameter: 1 (highest) and up;
    0 or past the model's last level means its default level."""
    given = value.decode("latin-1") if isinstance(value, bytes) else value
    if isinstance(given, str):
        value = int(given) if given.isascii() and given.isdigit() and len(given) <= 18 else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid_argument(f"priority must be a non-negative integer (1 = the highest level), got {str(given)[:40]!r}")
    return value


def deadline_after(seconds: float | None) -> float | None:
    """The deadline `seconds` from now on the members' clock (None: no deadline)."""
    return None if seconds is None else time.monotonic() + seconds


def expired() -> ServingError:
    """The answer of a request whose deadline passed before the model ran it."""
    return ServingError(StatusCode.DEADLINE_EXCEEDED, EXPIRED_MESSAGE)


def cancelled() -> ServingError:
    return ServingError(StatusCode.CANCELLED, CANCELLED_MESSAGE)


# answer(members, their outputs stacked in member order or None, error or None), on the members' loop
Answer = Callable[[list[Member], dict | None, ServingError | None], None]
