"""Latency-aware closing, priority levels, queue policies and concurrency limits of the batch
scheduler, in-process with a recording model in place of TensorFlow."""
import asyncio
import re
import threading
import time

import pytest
from grpc import StatusCode

from fastserve.batching.latency import LatencyModel
from fastserve.batching.scheduler import QUEUE_TIMEOUT
from fastserve.config import BatchingConfig, ConfigError, QueuePolicy, batching_config
from fastserve.errors import ServingError
from fastserve.pipeline.member import Member, priority_level
from fastserve.servables.registry import ServableHandle, ServableVersion
from tests.test_batching_scheduler import RecordingSignature, make, rows


async def call(scheduler, servable, signature, x, priority=0):
    """One request of the given priority; its outputs, or its ServingError."""
    handle = ServableHandle(servable)
    servable.hold()
    future = asyncio.get_running_loop().create_future()

    def answer(members, outputs, error):
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(outputs)

    try:
        scheduler.submit(handle, signature, [Member({"x": x}, 0, priority=priority)], ("n", "y"), answer)
        return await future
    finally:
        servable.release()


def closes(scheduler) -> list[str]:
    records = []
    scheduler.stats.add_observer(lambda record: records.append(record.closed))
    return records


# ---------------------------------------------------------------- the latency model


def test_nothing_measured_closes_at_once():
    model = LatencyModel(0.010, executors=1)
    assert model.close_at(100.0, 100.0, 1, 64)[0] == "idle"


def test_run_time_is_interpolated_between_measured_sizes_and_scaled_past_them():
    model = LatencyModel(0.010, executors=1)
    assert model.run_seconds(8) == 0.0
    model.ran(4, 0.002, 1.0)
    model.ran(16, 0.005, 1.1)
    assert model.run_seconds(4) == pytest.approx(0.002)
    assert model.run_seconds(10) == pytest.approx(0.0035)
    assert model.run_seconds(2) == pytest.approx(0.002)  # below the smallest: at least its time
    assert model.run_seconds(32) == pytest.approx(0.010)  # past the largest: in proportion
    model.ran(4, 0.004, 1.2)
    assert 0.002 < model.run_seconds(4) < 0.004  # a moving average


def steady(model: LatencyModel, rate: float, until: float, rows: int = 1) -> None:
    """Arrivals of `rows` each at `rate` per second for 0.5 s before `until`."""
    t = until - 0.5
    while t <= until:
        model.arrived(rows, t)
        t += 1 / rate


def busy(model: LatencyModel, share: float, until: float, rows: int = 64) -> None:
    """Batches of `rows` (as long as the model says they run) keeping the executor busy `share`
    of the 0.5 s before `until`."""
    seconds = model.run_seconds(rows)
    t = until - 0.5
    while t <= until:
        model.ran(rows, seconds, t)
        t += seconds / share


def linear(model: LatencyModel) -> None:
    for size in (1, 8, 64):
        model.ran(size, 0.0005 + 0.00002 * size, 0.0)  # 0.5 ms a batch, 20 us a row


def test_sparse_arrivals_close_a_batch_at_once():
    model = LatencyModel(0.010, executors=1)
    model.ran(1, 0.0003, 9.999)
    steady(model, 500, until=10.0)  # one every 2 ms, a batch of one runs 0.3 ms
    assert model.close_at(10.0001, 10.0, 1, 64)[0] == "idle"


def test_executors_with_time_to_spare_never_make_a_batch_wait():
    model = LatencyModel(0.010, executors=1)
    linear(model)
    busy(model, 0.3, until=10.0)
    steady(model, 10_000, until=10.0)
    assert model.utilization(10.0) == pytest.approx(0.3, abs=0.05)
    assert model.close_at(10.0, 10.0, 1, 64)[0] == "idle"


def test_dense_arrivals_at_busy_executors_wait_for_a_batch_that_keeps_up_within_the_target():
    model = LatencyModel(0.010, executors=1)
    linear(model)
    busy(model, 0.8, until=10.0)
    steady(model, 10_000, until=10.0)  # one every 100 us: a batch of one could not keep up
    why, when, wanted = model.close_at(10.0, 10.0, 1, 64)
    assert why is None and 10.0 < when <= 10.0 + 0.010 and wanted > 0
    enough = model.enough_rows(64)
    assert 1 < enough < 64
    assert model.close_at(10.0, 10.0, enough, 64)[0] == "idle"  # large enough to keep up: no more waiting
    steady(model, 10_000, until=10.0095)
    busy(model, 0.8, until=10.0095)
    assert model.close_at(10.0095, 10.0, 2, 64)[0] == "target"  # waiting on would miss the target


