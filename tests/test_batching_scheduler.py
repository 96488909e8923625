"""The batch scheduler in-process, with a recording model in place of TensorFlow."""
import asyncio
import threading
import time

import numpy as np
import pytest
from grpc import StatusCode
from hypothesis import given, settings
from hypothesis import strategies as st

from fastserve.batching.executor import Executor
from fastserve.batching.scheduler import QUEUE_FULL, Scheduler
from fastserve.config import BatchingConfig, ModelConfig, ServerConfig
from fastserve.errors import ServingError
from fastserve.pipeline.member import Member
from fastserve.servables.registry import ServableHandle, ServableVersion


class RecordingSignature:
    """y = 2x + 1 row by row; remembers every batch it ran; can be held at a gate."""

    key = "serving_default"
    batchable = True

    def __init__(self):
        self.batches: list[dict[str, np.ndarray]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def on(self, device):
        return self

    def run(self, inputs, output_keys):
        self.entered.set()
        self.gate.wait(10)
        self.batches.append({k: v.copy() for k, v in inputs.items()})
        out = {"y": inputs["x"] * 2 + 1, "n": np.full(inputs["x"].shape[0], inputs["x"].shape[0], np.int64)}
        return {k: out[k] for k in output_keys}


def make(batching: BatchingConfig | None):
    config = ServerConfig(models=(ModelConfig("m", "/nowhere", batching=batching),))
    servable = ServableVersion("m", 1, model=None)
    return Scheduler(config, Executor(2)), servable, RecordingSignature()


async def served(scheduler, handle, signature, inputs, output_keys):
    """One request through Scheduler.submit, as the pipeline queues a group of one: its outputs."""
    future = asyncio.get_running_loop().create_future()

    def answer(members, outputs, error):
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(outputs)

    scheduler.submit(handle, signature, [Member(inputs, 0)], output_keys, answer)
    return await future


async def call(scheduler, servable, signature, x, output_keys=("n", "y")):
    handle = ServableHandle(servable)
    servable.hold()  # what a registry lookup does
    try:
        return await served(scheduler, handle, signature, {"x": x}, output_keys)
    finally:
        servable.release()


def rows(n, width=3, start=0):
    return np.arange(start, start + n * width, dtype=np.float32).reshape(n, width)


def test_concurrent_requests_form_batches_and_get_their_own_rows():
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=16, batch_timeout_micros=50_000, num_batch_threads=1))

    async def main():
        sizes = [1, 2, 3, 1, 4, 5]
        xs = [rows(n, start=100 * i) for i, n in enumerate(sizes)]
        results = await asyncio.gather(*(call(scheduler, servable, sig, x) for x in xs))
        for x, result in zip(xs, results):
            np.testing.assert_array_equal(result["y"], x * 2 + 1)
        return results

    results = asyncio.run(main())
    assert [len(b["x"]) for b in sig.batches] == [16]  # one batch: 16 rows
    assert all((r["n"] == 16).all() for r in results)
    totals = scheduler.stats.totals()[("m", 1, "serving_default")]
    assert (totals.batches, totals.tasks, totals.rows) == (1, 6, 16)
    scheduler.shutdown()
    assert servable.in_flight == 0


def test_batch_closes_at_the_timeout_when_not_full():
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=64, batch_timeout_micros=100_000, num_batch_threads=1))

    async def main():
        start = time.monotonic()
        await asyncio.gather(*(call(scheduler, servable, sig, rows(1)) for _ in range(3)))
        return time.monotonic() - start

    waited = asyncio.run(main())
    assert [len(b["x"]) for b in sig.batches] == [3]
    assert 0.09 <= waited < 5
    scheduler.shutdown()


def test_padding_to_allowed_batch_sizes_is_invisible_to_clients():
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=8, allowed_batch_sizes=(2, 4, 8), batch_timeout_micros=20_000))

    async def main():
        return await asyncio.gather(call(scheduler, servable, sig, rows(2)), call(scheduler, servable, sig, rows(1, start=50)))

    a, b = asyncio.run(main())
    assert [len(x["x"]) for x in sig.batches] == [4]  # 3 rows padded to 4
    np.testing.assert_array_equal(sig.batches[0]["x"][3], sig.batches[0]["x"][0])  # padded with row 0
    np.testing.assert_array_equal(a["y"], rows(2) * 2 + 1)
    np.testing.assert_array_equal(b["y"], rows(1, start=50) * 2 + 1)
    assert scheduler.stats.totals()[("m", 1, "serving_default")].padded_rows == 4
    scheduler.shutdown()


