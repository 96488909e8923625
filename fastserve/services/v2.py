"""The Open Inference Protocol (V2: Triton, KServe, MLServer), written once.

gRPC transports drive `grpc_methods()` (inference.GRPCInferenceService); the REST
routes (services/v2_rest.py) use the same steps. A model's V2 inputs and outputs are its
serving_default signature (another one with the request parameter "signature_name").
An infer request is an inference call (V2Call) through the same pipeline as the TF
Serving API: same servables, batching and errors.
"""
import asyncio
from collections.abc import Callable

import numpy as np
from google.protobuf import json_format
from grpc import StatusCode

import fastserve
from fastserve import shared_memory, statistics
from fastserve.codec import v2 as v2_codec
from fastserve.config import BatchingConfig, ModelConfig
from fastserve.errors import ServingError, invalid_argument, not_found
from fastserve.pipeline.call import Inference, InferenceCall, StreamedInference
from fastserve.pipeline.member import priority_level
from fastserve.servables.registry import Registry, ServableHandle
from fastserve.servables.signature import DEFAULT_SIGNATURE, Signature, TensorSpec
from fastserve.services.health import Health
from fastserve.services.repository import ModelRepository
from fastserve_client import dtypes, protos

PLATFORM = "tensorflow_savedmodel"
BACKEND = "tensorflow"
SERVICE = "/inference.GRPCInferenceService/"

pb = protos.inference()


class V2Call(InferenceCall):
    """A decoded infer request, whatever the wire form (the inputs are typed on the wire:
    decoded before the model is looked up). Subclasses write the response."""

    __slots__ = ("id", "_decoded", "shm_outputs")
    api = "ModelInfer"

    def __init__(self, model: str, version: str, request_id: str, inputs: dict[str, np.ndarray], outputs: list[str],
                 signature_name: str, shm_outputs: dict[str, shared_memory.Placement], priority: int = 0):
        super().__init__(model, version_number(version), None, signature_name or DEFAULT_SIGNATURE, outputs)
        self.priority = priority  # the request's parameters.priority, as Triton's
        self.id = request_id
        self._decoded = inputs
        self.shm_outputs = shm_outputs  # outputs to write into shared memory, not into the response

    def missing_signature(self, handle: ServableHandle) -> ServingError:
        return _missing_signature(handle, self.signature_key)

    def inputs_for(self, signature: Signature, max_elements: int) -> dict[str, np.ndarray]:
        return self._decoded

    def check(self, signature: Signature, inputs: dict[str, np.ndarray]) -> None:
        for name, array in inputs.items():
            spec = signature.inputs.get(name)
            if spec is not None and spec.dtype != dtypes.from_numpy(array.dtype).enum:
                raise invalid_argument(
                    f"input '{name}': datatype {v2_codec.datatype_of(array, name)} does not match "
                    f"the model's {_v2_name(spec.dtype)}"
                )


