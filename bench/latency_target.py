"""A latency target against hand-tuned batch timeouts, in one run per model.

    .venv/bin/python bench/latency_target.py [--models half_plus_two,mlp] [--seconds 5] [--out bench/results/latency_target]

One server serves each model eight times: without batching, with batch_timeout_micros of
0, 0.5, 1, 2, 5 and 10 ms, and with `target_latency_ms: 10` (its batching otherwise as in
bench/run.py). For REST and gRPC:

1. one client, closed loop: the target's latency against no batching (the claim: within 1.2x),
   the ratio being the median of the rounds' p50 ratios;
2. capacity: the most requests/s any configuration reaches closed loop (gRPC 64 connections
   x 8 calls, REST 256 connections);
3. open loop at 25, 50, 75 and 90% of that capacity (h2load --rps; see OPEN): p99 and achieved
   requests/s of every configuration (the claim: with the target, p99 <= 10 ms wherever a
   fixed timeout meets it, and throughput at least the best fixed timeout's).

Points of 1 and 3 run in ROUNDS rounds, the configurations in turn, each for 2/ROUNDS of
--seconds, and report the medians of their rounds: this host's noise moves a single point
by 2x within minutes, which one pass would take for a difference between configurations.
With --noise-floor the server also serves a copy of the 0 ms and of the target
configuration under other names, run in the same rounds: how far two identical
configurations land apart at each open-loop point is the smallest difference the run can tell.
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.fastserve_process import FastserveProcess  # noqa: E402
from bench.loadgen import run_h2load  # noqa: E402
from bench.run import MODELS, OPEN_LOOP, PREDICT, REPO, ensure_exported, grpc_body, machine, rest_bodies  # noqa: E402

TARGET_MS = 10
# Open loop: h2load sends each connection's requests on one timer, so arrivals come in bursts of
# one per connection: few connections, many calls in flight on each for gRPC; for REST, whose
# pipelined requests a connection answers one after another, 64 connections of one each.
OPEN = {"grpc": (8, 64), "rest": (64, 1)}
TIMEOUTS_US = (0, 500, 1000, 2000, 5000, 10000)
FRACTIONS = (0.25, 0.5, 0.75, 0.9)
ROUNDS = 3


COPIES = ("t0", "target")  # the configurations --noise-floor serves twice, the copy as NAME_copy


def configurations(model: str, copies: bool = False) -> dict[str, dict | None]:
    """Served name -> its batching section (None: no batching)."""
    base = {k: v for k, v in MODELS[model].batching.items() if k != "batch_timeout_micros"}
    configs: dict[str, dict | None] = {f"{model}_nobatch": None}
    configs.update({f"{model}_t{t}": {**base, "batch_timeout_micros": t} for t in TIMEOUTS_US})
    configs[f"{model}_target"] = {**base, "target_latency_ms": TARGET_MS}
    if copies:
        configs.update({f"{model}_{kind}_copy": configs[f"{model}_{kind}"] for kind in COPIES})
    return configs


def serve(cache: Path, model: str, workdir: Path, copies: bool) -> FastserveProcess:
    models = [{"name": name, "base_path": str(cache / model), **({"batching": batching} if batching else {})}
              for name, batching in configurations(model, copies).items()]
    return FastserveProcess({"models": models}, workdir)


def point(server: FastserveProcess, model: str, served: str, protocol: str, seconds: float, workdir: Path,
          connections: int, streams: int, rate: float | None = None) -> dict:
    if protocol == "grpc":
        url, body, headers = f"http://127.0.0.1:{server.grpc_port}{PREDICT}", grpc_body(served, MODELS[model], 1), \
            ("content-type: application/grpc", "te: trailers")
    else:
        url, body, headers = f"{server.rest}/v1/models/{served}:predict", rest_bodies(MODELS[model], 1)[0], \
            ("content-type: application/json",)
    return run_h2load(url, body, headers, connections, seconds, workdir, streams, rate=rate, h1=protocol == "rest")


def in_rounds(run, names: list[str]) -> list[dict]:
    """ROUNDS rounds of run(name) for each name in turn (who goes first rotates): [{name: result}]."""
    rounds = []
    for r in range(ROUNDS):
        order = names[r % len(names):] + names[:r % len(names)]
        rounds.append({name: run(name) for name in order})
    return rounds


def medians(rounds: list[dict], name: str, keys: tuple[str, ...]) -> dict:
    return {key: statistics.median(r[name][key] for r in rounds) for key in keys}


def one_client(server: FastserveProcess, model: str, protocol: str, seconds: float, workdir: Path) -> dict:
    """A lone closed-loop client, no batching and the target in turn: the medians of the rounds'
    p50 and p99 for each, and the median of the rounds' p50 ratios."""
    rounds = in_rounds(lambda kind: point(server, model, f"{model}_{kind}", protocol, seconds, workdir, 1, 1), ["nobatch", "target"])
    result: dict = {kind: medians(rounds, kind, ("p50_ms", "p99_ms")) for kind in ("nobatch", "target")}
    result["ratio"] = statistics.median(r["target"]["p50_ms"] / r["nobatch"]["p50_ms"] for r in rounds)
    result["rounds"] = rounds
    return result


