"""TensorFlow Serving's PredictionService and ModelService, written once.

Predict (and Classify, Regress: services/example_inference.py) are inference calls the
pipeline serves: this module says what a PredictRequest asks for and how its response is
written. GetModelMetadata, GetModelStatus and HandleReloadConfigRequest are plain methods.
The REST API (services/tf_serving_rest.py) uses the same lookups and responses.
"""
import asyncio
from collections.abc import Callable

import numpy as np
from grpc import StatusCode
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
)

from fastserve.codec import tensor_proto
from fastserve.config import ConfigError, ModelConfig, models_from_proto
from fastserve.errors import ServingError, invalid_argument, not_found
from fastserve.pipeline.call import PREDICT as PREDICT_METHOD, Inference, InferenceCall
from fastserve.services.example_inference import ExampleInference
from fastserve.services.model_spec import resolved_spec, version_choice
from fastserve.servables.registry import Registry, ServableHandle
from fastserve.servables.signature import DEFAULT_SIGNATURE, Signature
from fastserve.servables.state import StateMonitor

_State = get_model_status_pb2.ModelVersionStatus.State
PREDICT = f"/tensorflow.serving.PredictionService/{PREDICT_METHOD}"


class PredictCall(InferenceCall):
    """A PredictRequest proto (gRPC)."""

    __slots__ = ("_tensors",)

    def __init__(self, request: predict_pb2.PredictRequest):
        spec = request.model_spec
        super().__init__(spec.name, *version_choice(spec), spec.signature_name or DEFAULT_SIGNATURE, request.output_filter)
        self._tensors = request.inputs

    def inputs_for(self, signature: Signature, max_elements: int) -> dict[str, np.ndarray]:
        return {name: tensor_proto.to_numpy(proto, name, max_elements) for name, proto in self._tensors.items()}

    def encode(self, handle: ServableHandle, signature: Signature, outputs: dict[str, np.ndarray]) -> bytes:
        response = predict_pb2.PredictResponse()
        for name, array in outputs.items():
            tensor_proto.from_numpy(array, response.outputs[name])
        resolved_spec(handle, self.signature_key, response.model_spec)
        return response.SerializeToString()

    @classmethod
    def encode_group(cls, calls: list[InferenceCall], handle: ServableHandle, signature: Signature,
                     outputs: dict[str, np.ndarray]) -> list:
        """Responses cut from the stacked outputs: each output's serialized bytes up to its
        tensor content are the same for every call of a group (equal shapes), so a response is
        a join of those prefixes and the call's slice of each output buffer."""
        rows = calls[0].rows
        if len(calls) == 1 or any(array.dtype.hasobject for array in outputs.values()):  # strings: nothing fixed-size to slice
            return super().encode_group(calls, handle, signature, outputs)
        pieces = []  # per output: (serialized entry up to the content, the whole output's bytes, bytes per call)
        for key, array in outputs.items():
            array = np.ascontiguousarray(array)
            entry = predict_pb2.PredictResponse()
            tensor_proto.from_numpy(array[:rows], entry.outputs[key])
            serialized, content = entry.SerializeToString(), entry.outputs[key].tensor_content
            if not serialized.endswith(content):  # the content is not last: encode each call whole
                return super().encode_group(calls, handle, signature, outputs)
            pieces.append((serialized[: len(serialized) - len(content)], array.reshape(-1).view(np.uint8).data, len(content)))
        spec = predict_pb2.PredictResponse()
        resolved_spec(handle, calls[0].signature_key, spec.model_spec)
        spec = spec.SerializeToString()
        responses = []
        for i in range(len(calls)):
            parts = []
            for prefix, data, size in pieces:
                parts.append(prefix)
                parts.append(data[i * size : (i + 1) * size])
            parts.append(spec)
            responses.append(b"".join(parts))
        return responses


class TFServingService:
    def __init__(
        self, registry: Registry, monitor: StateMonitor, examples: ExampleInference,
        reload_models: Callable[[tuple[ModelConfig, ...]], None] | None = None,
    ):
        self.registry = registry
        self.monitor = monitor
        self.examples = examples  # Classify, Regress, MultiInference
        self._reload_models = reload_models  # blocking; runs off the event loop

    def lookup(self, spec: model_pb2.ModelSpec) -> ServableHandle:
        return self.registry.lookup(spec.name, *version_choice(spec))

    def grpc_methods(self) -> dict:
        """{"/package.Service/Method": (request message class, handler) | Inference} for gRPC transports.

        A handler takes the parsed request and returns the response message (it may be
        a coroutine function); the transport owns parsing, serializing and status codes.
        """
        return {
            PREDICT: Inference(predict_pb2.PredictRequest, PredictCall),
            "/tensorflow.serving.PredictionService/GetModelMetadata": (
                get_model_metadata_pb2.GetModelMetadataRequest, self.get_model_metadata),
            "/tensorflow.serving.ModelService/GetModelStatus": (
                get_model_status_pb2.GetModelStatusRequest, self.get_model_status),
            **self.examples.grpc_methods(),
            "/tensorflow.serving.ModelService/HandleReloadConfigRequest": (
                model_management_pb2.ReloadConfigRequest, self.handle_reload_config_request),
        }

    # ------------------------------------------------------------ PredictionService

    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid_argument(f"Metadata field {field} is not supported")
        with self.lookup(request.model_spec) as handle:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature_def in handle.model.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(signature_def)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            resolved_spec(handle, "", response.model_spec)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    # ------------------------------------------------------------ ModelService

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        name = spec.name
        states = self.monitor.versions(name)
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            entry = self.registry.entry(name)
            if entry is None or spec.version_label not in entry.labels:
                raise invalid_argument(f"Unrecognized servable version label: {spec.version_label}")
            wanted = [entry.labels[spec.version_label]]
        elif choice == "version":
            wanted = [spec.version.value]
        else:
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            wanted = sorted(states, reverse=True)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in wanted:
            state = states.get(version)
            if state is None:
                raise not_found(f"Could not find version {version} of model {name}")
            status = response.model_version_status.add(version=version, state=_State.Value(state.state))
            status.status.error_code = state.code.value[0]
            status.status.error_message = state.message
        return response

    async def handle_reload_config_request(
        self, request: model_management_pb2.ReloadConfigRequest
    ) -> model_management_pb2.ReloadConfigResponse:
        """Replace the served model list with the request's model_config_list."""
        if self._reload_models is None:
            raise ServingError(StatusCode.UNIMPLEMENTED, "this server cannot reload its model config")
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid_argument("ReloadConfigRequest.config must hold a model_config_list")
        try:
            models = models_from_proto(request.config.model_config_list.config, "ReloadConfigRequest")
        except ConfigError as exc:
            raise invalid_argument(str(exc)) from None
        await asyncio.get_running_loop().run_in_executor(None, self._reload_models, models)
        return model_management_pb2.ReloadConfigResponse()
