"""TensorFlow Serving's REST API (/v1) over the shared services.

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   model metadata
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    predict (row or columnar JSON)
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify   classify tf.Examples ("examples", "context")
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:regress    regress tf.Examples

Predict, classify and regress are inference calls for the pipeline; status and metadata
are answered here. Errors are {"error": "..."} with the HTTP status of the canonical code
(errors.py), written by the REST app (transports/rest.py).
"""
import json
import re
from urllib.parse import unquote

import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from fastserve.codec import json_example, json_tensor
from fastserve.errors import ServingError, invalid_argument, not_found
from fastserve.pipeline.call import PREDICT, InferenceCall
from fastserve.servables.registry import ServableHandle
from fastserve.servables.signature import DEFAULT_SIGNATURE, Signature
from fastserve.services.example_inference import CLASSIFY, REGRESS, ExampleCall
from fastserve.services.model_spec import version_choice
from fastserve.services.tf_serving import TFServingService
from fastserve.services.rest_messages import Request, Response

_POST_RE = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_GET_RE = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
_VERB_API = {"predict": PREDICT, "classify": CLASSIFY.api, "regress": REGRESS.api}  # the metrics' API labels


def _proto_json(message) -> dict:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)


def _pretty(document) -> bytes:
    # TF Serving pretty-prints status and metadata; clients parse either way.
    return json.dumps(document, indent=1).encode()


class RestPredictCall(InferenceCall):
    """A :predict JSON body: parsed on arrival, its inputs read for the signature's dtypes."""

    __slots__ = ("_body", "_row_format")

    def __init__(self, spec: model_pb2.ModelSpec, body: bytes):
        self._body = json_tensor.PredictBody(body)
        super().__init__(spec.name, *version_choice(spec), self._body.signature_name or DEFAULT_SIGNATURE)
        self._row_format = True

    def missing_signature(self, handle: ServableHandle) -> ServingError:
        return invalid_argument(f'Serving signature name: "{self.signature_key}" not found in signature def')

    def inputs_for(self, signature: Signature, max_elements: int) -> dict[str, np.ndarray]:
        inputs, self._row_format = self._body.decode(signature.input_dtypes)
        return inputs

    def encode(self, handle: ServableHandle, signature: Signature, outputs: dict[str, np.ndarray]) -> bytes:
        return json_tensor.encode_response(outputs, self._row_format)


class RestV1:
    def __init__(self, service: TFServingService):
        self._service = service

    def route(self, request: Request):
        """The /v1 request as an inference call (predict, classify, regress), or the coroutine
        that answers it (status, metadata)."""
        path = request.path
        if not path.lower().startswith("/v1/"):
            raise not_found(f"Not found: {request.method} {path}")
        if request.method == "POST":
            match = _POST_RE.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                spec = _model_spec(name, version, label)
                if verb.lower() == "predict":
                    return RestPredictCall(spec, request.body)
                spec.signature_name, request_input = json_example.decode_request(json_tensor.loads(request.body))
                return ExampleCall(CLASSIFY if verb.lower() == "classify" else REGRESS, spec, request_input, wire="rest")
        elif request.method == "GET":
            match = _GET_RE.fullmatch(path)
            if match:
                name, version, label, metadata = match.groups()
                if not name:
                    raise invalid_argument("Missing model name in request.")
                spec = _model_spec(name, version, label)
                return self._metadata(spec) if metadata else self._status(spec)
        raise invalid_argument(f"Malformed request: {request.method} {path}")

    @staticmethod
    def target(request: Request) -> tuple[str, int | None, str | None, str] | None:
        """(model, version, label, API) of a predict, classify or regress request, read from its
        path alone; None for any other request."""
        match = _POST_RE.fullmatch(request.path) if request.method == "POST" else None
        if match is None:
            return None
        name, version, label, verb = match.groups()
        return (unquote(name), int(version) if version is not None else None, unquote(label) if label is not None else None,
                _VERB_API[verb.lower()])

    async def _status(self, spec: model_pb2.ModelSpec) -> Response:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
        return Response(200, _pretty(_proto_json(self._service.get_model_status(request))))

    async def _metadata(self, spec: model_pb2.ModelSpec) -> Response:
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
        response = self._service.get_model_metadata(request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        document = {"model_spec": _proto_json(response.model_spec), "metadata": {"signature_def": _proto_json(signature_map)}}
        return Response(200, _pretty(document))


def _model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=unquote(name))
    if version is not None:
        try:
            spec.version.value = int(version)
        except ValueError:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.") from None
    elif label is not None:
        spec.version_label = unquote(label)
    return spec