class GrpcV2Call(V2Call):
    """ModelInferRequest (gRPC) -> ModelInferResponse, outputs as raw contents."""

    __slots__ = ()

    def __init__(self, request):
        places = {t.name: shared_memory.placement(_plain(t.parameters), t.name) for t in request.inputs}
        raw = list(request.raw_input_contents)
        in_messages = sum(1 for place in places.values() if place is None)  # the others are in shared memory
        if raw and len(raw) != in_messages:
            raise invalid_argument(
                f"raw_input_contents has {len(raw)} entries but the request has {in_messages} inputs outside shared "
                "memory: send one entry per such input, in order, or none"
            )
        inputs = {}
        for tensor in request.inputs:
            if tensor.name in inputs:
                raise invalid_argument(f"input '{tensor.name}' appears more than once")
            place = places[tensor.name]
            if place is not None:
                data = shared_memory.regions.read(place, tensor.name)
                inputs[tensor.name] = v2_codec.from_raw(data, tensor.datatype, tensor.shape, tensor.name)
            elif raw:
                inputs[tensor.name] = v2_codec.from_raw(raw.pop(0), tensor.datatype, tensor.shape, tensor.name)
            else:
                inputs[tensor.name] = v2_codec.from_contents(tensor.contents, tensor.datatype, tensor.shape, tensor.name)
        shm_outputs = {o.name: place for o in request.outputs if (place := shared_memory.placement(_plain(o.parameters), o.name))}
        parameters = _plain(request.parameters)
        signature = parameters.get("signature_name", "")
        if not isinstance(signature, str):
            raise invalid_argument("parameters.signature_name must be a string")
        super().__init__(request.model_name, request.model_version, request.id, inputs, [o.name for o in request.outputs], signature,
                         shm_outputs, priority_level(parameters.get("priority", 0)))

    def encode(self, handle: ServableHandle, signature: Signature, outputs: dict[str, np.ndarray]) -> bytes:
        response = pb.ModelInferResponse(model_name=handle.name, model_version=str(handle.version), id=self.id)
        for name, array in outputs.items():
            tensor = response.outputs.add(name=name, datatype=v2_codec.datatype_of(array, name), shape=array.shape)
            raw = v2_codec.to_raw(array)
            place = self.shm_outputs.get(name)
            if place is not None:  # written there; an empty entry keeps raw_output_contents in step with outputs
                shared_memory.regions.write(place, raw, name)
                tensor.parameters[shared_memory.REGION].string_param = place.region
                tensor.parameters[shared_memory.SIZE].int64_param = len(raw)
                raw = b""
            response.raw_output_contents.append(raw)
        return response.SerializeToString()


# A served model's configuration and its batching (None: not batched), by name; None if not configured.
Settings = Callable[[str], "tuple[ModelConfig, BatchingConfig | None] | None"]


