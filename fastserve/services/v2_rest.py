"""REST routes of the Open Inference Protocol (V2) over the V2 service.

    GET  /v2                                        server metadata
    GET  /v2/health/live, /v2/health/ready          liveness, readiness (Kubernetes probes)
    GET  /v2/models/{m}[/versions/{v}]              model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready        model readiness
    GET  /v2/models/{m}[/versions/{v}]/config       the model configuration extension
    GET  /v2/models[/{m}[/versions/{v}]]/stats      the statistics extension
    POST /v2/models/{m}[/versions/{v}]/infer        inference: JSON tensors, or the binary
                                                    tensor data extension
    POST /v2/repository/index                       the model repository extension: index,
    POST /v2/repository/models/{m}/load|unload      load, unload
    GET  /v2/systemsharedmemory[/region/{r}]/status the system shared memory extension:
    POST /v2/systemsharedmemory/region/{r}/register regions' status, register ({key, offset,
    POST /v2/systemsharedmemory[/region/{r}]/unregister  byte_size}), unregister; the same under
                                                    /v2/cudasharedmemory has no regions

Binary extension: the request's Inference-Header-Content-Length header gives the size of
the leading JSON; inputs with parameters.binary_data_size take their bytes, in order,
from what follows. Outputs asked for with parameters.binary_data (or the request's
parameters.binary_data_output) come back the same way. Not ready is 503.
"""
import re
from typing import Literal
from urllib.parse import unquote

import orjson

from fastserve import shared_memory
from fastserve.codec import json_tensor, v2 as v2_codec
from fastserve.errors import ServingError, invalid_argument, not_found
from fastserve.pipeline.member import priority_level
from fastserve.servables.registry import ServableHandle
from fastserve.servables.signature import Signature
from fastserve.services.v2 import V2Call, V2Service, version_number
from fastserve.services.rest_messages import Request, Response

HEADER_LENGTH = "inference-header-content-length"
_REPOSITORY_RE = re.compile(r"/v2/repository/models/([^/]+)/(load|unload)")
_SHM_RE = re.compile(r"/v2/(system|cuda)sharedmemory(?:/region/([^/]+))?/(status|register|unregister)")
_MODEL_RE = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer|config|stats))?")


def _json(document, status: int = 200) -> Response:
    return Response(status, orjson.dumps(document))


class RestV2Call(V2Call):
    """A JSON (or binary extension) infer request -> its JSON (or binary) response."""

    __slots__ = ("_binary_outputs",)

    def __init__(self, name: str, version: str, request: Request):
        header, binary = _split_body(request)
        doc = json_tensor.loads(header)
        if not isinstance(doc, dict):
            raise invalid_argument("the infer request must be a JSON object")
        fields, self._binary_outputs = _decode_request(doc, binary)
        super().__init__(name, version, *fields)

    def encode(self, handle: ServableHandle, signature: Signature, outputs: dict) -> Response:
        return _encode_response(handle, self.id, outputs, self._binary_outputs, self.shm_outputs)


