"""Cumulative inference statistics per model version, for the V2 statistics extension.

Triton's clients (perf_analyzer, tritonclient's get_inference_statistics) read these: per
version, requests that succeeded and failed (count and total time in the server), and
each request's time split into compute_input (decoding and validating it), queue (waiting
for a batch or a thread), compute_infer (the model's run, of the batch it was in) and
compute_output (encoding its response); and per executed batch size, the runs of that
size. The pipeline and the executors record the parts' times as they pass; the parts'
counts grow when requests succeed, all together, as Triton's do (perf_analyzer refuses
statistics whose compute counts differ).
"""
import threading
import time
from dataclasses import dataclass, field

_NS = 1_000_000_000


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * _NS)

    def add_time(self, seconds: float) -> None:
        """Time of requests counted when they succeed (requests_done)."""
        self.ns += int(seconds * _NS)

    def as_json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class VersionStatistics:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows answered successfully
    execution_count: int = 0  # model runs (a batch is one)
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)  # executed batch size -> its runs

    def parts(self) -> tuple[Duration, ...]:
        return self.compute_input, self.queue, self.compute_infer, self.compute_output

    def as_json(self, name: str, version: int) -> dict:
        stats = {"inference_stats": {key: getattr(self, key).as_json() for key in (
            "success", "fail", "queue", "compute_input", "compute_infer", "compute_output")}}
        stats["inference_stats"].update(cache_hit=Duration().as_json(), cache_miss=Duration().as_json())
        return {
            "name": name, "version": str(version), "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count, **stats,
            "batch_stats": [
                {"batch_size": size, "compute_input": Duration().as_json(), "compute_infer": runs.as_json(),
                 "compute_output": Duration().as_json()}
                for size, runs in sorted(self.batches.items())
            ],
        }


_lock = threading.Lock()
_versions: dict[tuple[str, int], VersionStatistics] = {}


def _of(model: str, version: int) -> VersionStatistics:
    stats = _versions.get((model, version))
    if stats is None:
        stats = _versions[(model, version)] = VersionStatistics()
    return stats


def requests_done(model: str, version: int, ok_seconds: list[float], failed_seconds: list[float], rows: int) -> None:
    """Requests of one group answered: each one's time in the server; rows of those that succeeded."""
    with _lock:
        stats = _of(model, version)
        for seconds in ok_seconds:
            stats.success.add(seconds)
        for seconds in failed_seconds:
            stats.fail.add(seconds)
        if ok_seconds:
            for part in stats.parts():
                part.count += len(ok_seconds)
            stats.inference_count += rows
            stats.last_inference_ms = int(time.time() * 1000)


def decoded(model: str, version: int, seconds: list[float]) -> None:
    """compute_input of requests: from their arrival until they were queued."""
    with _lock:
        stats = _of(model, version)
        stats.compute_input.add_time(sum(seconds))


def encoded(model: str, version: int, seconds: float) -> None:
    """compute_output of requests whose responses were encoded together, in `seconds` in all."""
    with _lock:
        _of(model, version).compute_output.add_time(seconds)


def executed(model: str, version: int, batch_size: int, queue_seconds: list[float], run_seconds: float) -> None:
    """One run of the model on batch_size rows, for the requests (or tasks of grouped requests)
    that waited queue_seconds each."""
    with _lock:
        stats = _of(model, version)
        stats.execution_count += 1
        stats.queue.add_time(sum(queue_seconds))
        stats.compute_infer.add_time(run_seconds * len(queue_seconds))
        stats.batches.setdefault(batch_size, Duration()).add(run_seconds)


def batch_ran(record) -> None:
    """A batching queue's BatchRecord (a BatchStats observer, on the batch thread)."""
    model, version, _ = record.queue
    executed(model, version, record.rows, list(record.queue_wait_seconds), record.execution_seconds)


def snapshot(model: str, version: int) -> dict:
    """The statistics of one version, as Triton's ModelStatistics JSON (zeros before its first request)."""
    with _lock:
        stats = _versions.get((model, version)) or VersionStatistics()
        return stats.as_json(model, version)
