"""Requests that arrive together, served as groups: the part both frontends share.

A frontend's fast path (gRPC: predict_groups.py; REST: rest_groups.py) collects the
predict requests for a batched model that arrive in one event-loop wake-up and whose
inputs have the same dtypes and shapes. `submit` queues their rows as a few tasks (at
most max_batch_size rows each) with one future per task instead of one per request, and
`GroupSeries` counts the group in the same metrics the per-request path keeps.
"""
import functools
import time
from typing import Callable

import numpy as np
from grpc import StatusCode

from fastserve import limits, metrics
from fastserve.batching.scheduler import BatchQueue
from fastserve.errors import ServingError
from fastserve.logs import request_log
from fastserve.pipeline.member import Answer, Member

def batch_rows(inputs: dict[str, np.ndarray]) -> int:
    """The batch size the inputs agree on; 0 when they have none (the per-request path says why)."""
    sizes = {array.shape[0] if array.ndim else -1 for array in inputs.values()}
    return sizes.pop() if len(sizes) == 1 and -1 not in sizes else 0


def admit(scheduler, handle, signature, inputs: dict[str, np.ndarray], max_elements: int) -> tuple[BatchQueue, int] | None:
    """(batch queue, rows per request) when a group can take these inputs; None: the per-request
    path must serve them (the model is not batched, or it would refuse or reject them)."""
    queue = scheduler.batch_queue(handle, signature)
    rows = batch_rows(inputs)
    if queue is None or not rows or rows > queue.config.max_batch_size or not limits.within_elements(inputs, max_elements):
        return None
    try:
        signature.validate(inputs)
    except ServingError:
        return None
    return queue, rows


def submit(queue: BatchQueue, members: list[Member], output_keys: tuple, answer: Answer) -> None:
    """Queue members (each of the same rows and shapes) in tasks of at most max_batch_size rows."""
    per_task = max(1, queue.config.max_batch_size // members[0].rows)
    for start in range(0, len(members), per_task):
        part = members[start : start + per_task]
        try:
            queue.submit(part, output_keys, answer)  # copied once, into the batch
        except ServingError as exc:  # queue full: the answer the per-request path gives
            answer(part, None, exc)


class GroupSeries:
    """The metrics of one group's requests: in flight, request and model counts, latencies."""

    def __init__(self, entrypoint: str, model: str, version: int, signature: str, started: float, requests: int):
        self._entrypoint = entrypoint
        self._model = model
        self._in_flight = metrics.IN_FLIGHT.labels(entrypoint)
        self._series = metrics.model_series(model, version, signature, "Predict")
        self._started = started
        self._in_flight.inc(requests)

    def finish(self, code: StatusCode, requests: int) -> None:
        self._in_flight.dec(requests)
        self._series.count(code, requests)
        if code == StatusCode.OK:
            self._series.ran(time.perf_counter() - self._started, requests)
        seconds = metrics.request_series(self._entrypoint, "Predict", self._model).done(code, self._started, requests)
        for _ in range(requests):
            request_log.record(self._entrypoint, "Predict", self._model, code, seconds)
