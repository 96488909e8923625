"""metric_families: what prometheus_client's own metrics would expose, with series the garbage
collector does not walk."""
import gc
import threading

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastserve.metric_families import Counter, Gauge, Histogram


def scraped(registry: CollectorRegistry) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode()) for s in family.samples}


def test_histogram_buckets_are_cumulative_with_count_and_sum():
    registry = CollectorRegistry()
    latency = Histogram("latency_seconds", "A latency.", ["model"], buckets=(0.1, 1, 10), registry=registry)
    series = latency.labels("m")
    for value in (0.05, 0.1, 0.5, 5, 50):
        series.observe(value)
    samples = scraped(registry)
    buckets = {dict(labels)["le"]: v for (name, labels), v in samples.items() if name == "latency_seconds_bucket"}
    assert buckets == {"0.1": 2, "1.0": 3, "10.0": 4, "+Inf": 5}  # a value equal to a bound is in its bucket (le)
    assert samples[("latency_seconds_count", (("model", "m"),))] == 5
    assert samples[("latency_seconds_sum", (("model", "m"),))] == pytest.approx(55.65)


def test_counters_gauges_labels_and_remove():
    registry = CollectorRegistry()
    requests = Counter("requests", "Requests.", ["model", "code"], registry=registry)
    state = Gauge("state", "A state.", ["model", "version"], registry=registry)
    budget = Gauge("budget_bytes", "No labels.", [], registry=registry).labels()
    requests.labels("a", "OK").inc()
    requests.labels("a", "OK").inc(2)  # the same series, bound again
    state.labels("a", 1).set(1)  # label values are text, whatever their type
    state.labels("a", 2).set(0)
    state.remove("a", 2)
    state.remove("a", 3)  # none: nothing happens
    budget.set(5)
    samples = scraped(registry)
    assert samples[("requests_total", (("code", "OK"), ("model", "a")))] == 3
    assert samples[("state", (("model", "a"), ("version", "1")))] == 1
    assert ("state", (("model", "a"), ("version", "2"))) not in samples
    assert samples[("budget_bytes", ())] == 5
    with pytest.raises(ValueError, match="labels"):
        requests.labels("a")


def test_series_are_not_tracked_by_the_garbage_collector():
    registry = CollectorRegistry()
    latency = Histogram("latency", "A latency.", ["model"], buckets=tuple(range(1, 34)), registry=registry)
    for model in range(100):
        latency.labels(str(model)).observe(1)
    assert not any(gc.is_tracked(values) for values in latency._series.values())


def test_concurrent_increments_are_not_lost():
    registry = CollectorRegistry()
    counter = Counter("hits", "Hits.", ["model"], registry=registry)
    series = counter.labels("m")

    def add():
        for _ in range(20_000):
            series.inc()

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert scraped(registry)[("hits_total", (("model", "m"),))] == 80_000
