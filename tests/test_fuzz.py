"""Fuzzing in CI: every surface of tests/fuzz_strategies.py against a real server per gRPC transport.

Derandomized (the same examples every run): the regression inputs of fuzz_strategies.REGRESSIONS,
then EXAMPLES generated examples per surface and transport. The first answer that is 5xx,
INTERNAL, UNKNOWN or missing (a hang) fails the test, shrunk by hypothesis to a small input.
The server must stay up; a probe (one REST and one gRPC predict every 50 ms, from a process of
its own: tests/fuzz_probe.py) must always be answered, with a p99 under PROBE_P99_MS over the
transport's whole run; the server's RSS must end within 10% of what it was after a warm-up.
REST surfaces are fuzzed once, against the first transport's server: the HTTP server is the
same whichever gRPC transport runs beside it (bench/fuzz.py, the soak, fuzzes them on both).
"""
import pytest

from fastserve.transports.grpc_native import AVAILABLE as NATIVE_BUILT
from tests.fuzz_strategies import (
    SURFACES,
    Target,
    percentile,
    rss_mb,
    run_surface,
    warm_up,
    write_models,
)

TRANSPORTS = ["native", "aio"] if NATIVE_BUILT else ["aio"]
EXAMPLES = 1000
PROBE_P99_MS = 100
RSS_SLACK = 1.10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fuzz_every_surface(start_server, models, transport):
    target = Target(start_server([*models, f"--grpc_transport={transport}"]), transport)
    pid = target.server.proc.pid
    try:
        assert warm_up(target) == []
        rss_start = rss_mb(pid)
        probes = {"rest": [], "grpc": []}
        for surface in SURFACES.values():
            if surface.protocol == "rest" and transport != TRANSPORTS[0]:
                continue
            report = run_surface(target, surface, EXAMPLES)
            print(report.summary())
            assert report.sent >= EXAMPLES
            assert target.server.proc.poll() is None, f"the server exited during {surface.name}:\n{target.server.log()[-3000:]}"
            assert report.probe_failures == [], surface.name
            for protocol, latencies in report.probes.items():
                probes[protocol] += latencies
        rss_end = rss_mb(pid)
    finally:
        target.close()
    print(f"{transport}: probe p99 " + ", ".join(f"{p} {percentile(v, 99) * 1000:.1f} ms ({len(v)})" for p, v in probes.items())
          + f"; RSS {rss_start:.0f} -> {rss_end:.0f} MB")
    for protocol, latencies in probes.items():
        assert percentile(latencies, 99) * 1000 < PROBE_P99_MS, protocol
    assert rss_end < RSS_SLACK * rss_start
