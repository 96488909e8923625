"""The benchmark's own tools: the CPU split by thread role (bench/thread_cpu.py, with the thread
names bench/named_threads.py sets) and the native transport's ceiling (bench/ceiling.py)."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from fastserve.transports.grpc_native import AVAILABLE as NATIVE_BUILT

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import named_threads  # noqa: E402 - after sys.path names the folder
import thread_cpu  # noqa: E402 - after sys.path names the folder


def test_stat_seconds_reads_utime_and_stime_after_any_name():
    ticks = 1 / thread_cpu.TICK
    line = f"42 (a) b (c)) S 1 1 1 0 -1 4194304 10 0 0 0 {int(3 * ticks)} {int(ticks)} 0 0 20 0 1 0 5 0 0\n"
    assert thread_cpu.stat_seconds(line) == pytest.approx(4.0)


def test_cpu_is_split_by_the_names_of_python_threads(monkeypatch):
    monkeypatch.setattr(threading.Thread, "_bootstrap_inner", threading.Thread._bootstrap_inner)  # undone after
    named_threads.name_python_threads()

    burnt, done = threading.Event(), threading.Event()

    def burn():
        while time.thread_time() < 0.3:
            pass
        burnt.set()
        done.wait()

    thread = threading.Thread(target=burn, name="fastserve-batch-mlp-0")
    before = thread_cpu.sample([os.getpid()])
    thread.start()
    burnt.wait()
    after = thread_cpu.sample([os.getpid()])
    done.set()
    thread.join()
    assert "fastserve-batch" in {name for name, _ in after.threads.values()}  # cut to 15 bytes
    split = thread_cpu.by_role(before, after, thread_cpu.fastserve_role)
    assert split["batch threads"] == pytest.approx(0.3, abs=0.05)
    assert sum(split.values()) >= split["batch threads"]
    assert thread_cpu.fastserve_role(7, 9, "python", "python") == "TF pools"  # a native thread started unnamed


@pytest.mark.skipif(not NATIVE_BUILT, reason="built without libgrpc++: no native transport")
def test_ceiling_answers_every_call_from_cpp(tmp_path):
    reply = tmp_path / "reply.bin"
    reply.write_bytes(b"\x0a\x03abc")
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "ceiling.py"), str(reply)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        port = int(proc.stdout.readline().split()[-1])  # "ceiling ready PORT"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in ("/tensorflow.serving.PredictionService/Predict", "/any.Service/Method"):
                assert channel.unary_unary(method)(b"request", timeout=10) == b"\x0a\x03abc"
        names = {(task / "comm").read_text().strip() for task in Path(f"/proc/{proc.pid}/task").iterdir()}
        assert {"fastserve-cq", "fastserve-acpt"} <= names
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_a_peer_that_fails_a_point_is_left_out_and_the_sweep_goes_on(monkeypatch, capsys):
    import run

    class Fake:
        log_path = "peer.log"

        def __init__(self, fails: bool):
            self.fails, self.points = fails, 0

        def load(self, model, served, batching, protocol, rows):
            return run.Load("http://127.0.0.1:1/", [b"{}"], False) if batching else None

    def point(server, load, model, served, batching, protocol, concurrency, *rest):
        server.points += 1
        if server.fails:
            raise ConnectionRefusedError("gone")
        return run.Row(model.name, protocol, batching, concurrency, 1.0, 1.0, 1.0, 1.0, 1.0, 0, None)

    monkeypatch.setattr(run, "_point", point)
    monkeypatch.setitem(run.MODELS, "half_plus_two", run.BenchModel(
        "half_plus_two", "x", None, {}, (1, 8, 64), None, (1,), grpc_multiplexed=()))
    fastserve, peer = Fake(False), Fake(True)
    rows = run.sweep({"": fastserve, run.PYTRITON: peer}, ["half_plus_two"], ["rest"], 1, Path("."))
    assert [r.concurrency for r in rows] == [1, 8, 64] and fastserve.points == 3
    assert peer.points == 1  # not asked again after its failure
    assert "PyTriton failed at half_plus_two rest 1" in capsys.readouterr().out
