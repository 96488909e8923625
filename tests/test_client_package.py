"""The client package (clients/python, distribution fastserve-client) on its own: it declares
numpy, grpcio and protobuf only; its README example runs against a real server in a process
where importing TensorFlow, TF Serving's API, the server package or ml_dtypes raises, and in
the plain venv scripts/install.sh builds with `pip install ./clients/python` (where that
exists: CI builds it); its hand-written messages are TensorFlow's and TF Serving's, field
by field."""
import re
import subprocess
import tomllib

import pytest
from google.protobuf import descriptor_pool
from tensorflow.core.example import example_pb2  # noqa: F401  (registers TensorFlow's messages in the default pool)
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: F401  (likewise)
from tensorflow_serving.apis import classification_pb2, get_model_status_pb2, predict_pb2, regression_pb2  # noqa: F401  (likewise)

from fastserve_client import protos
from tests.conftest import EXAMPLE_MODELS, REPO

CLIENT = REPO / "clients" / "python"
FRESH_VENV = REPO / ".venv-client"

# What the client must never need: importing any of it raises.
BLOCK = '''
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"tensorflow", "tensorflow_serving", "fastserve", "ml_dtypes"}:
            raise ImportError(f"the client imported {name}")
sys.meta_path.insert(0, _Blocked())
'''


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "models.yaml"
    config.write_text("models:\n" + "".join(f"  - name: {n}\n    base_path: {EXAMPLE_MODELS / n}\n" for n in ("half_plus_two", "example_scorer")))
    return start_server([f"--config={config}"], rest=False)


def readme_example() -> str:
    return re.search(r"```python\n(.*?)```", (CLIENT / "README.md").read_text(), re.S).group(1)


def run_example(python, server, tmp_path, prelude: str = "") -> None:
    example = readme_example()
    expected = [line.rsplit("  # ", 1)[1] for line in example.splitlines() if "print(" in line]
    code = prelude + example.replace("localhost:8500", server.grpc_target)
    result = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


def test_declares_numpy_grpcio_and_protobuf_only():
    dependencies = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in dependencies} == {"numpy", "grpcio", "protobuf"}


def test_readme_example_runs_with_tensorflow_blocked(server, tmp_path):
    run_example(REPO / ".venv" / "bin" / "python", server, tmp_path, prelude=BLOCK)


@pytest.mark.skipif(not FRESH_VENV.is_dir(), reason="scripts/install.sh builds .venv-client (pip install ./clients/python alone)")
def test_readme_example_runs_in_a_venv_of_its_own(server, tmp_path):
    listed = subprocess.run([str(FRESH_VENV / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert "fastserve-client" in installed and not {name for name in installed if "tensorflow" in name}, installed
    run_example(FRESH_VENV / "bin" / "python", server, tmp_path)


def _shape(field) -> tuple:
    """What a field is on the wire. An enum is its varint (StatusProto.error_code is an int32 here)."""
    kind = field.TYPE_INT32 if field.type == field.TYPE_ENUM else field.type
    return field.name, field.number, kind, field.is_repeated, field.is_packed, field.message_type and field.message_type.full_name


def _messages(descriptor):
    yield descriptor
    for nested in descriptor.nested_types:
        yield from _messages(nested)


def test_messages_are_tensorflow_servings_field_by_field():
    ours = protos.tensorflow_serving()
    theirs = descriptor_pool.Default()
    compared = 0
    for cls in vars(ours).values():
        if not isinstance(cls, type) or cls.DESCRIPTOR.full_name.startswith("google.protobuf."):  # enums: below
            continue
        for message in _messages(cls.DESCRIPTOR):
            reference = theirs.FindMessageTypeByName(message.full_name)
            for field in message.fields:
                assert _shape(field) == _shape(reference.fields_by_name[field.name]), message.full_name
                compared += 1
    assert compared > 60
    for enum in (ours.DataType.DESCRIPTOR, ours.ModelVersionStatus.DESCRIPTOR.enum_types_by_name["State"]):
        reference = theirs.FindEnumTypeByName(enum.full_name)
        assert {(v.name, v.number) for v in enum.values} <= {(v.name, v.number) for v in reference.values}
