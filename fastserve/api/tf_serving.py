"""TensorFlow Serving's PredictionService and ModelService, written once.

The gRPC transport calls these methods with request protos; the REST transport uses
the same lookups, runs and status/metadata responses. Errors are ServingErrors.
"""
import asyncio
import time
from typing import Callable

import numpy as np
from grpc import StatusCode
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
)

from fastserve import limits, metrics
from fastserve.api.example_inference import ExampleInference
from fastserve.batching.executor import Executor
from fastserve.codec import tensor_proto
from fastserve.config import ConfigError, ModelConfig, models_from_proto
from fastserve.errors import ServingError, invalid_argument, not_found
from fastserve.servables.registry import Registry, ServableHandle
from fastserve.servables.signature import DEFAULT_SIGNATURE, Signature
from fastserve.servables.state import StateMonitor

_State = get_model_status_pb2.ModelVersionStatus.State


class TFServingService:
    def __init__(
        self, registry: Registry, monitor: StateMonitor, executor: Executor,
        reload_models: Callable[[tuple[ModelConfig, ...]], None] | None = None,
    ):
        self.registry = registry
        self.monitor = monitor
        self.executor = executor
        self.examples = ExampleInference(self)  # Classify, Regress, MultiInference
        self._reload_models = reload_models  # blocking; runs off the event loop

    # ------------------------------------------------------------ shared steps

    def lookup(self, spec: model_pb2.ModelSpec) -> ServableHandle:
        return self.registry.lookup(spec.name, *self.version_choice(spec))

    @staticmethod
    def version_choice(spec: model_pb2.ModelSpec) -> tuple[int | None, str | None]:
        """(version, label) a ModelSpec asks for; both None: the latest."""
        choice = spec.WhichOneof("version_choice")
        return (spec.version.value if choice == "version" else None, spec.version_label if choice == "version_label" else None)

    max_tensor_elements = 0  # set from ServerConfig; 0 = no limit

    async def run(
        self, handle: ServableHandle, signature: Signature, inputs: dict[str, np.ndarray], output_filter=(), api: str = "Predict",
    ) -> dict[str, np.ndarray]:
        series = metrics.model_series(handle.name, handle.version, signature.key, api)
        started = time.perf_counter()
        try:
            signature.validate(inputs)
            limits.check_elements(inputs, self.max_tensor_elements)
            output_keys = signature.output_keys(output_filter)
            outputs = await self.executor.run(handle, signature, inputs, output_keys)
        except ServingError as exc:
            series.count(exc.code)
            raise
        except asyncio.CancelledError:
            series.count(StatusCode.CANCELLED)
            raise
        except Exception:
            series.count(StatusCode.INTERNAL)
            raise
        series.count(StatusCode.OK)
        series.ran(time.perf_counter() - started)
        return outputs

    @staticmethod
    def resolved_spec(handle: ServableHandle, signature_name: str, spec: model_pb2.ModelSpec | None = None) -> model_pb2.ModelSpec:
        spec = spec if spec is not None else model_pb2.ModelSpec()
        spec.name = handle.name
        spec.version.value = handle.version
        spec.signature_name = signature_name
        return spec

    def grpc_methods(self) -> dict:
        """{"/package.Service/Method": (request message class, handler)} for gRPC transports.

        A handler takes the parsed request and returns the response message (it may be
        a coroutine function); the transport owns parsing, serializing and status codes.
        """
        return {
            "/tensorflow.serving.PredictionService/Predict": (predict_pb2.PredictRequest, self.predict),
            "/tensorflow.serving.PredictionService/GetModelMetadata": (
                get_model_metadata_pb2.GetModelMetadataRequest, self.get_model_metadata),
            "/tensorflow.serving.ModelService/GetModelStatus": (
                get_model_status_pb2.GetModelStatusRequest, self.get_model_status),
            **self.examples.grpc_methods(),
            "/tensorflow.serving.ModelService/HandleReloadConfigRequest": (
                model_management_pb2.ReloadConfigRequest, self.handle_reload_config_request),
        }

    # ------------------------------------------------------------ PredictionService

    async def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        with self.lookup(request.model_spec) as handle:
            key = request.model_spec.signature_name or DEFAULT_SIGNATURE
            signature = handle.model.signatures.get(key)
            if signature is None:
                raise ServingError(StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
            inputs = {name: tensor_proto.to_numpy(proto, name) for name, proto in request.inputs.items()}
            outputs = await self.run(handle, signature, inputs, request.output_filter)
            response = predict_pb2.PredictResponse()
            self.resolved_spec(handle, key, response.model_spec)
        for name, array in outputs.items():
            tensor_proto.from_numpy(array, response.outputs[name])
        return response

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
            self.resolved_spec(handle, "", response.model_spec)
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
