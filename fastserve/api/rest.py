"""REST routes: TensorFlow Serving's /v1 API over the shared services.

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   model metadata
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    predict (row or columnar JSON)
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify   classify tf.Examples ("examples", "context")
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:regress    regress tf.Examples

Errors are {"error": "..."} with the HTTP status of the canonical code (errors.py).
"""
import asyncio
import json
import re
import time
from typing import Awaitable
from urllib.parse import unquote

import orjson
from google.protobuf import json_format
from grpc import StatusCode
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, get_model_status_pb2, model_pb2, regression_pb2

from fastserve import limits, metrics
from fastserve.api.http import Request, Response
from fastserve.api.rest_groups import RestGroups
from fastserve.api.v2_rest import V2Rest
from fastserve.auth import TokenAuth
from fastserve.logs import request_log
from fastserve.api.tf_serving import TFServingService
from fastserve.codec import json_example, json_tensor
from fastserve.errors import HTTP_STATUS, ServingError, invalid_argument, not_found
from fastserve.servables.signature import DEFAULT_SIGNATURE

_POST_RE = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_GET_RE = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)


def error_response(status: int, message: str) -> Response:
    return Response(status, orjson.dumps({"error": message}))


def _proto_json(message) -> dict:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)


def _pretty(document) -> bytes:
    # TF Serving pretty-prints status and metadata; clients parse either way.
    return json.dumps(document, indent=1).encode()


METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's; /metrics is served too
_IN_FLIGHT = metrics.IN_FLIGHT.labels("REST")
# REST verbs and resources -> the gRPC method names, so both entrypoints share API labels.
_API_LABELS = {"predict": "Predict", "classify": "Classify", "regress": "Regress", "metadata": "GetModelMetadata",
               "status": "GetModelStatus", "infer": "ModelInfer", "ready": "ModelReady"}


class RestApi:
    def __init__(
        self, service: TFServingService, timeout_ms: int, auth: TokenAuth | None = None, v2: V2Rest | None = None,
        metrics_path: str = METRICS_PATH,
    ):
        self._metrics_paths = (metrics_path, "/metrics")
        self._service = service
        self._timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self._auth = auth if auth is not None and auth.enabled else None
        self._v2 = v2  # the Open Inference Protocol's /v2 routes
        # Predict on batched models in groups; with tokens on, every request takes the checked path.
        self._groups = None if self._auth else RestGroups(service, self._timeout, error_response)

    def __call__(self, request: Request) -> Awaitable[Response]:
        if self._groups is not None and request.method == "POST":
            match = _POST_RE.fullmatch(request.path)
            if match and match.group(4).lower() == "predict":
                try:
                    spec = _model_spec(*match.group(1, 2, 3))
                except ServingError:
                    spec = None  # the per-request path words the error
                response = self._groups.predict(spec, request.body) if spec is not None else None
                if response is not None:
                    return response
        return self._serve(request)

    async def _serve(self, request: Request) -> Response:
        if request.method == "GET" and request.path in self._metrics_paths:
            return self._scrape(request)
        started = time.perf_counter()
        code = StatusCode.OK
        _IN_FLIGHT.inc()
        try:
            surface = TokenAuth.rest_surface(request.path) if self._auth else "open"
            if surface != "open":
                self._auth.check(request.headers.get("authorization"), surface == "admin")
            limits.set_deadline(self._timeout)
            async with asyncio.timeout(self._timeout):
                return await self._route(request)
        except ServingError as exc:
            code = exc.code
            return error_response(exc.http_status, exc.message)
        except TimeoutError:
            code = StatusCode.DEADLINE_EXCEEDED
            return error_response(HTTP_STATUS[StatusCode.DEADLINE_EXCEEDED], limits.rest_timeout_message(self._timeout))
        except asyncio.CancelledError:  # the client closed its connection
            code = StatusCode.CANCELLED
            raise
        finally:
            _IN_FLIGHT.dec()
            self._record(request, code, started)

    def _scrape(self, request: Request) -> Response:
        """Prometheus' scrape: not a request itself (no request metrics), but it needs the token."""
        if self._auth:
            try:
                self._auth.check(request.headers.get("authorization"), admin=False)
            except ServingError as exc:
                return error_response(exc.http_status, exc.message)
        body, content_type = metrics.scrape()
        return Response(200, body, content_type)

    def _record(self, request: Request, code: StatusCode, started: float) -> None:
        """Metrics and the sampled request log: API and model come from the path."""
        parts = request.path.split("/")
        model = parts[3].partition(":")[0] if len(parts) > 3 and parts[2] == "models" else ""
        if model and self._service.registry.entry(model) is None:
            model = metrics.UNKNOWN_MODEL
        last = parts[-1]
        if ":" in last:
            verb = last.rpartition(":")[2].lower()
        elif request.method == "GET":
            verb = last if last in ("metadata", "ready") else "status"
        else:
            verb = last
        api = _API_LABELS.get(verb, "other")
        seconds = metrics.request_series("REST", api, model).done(code, started)
        request_log.record("REST", api, model, code, seconds)

    async def _route(self, request: Request) -> Response:
        path = request.path
        if self._v2 is not None and (path == "/v2" or path.startswith("/v2/")):
            return await self._v2.route(request)
        if not path.lower().startswith("/v1/"):
            raise not_found(f"Not found: {request.method} {path}")
        if request.method == "POST":
            match = _POST_RE.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                spec = _model_spec(name, version, label)
                if verb.lower() == "predict":
                    return await self._predict(spec, request.body)
                return await self._classify_regress(spec, verb.lower(), request.body)
        elif request.method == "GET":
            match = _GET_RE.fullmatch(path)
            if match:
                name, version, label, metadata = match.groups()
                if not name:
                    raise invalid_argument("Missing model name in request.")
                spec = _model_spec(name, version, label)
                return self._metadata(spec) if metadata else self._status(spec)
        raise invalid_argument(f"Malformed request: {request.method} {path}")

    async def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> Response:
        request = json_tensor.PredictBody(body)
        key = request.signature_name or DEFAULT_SIGNATURE
        with self._service.lookup(spec) as handle:
            signature = handle.model.signatures.get(key)
            if signature is None:
                raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
            inputs, row_format = request.decode(signature.input_dtypes)
            outputs = await self._service.run(handle, signature, inputs)
        return Response(200, json_tensor.encode_response(outputs, row_format))

    async def _classify_regress(self, spec: model_pb2.ModelSpec, verb: str, body: bytes) -> Response:
        spec.signature_name, request_input = json_example.decode_request(json_tensor.loads(body))
        if verb == "classify":
            request = classification_pb2.ClassificationRequest(model_spec=spec, input=request_input)
            response = await self._service.examples.classify(request)
            return Response(200, json_example.encode_classification(response.result))
        request = regression_pb2.RegressionRequest(model_spec=spec, input=request_input)
        response = await self._service.examples.regress(request)
        return Response(200, json_example.encode_regression(response.result))

    def _status(self, spec: model_pb2.ModelSpec) -> Response:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
        return Response(200, _pretty(_proto_json(self._service.get_model_status(request))))

    def _metadata(self, spec: model_pb2.ModelSpec) -> Response:
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