class V2Service:
    def __init__(self, registry: Registry, health: Health, repository: ModelRepository | None = None,
                 settings: Settings = lambda name: None):
        self._registry = registry
        self.health = health
        self.repository = repository  # the model repository extension, where the server has one
        self._settings = settings

    def grpc_methods(self) -> dict:
        methods = {
            SERVICE + "ServerLive": (pb.ServerLiveRequest, lambda _: pb.ServerLiveResponse(live=self.health.live())),
            SERVICE + "ServerReady": (pb.ServerReadyRequest, lambda _: pb.ServerReadyResponse(ready=self.health.ready())),
            SERVICE + "ModelReady": (pb.ModelReadyRequest, self._grpc_model_ready),
            SERVICE + "ServerMetadata": (pb.ServerMetadataRequest, lambda _: pb.ServerMetadataResponse(**self.server_metadata())),
            SERVICE + "ModelMetadata": (pb.ModelMetadataRequest, self._grpc_model_metadata),
            SERVICE + "ModelInfer": Inference(pb.ModelInferRequest, GrpcV2Call),
            SERVICE + "ModelStreamInfer": StreamedInference(pb.ModelInferRequest, GrpcV2Call, _stream_message),
            SERVICE + "ModelConfig": (pb.ModelConfigRequest, self._grpc_model_config),
            SERVICE + "ModelStatistics": (pb.ModelStatisticsRequest, self._grpc_model_statistics),
            SERVICE + "SystemSharedMemoryStatus": (pb.SystemSharedMemoryStatusRequest, self._grpc_shm_status),
            SERVICE + "SystemSharedMemoryRegister": (pb.SystemSharedMemoryRegisterRequest, self._grpc_shm_register),
            SERVICE + "SystemSharedMemoryUnregister": (pb.SystemSharedMemoryUnregisterRequest, self._grpc_shm_unregister),
            SERVICE + "CudaSharedMemoryStatus": (pb.CudaSharedMemoryStatusRequest, self._grpc_cuda_shm_status),
            SERVICE + "CudaSharedMemoryRegister": (pb.CudaSharedMemoryRegisterRequest, self._grpc_cuda_shm_register),
            SERVICE + "CudaSharedMemoryUnregister": (pb.CudaSharedMemoryUnregisterRequest, lambda _: pb.CudaSharedMemoryUnregisterResponse()),
        }
        if self.repository is not None:
            methods.update({
                SERVICE + "RepositoryIndex": (pb.RepositoryIndexRequest, self._grpc_repository_index),
                SERVICE + "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, self._grpc_repository_load),
                SERVICE + "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, self._grpc_repository_unload),
            })
        return methods

    # ------------------------------------------------------------ shared steps

    def server_metadata(self) -> dict:
        extensions = ["binary_tensor_data", "model_configuration", "statistics", "system_shared_memory"] + (["model_repository"] if self.repository is not None else [])
        return {"name": "fastserve", "version": fastserve.__version__, "extensions": extensions}

    def model_repository(self) -> ModelRepository:
        """The repository extension; its methods are served only where the server has one."""
        if self.repository is None:
            raise ServingError(StatusCode.UNIMPLEMENTED, "this server has no model repository extension")
        return self.repository

    async def load(self, name: str) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.model_repository().load, name)

    async def unload(self, name: str) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.model_repository().unload, name)

    def lookup(self, name: str, version: str) -> ServableHandle:
        return self._registry.lookup(name, version_number(version))

    def model_ready(self, name: str, version: str) -> bool:
        return self.health.model_ready(name, version_number(version))

    def model_metadata(self, name: str, version: str) -> dict:
        with self.lookup(name, version) as handle:
            entry = self._registry.entry(name)
            signature = _signature(handle, "")
            return {
                "name": name,
                "versions": [str(v) for v in sorted(entry.versions)] if entry else [str(handle.version)],
                "platform": PLATFORM,
                "inputs": [_tensor_metadata(spec) for _, spec in sorted(signature.inputs.items())],
                "outputs": [_tensor_metadata(spec) for _, spec in sorted(signature.outputs.items())],
            }

    def model_config(self, name: str, version: str) -> dict:
        """Triton's ModelConfig (as JSON) of what fastserve serves: its serving_default signature,
        batching, placement and version policy."""
        with self.lookup(name, version) as handle:
            signature = _signature(handle, "")
        model, batching = self._settings(name) or (None, None)
        if not signature.batchable:
            batching = None
        batched = batching is not None
        config = {
            "name": name,
            "platform": PLATFORM,
            "backend": BACKEND,
            "max_batch_size": batching.max_batch_size if batching is not None else 0,
            "input": [_config_tensor(spec, batched) for _, spec in sorted(signature.inputs.items())],
            "output": [_config_tensor(spec, batched) for _, spec in sorted(signature.outputs.items())],
            "instance_group": _instance_groups(name, model),
        }
        if model is not None:
            config["version_policy"] = _version_policy(model)
        if batching is not None:
            config["dynamic_batching"] = {
                "preferred_batch_size": list(batching.allowed_batch_sizes),
                "max_queue_delay_microseconds": batching.batch_timeout_micros,
            }
        return config

    def model_statistics(self, name: str, version: str) -> dict:
        """Triton's statistics of the versions served: of every model ("" name), or of one
        model's every version ("" version) or one version."""
        if name:
            with self.lookup(name, version) as handle:  # NOT_FOUND for what is not served
                pass
            served = [(name, handle.version)] if version else [(name, v) for v in self._versions(name)]
        else:
            served = [(n, v) for n in self._registry.names() for v in self._versions(n)]
        return {"model_stats": [statistics.snapshot(n, v) for n, v in served]}

    def _versions(self, name: str) -> list[int]:
        entry = self._registry.entry(name)
        return sorted(entry.versions) if entry is not None else []  # unloaded since it was listed

    # ------------------------------------------------------------ gRPC

    def _grpc_model_ready(self, request):
        return pb.ModelReadyResponse(ready=self.model_ready(request.name, request.version))

    def _grpc_model_metadata(self, request):
        return json_format.ParseDict(self.model_metadata(request.name, request.version), pb.ModelMetadataResponse())

    def _grpc_model_config(self, request):
        return pb.ModelConfigResponse(config=json_format.ParseDict(self.model_config(request.name, request.version), pb.ModelConfig()))

    def _grpc_model_statistics(self, request):
        return json_format.ParseDict(self.model_statistics(request.name, request.version), pb.ModelStatisticsResponse())

    def _grpc_shm_status(self, request):
        regions = shared_memory.regions.status(request.name)
        return json_format.ParseDict({"regions": {r["name"]: r for r in regions}}, pb.SystemSharedMemoryStatusResponse())

    def _grpc_shm_register(self, request):
        shared_memory.regions.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    def _grpc_shm_unregister(self, request):
        shared_memory.regions.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    def _grpc_cuda_shm_status(self, request):
        shared_memory.no_cuda_regions(request.name)
        return pb.CudaSharedMemoryStatusResponse()

    def _grpc_cuda_shm_register(self, request):
        shared_memory.refuse_cuda_region()

    def _grpc_repository_index(self, request):
        return json_format.ParseDict({"models": self.model_repository().index(request.ready)}, pb.RepositoryIndexResponse())

    async def _grpc_repository_load(self, request):
        await self.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def _grpc_repository_unload(self, request):
        await self.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _stream_message(payload: bytes | None, error: ServingError | None) -> bytes:
    """A ModelStreamInferResponse: the ModelInferResponse (already serialized: it goes in as
    field 2's bytes) or the error's message, as Triton sends errors on a stream."""
    if error is not None:
        return pb.ModelStreamInferResponse(error_message=error.message).SerializeToString()
    assert payload is not None  # an answer is an error or a payload
    return b"\x12" + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _plain(parameters) -> dict:
    """A map of InferParameter as plain values."""
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param") for key, value in parameters.items()}


