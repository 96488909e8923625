"""Request limits every transport shares: tensor element counts and deadlines.

A transport gives each request its deadline (REST: rest_api_timeout_in_ms; gRPC: the
client's deadline) and refuses it if it has passed on arrival; an inference call carries
its deadline through the pipeline (pipeline/member.py), so one that expires while it
waits never reaches TensorFlow.
"""
import time

from grpc import StatusCode

from fastserve import metrics
from fastserve.errors import ServingError
from fastserve.pipeline.member import expired


def check_deadline(deadline: float | None) -> None:
    """Refuse (and count) a request whose deadline has passed on arrival."""
    if deadline is not None and time.monotonic() >= deadline:
        metrics.rejected("deadline_exceeded")
        raise expired()


def check_elements(inputs: dict, limit: int, requests: int = 1) -> None:
    """Refuse (and count) requests whose input tensors hold more than `limit` elements in all (0 = no limit)."""
    total = sum(array.size for array in inputs.values()) if limit else 0
    if total <= limit:
        return
    metrics.rejected("too_many_elements", requests)
    raise ServingError(
        StatusCode.RESOURCE_EXHAUSTED,
        f"request has {total} input tensor elements, more than the limit of {limit} (max_tensor_elements)",
        http_status=413,
    )


def rest_timeout_message(timeout_s: float) -> str:
    return f"Deadline exceeded: the request took longer than rest_api_timeout_in_ms={int(timeout_s * 1000)}"
