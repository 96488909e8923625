"""End to end on TF Serving's own test models, started with TF Serving's flags."""
import json

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.conftest import TESTDATA, needs_testdata, rest_predict

pytestmark = needs_testdata

# (model dir, model name, expected y for x = 2.0)
MODELS = [
    ("saved_model_half_plus_two_cpu", 3.0),
    ("saved_model_half_plus_two_tf2_cpu", 3.0),
    ("saved_model_half_plus_three", 4.0),
]


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def served(request, start_server):
    model_dir, y = request.param
    server = start_server(["--model_name=default", f"--model_base_path={TESTDATA / model_dir}"])
    return server, model_dir, y


def predict_request(x, **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, np.float32)))
    return request


def test_grpc_predict_echoes_resolved_spec(served):
    server, _, y = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    response = stub.Predict(predict_request([[2.0]]), timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[y]]
    assert response.model_spec.name == "default"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def test_grpc_predict_shape_1_like_tf_serving(served):
    """TF Serving's integration test feeds x with shape [1] to the [-1,1] signature."""
    server, _, y = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    response = stub.Predict(predict_request([2.0], version=123), timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [y]


def test_grpc_predict_typed_float_val(served):
    server, _, y = served
    request = predict_request([[2.0]])
    request.inputs["x"].Clear()
    request.inputs["x"].dtype = tf.float32.as_datatype_enum
    request.inputs["x"].tensor_shape.dim.add(size=2)
    request.inputs["x"].tensor_shape.dim.add(size=1)
    request.inputs["x"].float_val.extend([2.0, 4.0])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    response = stub.Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).ravel().tolist() == [y, y + 1.0]


def test_grpc_output_filter(served):
    server, _, y = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    request = predict_request([[2.0]])
    request.output_filter.append("y")
    assert list(stub.Predict(request, timeout=30).outputs) == ["y"]
    request.output_filter[:] = ["nope"]
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: nope" in err.value.details()


def test_grpc_model_status(served):
    server, _, _ = served
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel())
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    response = stub.GetModelStatus(request, timeout=30)
    [status] = response.model_version_status
    assert status.version == 123
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0


def test_grpc_metadata_matches_tf_serving(served):
    server, model_dir, _ = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "default"
    response = stub.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 123
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    served_defs = json_format.MessageToDict(signature_map, preserving_proto_field_name=True)
    if model_dir == "saved_model_half_plus_two_cpu":
        expected = json.loads((TESTDATA / "half_plus_two_model_metadata.json").read_text())
        expected_defs = expected["metadata"]["signature_def"]
        assert json_format.MessageToDict(signature_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True) == expected_defs
    assert "serving_default" in served_defs["signature_def"]


def test_rest_metadata_equals_shipped_json(served):
    server, model_dir, _ = served
    body = requests.get(f"{server.rest}/v1/models/default/metadata", timeout=30).json()
    if model_dir == "saved_model_half_plus_two_cpu":
        assert body == json.loads((TESTDATA / "half_plus_two_model_metadata.json").read_text())
    else:
        assert body["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}


def test_rest_instances(served):
    server, _, y = served
    response = rest_predict(server, "default", {"instances": [2.0, 3.0, 4.0]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [y, y + 0.5, y + 1.0]}


def test_rest_columnar(served):
    server, _, y = served
    response = rest_predict(server, "default", {"inputs": {"x": [[2.0], [4.0]]}})
    assert response.status_code == 200, response.text
    assert response.json() == {"outputs": [[y], [y + 1.0]]}
    response = rest_predict(server, "default", {"inputs": [[2.0]]})
    assert response.json() == {"outputs": [[y]]}


def test_rest_versioned_url(served):
    server, _, y = served
    response = rest_predict(server, "default", {"instances": [[2.0]]}, suffix="/versions/123")
    assert response.json() == {"predictions": [[y]]}
    response = rest_predict(server, "default", {"instances": [[2.0]]}, suffix="/versions/7")
    assert response.status_code == 404
    assert response.json() == {"error": "Servable not found for request: Specific(default, 7)"}


def test_rest_status_json_exactly_tf_serving(served):
    server, _, _ = served
    for url in ("/v1/models/default", "/v1/models/default/versions/123"):
        body = requests.get(server.rest + url, timeout=30).json()
        assert body == {
            "model_version_status": [
                {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }
