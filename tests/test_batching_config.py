"""The batching section of models.yaml, TF Serving's BatchingParameters file and flags."""
import os

import pytest

from fastserve import cli
from fastserve.config import BatchingConfig, ConfigError, load_yaml, parse_batching_parameters


def write(tmp_path, text):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_are_tf_servings():
    config = BatchingConfig()
    assert (config.max_batch_size, config.batch_timeout_micros, config.max_enqueued_batches) == (1000, 0, 10)
    assert config.num_batch_threads == (os.cpu_count() or 1)
    assert not config.pad_variable_length_inputs and not config.enable_large_batch_splitting
    assert config.execution_batch_size == 1000


def test_models_yaml_batching_per_model_and_server_wide(tmp_path):
    config = load_yaml(write(tmp_path, """
server:
  enable_batching: true
  batching_parameters: {max_batch_size: 16}
models:
  - name: a
    base_path: /m/a
    batching: {max_batch_size: 8, batch_timeout_micros: 500, allowed_batch_sizes: [2, 8], num_batch_threads: 3}
  - name: b
    base_path: /m/b
"""))
    a, b = config.models
    assert a.batching == BatchingConfig(max_batch_size=8, batch_timeout_micros=500, allowed_batch_sizes=(2, 8), num_batch_threads=3)
    assert config.batching_for(a) is a.batching
    assert config.batching_for(b).max_batch_size == 16
    assert a.batching.padded_size(3) == 8 and a.batching.padded_size(1) == 2


def test_batching_is_opt_in(tmp_path):
    config = load_yaml(write(tmp_path, "models: [{name: a, base_path: /m/a}]"))
    assert config.batching_for(config.models[0]) is None


@pytest.mark.parametrize(
    "section, message",
    [
        ("{max_batch_size: 0}", "models[0].batching.max_batch_size: must be at least 1, got 0"),
        ("{max_batch_size: 8, allowed_batch_sizes: [4, 2, 8]}", "models[0].batching.allowed_batch_sizes: entries must be monotonically increasing"),
        ("{max_batch_size: 8, allowed_batch_sizes: [4]}", "the final entry (4) must equal max_batch_size (8)"),
        ("{max_batch_size: 8, enable_large_batch_splitting: true, max_execution_batch_size: 4, allowed_batch_sizes: [8]}",
         "the final entry (8) must equal max_execution_batch_size (4)"),
        ("{max_batch_size: 8, max_execution_batch_size: 9}", "max_execution_batch_size: must not exceed max_batch_size (8)"),
        ("{batch_timeout: 5}", "models[0].batching.batch_timeout: unknown key"),
        ("{pad_variable_length_inputs: 1}", "models[0].batching.pad_variable_length_inputs: expected bool, got 1"),
        ("{max_batch_size: true}", "models[0].batching.max_batch_size: expected int, got True"),
        ("[1]", "models[0].batching: expected a mapping"),
    ],
)
def test_bad_batching_sections_name_the_key(tmp_path, section, message):
    with pytest.raises(ConfigError) as err:
        load_yaml(write(tmp_path, f"models: [{{name: a, base_path: /m/a, batching: {section}}}]"))
    assert message in str(err.value)


def test_batching_parameters_text_proto():
    config = parse_batching_parameters(
        """
        max_batch_size { value: 128 }
        batch_timeout_micros { value: 2000 }
        max_enqueued_batches { value: 100 }
        num_batch_threads { value: 4 }
        thread_pool_name { value: "shared" }
        allowed_batch_sizes: 32
        allowed_batch_sizes: 128
        pad_variable_length_inputs: true
        enable_large_batch_splitting { value: true }
        """
    )
    assert config == BatchingConfig(128, 2000, 100, 4, (32, 128), True, True, 0)
    with pytest.raises(ConfigError, match='has no field named "max_batch"'):
        parse_batching_parameters("max_batch { value: 1 }", "b.pbtxt")


def test_flags(tmp_path):
    params = tmp_path / "b.pbtxt"
    params.write_text("max_batch_size { value: 4 }")
    parse = lambda *a: cli.config_from_args(cli.build_parser().parse_args(["--model_base_path=/m", *a]))
    config = parse("--enable_batching", f"--batching_parameters_file={params}")
    assert config.enable_batching and config.batching_for(config.models[0]).max_batch_size == 4
    config = parse("--enable_batching=true")
    assert config.batching_for(config.models[0]) == BatchingConfig()
    assert parse().batching_for(parse().models[0]) is None
    with pytest.raises(ConfigError, match="without setting server_options.enable_batching"):
        parse(f"--batching_parameters_file={params}")
    with pytest.raises(ConfigError, match="cannot read batching parameters file"):
        parse("--enable_batching", f"--batching_parameters_file={tmp_path / 'missing'}")
