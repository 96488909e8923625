"""Fuzzing soak: many random hostile inputs on every surface, against a real server per gRPC transport.

    python bench/fuzz.py                                   # 10,000 examples per surface per transport
    python bench/fuzz.py --examples 500 --surfaces rest_v2_json,h2_frames --transports aio
    python bench/fuzz.py --seed 7                          # repeat a run

The surfaces and the property are tests/fuzz_strategies.py's (tests/test_fuzz.py runs the same
with a fixed seed and a smaller budget in CI). Unlike CI, the soak does not stop at a bad
answer: every one is recorded (its input, its status) and the run goes on. REST surfaces are
fuzzed against both servers (CI fuzzes them once: the HTTP server is the same; the process
around it is not). Surface i of a run uses hypothesis seed SEED + i. A probe (one REST and
one gRPC predict, from a process of its own) runs every 50 ms all along. Results go to
bench/results/: fuzz.json (every bad input with its answer) and fuzz.md (the table). Exit
status 1 when anything was bad: a bad answer, a failed probe, a probe p99 of 100 ms or more
over a transport's run, the server gone, or its RSS more than 10% above where it started.
"""
import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from run import machine  # noqa: E402 - after sys.path names the folder

from fastserve.transports.grpc_native import AVAILABLE as NATIVE_BUILT  # noqa: E402 - after sys.path names the folder
from tests.conftest import ServerProcess  # noqa: E402 - after sys.path names the folder
from tests.fuzz_strategies import (  # noqa: E402 - after sys.path names the folder
    SURFACES,
    Target,
    percentile,
    rss_mb,
    run_surface,
    warm_up,
    write_models,
)

RSS_SLACK = 1.10
PROBE_P99_MS = 100


def fuzz_transport(transport: str, surfaces: list[str], examples: int, seed: int, root: Path) -> dict:
    root.mkdir()
    server = ServerProcess([*write_models(root), f"--grpc_transport={transport}"], root / "fastserve.log").wait_ready()
    target = Target(server, transport)
    try:
        warm_up_bad = warm_up(target)
        rss_start = rss_mb(server.proc.pid)
        reports = []
        for i, name in enumerate(surfaces):
            report = run_surface(target, SURFACES[name], examples, strict=False, seed=seed + i)
            print(report.summary(), flush=True)
            reports.append(report)
            if server.proc.poll() is not None:
                break
        alive = server.proc.poll() is None
        rss_end = rss_mb(server.proc.pid) if alive else float("nan")
    finally:
        target.close()
        exit_code = server.stop()
    return {"transport": transport, "alive": alive, "exit_code": exit_code, "rss_start_mb": rss_start, "rss_end_mb": rss_end,
            "warm_up_bad": [f"{outcome.bad} for {example!r:.300}" for example, outcome in warm_up_bad], "reports": reports,
            "log_tail": server.log()[-4000:] if not alive else ""}


def probe_stats(reports: list) -> dict:
    """Every probe of a transport's run: count, p50, p99 and max in ms, per protocol."""
    out = {}
    for protocol in ("rest", "grpc"):
        values = [v for r in reports for v in r.probes.get(protocol, [])]
        out[protocol] = {"count": len(values), **{k: percentile(values, q) * 1000 for k, q in (("p50_ms", 50), ("p99_ms", 99), ("max_ms", 100))}}
    return out


def report_json(report) -> dict:
    return {
        "surface": report.surface, "examples": report.sent, "seconds": report.seconds, "statuses": report.statuses,
        "library_answers": report.library, "rss_before_mb": report.rss_before, "rss_after_mb": report.rss_after,
        "probes": {p: {"count": len(v), "p50_ms": percentile(v, 50) * 1000, "p99_ms": percentile(v, 99) * 1000,
                       "max_ms": percentile(v, 100) * 1000} for p, v in report.probes.items()},
        "probe_failures": report.probe_failures,
        "bad": [{"input": repr(example), "status": outcome.status, "why": outcome.bad} for example, outcome in report.bad],
    }


