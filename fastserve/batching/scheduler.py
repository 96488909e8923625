"""Dynamic batching: many concurrent requests become few large model calls.

The Scheduler takes a group's members from the pipeline (`submit(handle, signature,
members, output_keys, answer)`). A model without a batching config goes to the plain
Executor. For a batched model there is one BatchQueue per servable version x signature:

  event loop ── push ──► native lock-free queue ──► batch threads (num_batch_threads)
                                                     form a batch (one thread at a time),
                                                     assemble, run, split into views
  event loop ◄── one call_soon_threadsafe per batch and loop ──┘

A batch closes when it has max_batch_size rows (max_execution_batch_size with
splitting) of members someone still waits for ("full"), or when its oldest task has
waited batch_timeout_micros ("timeout"); with target_latency_ms, also when waiting longer
would miss the target or no arrival is worth waiting for (batching/latency.py: "target",
"idle"). Members whose deadline passed or whose client went away are dropped as it
closes, never copied nor computed, and their answers go back at once. Tasks whose
non-batch shapes differ go to different batches unless pad_variable_length_inputs is set.

Each priority level has its own queue; batches take the highest level's tasks first.
A level holds at most max_enqueued_batches x max_batch_size rows (beyond: TF Serving's
UNAVAILABLE), or its max_queue_size (beyond: RESOURCE_EXHAUSTED at once, with when to
retry); a task that waited longer than its level's max_queue_delay_ms is answered
UNAVAILABLE and never runs. max_concurrent_batches bounds the batches of one model
running at once: a formed batch waits for its turn.

Every queued task holds a reference on its servable version (hold/release), so a
version is never freed under queued or running work; the manager releases a
version's queues once it has drained (release_version).
"""
import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from typing import Any

import numpy as np
from grpc import StatusCode

from fastserve import metrics, tracing
from fastserve._native.task_queue import TaskQueue
from fastserve.batching.assembler import BatchAssembler
from fastserve.batching.executor import Executor
from fastserve.batching.latency import LatencyModel
from fastserve.batching.stats import BatchRecord, BatchStats
from fastserve.batching import devices
from fastserve.config import BatchingConfig, ConfigError, ServerConfig
from fastserve.errors import ServingError, invalid_argument
from fastserve.pipeline.member import Answer, Member, cancelled, expired
from fastserve.servables.registry import ServableHandle, ServableVersion
from fastserve.servables.signature import Signature

log = logging.getLogger(__name__)

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
QUEUE_TIMEOUT = "Request timeout expired"  # Triton's words for a request past its queue delay


class _Task:
    """Members queued together (one request, or the requests of a group of equal shapes):
    their inputs stay apart until the assembler copies them into the batch. With splitting,
    consecutive row ranges of it may run in different batches; `offset` is the first row
    no batch has taken yet."""

    __slots__ = ("members", "rows", "output_keys", "batch_key", "loop", "answer", "enqueued", "offset", "parts", "lock", "level")

    def __init__(self, members: list[Member], output_keys, batch_key, loop, answer: Answer, level: "_Level"):
        self.level = level
        self.members = members
        self.rows = sum(m.rows for m in members)
        self.output_keys = output_keys
        self.batch_key = batch_key
        self.loop = loop
        self.answer = answer
        self.enqueued = time.monotonic()
        self.offset = 0
        self.parts = None  # once split: {start row: (rows, outputs, error)} of the pieces that ran
        self.lock = None

    def rows_of(self, key: str, start: int, stop: int) -> list[np.ndarray]:
        """Views of rows start..stop of one input, one per member they span."""
        if start == 0 and stop == self.rows:
            return [m.inputs[key] for m in self.members]
        out, first = [], 0
        for member in self.members:
            lo, hi = max(start, first), min(stop, first + member.rows)
            if lo < hi:
                out.append(member.inputs[key][lo - first : hi - first])
            first += member.rows
        return out

    def drop_gone(self, now: float) -> list[tuple[list[Member], ServingError]]:
        """Take out the members no one waits for; [(members, their answer)] of those dropped."""
        for member in self.members:  # the common case first, without a call per member: all alive
            if member.cancelled or (member.deadline is not None and now >= member.deadline):
                break
        else:
            return []
        kept: list[Member] = []
        expired_: list[Member] = []
        cancelled_: list[Member] = []
        for member in self.members:
            why = member.gone(now)
            (kept if why is None else expired_ if why == StatusCode.DEADLINE_EXCEEDED else cancelled_).append(member)
        if len(kept) == len(self.members):
            return []
        self.members = kept
        self.rows = sum(m.rows for m in kept)
        dropped = [(expired_, expired())] if expired_ else []
        return dropped + ([(cancelled_, cancelled())] if cancelled_ else [])


