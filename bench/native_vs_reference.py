"""What the native modules buy over their pure-Python references.

    python bench/native_vs_reference.py

Queue: push then drain N tasks, single-threaded and with producer threads racing
a consumer. Assembler: gather 64 single-row requests into one batch (the MLP's
784 floats and a 224x224x3 image), and 32 variable-length token rows with padding.
JSON numbers: read a REST predict body into an array (an MLP row, a float image, a
0..255 image), against the general path (orjson, then numpy).
"""
import threading
import time

import numpy as np
import orjson

from fastserve._native import batch_assembler, json_numbers, task_queue
from fastserve.batching import reference


def best_of(fn, repeat=5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def queue_single_thread(queue_class, n=200_000) -> float:
    def run():
        q = queue_class(n)
        for i in range(n):
            q.push(i, 1)
        while len(q):
            q.rows_done(len(q.pop_many(64)))
    return best_of(run) / n


def queue_contended(queue_class, producers=4, n=50_000) -> float:
    def run():
        q = queue_class(4096)
        done = threading.Event()

        def produce():
            for i in range(n):
                while not q.push(i, 1):
                    time.sleep(0)

        def consume():
            while not (done.is_set() and not len(q)):
                got = q.pop_many(64)
                if got:
                    q.rows_done(len(got))
                else:
                    time.sleep(0)

        consumer = threading.Thread(target=consume)
        threads = [threading.Thread(target=produce) for _ in range(producers)]
        consumer.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        consumer.join()
    return best_of(run, 3) / (producers * n)


def gather(fn, parts, inner, dtype, padded) -> float:
    out = np.empty((padded, *inner), dtype)
    return best_of(lambda: [fn(parts, out, padded) for _ in range(100)]) / 100


def concatenate(parts, padded) -> float:
    """What the batch would cost without a reused buffer: np.concatenate + padding rows."""
    def run():
        for _ in range(100):
            batch = np.concatenate(parts)
            if padded > len(batch):
                batch = np.concatenate([batch, np.repeat(batch[:1], padded - len(batch), 0)])
    return best_of(run) / 100


def main() -> None:
    rows = []
    for label, fn, unit in (
        ("queue push+pop, 1 thread", queue_single_thread, "task"),
        ("queue push+pop, 4 producers + 1 consumer", queue_contended, "task"),
    ):
        native, ref = fn(task_queue.TaskQueue), fn(reference.TaskQueue)
        rows.append((label, f"{native * 1e9:,.0f} ns/{unit}", f"{ref * 1e9:,.0f} ns/{unit}", ref / native))
    rng = np.random.default_rng(0)
    cases = [
        ("assemble 64 x [1, 784] float32 -> 64", [rng.random((1, 784), np.float32) for _ in range(64)], (784,), np.float32, 64, False),
        ("assemble 12 x [1, 224, 224, 3] float32 -> 16 (padded)", [rng.random((1, 224, 224, 3), np.float32) for _ in range(12)], (224, 224, 3), np.float32, 16, False),
        ("assemble 32 x [1, 8..64] int32 tokens, padded to 64", [rng.integers(1, 99, (1, int(rng.integers(8, 65))), dtype=np.int32) for _ in range(32)], (64,), np.int32, 32, True),
    ]
    for label, parts, inner, dtype, padded, variable in cases:
        native_fn = batch_assembler.gather_padded if variable else batch_assembler.gather_rows
        ref_fn = reference.gather_padded if variable else reference.gather_rows
        native, ref = gather(native_fn, parts, inner, dtype, padded), gather(ref_fn, parts, inner, dtype, padded)
        rows.append((label, f"{native * 1e6:,.1f} us", f"{ref * 1e6:,.1f} us", ref / native))
        if not variable:
            plain = concatenate(parts, padded)
            rows.append((f"  (np.concatenate, new array per batch: {plain * 1e6:,.1f} us)", "", "", plain / native))
    bodies = [
        ("read an MLP body, 784 floats", rng.random((1, 784), np.float32)),
        ("read an image body, 224x224x3 floats", rng.random((1, 224, 224, 3), np.float32)),
        ("read an image body, 224x224x3 ints 0..255", rng.integers(0, 256, (1, 224, 224, 3))),
    ]
    for label, array in bodies:
        body = orjson.dumps({"instances": array.tolist()})
        native = best_of(lambda: json_numbers.parse_numeric_request(body))  # noqa: B023  called in this iteration
        ref = best_of(lambda: np.asarray(orjson.loads(body)["instances"]))  # noqa: B023  likewise
        rows.append((label, f"{native * 1e6:,.1f} us", f"{ref * 1e6:,.1f} us", ref / native))
    print("| operation | native | Python reference | speed-up |")
    print("|---|---:|---:|---:|")
    for label, native, ref, ratio in rows:
        print(f"| {label} | {native} | {ref} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
