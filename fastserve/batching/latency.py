"""When a batch should close under a latency target: learned online, per queue.

A batch that waits longer fills more rows (less work per row) but makes its oldest
request wait. With `target_latency_ms`, the queue's batch thread asks `close_at` when it
has rows and nothing more is queued; the answer is now, or when to look again:

- idle: the executors have time to spare (busy less than BUSY of the recent past): a
  batch run now delays no one, and while it runs the next one fills by itself; or, when
  they are busy, the batch is already large enough for them to keep up with the arrival
  rate at BUSY, or no arrival is expected soon (none for two mean gaps: a burst has ended,
  or clients wait for their answers), or the next arrival is not expected before this
  batch would be done anyway;
- target: waiting past `latest` would put the oldest request past the target, given how
  long a batch of the rows expected by then runs (measured per batch size).

Arrivals are measured on the event loop (`arrived`), run times on the batch threads
(`ran`); both are plain floats a stale read of which only shifts one decision.
"""
import math

# The share of an executor's time batches may take before waiting for fuller batches pays:
# the rest of the server (transports, encoding) shares the CPU with them.
BUSY = 0.5
RATE_WINDOW = 0.1  # seconds over which the arrival rate and the executors' busy time are averaged (exponential decay)
RUN_WEIGHT = 0.2  # weight of a new run time in its batch size's moving average


class LatencyModel:
    def __init__(self, target_seconds: float, executors: int):
        self.target = target_seconds
        self._executors = executors
        self._run: dict[int, float] = {}  # rows -> moving average of the run time in seconds
        self._sizes: list[int] = []  # the sizes in _run, sorted
        self._row_rate = 0.0  # rows per second
        self._task_rate = 0.0  # arrivals per second
        self._last_arrival: float | None = None
        self._busy = 0.0  # executor-seconds of batches per second
        self._last_run = 0.0  # when the last batch finished

    # ------------------------------------------------------------ measurements

    def arrived(self, rows: int, now: float) -> None:
        if self._last_arrival is not None:
            decay = math.exp(-max(0.0, now - self._last_arrival) / RATE_WINDOW)
            self._row_rate = self._row_rate * decay + rows / RATE_WINDOW
            self._task_rate = self._task_rate * decay + 1 / RATE_WINDOW
        self._last_arrival = now

    def ran(self, rows: int, seconds: float, finished: float) -> None:
        self._busy = self._busy * math.exp(-max(0.0, finished - self._last_run) / RATE_WINDOW) + seconds / RATE_WINDOW
        self._last_run = finished
        old = self._run.get(rows)
        if old is None:
            self._run[rows] = seconds
            self._sizes = sorted(self._run)
        else:
            self._run[rows] = old + RUN_WEIGHT * (seconds - old)

    def run_seconds(self, rows: int) -> float:
        """The expected run time of a batch of `rows`: measured, else interpolated between the
        nearest sizes measured, else scaled from the largest (0 before any batch ran)."""
        if rows in self._run:
            return self._run[rows]
        sizes = self._sizes
        if not sizes:
            return 0.0
        above = next((s for s in sizes if s > rows), None)
        below = next((s for s in reversed(sizes) if s < rows), None)
        if below is None:  # then a size above it was measured
            assert above is not None
            return self._run[above]
        if above is None:
            return self._run[below] * rows / below
        share = (rows - below) / (above - below)
        return self._run[below] + share * (self._run[above] - self._run[below])

    def utilization(self, now: float) -> float:
        """The executors' busy share of the recent past (0..1)."""
        return self._busy * math.exp(-max(0.0, now - self._last_run) / RATE_WINDOW) / self._executors

    def rows_per_second(self, capacity: int) -> float:
        """What the executors get through at full batches (0 before any batch ran)."""
        seconds = self.run_seconds(capacity)
        return capacity * self._executors / seconds if seconds > 0 else 0.0

    # ------------------------------------------------------------ the decision

    def close_at(self, now: float, oldest: float, rows: int, capacity: int) -> tuple[str | None, float, int]:
        """For a batch of `rows` whose oldest request arrived at `oldest`, with nothing more
        queued: (why, 0, 0) to close it now, or (None, when, rows_wanted) to look again at
        `when` or once the queue holds `rows_wanted` more rows, whichever comes first."""
        if self._last_arrival is None or self._task_rate <= 0 or self.utilization(now) < BUSY:
            return "idle", 0.0, 0  # nothing measured yet, or time to spare: nothing to wait for
        enough = self.enough_rows(capacity)
        run = self.run_seconds(rows)
        gap = 1 / self._task_rate
        quiet = self._last_arrival + 2 * gap  # no arrival by then: none is coming soon
        if rows >= enough or now >= quiet or self._last_arrival + gap >= now + run:
            return "idle", 0.0, 0
        # the rows expected by the time the target allows, and how long that batch runs
        expected = min(capacity, rows + int(self._row_rate * max(0.0, oldest + self.target - run - now)))
        latest = oldest + self.target - self.run_seconds(expected)
        if latest <= now:
            return "target", 0.0, 0
        return None, min(latest, quiet), enough - rows

    def enough_rows(self, capacity: int) -> int:
        """The smallest batch whose run time per row lets the executors keep up with the
        arrival rate at BUSY of their time (capacity when none does)."""
        budget = BUSY * self._executors
        lo, hi = 1, capacity
        while lo < hi:  # the run time per row falls as batches grow
            mid = (lo + hi) // 2
            if self._row_rate * self.run_seconds(mid) / mid <= budget:
                hi = mid
            else:
                lo = mid + 1
        return lo
