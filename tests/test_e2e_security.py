"""TLS, mutual TLS and bearer tokens end to end, with certificates made at test time (trustme)."""
import json

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from fastserve.transports.grpc_native import AVAILABLE as NATIVE_BUILT
from tests.conftest import EXAMPLE_MODELS, EXAMPLES
from tests.test_e2e_hostile_input import grpc_call_with_raw_path

TRANSPORTS = ["native", "aio"] if NATIVE_BUILT else ["aio"]

TOKEN, ADMIN_TOKEN = "data-token-123", "admin-token-456"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, the server's certificate, a client signed by the CA and a client signed by another CA."""
    tmp = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": tmp / "ca.pem", "client": tmp / "client.pem", "rogue": tmp / "rogue.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    ca.issue_cert("client@example.com").private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    other_ca.issue_cert("rogue@example.com").private_key_and_cert_chain_pem.write_to_path(str(files["rogue"]))

    def ssl_config(client_verify: bool) -> str:
        path = tmp / f"ssl_{client_verify}.config"
        path.write_text(
            f"server_key: {json.dumps(server.private_key_pem.bytes().decode())}\n"
            f"server_cert: {json.dumps(server.cert_chain_pems[0].bytes().decode())}\n"
            f"custom_ca: {json.dumps(ca.cert_pem.bytes().decode())}\n"
            f"client_verify: {str(client_verify).lower()}\n"
        )
        return str(path)

    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "admin_token").write_text(ADMIN_TOKEN)
    return {"ca": ca, "files": files, "ssl_config": ssl_config, "token_file": tmp / "token", "admin_token_file": tmp / "admin_token"}


@pytest.fixture(scope="module")
def mtls(start_server, pki):
    return start_server([
        f"--config={EXAMPLES / 'models.yaml'}", f"--ssl_config_file={pki['ssl_config'](True)}",
        f"--auth_token_file={pki['token_file']}", f"--admin_token_file={pki['admin_token_file']}",
    ])


@pytest.fixture(scope="module")
def tls_only(start_server, pki):
    return start_server([f"--config={EXAMPLES / 'models.yaml'}", f"--ssl_config_file={pki['ssl_config'](False)}"])


def secure_channel(server, pki, client: str | None) -> grpc.Channel:
    key_and_cert = pki["files"][client].read_bytes() if client else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["files"]["ca"].read_bytes(), private_key=key_and_cert, certificate_chain=key_and_cert,
    )
    return grpc.secure_channel(server.grpc_target, credentials)


def predict(channel: grpc.Channel, token: str | None = None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
    metadata = [("authorization", f"Bearer {token}")] if token else None
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30, metadata=metadata)
    return tf.make_ndarray(response.outputs["y"]).tolist()


def rest(server, pki, client: str | None, token: str | None, path="/v1/models/half_plus_two:predict"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"https://127.0.0.1:{server.rest_port}{path}"
    cert = str(pki["files"][client]) if client else None
    if path.endswith(":predict"):
        return requests.post(url, json={"instances": [[2.0]]}, headers=headers, cert=cert, verify=str(pki["files"]["ca"]), timeout=30)
    return requests.get(url, headers=headers, cert=cert, verify=str(pki["files"]["ca"]), timeout=30)


# ---------------------------------------------------------------- mutual TLS + tokens


def test_grpc_with_client_cert_and_token_succeeds(mtls, pki):
    assert predict(secure_channel(mtls, pki, "client"), TOKEN) == [[3.0]]
    assert predict(secure_channel(mtls, pki, "client"), ADMIN_TOKEN) == [[3.0]]  # the admin token may do anything


@pytest.mark.parametrize("token, text", [(None, "missing bearer token"), ("wrong", "invalid bearer token")])
def test_grpc_without_the_token_is_unauthenticated(mtls, pki, token, text):
    with pytest.raises(grpc.RpcError) as err:
        predict(secure_channel(mtls, pki, "client"), token)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert text in err.value.details()


@pytest.mark.parametrize("client", [None, "rogue"])
def test_grpc_client_cert_missing_or_from_another_ca_is_refused(mtls, pki, client):
    with pytest.raises(grpc.RpcError) as err:
        predict(secure_channel(mtls, pki, client), TOKEN)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert predict(secure_channel(mtls, pki, "client"), TOKEN) == [[3.0]]  # still serving


def test_grpc_plaintext_is_refused(mtls):
    with pytest.raises(grpc.RpcError) as err:
        predict(mtls.channel(), TOKEN)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rest_with_client_cert_and_token_succeeds(mtls, pki):
    response = rest(mtls, pki, "client", TOKEN)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [[3.0]]}


@pytest.mark.parametrize("token", [None, "wrong"])
def test_rest_without_the_token_is_401(mtls, pki, token):
    response = rest(mtls, pki, "client", token)
    assert response.status_code == 401
    assert "bearer token" in response.json()["error"]


