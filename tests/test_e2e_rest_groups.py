"""Grouped REST predict: the same answers as one request at a time.

Predict requests that arrive in one event-loop iteration go to the pipeline together and
those that agree are served as groups (fastserve/pipeline/pipeline.py); a model without
batching runs each request on its own.
The server here serves each example model twice, NAME batched and NAME_ref not; one mixed
burst of concurrent requests (formats, row counts, versions, labels, signatures, and
requests that must fail) goes to both, and every answer must be the same: status and
JSON body (error texts name the model, so NAME_ref is read as NAME).
"""
import json
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import EXAMPLE_MODELS
from tests.test_e2e_metrics import scrape, value

MAX_BATCH = 16


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory):
    config = tmp_path_factory.mktemp("rest_groups") / "models.yaml"
    batching = f"{{max_batch_size: {MAX_BATCH}, batch_timeout_micros: 20000, max_enqueued_batches: 1000}}"
    lines = ["models:"]
    for model in ("half_plus_two", "multi_io", "bool_mask"):
        lines.append(f"  - {{name: {model}, base_path: {EXAMPLE_MODELS / model}, batching: {batching}, version_labels: {{stable: 1}}}}")
        lines.append(f"  - {{name: {model}_ref, base_path: {EXAMPLE_MODELS / model}, version_labels: {{stable: 1}}}}")
    config.write_text("\n".join(lines) + "\n")
    return start_server([f"--config={config}"])


@pytest.fixture(scope="module")
def hurried(start_server, tmp_path_factory):
    """Batches wait 2 s to fill, the REST deadline is 300 ms."""
    config = tmp_path_factory.mktemp("rest_groups_deadline") / "models.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: half_plus_two, base_path: {EXAMPLE_MODELS / 'half_plus_two'},"
        " batching: {max_batch_size: 64, batch_timeout_micros: 2000000}}\n"
        f"  - {{name: plain, base_path: {EXAMPLE_MODELS / 'half_plus_two'}}}\n"
    )
    return start_server([f"--config={config}", "--rest_api_timeout_in_ms=300"])