class V2Rest:
    def __init__(self, service: V2Service):
        self._service = service

    def route(self, request: Request):
        """The /v2 request as an inference call (infer), or the coroutine that answers it."""
        path, method = request.path.rstrip("/") or "/", request.method
        match = _MODEL_RE.fullmatch(path)
        if method == "POST" and match is not None and match.group(3) == "infer":
            return RestV2Call(unquote(match.group(1)), unquote(match.group(2) or ""), request)
        return self._plain(request)

    @staticmethod
    def target(request: Request) -> tuple[str, int | None, None, str] | None:
        """(model, version, label, API) of an infer request, read from its path alone; None for
        any other request (or a version that is not a number: decoding it says so)."""
        match = _MODEL_RE.fullmatch(request.path.rstrip("/")) if request.method == "POST" else None
        if match is None or match.group(3) != "infer":
            return None
        try:
            version = version_number(unquote(match.group(2) or ""))
        except ServingError:
            return None
        return unquote(match.group(1)), version, None, RestV2Call.api

    async def _plain(self, request: Request) -> Response:
        path, method = request.path.rstrip("/") or "/", request.method
        if method == "GET":
            if path == "/v2":
                return _json(self._service.server_metadata())
            if path == "/v2/health/live":
                live = self._service.health.live()
                return _json({"live": live}, 200 if live else 503)
            if path == "/v2/health/ready":
                ready = self._service.health.ready()
                return _json({"ready": ready}, 200 if ready else 503)
            if path == "/v2/models/stats":
                return _json(self._service.model_statistics("", ""))
        if method == "POST" and path.startswith("/v2/repository/") and self._service.repository is not None:
            return await self._repository(path, request.body)
        if path.startswith(("/v2/systemsharedmemory/", "/v2/cudasharedmemory/")):
            return _shared_memory(method, path, request.body)
        match = _MODEL_RE.fullmatch(path)
        if match is None:
            raise not_found(f"Not found: {method} {request.path}")
        name, version, action = unquote(match.group(1)), unquote(match.group(2) or ""), match.group(3)
        if method == "GET" and action is None:
            return _json(self._service.model_metadata(name, version))
        if method == "GET" and action == "config":
            return _json(self._service.model_config(name, version))
        if method == "GET" and action == "stats":
            return _json(self._service.model_statistics(name, version))
        if method == "GET" and action == "ready":
            ready = self._service.model_ready(name, version)
            return _json({"name": name, "ready": ready}, 200 if ready else 503)
        raise invalid_argument(f"Malformed request: {method} {request.path}")

    async def _repository(self, path: str, body: bytes) -> Response:
        if path == "/v2/repository/index":
            doc = json_tensor.loads(body) if body.strip() else {}
            ready = doc.get("ready", False) if isinstance(doc, dict) else False
            return _json(self._service.model_repository().index(ready is True))
        match = _REPOSITORY_RE.fullmatch(path)
        if match is None:
            raise not_found(f"Not found: POST {path}")
        name, action = unquote(match.group(1)), match.group(2)
        await (self._service.load(name) if action == "load" else self._service.unload(name))
        return _json({})


def _shared_memory(method: str, path: str, body: bytes) -> Response:
    match = _SHM_RE.fullmatch(path)
    kind, name, action = (match.group(1), unquote(match.group(2) or ""), match.group(3)) if match else ("", "", "")
    if match is None or (method, action) not in (("GET", "status"), ("POST", "register"), ("POST", "unregister")):
        raise not_found(f"Not found: {method} {path}")
    if kind == "cuda":  # none can be registered; status and unregistering answer as for no regions
        if action == "register":
            shared_memory.refuse_cuda_region()
        return _json(shared_memory.no_cuda_regions(name) if action == "status" else {})
    if action == "status":
        return _json(shared_memory.regions.status(name))
    if action == "unregister":
        shared_memory.regions.unregister(name)
        return _json({})
    doc = json_tensor.loads(body) if body.strip() else {}
    if not name or not isinstance(doc, dict):
        raise invalid_argument("register: POST /v2/systemsharedmemory/region/{name}/register with {key, offset, byte_size}")
    key, offset, size = doc.get("key"), doc.get("offset", 0), doc.get("byte_size")
    if not isinstance(key, str) or not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, size)):
        raise invalid_argument("register: 'key' must be a string, 'offset' and 'byte_size' integers")
    assert isinstance(size, int)  # checked just above
    shared_memory.regions.register(name, key, offset, size)
    return _json({})


def _split_body(request: Request) -> tuple[bytes, bytes]:
    body = request.body
    length = request.headers.get(HEADER_LENGTH)
    if length is None:
        return body, b""
    size = _small_int(length.strip())
    if size is None or size > len(body):
        raise invalid_argument(
            f"Inference-Header-Content-Length: '{length[:40]}' is not a length within the {len(body)}-byte request body"
        )
    return body[:size], body[size:]