def markdown(runs: list[dict], seed: int, machine_text: str) -> str:
    lines = [f"Machine: {machine_text}; seed {seed}", "",
             "| transport | surface | examples | seconds | bad | libgrpc answers | probe p50 ms (REST/gRPC) | probe p99 ms | probe max ms | probe failures |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        for r in run["reports"]:
            rest, grpc_ = r.probe_ms(50), r.probe_ms(99)
            worst = r.probe_ms(100)
            lines.append(f"| {run['transport']} | {r.surface} | {r.sent:,} | {r.seconds:.0f} | {len(r.bad)} | {r.library} | "
                         f"{rest['rest']:.1f} / {rest['grpc']:.1f} | {grpc_['rest']:.1f} / {grpc_['grpc']:.1f} | "
                         f"{worst['rest']:.1f} / {worst['grpc']:.1f} | {len(r.probe_failures)} |")
    lines.append("")
    for run in runs:
        probes = "; ".join(f"{p} probes {s['count']:,}: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms"
                           for p, s in probe_stats(run["reports"]).items())
        lines.append(f"- {run['transport']}: {sum(r.sent for r in run['reports']):,} examples, "
                     f"{sum(len(r.bad) for r in run['reports'])} bad; server {'up' if run['alive'] else 'GONE (exit ' + str(run['exit_code']) + ')'} "
                     f"at the end; RSS after warm-up {run['rss_start_mb']:.0f} MB, at the end {run['rss_end_mb']:.0f} MB; {probes}")
    return "\n".join(lines) + "\n"


def failures(run: dict) -> list[str]:
    out = [] if run["alive"] else [f"{run['transport']}: the server exited ({run['exit_code']})"]
    out += [f"{run['transport']} warm-up: {text}" for text in run["warm_up_bad"]]
    out += [f"{run['transport']}: {protocol} probe p99 {stats['p99_ms']:.1f} ms" for protocol, stats in probe_stats(run["reports"]).items()
            if not stats["p99_ms"] < PROBE_P99_MS]
    if run["alive"] and run["rss_end_mb"] > RSS_SLACK * run["rss_start_mb"]:
        out.append(f"{run['transport']}: RSS {run['rss_start_mb']:.0f} -> {run['rss_end_mb']:.0f} MB")
    for r in run["reports"]:
        out += [f"{run['transport']} {r.surface}: {outcome.bad} for {example!r:.300}" for example, outcome in r.bad]
        out += [f"{run['transport']} {r.surface}: probe failed: {text}" for text in r.probe_failures]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=10_000, help="per surface per transport")
    p.add_argument("--surfaces", default=",".join(SURFACES), help=f"comma-separated subset of {', '.join(SURFACES)}")
    p.add_argument("--transports", default="native,aio" if NATIVE_BUILT else "aio")
    p.add_argument("--seed", type=int, help="default: a random one (printed, to repeat the run)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    surfaces = args.surfaces.split(",")
    unknown = set(surfaces) - set(SURFACES)
    if unknown:
        p.error(f"unknown surfaces: {', '.join(sorted(unknown))}")
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"seed {seed}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [fuzz_transport(t, surfaces, args.examples, seed, Path(tmp) / t) for t in args.transports.split(",")]
    machine_text = machine()
    table = markdown(runs, seed, machine_text)
    bad = [line for run in runs for line in failures(run)]
    (out / "fuzz.json").write_text(json.dumps({
        "machine": machine_text, "seed": seed, "examples_per_surface": args.examples, "seconds": time.monotonic() - started,
        "runs": [{**run, "probes": probe_stats(run["reports"]), "reports": [report_json(r) for r in run["reports"]]} for run in runs],
        "failures": bad,
    }, indent=1, default=str))
    (out / "fuzz.md").write_text(table)
    print("\n" + table)
    for line in bad:
        print("BAD", line)
    print(f"wrote {out / 'fuzz.json'}, fuzz.md in {time.monotonic() - started:.0f}s; {len(bad)} failures")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
