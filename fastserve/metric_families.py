"""Labelled Prometheus metrics kept compactly: counters, gauges and histograms whose series
are arrays of numbers, exported by a prometheus_client collector at scrape time.

prometheus_client keeps each value of each series as an object with its own lock (a series of
TF Serving's request_latency, 33 buckets, is about 70 objects). A server with hundreds of
models then holds tens of thousands of them, and every full garbage collection (Python's own,
and the one after each unload) walks them all while holding the GIL: 15-35 ms with 300
models, a stall every request in flight waits out. Here a series is one numpy array, which
the garbage collector does not track, and a family has one lock.
"""
import bisect
import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]


class _Family(Collector):
    """One metric's series by label values; registered with `registry`."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._series: dict[Labels, np.ndarray] = {}
        registry.register(self)

    def _values(self, labelvalues: tuple) -> np.ndarray:
        key = tuple(str(value) for value in labelvalues)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} has labels {self.labelnames}, not {key}")
        with self._lock:
            values = self._series.get(key)
            if values is None:
                values = self._series[key] = self._new()
        return values

    def _new(self) -> np.ndarray:
        return np.zeros(1)

    def remove(self, *labelvalues) -> None:
        """Drop a series (nothing if there is none)."""
        with self._lock:
            self._series.pop(tuple(str(value) for value in labelvalues), None)

    def _snapshot(self) -> list[tuple[Labels, list[float]]]:
        with self._lock:
            return [(key, values.tolist()) for key, values in self._series.items()]

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only (each kind's collect)


class CountedSeries:
    """A counter or gauge series, bound to its family's lock."""

    __slots__ = ("_values", "_lock")

    def __init__(self, values: np.ndarray, lock: threading.Lock):
        self._values = values
        self._lock = lock

    def inc(self, amount: float = 1) -> None:
        with self._lock:
            self._values[0] += amount

    def dec(self, amount: float = 1) -> None:
        with self._lock:
            self._values[0] -= amount

    def set(self, value: float) -> None:
        self._values[0] = float(value)


class Counter(_Family):
    def labels(self, *labelvalues) -> CountedSeries:
        return CountedSeries(self._values(labelvalues), self._lock)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, values in self._snapshot():
            family.add_metric(key, values[0])
        yield family


class Gauge(Counter):
    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, values in self._snapshot():
            family.add_metric(key, values[0])
        yield family


class ObservedSeries:
    """A histogram series: a count per bucket (the last one +Inf), then the sum."""

    __slots__ = ("_values", "_lock", "_bounds")

    def __init__(self, values: np.ndarray, lock: threading.Lock, bounds: list[float]):
        self._values = values
        self._lock = lock
        self._bounds = bounds

    def observe(self, amount: float) -> None:
        bucket = bisect.bisect_left(self._bounds, amount)  # the first bound >= amount (le)
        with self._lock:
            self._values[bucket] += 1
            self._values[-1] += amount


class Histogram(_Family):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry):
        self._bounds = sorted(float(b) for b in buckets) + [float("inf")]
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> np.ndarray:
        return np.zeros(len(self._bounds) + 1)

    def labels(self, *labelvalues) -> ObservedSeries:
        return ObservedSeries(self._values(labelvalues), self._lock, self._bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, values in self._snapshot():
            cumulative, buckets = 0.0, []
            for bound, count in zip(self._bounds, values):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(key, buckets, sum_value=values[-1])
        yield family
