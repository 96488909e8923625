"""End to end: Classify, Regress and MultiInference (gRPC) and :classify / :regress (REST).

The bundled example_scorer model (TF1, tf.Example inputs, classes and scores) always
runs; TF Serving's half_plus_two test models (TF1 and TF2) run where ../shared/testdata is.
"""
import grpc
import pytest
import requests
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.conftest import EXAMPLE_MODELS, TESTDATA, needs_testdata

TESTDATA_MODELS = {"hp2_tf1": "saved_model_half_plus_two_cpu", "hp2_tf2": "saved_model_half_plus_two_tf2_cpu"}


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory):
    models = [("example_scorer", EXAMPLE_MODELS / "example_scorer")]
    if TESTDATA.is_dir():
        models += [(name, TESTDATA / path) for name, path in TESTDATA_MODELS.items()]
    config = tmp_path_factory.mktemp("config") / "models.yaml"
    config.write_text("models:\n" + "".join(f"  - name: {n}\n    base_path: {p}\n" for n, p in models))
    return start_server([f"--config={config}"])


@pytest.fixture(scope="module")
def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(server.channel())


def example(**features) -> example_pb2.Example:
    proto = example_pb2.Example()
    for name, value in features.items():
        proto.features.feature[name].float_list.value.append(value)
    return proto


def fill_input(request_input, examples, context=None):
    if context is None:
        request_input.example_list.examples.extend(examples)
    else:
        request_input.example_list_with_context.context.CopyFrom(context)
        request_input.example_list_with_context.examples.extend(examples)


def classify(stub, model, signature, examples, context=None):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    fill_input(request.input, examples, context)
    return stub.Classify(request, timeout=30)


def regress(stub, model, signature, examples, context=None):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    fill_input(request.input, examples, context)
    return stub.Regress(request, timeout=30)


def classes_of(result):
    return [[(c.label, round(c.score, 5)) for c in entry.classes] for entry in result.classifications]


def rest(server, model, verb, body):
    return requests.post(f"{server.rest}/v1/models/{model}:{verb}", json=body, timeout=30)


# ---------------------------------------------------------------- gRPC, bundled model


def test_classify_labels_and_scores(stub):
    response = classify(stub, "example_scorer", "classify_x_to_y", [example(x=2.0), example(x=4.0)])
    assert classes_of(response.result) == [[("low", 7.0), ("high", 3.0)], [("low", 6.0), ("high", 4.0)]]
    assert response.model_spec.name == "example_scorer"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "classify_x_to_y"


def test_regress_with_context_merged_into_each_example(stub):
    response = regress(stub, "example_scorer", "regress_x_to_y", [example(x=2.0), example(x=4.0, bias=0.5)], context=example(bias=1.0))
    # The example's own feature wins over the context's.
    assert [r.value for r in response.result.regressions] == [4.0, 4.5]


def test_multi_inference_runs_every_task(stub):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"), ("regress_x_to_y", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "example_scorer"
        task.model_spec.signature_name = signature
    request.input.example_list.examples.append(example(x=2.0))
    response = stub.MultiInference(request, timeout=30)
    assert classes_of(response.results[0].classification_result) == [[("low", 7.0), ("high", 3.0)]]
    assert [r.value for r in response.results[1].regression_result.regressions] == [3.0]
    assert [r.model_spec.signature_name for r in response.results] == ["classify_x_to_y", "regress_x_to_y"]
    assert response.results[0].model_spec.version.value == 1


def _multi(stub, tasks, examples=(example(x=1.0),)):  # noqa: B008  an immutable tuple, never changed
    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name = model
        task.model_spec.signature_name = signature
    request.input.example_list.examples.extend(examples)
    return stub.MultiInference(request, timeout=30)