def burst(rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(model, path after the model name, body) of a shuffled mix of requests."""
    calls = []
    for i in range(100):
        rows = [[round(rng.uniform(-100, 100), 3)] for _ in range(rng.choice([1, 1, 1, 3]))]
        doc = [{"instances": rows}, {"inputs": {"x": rows}}, {"inputs": rows}, {"signature_name": "serving_default", "instances": rows}][i % 4]
        suffix = ["", "/versions/1", "/labels/stable"][i % 3]
        calls.append(("half_plus_two", f"{suffix}:predict", json.dumps(doc).encode()))
    for i in range(40):
        rows = rng.choice([1, 2])
        instances = [{"a": [rng.uniform(0, 9), rng.uniform(0, 9)], "b": rng.randrange(-50, 50), "tag": f"row-{i}-{r}"} for r in range(rows)]
        doc = {"instances": instances} if i % 2 else {"inputs": {k: [inst[k] for inst in instances] for k in ("a", "b", "tag")}}
        calls.append(("multi_io", ":predict", json.dumps(doc).encode()))
    for i in range(20):
        calls.append(("bool_mask", ":predict", json.dumps({"instances": [{"flag": i % 2 == 0, "x": float(i)}]}).encode()))
    one = json.dumps({"instances": [[1.0]]}).encode()
    calls += [
        ("half_plus_two", ":predict", b'{"instances": [["a"]]}'),                       # not numbers
        ("half_plus_two", ":predict", b'{"instances": [[1.0]'),                        # malformed JSON
        ("half_plus_two", ":predict", b'{"rows": [[1.0]]}'),                           # neither instances nor inputs
        ("half_plus_two", ":predict", b'{"instances": [[1.0]], "signature_name": 3}'),  # signature name not a string
        ("half_plus_two", ":predict", b'{"instances": [[1.0]], "signature_name": "nope"}'),
        ("half_plus_two", ":predict", b'{"instances": [{"z": [1.0]}]}'),               # unknown input
        ("half_plus_two", "/versions/7:predict", one),
        ("half_plus_two", "/labels/canary:predict", one),
    ]
    rng.shuffle(calls)
    return calls


def post(server, model: str, path: str, body: bytes) -> tuple[int, object]:
    response = requests.post(f"{server.rest}/v1/models/{model}{path}", data=body, timeout=60)
    return response.status_code, response.json()


def test_a_burst_gets_the_same_answers_grouped_as_one_request_at_a_time(server):
    calls = burst(random.Random(11))
    with ThreadPoolExecutor(48) as pool:
        grouped = list(pool.map(lambda c: post(server, *c), calls))
        reference = list(pool.map(lambda c: post(server, f"{c[0]}_ref", c[1], c[2]), calls))
    for (model, path, body), got, (status, doc) in zip(calls, grouped, reference):
        want = (status, json.loads(json.dumps(doc).replace(f"{model}_ref", model)))
        assert got == want, f"{model}{path} {body[:80]!r}"
    statuses = [status for status, _ in grouped]
    assert statuses.count(200) == len(calls) - 8 and set(statuses) == {200, 400, 404}

    # Only batching limits the rows of one request.
    too_many = json.dumps({"instances": [[1.0]] * (MAX_BATCH + 1)}).encode()
    assert post(server, "half_plus_two", ":predict", too_many) == (400, {"error": "Task size 17 is larger than maximum input batch size 16"})

    # Grouped: requests that arrive together (here pipelined on one connection, so they arrive in
    # one read whatever the machine's load) become one task of the batched model's queue.
    before = server.batching_totals()["half_plus_two/1/serving_default"]["tasks"]
    body = b'{"instances": [[1.0]]}'
    head = b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as s:
        s.sendall((head + body) * 10)
        answers = b""
        while answers.count(b'"predictions"') < 10:
            chunk = s.recv(65536)
            assert chunk, answers
            answers += chunk
    assert server.batching_totals()["half_plus_two/1/serving_default"]["tasks"] - before < 10


def test_grouped_requests_are_counted_in_the_metrics(server):
    count = (":tensorflow:serving:request_count_total", {"model_name": "bool_mask", "status": "OK"})
    latency = (":tensorflow:serving:request_latency_count", {"model_name": "bool_mask", "API": "Predict", "entrypoint": "REST"})
    before = scrape(server)
    body = json.dumps({"instances": [{"flag": True, "x": 1.0}]}).encode()
    with ThreadPoolExecutor(16) as pool:
        assert {status for status, _ in pool.map(lambda _: post(server, "bool_mask", ":predict", body), range(40))} == {200}
    after = scrape(server)
    for name, labels in (count, latency):
        assert value(after, name, **labels) - value(before, name, **labels) == 40, name


def test_a_group_past_the_rest_deadline_gets_504_and_the_server_keeps_serving(hurried):
    def count(samples, status):
        return value(samples, ":tensorflow:serving:request_count_total", model_name="half_plus_two", status=status)

    before = scrape(hurried)
    started = time.monotonic()
    status, doc = post(hurried, "half_plus_two", ":predict", b'{"instances": [[1.0]]}')
    assert (status, doc) == (504, {"error": "Deadline exceeded: the request took longer than rest_api_timeout_in_ms=300"})
    assert time.monotonic() - started < 1.5  # answered at its deadline, not when the batch finally ran
    time.sleep(2.5)  # the batch runs at its 2 s timeout; the late answer is dropped, not counted again
    after = scrape(hurried)
    assert (count(after, "DEADLINE_EXCEEDED") - count(before, "DEADLINE_EXCEEDED"), count(after, "OK") - count(before, "OK")) == (1, 0)
    assert post(hurried, "plain", ":predict", b'{"instances": [[1.0]]}') == (200, {"predictions": [[2.5]]})


def test_pipelined_requests_are_answered_in_order_across_both_paths(server):
    """Grouped requests wait for their batch; a bad one in between is answered at once by the
    per-request path; the connection still writes the answers in request order."""
    bodies = [b'{"instances": [[%d.0]]}' % i for i in range(6)]
    bodies[3] = b'{"instances": [["not a number"]]}'
    pipelined = b"".join(
        b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        for body in bodies
    )
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(pipelined)
        data = b""
        while data.count(b"HTTP/1.1 ") < len(bodies) or not data.endswith(b"}"):
            data += sock.recv(65536)
    answers = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in data.split(b"HTTP/1.1 ")[1:]]
    assert answers[:3] + answers[4:] == [{"predictions": [[0.5 * i + 2]]} for i in (0, 1, 2, 4, 5)]
    assert "error" in answers[3]