class _Level:
    """One priority level's queue. `carry`: its tasks popped from the queue but not (fully)
    batched yet, oldest first; only the batch-forming thread touches it, and its rows still
    count against the queue's bound until batched."""

    __slots__ = ("number", "queue", "carry", "max_rows", "max_delay")

    def __init__(self, number: int, config: BatchingConfig):
        policy = config.queue_policy(number)
        self.number = number
        self.max_rows = policy.max_queue_size  # 0: TF Serving's bound only
        self.queue = TaskQueue(self.max_rows or config.max_enqueued_batches * config.max_batch_size)
        self.carry: list[_Task] = []
        self.max_delay = policy.max_queue_delay_ms / 1e3  # 0: none

    def waited_too_long(self, task: _Task, now: float) -> bool:
        return self.max_delay > 0 and task.offset == 0 and now - task.enqueued > self.max_delay


class BatchQueue:
    """The queues and batch threads of one servable version x signature."""

    def __init__(self, servable: ServableVersion, signature: Signature, config: BatchingConfig, stats: BatchStats,
                 devices: tuple[str, ...] = (), instances_per_device: int = 1, turns: threading.Semaphore | None = None):
        self.key = (servable.name, servable.version, signature.key)
        self.config = config
        self._servable = servable
        self._signature = signature
        self._stats = stats
        self._capacity = config.execution_batch_size
        self._levels = [_Level(number, config) for number in range(1, config.priority_levels + 1)]
        self._forming = threading.Lock()  # one thread forms a batch at a time
        self._turns = turns or contextlib.nullcontext()  # the model's max_concurrent_batches
        self._turns_limited = turns is not None
        self._wake = threading.Event()
        self._sleeping = False
        self._wake_rows = 1  # a sleeping batch thread wants waking once this many rows wait
        self._closed = False
        stats.watch_queue(self.key, self._waiting)
        # instances_per_device batch threads per device, each running the version's instance
        # on its device; else num_batch_threads threads running the one instance.
        placement: list[str | None] = [d for d in devices for _ in range(instances_per_device)] or [None] * config.num_batch_threads
        concurrent = min(len(placement), config.max_concurrent_batches or len(placement))
        # measured always (a refusal says when to retry), deciding only with a target
        self._latency = LatencyModel(config.target_latency_ms / 1e3, concurrent)
        self._threads = [
            threading.Thread(target=self._work, args=(device,), name=f"fastserve-batch-{servable.name}-{i}", daemon=True)
            for i, device in enumerate(placement)
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------ event loop side

    def submit(self, members: list[Member], output_keys: tuple[str, ...], answer: Answer) -> None:
        """Queue members (their rows together at most max_batch_size) as one task; `answer` is
        called on this event loop with their outputs, or for those dropped on the way."""
        rows = sum(m.rows for m in members)
        if rows > self.config.max_batch_size:
            raise invalid_argument(f"Task size {rows} is larger than maximum input batch size {self.config.max_batch_size}")
        for member in members:
            member.inputs = {k: v if v.dtype.hasobject else np.ascontiguousarray(v) for k, v in member.inputs.items()}
        level = self._levels[self.config.level(members[0].priority) - 1]
        task = _Task(members, output_keys, self._batch_key(members[0].inputs, output_keys), asyncio.get_running_loop(), answer,
                     level)
        self._servable.hold()  # released when the task's last rows have run, or it is dropped
        if self._closed or not level.queue.push(task, rows):
            self._servable.release()
            raise self._refusal(level, len(members))
        self._latency.arrived(rows, task.enqueued)
        if self._sleeping and self._queued_rows() >= self._wake_rows:
            self._wake.set()  # not on every push: a forming batch waits until it can fill or times out

    def _refusal(self, level: _Level, requests: int) -> ServingError:
        """The answer to a task its level has no room for."""
        if not level.max_rows or self._closed:
            metrics.rejected("queue_full", requests)
            return ServingError(StatusCode.UNAVAILABLE, QUEUE_FULL)
        metrics.rejected("max_queue_size", requests)
        rate = self._latency.rows_per_second(self._capacity)
        retry = math.ceil(level.queue.rows / rate) if rate > 0 else 1  # when the queue has likely drained
        name = self.key[0]
        return ServingError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"Model {name} is overloaded: priority level {level.number} already holds its max_queue_size of "
            f"{level.max_rows} rows; retry later",
            retry_after=max(1, retry),
        )

    def refusal_now(self, priority: int, ahead: int) -> ServingError | None:
        """The refusal any request at this priority gets now, with `ahead` rows on their way to
        its level (it cannot take one more row), else None: for transports that can refuse
        before decoding a request."""
        level = self._levels[self.config.level(priority) - 1]
        if self._closed or level.queue.rows + ahead < level.queue.max_rows:
            return None
        return self._refusal(level, 1)

    def _queued_rows(self) -> int:
        return sum(level.queue.rows for level in self._levels)

    def _waiting(self) -> tuple[int, int]:
        """(tasks, rows) waiting, for metrics."""
        return (sum(len(level.queue) + len(level.carry) for level in self._levels), self._queued_rows())

    def _batch_key(self, inputs, output_keys):
        """Tasks batch together only when this key is equal."""
        if self.config.pad_variable_length_inputs:
            shapes = tuple((k, v.ndim) for k, v in sorted(inputs.items()))
        else:
            shapes = tuple((k, v.shape[1:]) for k, v in sorted(inputs.items()))
        return output_keys, shapes

    # ------------------------------------------------------------ batch threads

    def _work(self, device: str | None) -> None:
        signature = self._signature.on(device)  # the version's instance on this thread's device
        assembler = BatchAssembler(self.config.pad_variable_length_inputs)
        while True:
            with self._forming:
                pieces, dropped, why = self._next_batch()
            self._post(dropped)
            if pieces is None:
                return
            if pieces:
                with self._turns:
                    if self._turns_limited:  # members may have gone while the batch waited for its turn
                        dropped = []
                        pieces, _ = self._closing(pieces, dropped)
                        self._post(dropped)
                    if pieces:
                        self._execute(pieces, signature, assembler, why)

    def _next_batch(self):
        """([(task, start, stop)] totalling at most the batch capacity, or None once closed and
        empty; the answers of the members dropped on the way; why the batch closed). A batch
        closes full of rows that someone still waits for: members that expired or were
        cancelled while it formed are taken out as it closes, and the rows they free are
        filled again until it times out. Higher priority levels' tasks join it first."""
        timeout = self.config.timeout_seconds
        pieces, rows, key, oldest, dropped = [], 0, None, 0.0, []
        self._drop_waited_too_long(dropped)
        while True:
            why = None
            while rows < self._capacity:
                found = self._find(key)
                if found is None:
                    now = time.monotonic()
                    if pieces:
                        why, wake_at, wanted = self._waits(now, oldest, oldest + timeout, rows)
                        if why is not None:
                            break
                        self._sleep(wake_at - now, wanted)
                        continue
                    if self._closed:
                        return None, dropped, None
                    self._sleep(None, self._capacity)
                    continue
                level, index = found
                task = level.carry[index]
                if task.offset == 0 and self._drop_gone(task, dropped, time.monotonic()):
                    del level.carry[index]  # no one waits for any of it
                    continue
                take = min(task.rows - task.offset, self._capacity - rows)
                if take < task.rows - task.offset and not self.config.enable_large_batch_splitting:
                    why = "full"
                    break  # does not fit: it starts the next batch
                if not pieces:
                    key, oldest = task.batch_key, task.enqueued
                oldest = min(oldest, task.enqueued)  # a higher level's task may have joined first
                if take < task.rows and task.parts is None:  # split across batches
                    task.lock, task.parts = threading.Lock(), {}
                pieces.append((task, task.offset, task.offset + take))
                task.offset += take
                rows += take
                level.queue.rows_done(take)
                if task.offset == task.rows:
                    del level.carry[index]
            pieces, freed = self._closing(pieces, dropped)
            rows -= freed
            if (why is not None and why != "full") or not freed:
                return pieces, dropped, why or "full"
            if not pieces:
                key = None  # all of it was gone: a new batch starts with the next task

    def _waits(self, now: float, oldest: float, deadline: float, rows: int) -> tuple[str | None, float, int]:
        """With nothing more queued for a batch of `rows`: why it closes now, else (None, when to
        look again, how many more rows queued should wake its thread)."""
        if now >= deadline:
            return "timeout", 0.0, 0
        if not self._latency.target:
            return None, deadline, self._capacity - rows
        why, when, wanted = self._latency.close_at(now, oldest, rows, self._capacity)
        return why, min(when, deadline), wanted

    def _closing(self, pieces, dropped: list) -> tuple[list, int]:
        """The batch as it closes, without the members gone since they joined it (of the tasks
        that run whole in it; a task split over batches runs on); and how many rows that freed."""
        kept, freed, now = [], 0, time.monotonic()
        for task, start, stop in pieces:
            if start == 0 and stop == task.rows and task.parts is None:
                before = task.rows
                if self._drop_gone(task, dropped, now):
                    freed += before
                    continue
                freed += before - task.rows
                stop = task.rows
            kept.append((task, start, stop))
        return kept, freed

    def _drop_gone(self, task: _Task, dropped: list, now: float) -> bool:
        """Drop the task's gone members (their answers go to `dropped`), all of them when it waited
        longer than its level allows; True when none is left."""
        before = task.rows
        if task.level.waited_too_long(task, now):
            dropped.append((task, task.members, None, ServingError(StatusCode.UNAVAILABLE, QUEUE_TIMEOUT)))
            metrics.rejected("max_queue_delay", len(task.members))
            task.members, task.rows = [], 0
        else:
            for members, error in task.drop_gone(now):
                dropped.append((task, members, None, error))
        if task.rows == before:
            return False
        if task.offset == 0:  # still counted in the queue's rows
            task.level.queue.rows_done(before - task.rows)
        task.offset = min(task.offset, task.rows)
        if task.members:
            return False
        self._servable.release()
        return True

    def _drop_waited_too_long(self, dropped: list) -> None:
        """Answer the tasks of levels with a max_queue_delay_ms that waited longer (a busy
        queue's lower levels may not be looked at otherwise)."""
        now = time.monotonic()
        for level in self._levels:
            if level.max_delay > 0:
                while taken := level.queue.pop_many(self._capacity):
                    level.carry.extend(taken)
                kept = []
                for task in level.carry:
                    if level.waited_too_long(task, now):
                        self._drop_gone(task, dropped, now)
                    else:
                        kept.append(task)
                level.carry = kept

    def _find(self, key) -> tuple[_Level, int] | None:
        """(level, index in its carry list) of the oldest task of the highest level that can join
        a batch of `key` (any task when key is None), taking tasks from the queues as needed."""
        for level in self._levels:
            carry, searched = level.carry, 0
            while True:
                for index in range(searched, len(carry)):
                    if key is None or carry[index].batch_key == key:
                        return level, index
                searched = len(carry)
                taken = level.queue.pop_many(self._capacity)
                if not taken:
                    break
                carry.extend(taken)
        return None

    def _sleep(self, timeout: float | None, wanted_rows: int) -> None:
        self._wake.clear()
        # The carries' rows still count in the queues' rows: wait for that many more.
        if timeout is not None:
            carried = sum(t.rows - t.offset for level in self._levels for t in level.carry)
            self._wake_rows = carried + max(1, wanted_rows)
        else:
            self._wake_rows = 1
        self._sleeping = True
        if not any(len(level.queue) for level in self._levels) and not self._closed:  # a push may have missed the flag
            self._wake.wait(timeout)
        self._sleeping = False

    def _execute(self, pieces, signature: Signature, assembler: BatchAssembler, why: str) -> None:
        start = time.monotonic()
        rows = sum(stop - begin for _, begin, stop in pieces)
        padded = self.config.padded_size(rows)
        output_keys = pieces[0][0].output_keys
        try:
            inputs = {
                key: assembler.gather(key, [rows for t, a, b in pieces for rows in t.rows_of(key, a, b)], padded)
                for key in pieces[0][0].members[0].inputs
            }
            outputs = assembler.detach(signature.run(inputs, output_keys))
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != padded:
                    raise ServingError(
                        StatusCode.FAILED_PRECONDITION,
                        f"Batched output tensor '{name}' has 0th dimension "
                        f"{array.shape[0] if array.ndim else 'none (a scalar)'} which does not match the batch size {padded}; "
                        "this model cannot be batched",
                    )
            results: list[tuple[Any, int, int, dict[str, np.ndarray] | None, ServingError | None]] = []
            row = 0
            for task, a, b in pieces:
                results.append((task, a, b, {k: v[row : row + b - a] for k, v in outputs.items()}, None))
                row += b - a
        except ServingError as exc:
            results = [(task, a, b, None, exc) for task, a, b in pieces]
        except Exception as exc:  # a failing batch must fail its requests, never the thread
            log.exception("batch of %s failed", self.key)
            error = ServingError(StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            results = [(task, a, b, None, error) for task, a, b in pieces]
        finished = time.monotonic()
        seconds = finished - start
        self._latency.ran(padded, seconds, finished)
        if tracing.enabled():
            waits = [(m.trace, tracing.monotonic_ns(t.enqueued)) for t, _, _ in pieces for m in t.members if m.trace is not None]
            if waits:
                tracing.batch_ran(self.key[0], self.key[1], rows, padded, waits, tracing.monotonic_ns(start),
                                  tracing.monotonic_ns(finished), why)
        self._stats.record(  # before the results: a client that has its answer sees its batch counted
            BatchRecord(self.key, len(pieces), rows, padded, tuple(start - t.enqueued for t, _, _ in pieces), seconds, why)
        )
        self._deliver(results)

    def _deliver(self, results) -> None:
        """Answer the finished tasks' members."""
        answers = []
        for task, start, stop, outputs, error in results:
            done = _complete(task, start, stop, outputs, error)
            if done is not None:
                answers.append((task, task.members, *done))
                self._servable.release()
        self._post(answers)

    @staticmethod
    def _post(answers) -> None:
        """[(task, members, outputs, error)] to the tasks' event loops: one cross-thread call per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for task, members, outputs, error in answers:
            by_loop.setdefault(task.loop, []).append((task.answer, members, outputs, error))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_answer, items)
            except RuntimeError:  # that loop has closed: nobody is waiting
                pass

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Finish the queued tasks, then stop the batch threads."""
        self._closed = True
        self._wake.set()
        for thread in self._threads:
            thread.join()
        self._stats.watch_queue(self.key, None)


def _batch_rows(inputs: dict[str, np.ndarray]) -> int:
    rows = None
    for key, array in sorted(inputs.items()):
        if array.ndim == 0:
            raise invalid_argument(f"Batching session Run() input tensors must have at least one dimension: '{key}' is a scalar")
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise invalid_argument(
                f"Batching session Run() input tensors must have equal 0th-dimension size: '{key}' has {array.shape[0]}, expected {rows}"
            )
    return rows or 0


def _complete(task: _Task, start: int, stop: int, outputs, error):
    """(result, error) once all of the task's rows have run; None while pieces are still out."""
    if task.parts is None:  # not split: this piece is the whole task
        return outputs, error
    with task.lock:
        task.parts[start] = (stop - start, outputs, error)
        if sum(n for n, _, _ in task.parts.values()) < task.rows:
            return None
    parts = [task.parts[k] for k in sorted(task.parts)]
    errors = [e for _, _, e in parts if e is not None]
    if errors:
        return None, errors[0]
    return {name: np.concatenate([o[name] for _, o, _ in parts]) for name in parts[0][1]}, None


def _answer(items) -> None:
    for answer, members, outputs, error in items:
        try:
            answer(members, outputs, error)
        except Exception:  # noqa: BLE001 - one failing answer must not keep the others from theirs
            log.exception("answering %d requests failed", len(members))


class Scheduler:
    """Where the pipeline queues: batched models through their queues, the others to the
    plain Executor."""

    def __init__(self, config: ServerConfig, plain: Executor):
        self.stats = BatchStats()
        self._plain = plain
        self._queues: dict[tuple[ServableVersion, str], BatchQueue] = {}
        self._lock = threading.Lock()
        self._server_config = config
        self._batching: dict[str, BatchingConfig | None] = {}
        self._placement: dict[str, tuple[tuple[str, ...], int]] = {}
        self._turns: dict[tuple[str, int], threading.Semaphore] = {}  # (model, max_concurrent_batches) -> its turns
        try:
            devices.split_cpu(config.cpu_devices)
        except RuntimeError as exc:
            raise ConfigError(f"server.cpu_devices: {exc}") from None
        devices.log_inventory()
        self.configure(config.models, strict=True)

    def configure(self, models, strict: bool = False) -> None:
        """Batching parameters and devices per model name (at start and after a model config
        reload; queues of versions already loaded keep theirs). A model's devices must exist
        and the model must be batched: at start that is a ConfigError; on a reload the model
        is logged and runs without pinning."""
        batching, placement = {}, {}
        known = devices.available() if any(m.devices for m in models) else set()
        for m in models:
            batching[m.name] = self._server_config.batching_for(m)
            problem = None
            if m.devices and batching[m.name] is None:
                problem = "devices: the model's executors are batch threads; give it a batching section (or --enable_batching)"
            elif set(m.devices) - known:
                missing = ", ".join(sorted(set(m.devices) - known))
                problem = f"devices: {missing} does not exist here (TensorFlow has {', '.join(sorted(known))})"
            if problem and strict:
                raise ConfigError(f"model {m.name}: {problem}")
            if problem:
                log.error("model %s: %s; it runs without device pinning", m.name, problem)
            placement[m.name] = ((), 1) if problem else (m.devices, m.instances_per_device)
        self._batching, self._placement = batching, placement

    def submit(self, handle: ServableHandle, signature: Signature, members: list[Member], output_keys: tuple[str, ...],
               answer: Answer) -> None:
        """Queue a group's members (inputs of equal shapes) for a batched model, in tasks of at
        most max_batch_size rows, or run each one for a model without batching; `answer` comes
        back on this event loop as they finish (or are dropped, or refused)."""
        queue = self.batch_queue(handle, signature)
        try:
            rows = _batch_rows(members[0].inputs) if queue is not None else 0
        except ServingError as exc:
            answer(members, None, exc)
            return
        if queue is None or not rows:  # not batched, or nothing to batch (no inputs, or 0 rows)
            self._plain.submit(handle, signature, members, output_keys, answer)
            return
        for member in members:
            member.rows = rows
        per_task = max(1, queue.config.max_batch_size // rows)
        for start in range(0, len(members), per_task):
            part = members[start : start + per_task]
            try:
                queue.submit(part, output_keys, answer)  # copied once, into the batch
            except ServingError as exc:  # too large, or the queue is full
                answer(part, None, exc)

    def batch_queue(self, handle: ServableHandle, signature: Signature) -> BatchQueue | None:
        """The queue of a batched model's version x signature; None when the model is not batched
        or the signature has no batch dimension (it runs as it is)."""
        queue = self._queues.get((handle.servable, signature.key))
        if queue is not None:
            return queue
        config = self._batching.get(handle.name)
        return None if config is None or not signature.batchable else self._open(handle.servable, signature, config)

    def refusal_on_arrival(self, handle: ServableHandle, signature: Signature, priority: int, ahead: int) -> ServingError | None:
        """The refusal a request for this version x signature at this priority gets now, with
        `ahead` rows on their way to its level, or None (also where its queue is not open yet)."""
        queue = self._queues.get((handle.servable, signature.key))
        return queue.refusal_now(priority, ahead) if queue is not None else None

    def _open(self, servable: ServableVersion, signature: Signature, config: BatchingConfig) -> BatchQueue:
        with self._lock:
            queue = self._queues.get((servable, signature.key))
            if queue is None:
                turns = None
                if config.max_concurrent_batches:  # shared by the model's versions and signatures
                    key = (servable.name, config.max_concurrent_batches)
                    turns = self._turns.setdefault(key, threading.Semaphore(config.max_concurrent_batches))
                queue = BatchQueue(servable, signature, config, self.stats, *self._placement.get(servable.name, ((), 1)), turns)
                self._queues[(servable, signature.key)] = queue
            return queue

    def log_stats(self) -> None:
        """Log every queue's running totals as one JSON line (SIGUSR1; bench/run.py reads it)."""
        lengths = self.stats.queue_lengths()
        totals = {
            f"{name}/{version}/{signature}": {**vars(t), "queued_tasks": lengths.get((name, version, signature), (0, 0))[0]}
            for (name, version, signature), t in self.stats.totals().items()
        }
        log.info("batching totals: %s", json.dumps(totals, sort_keys=True))

    def release_version(self, servable: ServableVersion) -> None:
        """Close the queues of a version that has drained (the manager calls this at unload)."""
        with self._lock:
            keys = [k for k in self._queues if k[0] is servable]
            queues = [self._queues.pop(k) for k in keys]
        for queue in queues:
            queue.close()

    def shutdown(self) -> None:
        with self._lock:
            queues, self._queues = list(self._queues.values()), {}
        for queue in queues:
            queue.close()
        self._plain.shutdown()
