"""Message classes for the protocols the client speaks, from the package's own .proto files.

The build compiles each protos/NAME.proto into the descriptor set _proto/NAME.pb (setup.py);
the classes are built from it here, at import time, in a private descriptor pool, so they
work with any protobuf runtime, need no generated Python code, and never clash with
TensorFlow's own classes when both are loaded.
"""
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

_DIR = Path(__file__).parent / "_proto"


@cache
def load(name: str) -> SimpleNamespace:
    """Every top-level message and enum of protos/NAME.proto and the files it imports, by short name."""
    path = _DIR / f"{name}.pb"
    if not path.is_file():
        raise ImportError(f"{path} is missing: build the package (pip install) to compile protos/{name}.proto")
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    names = [file.name for file in files]
    found: dict[str, Any] = {cls.DESCRIPTOR.name: cls for cls in message_factory.GetMessageClassesForFiles(names, pool).values()
             if cls.DESCRIPTOR.containing_type is None}
    for file_name in names:
        for enum_name, enum in pool.FindFileByName(file_name).enum_types_by_name.items():
            found[enum_name] = EnumTypeWrapper(enum)
    return SimpleNamespace(**found)


def tensorflow_serving() -> SimpleNamespace:
    """TF Serving's API messages (PredictRequest, ...) and TensorFlow's (TensorProto, Example, DataType)."""
    return load("tensorflow_serving")


def inference() -> SimpleNamespace:
    """The Open Inference Protocol's messages (package inference)."""
    return load("inference")