def open_loop(server: FastserveProcess, model: str, protocol: str, served: list[str], rate: float, seconds: float,
              workdir: Path) -> dict:
    """Each configuration at `rate`, in turn: the medians of the rounds' p99 and achieved rate."""
    rounds = in_rounds(lambda name: point(server, model, name, protocol, seconds, workdir, *OPEN[protocol], rate), served)
    return {name: {**medians(rounds, name, ("p99_ms", "requests_per_s")), "rounds": [r[name] for r in rounds]}
            for name in served}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="half_plus_two,mlp")
    p.add_argument("--protocols", default="rest,grpc")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "latency_target"))
    p.add_argument("--cache", help="where exported models are kept (default bench/results/models)")
    p.add_argument("--noise-floor", action="store_true", help="also run copies of the 0 ms and target configurations "
                                                              "(how far identical ones land apart)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache or REPO / "bench" / "results" / "models").resolve()
    names, protocols = args.models.split(","), args.protocols.split(",")
    ensure_exported(cache, names)
    rounds_seconds = max(1.0, args.seconds * 2 / ROUNDS)  # a round's point: twice a point's time over the rounds
    results = []
    for model in names:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            server = serve(cache, model, work, args.noise_floor)
            try:
                for protocol in protocols:
                    configs = configurations(model, args.noise_floor)
                    single = one_client(server, model, protocol, rounds_seconds, work)
                    connections, streams = OPEN_LOOP[protocol]
                    closed = {served: point(server, model, served, protocol, args.seconds, work, connections, streams)
                              for served in configs if not served.endswith("_copy")}
                    capacity = max(r["requests_per_s"] for r in closed.values())
                    row = {"model": model, "protocol": protocol, "one_client": single, "closed": closed, "capacity": capacity,
                           "open": {}}
                    print(f"{model} {protocol}: one client p50 {single['target']['p50_ms']:.2f} ms with the target, "
                          f"{single['nobatch']['p50_ms']:.2f} ms unbatched ({single['ratio']:.2f}x); capacity {capacity:,.0f}/s",
                          flush=True)
                    batched = [served for served in configs if not served.endswith("_nobatch")]
                    for fraction in FRACTIONS:
                        row["open"][fraction] = open_loop(server, model, protocol, batched, fraction * capacity, rounds_seconds,
                                                          work)
                        print(f"  {fraction:.0%}: " + ", ".join(f"{s.removeprefix(model + '_')} p99 {r['p99_ms']:.1f}"
                                                               for s, r in row["open"][fraction].items()), flush=True)
                    results.append(row)
            finally:
                server.stop()
    (out / "latency_target.json").write_text(json.dumps({"machine": machine(), "rows": results}, indent=1, default=str))
    table = markdown(results)
    (out / "latency_target.md").write_text(table + "\n")
    print(table)
    return 0


def markdown(results: list[dict]) -> str:
    lines = [f"Latency target {TARGET_MS} ms against fixed batch timeouts ({machine()}); open loop, p99 ms (requests/s "
             "achieved where below the offered rate by more than 2%); **bold**: meets 10 ms", ""]
    header = ["model", "protocol", "load"] + [f"{t / 1000:g} ms" for t in TIMEOUTS_US] + [f"target {TARGET_MS} ms", "claim holds"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        model = row["model"]
        for fraction, points in row["open"].items():
            offered = fraction * row["capacity"]
            fixed = [points[f"{model}_t{t}"] for t in TIMEOUTS_US]
            target = points[f"{model}_target"]
            best = max(r["requests_per_s"] for r in fixed)
            meets = any(r["p99_ms"] <= TARGET_MS for r in fixed)
            holds = (target["p99_ms"] <= TARGET_MS or not meets) and target["requests_per_s"] >= 0.98 * best
            cells = [_cell(r, offered) for r in [*fixed, target]]
            lines.append(f"| {model} | {row['protocol']} | {fraction:.0%} of {row['capacity']:,.0f}/s | " + " | ".join(cells)
                         + f" | {'yes' if holds else 'no'} |")
    floor = [_noise(row, fraction, points) for row in results for fraction, points in row["open"].items()
             if f"{row['model']}_t0_copy" in points]
    if floor:
        lines += ["", "Noise floor: identical configurations under two names, same rounds (requests/s achieved, p99 ms)", "",
                  "| model | protocol | load | 0 ms | its copy | target | its copy |", "|---|---|---|---|---|---|---|", *floor]
    lines += ["", f"One client, closed loop: p50 / p99 ms (medians of {ROUNDS} alternating rounds)", "",
              "| model | protocol | no batching | target | ratio (median of the rounds' p50 ratios) |", "|---|---|---|---|---|"]
    for row in results:
        nobatch, target = row["one_client"]["nobatch"], row["one_client"]["target"]
        lines.append(f"| {row['model']} | {row['protocol']} | {nobatch['p50_ms']:.2f} / {nobatch['p99_ms']:.2f} | "
                     f"{target['p50_ms']:.2f} / {target['p99_ms']:.2f} | {row['one_client']['ratio']:.2f}x |")
    return "\n".join(lines)


def _noise(row: dict, fraction: float, points: dict) -> str:
    cells = [f"{r['requests_per_s']:,.0f}/s, {r['p99_ms']:.1f}"
             for kind in COPIES for r in (points[f"{row['model']}_{kind}"], points[f"{row['model']}_{kind}_copy"])]
    return f"| {row['model']} | {row['protocol']} | {fraction:.0%} | " + " | ".join(cells) + " |"


def _cell(result: dict, offered: float) -> str:
    p99 = f"{result['p99_ms']:.1f}"
    text = f"**{p99}**" if result["p99_ms"] <= TARGET_MS else p99
    return text if result["requests_per_s"] >= 0.98 * offered else f"{text} ({result['requests_per_s']:,.0f}/s)"


if __name__ == "__main__":
    sys.exit(main())
