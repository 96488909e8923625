"""Classify, Regress and MultiInference: TF Serving's tf.Example APIs, written once.

A Classify or Regress request (gRPC proto, or REST JSON made into the same Input) is an
inference call: its input is the serialized-examples tensor, its outputs are the ones the
signature kind reads (servables/example_signatures.py), and its answer is a
ClassificationResult or RegressionResult, written for its wire form. MultiInference runs
several such calls on one input and puts their results together. Checks and error texts
follow TF Serving's classifier.cc, regressor.cc and multi_inference.cc.
"""
import asyncio
from collections.abc import Callable

import numpy as np
from grpc import StatusCode
from tensorflow_serving.apis import classification_pb2, inference_pb2, input_pb2, model_pb2, regression_pb2

from fastserve.codec import json_example
from fastserve.codec.examples import serialized_examples
from fastserve.errors import ServingError, invalid_argument
from fastserve.pipeline.call import Inference, InferenceCall
from fastserve.servables.example_signatures import (
    CLASSES,
    CLASSIFY_METHOD,
    INPUTS,
    OUTPUTS,
    REGRESS_METHOD,
    SCORES,
    classification_outputs,
    regression_outputs,
)
from fastserve.servables.registry import ServableHandle
from fastserve.servables.signature import DEFAULT_SIGNATURE, Signature
from fastserve.services.model_spec import resolved_spec, version_choice


def _matrix(array: np.ndarray, num_examples: int, name: str, dtype_name: str, kind_ok) -> np.ndarray:
    if array.ndim != 2:
        raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {list(array.shape)}")
    if not kind_ok(array.dtype):
        raise invalid_argument(f"Expected {name} Tensor of {dtype_name}. Got: {array.dtype}")
    if array.shape[0] != num_examples:
        raise invalid_argument(f"Expected {name} output batch size of {num_examples}. Got: {array.shape[0]}")
    return array


def classification_result(outputs: dict[str, np.ndarray], num_examples: int, result: classification_pb2.ClassificationResult) -> None:
    classes = outputs.get(CLASSES)
    scores = outputs.get(SCORES)
    if classes is not None:
        _matrix(classes, num_examples, "classes", "DT_STRING", lambda d: d == object or d.kind == "S")
    if scores is not None:
        _matrix(scores, num_examples, "scores", "DT_FLOAT", lambda d: d == np.float32)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    either = classes if classes is not None else scores
    assert either is not None  # classification_outputs found one of them
    num_classes = either.shape[1]
    for i in range(num_examples):
        entry = result.classifications.add()
        for c in range(num_classes):
            cls = entry.classes.add()
            if classes is not None:
                label = classes[i, c]
                cls.label = label.decode(errors="replace") if isinstance(label, bytes) else label
            if scores is not None:
                cls.score = scores[i, c]


def regression_result(outputs: dict[str, np.ndarray], num_examples: int, result: regression_pb2.RegressionResult) -> None:
    values = outputs[OUTPUTS]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid_argument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(values.shape)}"
        )
    if values.shape[0] != num_examples:
        raise invalid_argument(
            f"Input batch size did not match output batch size: {num_examples} vs. {values.shape[0]}"
        )
    if values.dtype != np.float32:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
    for value in values.reshape(-1).tolist():
        result.regressions.add(value=value)


class _Kind:
    """What makes a tf.Example call a classification or a regression."""

    def __init__(self, api: str, outputs: Callable, fill: Callable, response_class, result_class, result_field: str,
                 to_json: Callable):
        self.api = api  # the metrics' API label
        self.outputs = outputs  # signature -> output keys (validates the signature)
        self.fill = fill  # (outputs, num_examples, result message) -> None
        self.response_class = response_class  # the gRPC response
        self.result_class = result_class
        self.result_field = result_field  # MultiInference's InferenceResult field
        self.to_json = to_json  # result message -> REST body


CLASSIFY = _Kind("Classify", classification_outputs, classification_result, classification_pb2.ClassificationResponse,
                 classification_pb2.ClassificationResult, "classification_result", json_example.encode_classification)
REGRESS = _Kind("Regress", regression_outputs, regression_result, regression_pb2.RegressionResponse,
                regression_pb2.RegressionResult, "regression_result", json_example.encode_regression)
_KINDS = {CLASSIFY_METHOD: CLASSIFY, REGRESS_METHOD: REGRESS}


