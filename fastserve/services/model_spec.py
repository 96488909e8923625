"""TF Serving's ModelSpec: the version a request asks for, and the one its response says answered."""
from tensorflow_serving.apis import model_pb2

from fastserve.servables.registry import ServableHandle


def version_choice(spec: model_pb2.ModelSpec) -> tuple[int | None, str | None]:
    """(version, label) a ModelSpec asks for; both None: the latest."""
    choice = spec.WhichOneof("version_choice")
    return (spec.version.value if choice == "version" else None, spec.version_label if choice == "version_label" else None)


def resolved_spec(handle: ServableHandle, signature_name: str, spec: model_pb2.ModelSpec | None = None) -> model_pb2.ModelSpec:
    """The ModelSpec a response carries: the version that answered."""
    spec = spec if spec is not None else model_pb2.ModelSpec()
    spec.name = handle.name
    spec.version.value = handle.version
    spec.signature_name = signature_name
    return spec