@pytest.mark.parametrize("client", [None, "rogue"])
def test_rest_client_cert_missing_or_from_another_ca_is_refused(mtls, pki, client):
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError, or the connection reset by the handshake
        rest(mtls, pki, client, TOKEN)
    assert rest(mtls, pki, "client", TOKEN).status_code == 200


def test_metrics_need_the_token(mtls, pki):
    assert rest(mtls, pki, "client", None, "/monitoring/prometheus/metrics").status_code == 401
    response = rest(mtls, pki, "client", TOKEN, "/monitoring/prometheus/metrics")
    assert response.status_code == 200
    assert "fastserve_model_version_state" in response.text


def test_shared_memory_regions_need_the_admin_token(mtls, pki):
    assert rest(mtls, pki, "client", TOKEN, "/v2/systemsharedmemory/status").status_code == 401
    response = rest(mtls, pki, "client", ADMIN_TOKEN, "/v2/systemsharedmemory/status")
    assert (response.status_code, response.json()) == (200, [])


def test_reload_needs_the_admin_token(mtls, pki):
    request = model_management_pb2.ReloadConfigRequest()
    for name in ("half_plus_two", "half_plus_three", "multi_io"):
        request.config.model_config_list.config.append(
            model_server_config_pb2.ModelConfig(name=name, base_path=str(EXAMPLE_MODELS / name), model_platform="tensorflow"))
    stub = model_service_pb2_grpc.ModelServiceStub(secure_channel(mtls, pki, "client"))
    with pytest.raises(grpc.RpcError) as err:
        stub.HandleReloadConfigRequest(request, timeout=60, metadata=[("authorization", f"Bearer {TOKEN}")])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "admin token" in err.value.details()
    stub.HandleReloadConfigRequest(request, timeout=60, metadata=[("authorization", f"Bearer {ADMIN_TOKEN}")])
    assert predict(secure_channel(mtls, pki, "client"), TOKEN) == [[3.0]]


# ---------------------------------------------------------------- TLS without client certificates


def test_tls_without_client_cert(tls_only, pki):
    assert predict(secure_channel(tls_only, pki, None)) == [[3.0]]
    assert rest(tls_only, pki, None, None).json() == {"predictions": [[3.0]]}
    assert f"Exporting HTTPS/REST API at 127.0.0.1:{tls_only.rest_port}" in tls_only.log()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_only.rest_port}/v1/models/half_plus_two", timeout=10)
    with pytest.raises(grpc.RpcError):
        predict(tls_only.channel())


def test_bad_ssl_config_stops_start_up(start_server, tmp_path):
    bad = tmp_path / "ssl.config"
    bad.write_text('server_key: "not a key"\nserver_cert: "not a cert"\n')
    server = start_server([f"--config={EXAMPLES / 'models.yaml'}", f"--ssl_config_file={bad}"], wait=False)
    assert server.proc.wait(60) == 2
    assert "--ssl_config_file: server_key / server_cert cannot be used" in server.log()


# ---------------------------------------------------------------- what callers without a token can learn


@pytest.fixture(scope="module", params=TRANSPORTS)
def token_only(request, start_server, pki):
    return start_server([f"--config={EXAMPLES / 'models.yaml'}", f"--auth_token_file={pki['token_file']}",
                         f"--grpc_transport={request.param}"])


def test_health_check_does_not_tell_which_models_exist(token_only):
    """Check is open to probes without a token: it answers for the server and its services only."""
    stub = health_pb2_grpc.HealthStub(token_only.channel())
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    details = {}
    for name in ("half_plus_two", "no_such_model"):
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        details[name] = err.value.details().replace(name, "NAME")
    assert details["half_plus_two"] == details["no_such_model"]


def test_reflection_needs_the_token(token_only):
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    stub = reflection_pb2_grpc.ServerReflectionStub(token_only.channel())
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answers = list(stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=[("authorization", f"Bearer {TOKEN}")]))
    assert "tensorflow.serving.PredictionService" in [s.name for s in answers[0].list_services_response.service]


def test_a_token_that_is_not_utf8_is_unauthenticated(token_only):
    """The native transport hands a metadata value that is not UTF-8 over as bytes: the token check
    raised TypeError on it (INTERNAL). Found by fuzzing."""
    headers = grpc_call_with_raw_path(token_only.grpc_target, b"/tensorflow.serving.PredictionService/Predict",
                                      [(b"authorization", b"Bearer \xff\xfe")])
    assert headers[b"grpc-status"] == b"16", headers  # UNAUTHENTICATED


def test_a_stream_without_the_token_ends_unauthenticated(token_only):
    import queue

    import numpy as np
    import tritonclient.grpc as triton_grpc

    results: queue.Queue = queue.Queue()
    client = triton_grpc.InferenceServerClient(token_only.grpc_target)
    client.start_stream(callback=lambda result, error: results.put(error))
    x = triton_grpc.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[1.0]], np.float32))
    client.async_stream_infer("half_plus_two", [x])
    error = results.get(timeout=30)
    client.stop_stream()
    assert error is not None and "missing bearer token" in error.message()