def _small_int(text: str) -> int | None:
    """A non-negative decimal of at most 18 ASCII digits, else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def _decode_request(doc: dict, binary: bytes) -> tuple[tuple, set[str] | Literal[True]]:
    """((request id, inputs, requested outputs, signature name, shared memory outputs, priority), binary outputs: a
    set, or True for all)."""
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise invalid_argument("the infer request needs 'inputs': a non-empty list of tensors")
    parameters = _parameters(doc, "request")
    inputs, offset = {}, 0
    for i, tensor in enumerate(inputs_doc):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise invalid_argument(f"input {i}: each input must be an object with a 'name'")
        tensor_name = tensor["name"]
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        if not isinstance(datatype, str):
            raise invalid_argument(f"input '{tensor_name}': 'datatype' must be a string")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise invalid_argument(f"input '{tensor_name}': 'shape' must be a list of integers")
        if tensor_name in inputs:
            raise invalid_argument(f"input '{tensor_name}' appears more than once")
        tensor_parameters = _parameters(tensor, f"input '{tensor_name}'")
        size = tensor_parameters.get("binary_data_size")
        place = shared_memory.placement(tensor_parameters, tensor_name)
        if place is not None:
            inputs[tensor_name] = v2_codec.from_raw(shared_memory.regions.read(place, tensor_name), datatype, shape, tensor_name)
        elif size is not None:
            if not isinstance(size, int) or size < 0:
                raise invalid_argument(f"input '{tensor_name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise invalid_argument(
                    f"input '{tensor_name}': binary_data_size is {size} but only {len(binary) - offset} bytes of "
                    "binary data are left in the request body"
                )
            inputs[tensor_name] = v2_codec.from_raw(binary[offset:offset + size], datatype, shape, tensor_name)
            offset += size
        elif "data" in tensor:
            inputs[tensor_name] = v2_codec.from_json(tensor["data"], datatype, shape, tensor_name)
        else:
            raise invalid_argument(f"input '{tensor_name}': has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise invalid_argument(f"the request body has {len(binary) - offset} bytes of binary data no input claims")
    outputs, binary_outputs, shm_outputs = [], set(), {}
    requested = doc.get("outputs") or []
    if not isinstance(requested, list):
        raise invalid_argument("'outputs' must be a list of the outputs wanted")
    for tensor in requested:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise invalid_argument("each requested output must be an object with a 'name'")
        outputs.append(tensor["name"])
        output_parameters = _parameters(tensor, f"output '{tensor['name']}'")
        if output_parameters.get("binary_data"):
            binary_outputs.add(tensor["name"])
        place = shared_memory.placement(output_parameters, tensor["name"])
        if place is not None:
            shm_outputs[tensor["name"]] = place
    signature = parameters.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid_argument("parameters.signature_name must be a string")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):  # (str() of a list nested 1,000 deep raised RecursionError)
        raise invalid_argument("'id' must be a string")
    fields = (request_id, inputs, outputs, signature, shm_outputs, priority_level(parameters.get("priority", 0)))
    return fields, True if parameters.get("binary_data_output") else binary_outputs


def _parameters(doc: dict, what: str) -> dict:
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid_argument(f"{what}: 'parameters' must be an object")
    return parameters


def _encode_response(handle: ServableHandle, request_id: str, arrays: dict, binary_outputs: set[str] | Literal[True],
                     shm_outputs: dict[str, shared_memory.Placement]) -> Response:
    outputs, chunks = [], []
    for name, array in arrays.items():
        entry = {"name": name, "datatype": v2_codec.datatype_of(array, name), "shape": list(array.shape)}
        if name in shm_outputs:
            raw = v2_codec.to_raw(array)
            shared_memory.regions.write(shm_outputs[name], raw, name)
            # (binary_data_size 0: clients that asked for it as binary data find none in the body)
            entry["parameters"] = {shared_memory.REGION: shm_outputs[name].region, shared_memory.SIZE: len(raw),
                                   "binary_data_size": 0}
        elif binary_outputs is True or name in binary_outputs:
            raw = v2_codec.to_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = v2_codec.to_json(array)
        outputs.append(entry)
    document = {"model_name": handle.name, "model_version": str(handle.version), "outputs": outputs}
    if request_id:
        document["id"] = request_id
    header = json_tensor.dumps(document)
    if not chunks:
        return Response(200, header)
    return Response(
        200, header + b"".join(chunks), "application/octet-stream", ((HEADER_LENGTH.title(), str(len(header))),)
    )