def test_different_shapes_never_share_a_batch_without_padding():
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=32, batch_timeout_micros=20_000, num_batch_threads=1))

    async def main():
        return await asyncio.gather(*(call(scheduler, servable, sig, rows(1, width=w)) for w in (3, 5, 3, 5)))

    results = asyncio.run(main())
    assert sorted(b["x"].shape for b in sig.batches) == [(2, 3), (2, 5)]
    for w, r in zip((3, 5, 3, 5), results):
        np.testing.assert_array_equal(r["y"], rows(1, width=w) * 2 + 1)
    scheduler.shutdown()


def test_variable_length_inputs_are_padded_when_asked():
    scheduler, servable, sig = make(
        BatchingConfig(max_batch_size=32, batch_timeout_micros=30_000, num_batch_threads=1, pad_variable_length_inputs=True)
    )

    async def main():
        return await asyncio.gather(call(scheduler, servable, sig, rows(1, width=2)), call(scheduler, servable, sig, rows(2, width=4)))

    short, long = asyncio.run(main())
    assert [b["x"].shape for b in sig.batches] == [(3, 4)]
    np.testing.assert_array_equal(sig.batches[0]["x"][0], [0, 1, 0, 0])  # zero-padded to width 4
    assert short["y"].shape == (1, 4)  # the model's output for the padded row, as TF Serving returns it
    np.testing.assert_array_equal(long["y"], rows(2, width=4) * 2 + 1)
    scheduler.shutdown()


def test_large_requests_are_split_across_batches_when_enabled():
    scheduler, servable, sig = make(
        BatchingConfig(max_batch_size=20, enable_large_batch_splitting=True, max_execution_batch_size=4, num_batch_threads=2)
    )

    async def main():
        return await asyncio.gather(call(scheduler, servable, sig, rows(10)), call(scheduler, servable, sig, rows(3, start=500)))

    big, small = asyncio.run(main())
    assert all(len(b["x"]) <= 4 for b in sig.batches)
    assert sum(len(b["x"]) for b in sig.batches) == 13
    np.testing.assert_array_equal(big["y"], rows(10) * 2 + 1)
    np.testing.assert_array_equal(small["y"], rows(3, start=500) * 2 + 1)
    scheduler.shutdown()
    assert servable.in_flight == 0


def test_requests_above_max_batch_size_are_rejected():
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=4))
    with pytest.raises(ServingError) as err:
        asyncio.run(call(scheduler, servable, sig, rows(5)))
    assert err.value.code == StatusCode.INVALID_ARGUMENT
    assert err.value.message == "Task size 5 is larger than maximum input batch size 4"
    scheduler2, servable2, sig2 = make(BatchingConfig(max_batch_size=8, enable_large_batch_splitting=True))
    with pytest.raises(ServingError, match="Task size 9 is larger than maximum input batch size 8"):
        asyncio.run(call(scheduler2, servable2, sig2, rows(9)))
    assert not sig.batches and not sig2.batches and servable.in_flight == 0
    scheduler.shutdown()
    scheduler2.shutdown()


def test_full_queue_rejects_fast_with_tf_servings_status():
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=2, max_enqueued_batches=2, num_batch_threads=1))
    sig.gate.clear()  # the model is busy: nothing leaves the queue

    async def main():
        first = asyncio.ensure_future(call(scheduler, servable, sig, rows(1)))
        await asyncio.get_running_loop().run_in_executor(None, sig.entered.wait, 10)
        queued = [asyncio.ensure_future(call(scheduler, servable, sig, rows(1))) for _ in range(4)]  # 4 rows = 2 batches
        await asyncio.sleep(0)
        with pytest.raises(ServingError) as err:
            await call(scheduler, servable, sig, rows(1))
        sig.gate.set()
        await asyncio.gather(first, *queued)
        return err.value

    error = asyncio.run(main())
    assert error.code == StatusCode.UNAVAILABLE and error.message == QUEUE_FULL
    assert error.http_status == 503
    scheduler.shutdown()
    assert servable.in_flight == 0


def test_model_errors_reach_every_request_of_the_batch_and_the_thread_survives():
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=8, batch_timeout_micros=20_000, num_batch_threads=1))

    async def main():
        bad = await asyncio.gather(*(call(scheduler, servable, sig, rows(1), output_keys=("y", "missing")) for _ in range(2)), return_exceptions=True)
        good = await call(scheduler, servable, sig, rows(1))
        return bad, good

    bad, good = asyncio.run(main())
    assert all(isinstance(e, ServingError) and e.code == StatusCode.INTERNAL for e in bad)
    np.testing.assert_array_equal(good["y"], rows(1) * 2 + 1)
    scheduler.shutdown()