@pytest.mark.parametrize(
    "tasks, code, message",
    [
        ([("example_scorer", "regress_x_to_y", "tensorflow/serving/regress")] * 2,
         grpc.StatusCode.INVALID_ARGUMENT, "Duplicate evaluation of signature: regress_x_to_y"),
        ([("example_scorer", "regress_x_to_y", "tensorflow/serving/regress"), ("other", "classify_x_to_y", "tensorflow/serving/classify")],
         grpc.StatusCode.INVALID_ARGUMENT, "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
        ([("example_scorer", "regress_x_to_y", "tensorflow/serving/predict")],
         grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name: tensorflow/serving/predict"),
        ([("example_scorer", "nope", "tensorflow/serving/regress")],
         grpc.StatusCode.INVALID_ARGUMENT, "Requested signature not found in model graph: nope"),
        ([("example_scorer", "serving_default", "tensorflow/serving/regress")],
         grpc.StatusCode.FAILED_PRECONDITION, "No regression inputs found in SignatureDef"),
    ],
)
def test_multi_inference_errors(stub, tasks, code, message):
    with pytest.raises(grpc.RpcError) as err:
        _multi(stub, tasks)
    assert err.value.code() == code
    assert message in err.value.details()


def test_grpc_errors_name_the_problem(stub):
    with pytest.raises(grpc.RpcError) as err:
        classify(stub, "example_scorer", "classify_x_to_y", [])
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    with pytest.raises(grpc.RpcError) as err:
        classify(stub, "example_scorer", "regress_x_to_y", [example(x=1.0)])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'at least one of "classes" or "scores"' in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        regress(stub, "example_scorer", "missing", [example(x=1.0)])
    assert err.value.details() == "No signature was found with the name: missing"
    with pytest.raises(grpc.RpcError) as err:
        regress(stub, "example_scorer", "regress_x_to_y", [example(y=1.0)])  # required feature x absent
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x" in err.value.details()
    # and the server still serves
    assert [r.value for r in regress(stub, "example_scorer", "regress_x_to_y", [example(x=0.0)]).result.regressions] == [2.0]


# ---------------------------------------------------------------- REST, bundled model


def test_rest_classify_and_regress_json(server):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}, {"x": [4.0]}]}
    response = rest(server, "example_scorer", "classify", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [[["low", 7.0], ["high", 3.0]], [["low", 6.0], ["high", 4.0]]]}
    body = {"signature_name": "regress_x_to_y", "context": {"bias": 0.25}, "examples": [{"x": 2.0}]}
    response = rest(server, "example_scorer", "regress", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [3.25]}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"signature_name": "regress_x_to_y"}, "key 'examples' is expected and was not found"),
        ({"signature_name": "regress_x_to_y", "examples": []}, "'examples' value is an empty array"),
        ({"signature_name": "regress_x_to_y", "examples": {"x": 1.0}}, "Expecting 'examples' value to be an list/array"),
        ({"signature_name": "regress_x_to_y", "examples": [{"x": [1.0, "a"]}]}, "Unexpected element type in feature: x expecting type: float"),
        ({"signature_name": "regress_x_to_y", "examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: Null"),
        ({"signature_name": "regress_x_to_y", "examples": [3]}, "Example must be JSON object but got JSON Number"),
        ({"signature_name": "nope", "examples": [{"x": 1.0}]}, "No signature was found with the name: nope"),
        ({"signature_name": "regress_x_to_y", "examples": [{"x": 1}]}, "x"),  # int64 feature where float is parsed
    ],
)
def test_rest_bad_requests_are_400(server, body, message):
    response = rest(server, "example_scorer", "regress", body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_rest_unknown_model_is_404(server):
    response = rest(server, "nope", "classify", {"examples": [{"x": 1.0}]})
    assert response.status_code == 404
    assert response.json() == {"error": "Servable not found for request: Latest(nope)"}


# ---------------------------------------------------------------- TF Serving's half_plus_two (TF1 and TF2)


@needs_testdata
@pytest.mark.parametrize("model", sorted(TESTDATA_MODELS))
def test_half_plus_two_rest_matches_tf_serving(server, model):
    classify_body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    response = rest(server, model, "classify", classify_body)
    assert (response.status_code, response.json()) == (200, {"results": [[["", 3.0]]]})
    regress_body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    response = rest(server, model, "regress", regress_body)
    assert (response.status_code, response.json()) == (200, {"results": [3.0]})


@needs_testdata
@pytest.mark.parametrize("model", sorted(TESTDATA_MODELS))
def test_half_plus_two_grpc(stub, model):
    response = classify(stub, model, "classify_x_to_y", [example(x=2.0)])
    assert classes_of(response.result) == [[("", 3.0)]]
    assert response.model_spec.version.value == 123
    response = regress(stub, model, "regress_x_to_y", [example(x=2.0)])
    assert [r.value for r in response.result.regressions] == [3.0]
    tasks = [(model, "classify_x_to_y", "tensorflow/serving/classify"), (model, "regress_x_to_y2", "tensorflow/serving/regress")]
    if model == "hp2_tf2":
        # TF2 exports give every signature its own input placeholder; TF Serving refuses those too.
        with pytest.raises(grpc.RpcError) as err:
            _multi(stub, tasks, [example(x=2.0)])
        assert err.value.details() == "Input tensor must be the same for all Signatures."
        return
    multi = _multi(stub, tasks, [example(x=2.0)])
    assert classes_of(multi.results[0].classification_result) == [[("", 3.0)]]
    assert [r.value for r in multi.results[1].regression_result.regressions] == [4.0]  # y2 = 0.5 * x + 3


@needs_testdata
def test_half_plus_two_multi_inference_needs_one_input_tensor(stub):
    # regress_x2_to_y3 reads a float tensor x2, not the serialized examples.
    with pytest.raises(grpc.RpcError) as err:
        _multi(stub, [("hp2_tf1", "classify_x_to_y", "tensorflow/serving/classify"), ("hp2_tf1", "regress_x2_to_y3", "tensorflow/serving/regress")])
    assert err.value.details() == "Input tensor must be the same for all Signatures."
