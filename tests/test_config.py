"""models.yaml, TF Serving's model_config_file and the CLI flags -> ServerConfig."""
import subprocess
import sys

import pytest

from fastserve import cli
from fastserve.config import ConfigError, VersionPolicy, load_model_config_file, load_yaml
from tests.conftest import EXAMPLES, REPO


def write(tmp_path, text, name="models.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_example_config_parses():
    config = load_yaml(str(EXAMPLES / "models.yaml"))
    assert [m.name for m in config.models] == ["half_plus_two", "half_plus_three", "multi_io", "example_scorer", "bool_mask"]
    assert config.models[0].base_path == str(EXAMPLES / "models" / "half_plus_two")
    assert (config.grpc_port, config.rest_port) == (8500, 8501)


def test_full_schema(tmp_path):
    config = load_yaml(write(tmp_path, """
server: {grpc_port: 9000, rest_port: 0, file_system_poll_wait_seconds: 0.5, saved_model_tags: [serve, gpu]}
models:
  - {name: a, base_path: /m/a, version_policy: all, version_labels: {stable: 1, canary: 2}}
  - {name: b, base_path: rel, version_policy: {specific: [3, 1]}, runtime: function}
  - {name: c, base_path: /m/c, version_policy: {latest: 2}}
"""))
    a, b, c = config.models
    assert config.grpc_port == 9000 and config.rest_port == 0 and config.saved_model_tags == ("serve", "gpu")
    assert a.version_policy == VersionPolicy("all") and a.version_labels == {"stable": 1, "canary": 2}
    assert b.base_path == str(tmp_path / "rel") and b.runtime == "function"
    assert b.version_policy.select([1, 2, 3, 4]) == {1, 3}
    assert c.version_policy.select([1, 2, 3]) == {2, 3}
    assert VersionPolicy().select([5, 10, 7]) == {10}


@pytest.mark.parametrize(
    "text, message",
    [
        ("models: [{name: a, base_path: /x, versoin_policy: all}]", "models[0].versoin_policy: unknown key"),
        ("server: {grpc_prot: 1}", "server.grpc_prot: unknown key"),
        ("server: {grpc_port: '8500'}", "server.grpc_port: expected int"),
        ("server: {grpc_port: 70000}", "server.grpc_port: 70000 is not a port number"),
        ("models: [{base_path: /x}]", "models[0].name: required"),
        ("models: [{name: a, base_path: /x, version_policy: {latest: 0}}]", "version_policy.latest: expected a positive integer"),
        ("models: [{name: a, base_path: /x, version_policy: {newest: 1}}]", "unknown policy 'newest'"),
        ("models: [{name: a, base_path: /x, runtime: torch}]", "models[0].runtime: must be one of auto, session, function"),
        ("models: [{name: a, base_path: /x, version_labels: {stable: x}}]", "version_labels.stable: expected a version number"),
        ("models: [{name: a, base_path: /x}, {name: a, base_path: /y}]", "model 'a' is configured twice"),
        ("models: {a: 1}", "models: must be a list"),
        ("extra: 1", "extra: unknown key"),
        ("models: [", "invalid YAML"),
    ],
)
def test_invalid_yaml_names_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_yaml(write(tmp_path, text))
    assert message in str(err.value)


def test_tf_serving_model_config_file(tmp_path):
    models = load_model_config_file(write(tmp_path, """
model_config_list {
  config { name: "a" base_path: "/m/a" model_platform: "tensorflow"
           model_version_policy { specific { versions: 1 versions: 2 } }
           version_labels { key: "stable" value: 1 } }
  config { name: "b" base_path: "/m/b" model_version_policy { all {} } }
  config { name: "c" base_path: "/m/c" }
}""", "models.config"))
    assert [m.name for m in models] == ["a", "b", "c"]
    assert models[0].version_policy == VersionPolicy("specific", versions=(1, 2))
    assert models[0].version_labels == {"stable": 1}
    assert models[1].version_policy.kind == "all" and models[2].version_policy == VersionPolicy()


@pytest.mark.parametrize(
    "text, message",
    [
        ("model_config_list { config { name: 'a' } }", "name and base_path are required"),
        ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'onnx' } }", "model_platform 'onnx' is not supported"),
        ("model_config_list { nonsense: 1 }", "invalid ModelServerConfig text proto"),
    ],
)
def test_invalid_model_config_file(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_model_config_file(write(tmp_path, text, "models.config"))


def test_tf_serving_flags():
    args = cli.build_parser().parse_args([
        "--port=9100", "--rest_api_port=9101", "--model_name=m", "--model_base_path=/m",
        "--file_system_poll_wait_seconds=0", "--rest_api_timeout_in_ms=500", "--grpc_socket_path=/tmp/s",
        "--load_retry_interval_micros=2000000", "--tensorflow_session_parallelism=2",
        "--allow_version_labels_for_unavailable_models=true",
    ])
    config = cli.config_from_args(args)
    assert (config.grpc_port, config.rest_port, config.rest_api_timeout_ms) == (9100, 9101, 500)
    assert config.models[0].name == "m" and config.models[0].base_path == "/m"
    assert config.file_system_poll_wait_seconds == 0 and config.grpc_socket_path == "/tmp/s"
    assert config.load_retry_interval_seconds == 2.0
    assert config.tensorflow_intra_op_parallelism == config.tensorflow_inter_op_parallelism == 2
    assert config.allow_version_labels_for_unavailable_models is True


def test_tf_serving_defaults_rest_off_and_model_name_default():
    config = cli.config_from_args(cli.build_parser().parse_args(["--model_base_path=/m"]))
    assert config.rest_port == 0 and config.grpc_port == 8500 and config.models[0].name == "default"


def test_flags_override_yaml(tmp_path):
    path = write(tmp_path, "server: {grpc_port: 1, rest_port: 2}\nmodels: []")
    config = cli.config_from_args(cli.build_parser().parse_args([f"--config={path}", "--port=5"]))
    assert (config.grpc_port, config.rest_port) == (5, 2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=/nonexistent/models.yaml"], "cannot read config file /nonexistent/models.yaml"),
        ([], "Both --model_base_path and --model_config_file are empty!"),
        (["--config=X", "--model_base_path=/m"], "do not combine"),
    ],
)
def test_bad_config_fails_start_up_with_a_clear_message(args, message):
    result = subprocess.run([sys.executable, "-m", "fastserve", *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