def test_a_burst_that_ended_is_not_waited_for():
    model = LatencyModel(0.050, executors=1)
    model.ran(1, 0.0005, 0.0)
    model.ran(64, 0.0035, 0.0)
    busy(model, 0.8, until=10.0)
    steady(model, 20_000, until=10.0)
    assert model.close_at(10.0, 9.99, 3, 64)[0] is None  # arrivals are due
    assert model.close_at(10.01, 9.99, 3, 64)[0] == "idle"  # none for many mean gaps: the burst is over


# ---------------------------------------------------------------- closing reasons


def test_batches_record_why_they_closed():
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=4, batch_timeout_micros=20_000, num_batch_threads=1))
    reasons = closes(scheduler)

    async def main():
        await asyncio.gather(*(call(scheduler, servable, sig, rows(1)) for _ in range(4)))  # fills one batch
        await call(scheduler, servable, sig, rows(1))  # alone: waits out the timeout

    asyncio.run(main())
    assert reasons == ["full", "timeout"]
    scheduler.shutdown()


def test_with_a_target_a_lone_request_does_not_wait_out_the_timeout():
    scheduler, servable, sig = make(
        BatchingConfig(max_batch_size=64, batch_timeout_micros=2_000_000, target_latency_ms=1000, num_batch_threads=1))
    reasons = closes(scheduler)

    async def main():
        for _ in range(5):  # one client: each request waits for the one before
            start = time.monotonic()
            await call(scheduler, servable, sig, rows(1))
            assert time.monotonic() - start < 1.0

    asyncio.run(main())
    assert reasons == ["idle"] * 5
    scheduler.shutdown()


def test_target_defaults_the_timeout_and_zero_timeout_keeps_tf_servings_meaning():
    assert BatchingConfig(target_latency_ms=10).timeout_seconds == 0.010
    assert BatchingConfig(target_latency_ms=10, batch_timeout_micros=2000).timeout_seconds == 0.002
    assert BatchingConfig(batch_timeout_micros=0).timeout_seconds == 0


# ---------------------------------------------------------------- priorities


def test_higher_levels_fill_batches_first():
    scheduler, servable, sig = make(
        BatchingConfig(max_batch_size=2, num_batch_threads=1, priority_levels=3, default_priority_level=2))
    sig.gate.clear()  # the model is busy with a first batch while the others queue

    async def main():
        first = asyncio.ensure_future(call(scheduler, servable, sig, rows(1, start=0)))
        await asyncio.get_running_loop().run_in_executor(None, sig.entered.wait, 10)
        queued = [
            asyncio.ensure_future(call(scheduler, servable, sig, rows(1, start=start), priority))
            for start, priority in ((300, 3), (200, 0), (301, 3), (100, 1), (201, 2), (101, 1))
        ]
        await asyncio.sleep(0.05)
        sig.gate.set()
        await asyncio.gather(first, *queued)

    asyncio.run(main())
    firsts = [sorted(int(b["x"][i, 0]) for i in range(len(b["x"]))) for b in sig.batches[1:]]
    assert firsts == [[100, 101], [200, 201], [300, 301]]  # level 1, then 2 (the default), then 3
    scheduler.shutdown()


def test_priority_values_out_of_range_mean_the_default_level():
    config = BatchingConfig(priority_levels=3, default_priority_level=2)
    assert [config.level(p) for p in (0, 1, 2, 3, 4, 99)] == [2, 1, 2, 3, 2, 2]
    assert BatchingConfig(priority_levels=3).default_level == 3
    assert priority_level("2") == 2 and priority_level(b"0") == 0 and priority_level(5) == 5
    for bad in ("-1", "high", "1.5", -1, True, 2.0, "9" * 40):
        with pytest.raises(ServingError) as err:
            priority_level(bad)
        assert err.value.code == StatusCode.INVALID_ARGUMENT and "priority" in err.value.message