def version_number(version: str) -> int | None:
    if not version:
        return None
    if not (version.isascii() and version.isdigit() and len(version) <= 18):  # int64, as TF Serving's versions
        raise invalid_argument(f"model version '{version[:40]}' is not a version number")
    return int(version)


def _signature(handle: ServableHandle, name: str) -> Signature:
    key = name or DEFAULT_SIGNATURE
    signature = handle.model.signatures.get(key)
    if signature is None:
        raise _missing_signature(handle, key)
    return signature


def _missing_signature(handle: ServableHandle, key: str) -> ServingError:
    return not_found(f'model {handle.name} version {handle.version} has no signature "{key}"')


def _v2_name(dtype_enum: int) -> str:
    dt = dtypes.BY_ENUM.get(dtype_enum)
    return dt.v2 if dt and dt.v2 else dtypes.name(dtype_enum)


def _tensor_metadata(spec: TensorSpec) -> dict:
    return {"name": spec.key, "datatype": _v2_name(spec.dtype), "shape": list(spec.shape) if spec.shape is not None else [-1]}


def _config_tensor(spec: TensorSpec, batched: bool) -> dict:
    """An input or output of the ModelConfig: dims without the batch dimension when batched."""
    dims = list(spec.shape) if spec.shape is not None else [-1]
    datatype = _v2_name(spec.dtype)
    return {"name": spec.key, "data_type": "TYPE_" + ("STRING" if datatype == "BYTES" else datatype), "dims": dims[1:] if batched else dims}


def _instance_groups(name: str, model: ModelConfig | None) -> list[dict]:
    """A group per device the model is pinned to; else one that TensorFlow places (KIND_MODEL)."""
    if model is None or not model.devices:
        return [{"name": name, "kind": "KIND_MODEL", "count": 1}]
    groups = []
    for device in model.devices:
        kind, _, index = device.rsplit("/", 1)[-1].upper().removeprefix("DEVICE:").partition(":")
        group: dict[str, object] = {"name": f"{name}_{kind.lower()}_{index or 0}", "kind": "KIND_GPU" if kind == "GPU" else "KIND_CPU",
                 "count": model.instances_per_device}
        if kind == "GPU":
            group["gpus"] = [int(index or 0)]
        groups.append(group)
    return groups


def _version_policy(model: ModelConfig) -> dict:
    policy = model.version_policy
    if policy.kind == "all":
        return {"all": {}}
    if policy.kind == "specific":
        return {"specific": {"versions": list(policy.versions)}}
    return {"latest": {"num_versions": policy.num_versions}}
