"""Many models under a memory budget: 300 on-demand models, a Zipf(1.1) workload, one eager
model beside them, and load/evict cycles, in one run.

    .venv/bin/python bench/many_models.py [--models 300] [--seconds 60] [--cycles 1000] [--out bench/results/many_models]

Models are small TF2 SavedModels (y = x + 1, plus a variable of 0-8 MB the answer depends
on, so their sizes differ), hard links of five exports. Phases, each against a real server:

1. calibrate: one model of each size loaded without a budget; the budget is then set to
   hold about `--fit` (30) models of the mean footprint.
2. churn: 32 clients send REST predicts for 60 s to models drawn from Zipf(1.1) over all of
   them, each with a 30 s deadline, while 2 clients (a process of their own) send to the eager model; the server's
   RSS is sampled every 0.1 s. Reports failed requests, hit ratio and cold-start p50/p99
   (server metrics), RSS against budget + idle RSS + 20%, and the eager model's p99.
3. quiet: the same eager clients alone, as long: its p99 without churn (the claim: churn
   leaves it within 1.5x).
4. cycles: two models, a budget that holds one, alternated `--cycles` times (each request
   loads one and evicts the other): RSS after the first cycle and at the end. Loads run back
   to back here (on_demand_load_share: 1): what this phase measures is memory.
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.fastserve_process import FastserveProcess  # noqa: E402
from bench.run import REPO, machine  # noqa: E402

SIZES_MB = (0, 1, 2, 4, 8)
DEADLINE = 30.0


def export_models(cache: Path) -> dict[int, Path]:
    sys.path.insert(0, str(REPO))
    from tests.model_builder import export_adder

    staged = {}
    for mb in SIZES_MB:
        path = cache / f"adder_{mb}mb"
        if not (path / "saved_model.pb").exists():
            shutil.rmtree(path, ignore_errors=True)
            export_adder(path, 1.0, big_mb=mb)
        staged[mb] = path
    return staged


def model_tree(root: Path, staged: dict[int, Path], count: int) -> list[str]:
    """`count` on-demand models (hard links of the staged exports, sizes in turn) and an eager one."""
    names = []
    for i in range(count):
        name = f"m{i:03d}"
        shutil.copytree(staged[SIZES_MB[i % len(SIZES_MB)]], root / name / "1", copy_function=os.link)
        names.append(name)
    shutil.copytree(staged[0], root / "eager" / "1", copy_function=os.link)
    return names


class Server(FastserveProcess):
    def __init__(self, workdir: Path, names: list[str], budget_mb: int, eager: bool = True, **server):
        models = [{"name": "eager", "base_path": str(workdir / "models" / "eager"), "load": "eager"}] if eager else []
        models += [{"name": n, "base_path": str(workdir / "models" / n)} for n in names]
        server = {"load": "on_demand", "model_memory_budget_mb": budget_mb, **server}
        super().__init__({"server": server, "models": models}, workdir,
                         "--file_system_poll_wait_seconds=30", name=f"fastserve-{budget_mb}")

    def metric(self, name: str, **labels) -> float:
        total = 0.0
        for line in requests.get(f"{self.rest}/metrics", timeout=30).text.splitlines():
            match = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
            if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
                total += float(match.group(2))
        return total

    def histogram_quantiles(self, name: str, quantiles=(0.5, 0.99)) -> list[float]:
        """Quantiles of a histogram summed over its labels, from its buckets (upper bounds)."""
        buckets: dict[float, float] = {}
        for line in requests.get(f"{self.rest}/metrics", timeout=30).text.splitlines():
            match = re.match(rf'{name}_bucket{{.*le="([^"]+)".*}} (\S+)$', line)
            if match:
                bound = float(match.group(1))
                buckets[bound] = buckets.get(bound, 0.0) + float(match.group(2))
        bounds = sorted(buckets)
        total = buckets[bounds[-1]] if bounds else 0
        return [next((b for b in bounds if buckets[b] >= q * total), float("nan")) if total else float("nan") for q in quantiles]


def predict(rest: str, session: requests.Session, model: str) -> tuple[int, float]:
    started = time.perf_counter()
    try:
        status = session.post(f"{rest}/v1/models/{model}:predict", json={"instances": [[1.0]]}, timeout=DEADLINE).status_code
    except requests.RequestException:
        status = 0
    return status, time.perf_counter() - started


def drive(rest: str, pick, clients: int, seconds: float) -> list[tuple[int, float]]:
    """`clients` closed-loop clients, each sending to pick() until `seconds` have passed."""
    stop_at = time.monotonic() + seconds

    def client(_) -> list[tuple[int, float]]:
        session, out = requests.Session(), []
        while time.monotonic() < stop_at:
            out.append(predict(rest, session, pick()))
        return out

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return [r for rs in pool.map(client, range(clients)) for r in rs]


def drive_eager(rest: str, seconds: float) -> list[tuple[int, float]]:
    """The eager model's 2 closed-loop clients, in a process of their own: what they measure is
    the server, not the GIL they would share with the churn's 32 clients."""
    return drive(rest, lambda: "eager", 2, seconds)