def test_a_full_level_refuses_at_once_with_resource_exhausted_and_when_to_retry():
    scheduler, servable, sig = make(BatchingConfig(
        max_batch_size=4, num_batch_threads=1, priority_levels=2, priority_queue_policy=((2, _policy(max_queue_size=3)),)))
    sig.gate.clear()

    async def main():
        first = asyncio.ensure_future(call(scheduler, servable, sig, rows(1)))
        await asyncio.get_running_loop().run_in_executor(None, sig.entered.wait, 10)
        queued = [asyncio.ensure_future(call(scheduler, servable, sig, rows(1), 2)) for _ in range(3)]
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(ServingError) as err:
            await call(scheduler, servable, sig, rows(1), 2)
        refused_in = time.monotonic() - started
        high = asyncio.ensure_future(call(scheduler, servable, sig, rows(1), 1))  # level 1 still has room
        await asyncio.sleep(0)
        sig.gate.set()
        await asyncio.gather(first, high, *queued)
        return err.value, refused_in

    error, refused_in = asyncio.run(main())
    assert error.code == StatusCode.RESOURCE_EXHAUSTED and error.http_status == 429
    assert "priority level 2" in error.message and "max_queue_size of 3 rows" in error.message
    assert error.retry_after >= 1
    assert refused_in < 0.05
    scheduler.shutdown()
    assert servable.in_flight == 0


def test_a_request_past_its_levels_queue_delay_is_answered_unavailable_and_never_runs():
    scheduler, servable, sig = make(BatchingConfig(
        max_batch_size=4, num_batch_threads=1, priority_levels=2, max_queue_delay_ms=50,
        priority_queue_policy=((1, _policy()),)))  # level 1: no delay limit
    sig.gate.clear()

    async def main():
        first = asyncio.ensure_future(call(scheduler, servable, sig, rows(1, start=0)))
        await asyncio.get_running_loop().run_in_executor(None, sig.entered.wait, 10)
        late = asyncio.ensure_future(call(scheduler, servable, sig, rows(1, start=900), 2))
        patient = asyncio.ensure_future(call(scheduler, servable, sig, rows(1, start=100), 1))
        await asyncio.sleep(0.2)  # longer than level 2 allows
        sig.gate.set()
        await first
        with pytest.raises(ServingError) as err:
            await late
        await patient
        return err.value

    error = asyncio.run(main())
    assert error.code == StatusCode.UNAVAILABLE and error.message == QUEUE_TIMEOUT
    assert all(900 not in b["x"] for b in sig.batches)  # never computed
    scheduler.shutdown()
    assert servable.in_flight == 0


def test_max_concurrent_batches_bounds_one_models_batches_across_its_versions():
    config = BatchingConfig(max_batch_size=1, num_batch_threads=2, max_concurrent_batches=1)
    scheduler, v1, sig = make(config)
    v2 = ServableVersion("m", 2, model=None)
    running, most = [0], [0]
    lock = threading.Lock()

    class Counting(RecordingSignature):
        def run(self, inputs, output_keys):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.01)
            with lock:
                running[0] -= 1
            return super().run(inputs, output_keys)

    counting = Counting()

    async def main():
        await asyncio.gather(*(call(scheduler, v, counting, rows(1)) for v in (v1, v2) for _ in range(6)))

    asyncio.run(main())
    assert most[0] == 1 and len(counting.batches) == 12
    scheduler.shutdown()


# ---------------------------------------------------------------- configuration


def test_scheduling_settings_are_validated():
    config = batching_config({"target_latency_ms": 10, "priority_levels": 2, "max_queue_delay_ms": 50, "max_queue_size": 100,
                              "priority_queue_policy": {1: {"max_queue_delay_ms": 5}}, "max_concurrent_batches": 1}, "m")
    assert config.queue_policy(1) == _policy(max_queue_delay_ms=5, max_queue_size=100)  # the rest is the model's
    assert config.queue_policy(2) == _policy(max_queue_delay_ms=50, max_queue_size=100)
    for values, message in (
        ({"target_latency_ms": -1}, "m.target_latency_ms: must not be negative"),
        ({"target_latency_ms": "10"}, "m.target_latency_ms: expected number"),
        ({"priority_levels": 0}, "m.priority_levels: must be at least 1"),
        ({"priority_levels": 2, "default_priority_level": 3}, "m.default_priority_level: must be a level from 1 to"),
        ({"priority_queue_policy": {2: {}}}, "m.priority_queue_policy.2: expected a priority level from 1 to priority_levels (1)"),
        ({"priority_queue_policy": {1: {"timeout": 5}}}, "m.priority_queue_policy.1.timeout: unknown key"),
        ({"priority_queue_policy": {1: {"max_queue_size": -2}}}, "m.priority_queue_policy.1.max_queue_size: must not be negative"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            batching_config(values, "m")


def _policy(**values) -> QueuePolicy:
    return QueuePolicy(**values)