def test_input_rules_of_batching():
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=8))

    async def run(inputs):
        return await served(scheduler, ServableHandle(servable), sig, inputs, ("y",))

    with pytest.raises(ServingError, match="at least one dimension"):
        asyncio.run(run({"x": np.float32(1)}))
    with pytest.raises(ServingError, match="equal 0th-dimension size"):
        asyncio.run(run({"x": rows(2), "z": rows(3)}))
    assert asyncio.run(run({"x": rows(0)}))["y"].shape == (0, 3)  # nothing to batch: runs as it is
    assert scheduler.stats.totals() == {}
    scheduler.shutdown()


def test_unbatched_models_use_the_plain_executor_and_release_closes_queues():
    scheduler, servable, sig = make(None)
    result = asyncio.run(call(scheduler, servable, sig, rows(3)))
    assert (result["n"] == 3).all() and scheduler.stats.totals() == {}
    scheduler.shutdown()

    before = set(threading.enumerate())
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=8, num_batch_threads=2))
    asyncio.run(call(scheduler, servable, sig, rows(1)))
    assert ("m", 1, "serving_default") in scheduler.stats.queue_lengths()
    threads = [t for t in set(threading.enumerate()) - before if t.name.startswith("fastserve-batch-m")]
    assert len(threads) == 2
    scheduler.release_version(servable)
    assert not any(t.is_alive() for t in threads)
    assert scheduler.stats.queue_lengths() == {}
    scheduler.shutdown()


