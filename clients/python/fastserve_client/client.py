"""A small, fast gRPC client for fastserve (and any TF Serving or V2 server): numpy in,
numpy out, sync and asyncio, without importing TensorFlow.

    import numpy as np
    from fastserve_client import Client, AsyncClient

    with Client("localhost:8500") as client:
        y = client.predict("half_plus_two", {"x": np.array([[2.0]], np.float32)})["y"]
        scores = client.classify("my_model", [{"x": 2.0}], signature="classify_x_to_y")
        y = client.infer("half_plus_two", {"x": np.array([[2.0]], np.float32)})["y"]  # V2

    async with AsyncClient("localhost:8500") as client:  # many requests in flight
        results = await asyncio.gather(*(client.predict("half_plus_two", {"x": x}) for x in batch))

One client holds one channel (one HTTP/2 connection, reused by every call; many calls
share it concurrently). Every call takes `timeout` in seconds (the client's default if
omitted), sent as the gRPC deadline. A failed call raises ServingError with the status
`code` (grpc.StatusCode) and the server's `message`.
"""
import grpc
import numpy as np
from grpc import aio

from fastserve_client import protos, tensors

__all__ = ["AsyncClient", "Client", "ServingError"]

_PREDICTION = "/tensorflow.serving.PredictionService/"
_MODEL = "/tensorflow.serving.ModelService/"
_V2 = "/inference.GRPCInferenceService/"
_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class ServingError(Exception):
    """A call failed: the gRPC status `code` (grpc.StatusCode) and the server's `message`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def _spec(spec, model: str, version: int | None, label: str | None, signature: str = "") -> None:
    spec.name = model
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label
    if signature:
        spec.signature_name = signature


def _example(features: dict, example) -> None:
    """{"x": 2.0, "ids": [1, 2], "word": "a"} -> tf.Example features (float, int64, bytes)."""
    for name, value in features.items():
        values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        feature = example.features.feature[name]
        if all(isinstance(v, (bytes, str)) for v in values):
            feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
        elif all(isinstance(v, (bool, int, np.integer)) for v in values):
            feature.int64_list.value.extend(int(v) for v in values)
        else:
            feature.float_list.value.extend(float(v) for v in values)


def _input(request_input, examples: list[dict], context: dict | None) -> None:
    if context is None:
        target = request_input.example_list.examples
    else:
        _example(context, request_input.example_list_with_context.context)
        target = request_input.example_list_with_context.examples
    for features in examples:
        _example(features, target.add())


class _Requests:
    """Builds each request and reads each response; the transports only send them."""

    def __init__(self):
        self.tf = protos.tensorflow_serving()
        self.v2 = protos.inference()

    def predict(self, model, inputs, version, label, signature, output_filter):
        request = self.tf.PredictRequest(output_filter=list(output_filter))
        _spec(request.model_spec, model, version, label, signature)
        for name, array in inputs.items():
            tensors.from_numpy(np.asarray(array), request.inputs[name])
        parse = lambda r: {name: tensors.to_numpy(t) for name, t in r.outputs.items()}
        return _PREDICTION + "Predict", request, self.tf.PredictResponse, parse

    def classify(self, model, examples, context, version, label, signature):
        request = self.tf.ClassificationRequest()
        _spec(request.model_spec, model, version, label, signature)
        _input(request.input, examples, context)
        parse = lambda r: [[(c.label, c.score) for c in e.classes] for e in r.result.classifications]
        return _PREDICTION + "Classify", request, self.tf.ClassificationResponse, parse

    def regress(self, model, examples, context, version, label, signature):
        request = self.tf.RegressionRequest()
        _spec(request.model_spec, model, version, label, signature)
        _input(request.input, examples, context)
        parse = lambda r: np.array([x.value for x in r.result.regressions], np.float32)
        return _PREDICTION + "Regress", request, self.tf.RegressionResponse, parse

    def model_status(self, model, version):
        request = self.tf.GetModelStatusRequest()
        _spec(request.model_spec, model, version, None)
        state_name = self.tf.ModelVersionStatus.State.Name
        parse = lambda r: {s.version: state_name(s.state) for s in r.model_version_status}
        return _MODEL + "GetModelStatus", request, self.tf.GetModelStatusResponse, parse

    def infer(self, model, inputs, version, outputs):
        request = self.v2.ModelInferRequest(model_name=model, model_version=version)
        for name, array in inputs.items():
            array = np.asarray(array)
            request.inputs.add(name=name, datatype=tensors.datatype_of(array), shape=array.shape)
            request.raw_input_contents.append(tensors.to_raw(array))
        for name in outputs or ():
            request.outputs.add(name=name)

        def parse(response):
            result = {}
            for i, tensor in enumerate(response.outputs):
                if response.raw_output_contents:
                    result[tensor.name] = tensors.from_raw(response.raw_output_contents[i], tensor.datatype, tensor.shape)
                else:
                    result[tensor.name] = tensors.from_contents(tensor.contents, tensor.datatype, tensor.shape)
            return result

        return _V2 + "ModelInfer", request, self.v2.ModelInferResponse, parse

    def server_ready(self):
        return _V2 + "ServerReady", self.v2.ServerReadyRequest(), self.v2.ServerReadyResponse, lambda r: r.ready

    def model_ready(self, model, version):
        request = self.v2.ModelReadyRequest(name=model, version=version)
        return _V2 + "ModelReady", request, self.v2.ModelReadyResponse, lambda r: r.ready


class _Base:
    def __init__(self, target: str, timeout: float | None, credentials: grpc.ChannelCredentials | None, channel_module):
        self.timeout = timeout
        if credentials is None:
            self._channel = channel_module.insecure_channel(target, options=_OPTIONS)
        else:
            self._channel = channel_module.secure_channel(target, credentials, options=_OPTIONS)
        self._requests = _Requests()
        self._stubs: dict[str, object] = {}

    def _stub(self, path: str, response_class):
        stub = self._stubs.get(path)
        if stub is None:
            stub = self._channel.unary_unary(
                path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_class.FromString
            )
            self._stubs[path] = stub
        return stub

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout


class Client(_Base):
    """Synchronous client; safe to share between threads."""

    def __init__(self, target: str, *, timeout: float | None = 30.0, credentials: grpc.ChannelCredentials | None = None):
        super().__init__(target, timeout, credentials, grpc)

    def _call(self, built, timeout):
        path, request, response_class, parse = built
        try:
            response = self._stub(path, response_class)(request, timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise ServingError(exc.code(), exc.details()) from None
        return parse(response)

    def predict(self, model: str, inputs: dict, *, version: int | None = None, label: str | None = None,
                signature: str = "", output_filter=(), timeout: float | None = None) -> dict[str, np.ndarray]:
        return self._call(self._requests.predict(model, inputs, version, label, signature, output_filter), timeout)

    def classify(self, model: str, examples: list[dict], *, context: dict | None = None, version: int | None = None,
                 label: str | None = None, signature: str = "", timeout: float | None = None) -> list[list[tuple[str, float]]]:
        return self._call(self._requests.classify(model, examples, context, version, label, signature), timeout)

    def regress(self, model: str, examples: list[dict], *, context: dict | None = None, version: int | None = None,
                label: str | None = None, signature: str = "", timeout: float | None = None) -> np.ndarray:
        return self._call(self._requests.regress(model, examples, context, version, label, signature), timeout)

    def model_status(self, model: str, *, version: int | None = None, timeout: float | None = None) -> dict[int, str]:
        return self._call(self._requests.model_status(model, version), timeout)

    def infer(self, model: str, inputs: dict, *, version: str = "", outputs=None, timeout: float | None = None) -> dict[str, np.ndarray]:
        return self._call(self._requests.infer(model, inputs, version, outputs), timeout)

    def server_ready(self, *, timeout: float | None = None) -> bool:
        return self._call(self._requests.server_ready(), timeout)

    def model_ready(self, model: str, *, version: str = "", timeout: float | None = None) -> bool:
        return self._call(self._requests.model_ready(model, version), timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Base):
    """asyncio client: create it inside the event loop that uses it."""

    def __init__(self, target: str, *, timeout: float | None = 30.0, credentials: grpc.ChannelCredentials | None = None):
        super().__init__(target, timeout, credentials, aio)

    async def _call(self, built, timeout):
        path, request, response_class, parse = built
        try:
            response = await self._stub(path, response_class)(request, timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise ServingError(exc.code(), exc.details()) from None
        return parse(response)

    async def predict(self, model: str, inputs: dict, *, version: int | None = None, label: str | None = None,
                      signature: str = "", output_filter=(), timeout: float | None = None) -> dict[str, np.ndarray]:
        return await self._call(self._requests.predict(model, inputs, version, label, signature, output_filter), timeout)

    async def classify(self, model: str, examples: list[dict], *, context: dict | None = None, version: int | None = None,
                       label: str | None = None, signature: str = "", timeout: float | None = None) -> list[list[tuple[str, float]]]:
        return await self._call(self._requests.classify(model, examples, context, version, label, signature), timeout)

    async def regress(self, model: str, examples: list[dict], *, context: dict | None = None, version: int | None = None,
                      label: str | None = None, signature: str = "", timeout: float | None = None) -> np.ndarray:
        return await self._call(self._requests.regress(model, examples, context, version, label, signature), timeout)

    async def model_status(self, model: str, *, version: int | None = None, timeout: float | None = None) -> dict[int, str]:
        return await self._call(self._requests.model_status(model, version), timeout)

    async def infer(self, model: str, inputs: dict, *, version: str = "", outputs=None,
                    timeout: float | None = None) -> dict[str, np.ndarray]:
        return await self._call(self._requests.infer(model, inputs, version, outputs), timeout)

    async def server_ready(self, *, timeout: float | None = None) -> bool:
        return await self._call(self._requests.server_ready(), timeout)

    async def model_ready(self, model: str, *, version: str = "", timeout: float | None = None) -> bool:
        return await self._call(self._requests.model_ready(model, version), timeout)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
