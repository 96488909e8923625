"""Models from object storage: fastserve serves s3://models/adder from a real S3-compatible
server (moto's, on loopback, started and stopped here). One scenario, in order: serve
version 1, a half-uploaded version 2 never loads, the complete one does, deleting it rolls
back to version 1, and a store that cannot be reached leaves version 1 serving while the
error is logged. Credentials reach the server only through AWS's environment variables."""
import logging
import time
from pathlib import Path

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from fastserve.config import ConfigError, check_model_root, load_yaml
from tests.conftest import free_port, wait_until
from tests.model_builder import export_adder

SECRET = "fastserve-test-secret-key"
POLL = 0.3


@pytest.fixture(scope="module")
def store():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    env = {
        "AWS_ACCESS_KEY_ID": "fastserve-test", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1",
    }
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=SECRET, region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    yield moto, s3, env
    moto.stop()


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """{version: local SavedModel directory}; version N answers x + N."""
    root = tmp_path_factory.mktemp("exports")
    return {n: Path(export_adder(root / str(n), n)) for n in (1, 2)}


def upload(s3, directory: Path, version: int, only=None):
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if only is None or only(relative):
            s3.put_object(Bucket="models", Key=f"adder/{version}/{relative}", Body=path.read_bytes())


@pytest.fixture(scope="module")
def server(start_server, store, versions, tmp_path_factory):
    _moto, s3, env = store
    upload(s3, versions[1], 1)
    cache = tmp_path_factory.mktemp("cache")
    server = start_server(
        ["--model_name=adder", "--model_base_path=s3://models/adder", f"--file_system_poll_wait_seconds={POLL}",
         f"--model_cache_dir={cache}"],
        env=env,
    )
    server.cache = cache / "adder"
    return server


def predict(server) -> float:
    response = requests.post(f"{server.rest}/v1/models/adder:predict", json={"instances": [[0.0]]}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0][0]


def states(server) -> dict:
    body = requests.get(f"{server.rest}/v1/models/adder", timeout=30).json()
    return {int(s["version"]): s["state"] for s in body["model_version_status"]}


def cached(server) -> set:
    return {p.name for p in server.cache.iterdir()}


def test_serves_a_version_from_s3(server):
    assert predict(server) == 1.0
    assert cached(server) == {"1"}
    assert (server.cache / "1" / "saved_model.pb").is_file()
    assert SECRET not in server.log()


def test_a_half_uploaded_version_never_loads(server, store, versions):
    _moto, s3, _env = store
    upload(s3, versions[2], 2, only=lambda relative: relative != "saved_model.pb")
    time.sleep(6 * POLL)
    assert states(server) == {1: "AVAILABLE"} and cached(server) == {"1"} and predict(server) == 1.0
    upload(s3, versions[2], 2, only=lambda relative: relative == "saved_model.pb")  # the upload completes
    wait_until(lambda: predict(server) == 2.0, 60, "version 2 to serve")
    wait_until(lambda: cached(server) == {"2"}, 60, "version 1's copy to leave the cache once it is unloaded")


def test_deleting_the_newest_version_rolls_back(server, store):
    _moto, s3, _env = store
    listed = s3.list_objects_v2(Bucket="models", Prefix="adder/2/")["Contents"]
    s3.delete_objects(Bucket="models", Delete={"Objects": [{"Key": o["Key"]} for o in listed]})
    wait_until(lambda: predict(server) == 1.0, 60, "version 1 to serve again")
    wait_until(lambda: cached(server) == {"1"}, 60, "the deleted version to leave the cache")


def test_an_unreachable_store_keeps_serving_and_reports_it(server, store):
    moto, _s3, _env = store
    moto.stop()
    try:
        wait_until(lambda: "model adder: cannot list s3://models/adder" in server.log(), 60, "the error in the log")
        time.sleep(3 * POLL)
        assert predict(server) == 1.0 and states(server)[1] == "AVAILABLE"
    finally:
        moto.start()  # the same in-process store, its buckets intact
    wait_until(lambda: "model adder: base path s3://models/adder can be read again" in server.log(), 60, "the recovery in the log")
    assert predict(server) == 1.0
    assert SECRET not in server.log()


def test_a_url_base_path_is_kept_as_it_is_and_refused_under_model_root(tmp_path):
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - {name: adder, base_path: 's3://models/adder'}\n")
    models = load_yaml(str(config)).models
    assert models[0].base_path == "s3://models/adder"  # not made relative to models.yaml
    with pytest.raises(ConfigError, match="base_path s3://models/adder is in object storage, outside model_root"):
        check_model_root(models, str(tmp_path))