def test_results_resolve_on_each_callers_event_loop_with_one_wakeup_per_batch():
    """Two event loops on two threads submit into one queue; every future resolves on its own loop."""
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=64, batch_timeout_micros=100_000, num_batch_threads=1))
    wakeups = {}

    def loop_thread(name, start, out):
        loop = asyncio.new_event_loop()
        calls = 0
        original = loop.call_soon_threadsafe

        def counting(*args, **kwargs):
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting

        async def main():
            xs = [rows(1, start=start + i) for i in range(5)]
            results = await asyncio.gather(*(call(scheduler, servable, sig, x) for x in xs))
            for x, r in zip(xs, results):
                np.testing.assert_array_equal(r["y"], x * 2 + 1)
            out[name] = len(results)

        loop.run_until_complete(main())
        wakeups[name] = calls
        loop.close()

    out = {}
    threads = [threading.Thread(target=loop_thread, args=(n, s, out)) for n, s in (("a", 0), ("b", 1000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {"a": 5, "b": 5}
    batches = len(sig.batches)
    assert batches <= 2  # 10 single-row requests, at most one batch per loop's burst
    assert all(1 <= n <= batches for n in wakeups.values())  # one wake-up per batch, not per request
    scheduler.shutdown()


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=30),
    capacity=st.integers(1, 8),
    splitting=st.booleans(),
    padded=st.booleans(),
    threads=st.integers(1, 3),
)
def test_any_mix_of_requests_gets_exactly_its_rows_back(sizes, capacity, splitting, padded, threads):
    max_batch = 12 if splitting else max(capacity, 12)
    execution = capacity if splitting else max_batch
    allowed = tuple(sorted({max(1, execution // 2), execution})) if padded else ()
    config = BatchingConfig(
        max_batch_size=max_batch, batch_timeout_micros=1000, num_batch_threads=threads, max_enqueued_batches=100,
        enable_large_batch_splitting=splitting, max_execution_batch_size=capacity if splitting else 0, allowed_batch_sizes=allowed,
    )
    scheduler, servable, sig = make(config)

    async def main():
        xs = [rows(n, start=1000 * i) for i, n in enumerate(sizes)]
        results = await asyncio.gather(*(call(scheduler, servable, sig, x) for x in xs))
        for x, result in zip(xs, results):
            np.testing.assert_array_equal(result["y"], x * 2 + 1)  # its own rows, in order, nothing else

    try:
        asyncio.run(main())
    finally:
        scheduler.shutdown()
    for batch in sig.batches:
        assert len(batch["x"]) <= execution
        assert not allowed or len(batch["x"]) in allowed
    real_rows = scheduler.stats.totals()[("m", 1, "serving_default")].rows
    assert real_rows == sum(sizes)  # every row ran exactly once
    assert servable.in_flight == 0


@settings(max_examples=25, deadline=None)
@given(
    groups=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 3)), min_size=1, max_size=12),  # (requests, rows each)
    capacity=st.integers(1, 8),
    threads=st.integers(1, 3),
)
def test_grouped_requests_split_over_batches_get_exactly_their_rows_back(groups, capacity, threads):
    """A group's requests stay separate members of one task; the batches that take its rows
    (split by max_execution_batch_size) copy them from the members they span."""
    config = BatchingConfig(
        max_batch_size=18, batch_timeout_micros=1000, num_batch_threads=threads, max_enqueued_batches=100,
        enable_large_batch_splitting=True, max_execution_batch_size=capacity,
    )
    scheduler, servable, sig = make(config)
    queue = scheduler.batch_queue(ServableHandle(servable), sig)

    async def main():
        chunks = [[rows(size, start=1000 * g + 100 * r) for r in range(requests)] for g, (requests, size) in enumerate(groups)]
        futures = []
        for group in chunks:
            future = asyncio.get_running_loop().create_future()
            queue.submit([Member({"x": x}, len(x)) for x in group], ("y",), lambda members, outputs, error, f=future: f.set_result(outputs))
            futures.append(future)
        for group, result in zip(chunks, await asyncio.gather(*futures)):
            np.testing.assert_array_equal(result["y"], np.concatenate(group) * 2 + 1)

    try:
        asyncio.run(main())
    finally:
        scheduler.shutdown()
    assert all(len(batch["x"]) <= capacity for batch in sig.batches)
    assert scheduler.stats.totals()[("m", 1, "serving_default")].rows == sum(n * size for n, size in groups)
    assert servable.in_flight == 0


def test_members_gone_before_their_batch_closes_are_never_computed():
    """A group's members keep their own deadlines and cancellation: those gone when the batch
    closes (a long batch timeout) are answered without running; the rest of the group runs."""
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=16, batch_timeout_micros=300_000, num_batch_threads=1))
    queue = scheduler.batch_queue(ServableHandle(servable), sig)
    xs = [rows(1, start=10 * i) for i in range(6)]

    async def main():
        now = time.monotonic()
        members = [Member({"x": x}, 1) for x in xs]
        members[1].deadline = members[4].deadline = now + 0.05  # expire while the batch waits for more rows
        answers = []
        queue.submit(members, ("y",), lambda ms, outputs, error: answers.append((list(ms), outputs, error)))
        await asyncio.sleep(0.1)
        members[2].cancelled = True  # its client went away while queued
        while sum(len(ms) for ms, _, _ in answers) < 6:
            await asyncio.sleep(0.01)
        return members, answers

    members, answers = asyncio.run(main())
    scheduler.shutdown()
    by_member = {id(m): (outputs, error, ms) for ms, outputs, error in answers for m in ms}
    for i in (1, 4):
        outputs, error, _ = by_member[id(members[i])]
        assert outputs is None and error.code == StatusCode.DEADLINE_EXCEEDED
    assert by_member[id(members[2])][1].code == StatusCode.CANCELLED
    outputs, error, ran = by_member[id(members[0])]
    assert error is None and ran == [members[i] for i in (0, 3, 5)]
    np.testing.assert_array_equal(outputs["y"], np.concatenate([xs[0], xs[3], xs[5]]) * 2 + 1)
    assert [len(batch["x"]) for batch in sig.batches] == [3]  # the gone rows were never copied nor computed
    assert servable.in_flight == 0


def test_a_task_whose_members_are_all_gone_is_dropped_whole():
    scheduler, servable, sig = make(BatchingConfig(max_batch_size=16, batch_timeout_micros=200_000, num_batch_threads=1,
                                                   enable_large_batch_splitting=True, max_execution_batch_size=2))
    queue = scheduler.batch_queue(ServableHandle(servable), sig)

    async def main():
        gone = Member({"x": rows(5)}, 5, deadline=time.monotonic() - 1)  # split over batches of 2: never started
        errors = []
        queue.submit([gone], ("y",), lambda ms, outputs, error: errors.append(error))
        future = asyncio.get_running_loop().create_future()
        queue.submit([Member({"x": rows(1)}, 1)], ("y",), lambda ms, outputs, error: future.set_result(outputs))
        return errors, await future

    errors, outputs = asyncio.run(main())
    scheduler.shutdown()
    assert [e.code for e in errors] == [StatusCode.DEADLINE_EXCEEDED]
    np.testing.assert_array_equal(outputs["y"], rows(1) * 2 + 1)
    assert sum(len(batch["x"]) for batch in sig.batches) == 1
    assert servable.in_flight == 0
