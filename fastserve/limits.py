"""Request limits every transport shares: tensor element counts and deadlines.

A transport sets the request's deadline once (REST: rest_api_timeout_in_ms; gRPC: the
client's deadline); the executor checks it again right before the model runs, so a
request that expired while it waited never reaches TensorFlow.
"""
import time
from contextvars import ContextVar

from grpc import StatusCode

from fastserve import metrics
from fastserve.errors import ServingError
from fastserve.pipeline.member import expired

_deadline: ContextVar[float | None] = ContextVar("fastserve_deadline", default=None)


def set_deadline(seconds_from_now: float | None) -> None:
    """Give the current request (its asyncio task) a deadline; None = no deadline."""
    _deadline.set(None if seconds_from_now is None else time.monotonic() + seconds_from_now)


def current_deadline() -> float | None:
    """The current request's deadline on the time.monotonic() clock, or None."""
    return _deadline.get()


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise expired()


def within_elements(inputs: dict, limit: int) -> bool:
    """Whether the input tensors hold at most `limit` elements in all (0 = no limit)."""
    return not limit or sum(array.size for array in inputs.values()) <= limit


def check_elements(inputs: dict, limit: int) -> None:
    """Refuse (and count) a request whose input tensors hold more than `limit` elements in all."""
    if within_elements(inputs, limit):
        return
    metrics.rejected("too_many_elements")
    total = sum(array.size for array in inputs.values())
    raise ServingError(
        StatusCode.RESOURCE_EXHAUSTED,
        f"request has {total} input tensor elements, more than the limit of {limit} (max_tensor_elements)",
        http_status=413,
    )


def rest_timeout_message(timeout_s: float) -> str:
    return f"Deadline exceeded: the request took longer than rest_api_timeout_in_ms={int(timeout_s * 1000)}"
