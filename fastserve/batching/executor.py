"""Runs the members of models without batching: each member's own signature call on a
thread pool (TensorFlow releases the GIL while it runs).

A member whose client has gone or whose deadline passed by the time a thread takes it
is answered without running.
"""
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from grpc import StatusCode

from fastserve import metrics, statistics, tracing
from fastserve.errors import ServingError
from fastserve.pipeline.member import Answer, Member, cancelled, expired
from fastserve.servables.registry import ServableHandle
from fastserve.servables.signature import Signature


class Executor:
    def __init__(self, threads: int):
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="fastserve-exec")

    def submit(self, handle: ServableHandle, signature: Signature, members: list[Member], output_keys: tuple[str, ...],
               answer: Answer) -> None:
        """Run each member; `answer([member], outputs, error)` comes back on this event loop."""
        loop = asyncio.get_running_loop()
        series = metrics.execution_series(handle.name, handle.version, signature.key)
        queued = time.perf_counter()
        for member in members:
            handle.servable.hold()  # the work holds the version until it has run
            self._pool.submit(self._work, handle.servable, signature, member, output_keys, answer, loop, series, queued)

    @staticmethod
    def _work(servable, signature, member: Member, output_keys, answer: Answer, loop, series, queued: float) -> None:
        outputs = error = None
        try:
            why = member.gone(time.monotonic())  # it may have died while it waited for a thread
            if why is not None:
                error = expired() if why == StatusCode.DEADLINE_EXCEEDED else cancelled()
            else:
                started = time.perf_counter()
                outputs = signature.run(member.inputs, output_keys)
                finished = time.perf_counter()
                series.ran(queued, started, finished)
                if member.trace is not None:
                    rows = member.rows or 1
                    tracing.batch_ran(servable.name, servable.version, rows, rows, [(member.trace, tracing.perf_ns(queued))],
                                      tracing.perf_ns(started), tracing.perf_ns(finished))
                statistics.executed(servable.name, servable.version, member.rows or 1, [started - queued], finished - started)
        except ServingError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a failing call must fail its request, never the thread
            error = ServingError(StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            servable.release()
        try:
            loop.call_soon_threadsafe(answer, [member], outputs, error)
        except RuntimeError:  # that loop has closed: nobody is waiting
            pass

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
