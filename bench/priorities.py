"""Priority overload: a steady priority-1 stream beside three times the server's capacity of
priority-2 traffic, over REST, in one run.

    .venv/bin/python bench/priorities.py [--model wide_mlp] [--seconds 10] [--out bench/results/priorities]

Queue policies act on requests that wait for the model. The default model, an MLP
784-4096-4096-10, is bound by its computation on 2 cores (about 1,000 rows/s), so three
times its capacity is still traffic the HTTP transport reads and answers (about 5,000
requests/s here): the overload piles up in the batch queue, where priorities and limits
apply. (Where the transport itself is the bottleneck, as for the small MLP over REST
here, requests wait unread in their connections, before any priority is known.)

The model is served batched with a latency target and two priority levels; level 2 may
hold one batch of rows (max_queue_size) for at most max_queue_delay_ms. Three phases,
each driven by h2load over HTTP/1.1 (open loop: a fixed arrival rate, `--rps`):

1. capacity: priority-1 requests closed loop at 512 in flight (512 connections);
2. alone: the priority-1 stream at 25% of that capacity;
3. overload: the same stream, and priority-2 requests (`Fastserve-Priority: 2`) offered at
   3x the capacity.

It reports the priority-1 stream's p50/p99 alone and under overload (the claim: p99 stays
within the target), how the priority-2 requests were answered (200, 429, 503), how fast the
refusals were answered (at the client, and at the server from its sampled request log:
from the request's arrival to its answer), and whether every request sent was answered
(h2load's started = done, no errors, no timeouts). JSON and a table go to --out.
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.fastserve_process import FastserveProcess  # noqa: E402
from bench.run import MODELS, REPO, BenchModel, ensure_exported, export_mlp, machine  # noqa: E402 - after sys.path names the folder

TARGET_MS = 10
MODELS["wide_mlp"] = BenchModel(
    "wide_mlp", "x", MODELS["mlp"].make_rows, {"max_batch_size": 64, "num_batch_threads": 2}, (),
    lambda path: export_mlp(path, (784, 4096, 4096, 10)), (),
)
SAMPLE_RATE = 0.05  # of requests the server logs (their code and time from arrival to answer)


def serve(cache: Path, model: str, workdir: Path) -> FastserveProcess:
    batching = dict(MODELS[model].batching, target_latency_ms=TARGET_MS, priority_levels=2, default_priority_level=1)
    batching.pop("batch_timeout_micros", None)  # the target decides; it is also the longest wait
    batching["priority_queue_policy"] = {2: {"max_queue_size": batching["max_batch_size"], "max_queue_delay_ms": 50}}
    return FastserveProcess({"models": [{"name": model, "base_path": str(cache / model), "batching": batching}]}, workdir,
                            "--log_format=json", f"--request_log_sample_rate={SAMPLE_RATE}")


def h2load(url: str, body: Path, seconds: float, log_file: Path, clients: int, rate: float = 0, streams: int = 1,
           priority: int = 0) -> subprocess.Popen:
    """h2load over HTTP/1.1: closed loop for `seconds` (rate 0), else `rate` requests/s in all,
    whatever the answers, until rate x seconds have been sent and answered."""
    length = [f"--rps={rate / clients:.2f}", f"-n{round(rate * seconds)}"] if rate else [f"-D{max(1, round(seconds))}"]
    cmd = ["h2load", "--h1", f"-c{clients}", f"-m{streams}", "-t1", *length, "--warm-up-time=0",
           "-d", str(body), "-H", "content-type: application/json", f"--log-file={log_file}", url]
    if priority:
        cmd[1:1] = ["-H", f"fastserve-priority: {priority}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def outcome(proc: subprocess.Popen, log_file: Path, seconds: float) -> dict:
    """What one h2load run saw: requests by status, latency percentiles by status, and whether
    every request it started was answered."""
    out = proc.communicate(timeout=seconds + 120)[0]
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
                       r"(\d+) timeout", out)
    total, started, done, _, _, errored, timeouts = map(int, counts.groups())
    by_status: dict[str, list[int]] = {}
    for line in log_file.read_text().splitlines():
        _, status, micros = line.split("\t")[:3]
        by_status.setdefault(status, []).append(int(micros))
    return {
        "answered_per_s": {s: len(v) / seconds for s, v in sorted(by_status.items())},
        "latency_ms": {s: dict(zip(("p50", "p99", "max"), (np.percentile(v, [50, 99, 100]) / 1000).round(3).tolist()))
                       for s, v in sorted(by_status.items())},
        "started": started, "done": done, "errored": errored, "timeouts": timeouts, "total": total,
        "nothing_lost": started == done and not errored and not timeouts,
    }


def server_refusals(log: str) -> dict:
    """Arrival-to-answer times of the refused requests the server logged (sampled)."""
    times = [json.loads(line)["duration_ms"] for line in log.splitlines()
             if '"RESOURCE_EXHAUSTED"' in line and '"duration_ms"' in line]
    if not times:
        return {"sampled": 0}
    return {"sampled": len(times), "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "max_ms": float(max(times))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wide_mlp", choices=sorted(MODELS))
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "priorities"))
    p.add_argument("--cache", help="where exported models are kept (default bench/results/models)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache or REPO / "bench" / "results" / "models").resolve()
    ensure_exported(cache, [args.model])
    model = MODELS[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        body = work / "body.json"
        body.write_text(json.dumps({"inputs": {model.input_name: model.make_rows(1).tolist()}}))
        server = serve(cache, args.model, work)
        url = f"{server.rest}/v1/models/{args.model}:predict"
        try:
            # enough in flight that batches never wait for their clients (a connection answers its
            # pipelined requests one after another: one in flight on each of 512)
            capacity_run = outcome(h2load(url, body, args.seconds, work / "capacity.log", 512), work / "capacity.log", args.seconds)
            capacity = capacity_run["answered_per_s"].get("200", 0.0)
            steady_rate = 0.25 * capacity
            alone = outcome(h2load(url, body, args.seconds, work / "alone.log", 16, steady_rate), work / "alone.log", args.seconds)
            high = h2load(url, body, args.seconds, work / "high.log", 16, steady_rate)
            low = h2load(url, body, args.seconds, work / "low.log", 512, 3 * capacity, priority=2)
            under_overload, overload = outcome(high, work / "high.log", args.seconds), outcome(low, work / "low.log", args.seconds)
            refusals = server_refusals(server.log())
        finally:
            server.stop()
    p99_alone, p99_loaded = alone["latency_ms"]["200"]["p99"], under_overload["latency_ms"]["200"]["p99"]
    result = {
        "machine": machine(), "model": args.model, "target_ms": TARGET_MS, "capacity_per_s": capacity,
        "priority_1_alone": alone, "priority_1_under_overload": under_overload, "priority_2_overload": overload,
        "server_refusal_times": refusals,
    }
    (out / "priorities.json").write_text(json.dumps(result, indent=1))
    table = "\n".join([
        f"Priority overload, {args.model} over REST ({machine()}): capacity {capacity:,.0f} req/s; "
        f"priority 1 at {steady_rate:,.0f}/s, priority 2 offered at {3 * capacity:,.0f}/s",
        "",
        "| | answered/s by status | p50 ms | p99 ms | nothing lost |",
        "|---|---|---|---|---|",
        f"| priority 1 alone | {_statuses(alone)} | {alone['latency_ms']['200']['p50']} | {p99_alone} | {alone['nothing_lost']} |",
        f"| priority 1 under overload | {_statuses(under_overload)} | {under_overload['latency_ms']['200']['p50']} | {p99_loaded} "
        f"| {under_overload['nothing_lost']} |",
        f"| priority 2 (overload) | {_statuses(overload)} | {_by_status(overload, 'p50')} | {_by_status(overload, 'p99')} "
        f"| {overload['nothing_lost']} |",
        "",
        f"Refusals (429) answered at the server in p50 {refusals.get('p50_ms', '-')} ms, p99 {refusals.get('p99_ms', '-')} ms, "
        f"max {refusals.get('max_ms', '-')} ms from arrival ({refusals['sampled']} sampled); priority-1 p99 under overload "
        f"{p99_loaded} ms against a target of {TARGET_MS} ms.",
    ])
    (out / "priorities.md").write_text(table + "\n")
    print(table)
    return 0


def _statuses(run: dict) -> str:
    return ", ".join(f"{status}: {rate:,.0f}" for status, rate in run["answered_per_s"].items())


def _by_status(run: dict, key: str) -> str:
    return ", ".join(f"{status}: {values[key]}" for status, values in run["latency_ms"].items())


if __name__ == "__main__":
    sys.exit(main())