def p99_ms(results) -> float:
    return float(np.percentile([s for _, s in results], 99) * 1000) if results else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=300)
    p.add_argument("--fit", type=int, default=30, help="models of the mean footprint the budget holds")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--cycles", type=int, default=1000)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "many_models"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "models": args.models}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        staged = export_models(work / "staged")
        names = model_tree(work / "models", staged, args.models)
        # 1. calibrate
        server = Server(work, names, 0)
        try:
            session = requests.Session()
            for name in names[: len(SIZES_MB)]:
                predict(server.rest, session, name)
            footprints = [server.metric("fastserve_model_memory_bytes", model=n, device="host") for n in names[: len(SIZES_MB)]]
        finally:
            server.stop()
        budget_mb = max(1, round(args.fit * float(np.mean(footprints)) / 2**20))
        result["footprints_mb"] = [round(f / 2**20, 1) for f in footprints]
        result["budget_mb"] = budget_mb
        # 2. churn, 3. quiet
        server = Server(work, names, budget_mb)
        try:
            idle_mb = server.rss_mb()
            samples, sampling = [], threading.Event()

            def sample():
                while not sampling.wait(0.1):
                    samples.append(server.rss_mb())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            weights = 1.0 / np.arange(1, args.models + 1) ** 1.1
            rng = np.random.default_rng(11)
            order = rng.permutation(args.models)  # popular models of every size
            draw = lambda: names[order[rng.choice(args.models, p=weights / weights.sum())]]  # noqa: E731
            spawn = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as eager_process:
                eager_process.submit(int).result()  # started before the clock runs
                eager = eager_process.submit(drive_eager, server.rest, args.seconds)
                churn = drive(server.rest, draw, args.clients, args.seconds)
                eager_churn = eager.result()
                sampling.set()
                quiet = eager_process.submit(drive_eager, server.rest, args.seconds).result()
            loads = server.metric("fastserve_on_demand_loads_total", result="ok")
            hits = server.metric("fastserve_on_demand_hits_total")
            cold_p50, cold_p99 = server.histogram_quantiles("fastserve_cold_start_seconds")
            evictions = server.metric("fastserve_evictions_total")
        finally:
            server.stop()
        failed = sum(1 for status, _ in churn if status != 200)
        limit_mb = (budget_mb + idle_mb) * 1.2
        result["churn"] = {
            "requests": len(churn), "failed": failed, "requests_per_s": len(churn) / args.seconds,
            "loads": loads, "evictions": evictions, "hit_ratio": hits / (hits + loads) if hits + loads else float("nan"),
            "cold_start_p50_s": cold_p50, "cold_start_p99_s": cold_p99, "latency_p99_ms": p99_ms(churn),
            "idle_rss_mb": idle_mb, "max_rss_mb": max(samples, default=0), "rss_limit_mb": limit_mb,
            "eager_failed": sum(1 for s, _ in eager_churn if s != 200),
        }
        result["eager_p99_ms"] = {"with_churn": p99_ms(eager_churn), "quiet": p99_ms(quiet)}
        # 4. cycles
        if args.cycles:
            largest = len(SIZES_MB) - 1
            pair = [names[largest], names[largest + len(SIZES_MB)]]  # two of the largest: a budget of 1.5 holds one
            server = Server(work, pair, max(1, round(1.5 * footprints[largest] / 2**20)), eager=False, on_demand_load_share=1)
            try:
                session, rss = requests.Session(), []
                for cycle in range(args.cycles):
                    for name in pair:
                        status, _ = predict(server.rest, session, name)
                        if status != 200:
                            raise RuntimeError(f"cycle {cycle}: {name} answered {status}")
                    if cycle == 0 or cycle == args.cycles - 1:
                        rss.append(server.rss_mb())
                cycle_evictions = server.metric("fastserve_evictions_total")
            finally:
                server.stop()
            result["cycles"] = {"cycles": args.cycles, "evictions": cycle_evictions, "rss_after_first_mb": rss[0],
                                "rss_at_end_mb": rss[-1], "growth": rss[-1] / rss[0] - 1}
    (out / "many_models.json").write_text(json.dumps(result, indent=1))
    c, e = result["churn"], result["eager_p99_ms"]
    lines = [
        f"Many models ({machine()}): {args.models} on-demand models, budget {budget_mb} MB (about {args.fit} of them; "
        f"footprints {result['footprints_mb']} MB by size), Zipf(1.1), {args.clients} clients, {args.seconds:g} s",
        "",
        "| | |",
        "|---|---|",
        f"| requests (failed) | {c['requests']:,} ({c['failed']}) at {c['requests_per_s']:,.0f}/s, p99 {c['latency_p99_ms']:.0f} ms |",
        f"| loads, evictions | {c['loads']:,.0f}, {c['evictions']:,.0f} |",
        f"| hit ratio | {c['hit_ratio']:.1%} |",
        f"| cold start p50 / p99 (bucket bounds) | {c['cold_start_p50_s']} s / {c['cold_start_p99_s']} s |",
        f"| RSS: idle, max, limit (budget + idle + 20%) | {c['idle_rss_mb']:.0f} MB, {c['max_rss_mb']:.0f} MB, {c['rss_limit_mb']:.0f} MB |",
        f"| eager model p99: with churn / quiet | {e['with_churn']:.1f} ms / {e['quiet']:.1f} ms "
        f"({e['with_churn'] / e['quiet']:.2f}x; {c['eager_failed']} failed) |",
    ]
    if "cycles" in result:
        cy = result["cycles"]
        lines.append(f"| {cy['cycles']:,} load/evict cycles: RSS after the first, at the end | {cy['rss_after_first_mb']:.0f} MB, "
                     f"{cy['rss_at_end_mb']:.0f} MB ({cy['growth']:+.1%}; {cy['evictions']:,.0f} evictions) |")
    table = "\n".join(lines)
    (out / "many_models.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