class ExampleCall(InferenceCall):
    """A Classify or Regress request: its examples, and the form its answer takes: a gRPC
    response ("grpc"), a REST JSON body ("rest") or the bare result message, for
    MultiInference ("result")."""

    __slots__ = ("kind", "wire", "_input", "_count")

    def __init__(self, kind: _Kind, spec: model_pb2.ModelSpec, request_input: input_pb2.Input, wire: str = "grpc"):
        super().__init__(spec.name, *version_choice(spec), spec.signature_name or DEFAULT_SIGNATURE)
        self.kind = kind
        self.wire = wire
        self._input = request_input
        self._count = 0  # examples
    @property
    def api(self) -> str:  # type: ignore[override]  # read-only where the base's is a class attribute: the wire says
        return "MultiInference" if self.wire == "result" else self.kind.api

    def missing_signature(self, handle: ServableHandle) -> ServingError:
        return invalid_argument(f"No signature was found with the name: {self.signature_key}")

    def inputs_for(self, signature: Signature, max_elements: int) -> dict[str, np.ndarray]:
        self.kind.outputs(signature)  # a signature of the wrong kind is refused before the input is read
        examples = serialized_examples(self._input)
        self._count = len(examples)
        return {INPUTS: examples}

    def output_keys(self, signature: Signature) -> tuple[str, ...]:
        return self.kind.outputs(signature)

    def encode(self, handle: ServableHandle, signature: Signature, outputs: dict[str, np.ndarray]):
        if self.wire == "result":
            result = self.kind.result_class()
            self.kind.fill(outputs, self._count, result)
            return result
        response = self.kind.response_class()
        self.kind.fill(outputs, self._count, response.result)
        if self.wire == "rest":
            return self.kind.to_json(response.result)
        resolved_spec(handle, self.signature_key, response.model_spec)
        return response.SerializeToString()


class ExampleInference:
    """The three tf.Example methods; MultiInference runs its tasks through the pipeline."""

    def __init__(self, registry, pipeline):
        self._registry = registry
        self._pipeline = pipeline

    def grpc_methods(self) -> dict:
        return {
            "/tensorflow.serving.PredictionService/Classify": Inference(
                classification_pb2.ClassificationRequest, lambda request: ExampleCall(CLASSIFY, request.model_spec, request.input)),
            "/tensorflow.serving.PredictionService/Regress": Inference(
                regression_pb2.RegressionRequest, lambda request: ExampleCall(REGRESS, request.model_spec, request.input)),
            "/tensorflow.serving.PredictionService/MultiInference": (inference_pb2.MultiInferenceRequest, self.multi_inference),
        }

    async def multi_inference(self, request: inference_pb2.MultiInferenceRequest) -> inference_pb2.MultiInferenceResponse:
        # TF Serving looks the servable up by the first task's spec (none: an empty spec).
        spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        with self._registry.lookup(spec.name, *version_choice(spec)) as handle:
            plan = self._plan(handle, request)
            serialized_examples(request.input)  # an empty input is refused before anything runs
            # Every task reads the same input; each signature runs once on it, on this version.
            calls = []
            for key, kind in plan:
                task_spec = model_pb2.ModelSpec(name=handle.name, signature_name=key)
                task_spec.version.value = handle.version
                calls.append(ExampleCall(kind, task_spec, request.input, wire="result"))  # counted as part of the request
            results = await asyncio.gather(*(self._pipeline.run(call) for call in calls))
            response = inference_pb2.MultiInferenceResponse()
            for (key, kind), result in zip(plan, results):
                entry = response.results.add()
                getattr(entry, kind.result_field).CopyFrom(result)
                resolved_spec(handle, key, entry.model_spec)
        return response

    @staticmethod
    def _plan(handle: ServableHandle, request: inference_pb2.MultiInferenceRequest) -> list[tuple[str, _Kind]]:
        """Validate the tasks as TF Serving does: [(signature key, kind)]."""
        plan, seen, input_tensor = [], set(), None
        for task in request.tasks:
            if not task.model_spec.name:
                raise invalid_argument("Found ModelSpec with an empty model name.")
            if task.model_spec.name != request.tasks[0].model_spec.name:
                raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            key = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if key in seen:
                raise invalid_argument(f"Duplicate evaluation of signature: {key}")
            seen.add(key)
            signature = handle.model.signatures.get(key)
            if signature is None:
                raise invalid_argument(f"Requested signature not found in model graph: {key}")
            kind = _KINDS.get(task.method_name)
            if kind is None:
                raise ServingError(StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
            kind.outputs(signature)
            tensor = signature.inputs[INPUTS].tensor_name
            if input_tensor is not None and tensor != input_tensor:
                raise invalid_argument("Input tensor must be the same for all Signatures.")
            input_tensor = tensor
            plan.append((key, kind))
        return plan
