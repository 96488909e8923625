"""Loading one version: which runtime `auto` picks, the check before AVAILABLE, and load errors.

Real SavedModels, loaded in-process. The Keras 3 model saved with tf.saved_model.save is
the case that made the check necessary: loaded the way TensorFlow's C++ loader loads it
(captured variables left as the saver leaves them), every call fails.
"""
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from grpc import StatusCode

from fastserve.config import ModelConfig, ServerConfig
from fastserve.servables import captured_variables
from fastserve.servables.saved_model import LoadError
from fastserve.servables.version_loader import load_version, session_config
from tests.model_builder import export_adder

SERVER = ServerConfig()


@pytest.fixture(scope="module")
def keras3_model(tmp_path_factory):
    """A Keras 3 functional model (Dense + BatchNormalization) saved with tf.saved_model.save."""
    keras = tf.keras
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,), name="x")
    outputs = keras.layers.Dense(2)(keras.layers.BatchNormalization()(keras.layers.Dense(8)(inputs)))
    model = keras.Model(inputs, outputs)
    path = str(tmp_path_factory.mktemp("keras3") / "1")
    tf.saved_model.save(model, path)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    return path, x, model(x).numpy()


@pytest.fixture
def loader_like_tf_serving(monkeypatch):
    """Leave captured variables as the saver leaves them, as TF Serving's C++ loader does."""
    monkeypatch.setattr(captured_variables, "restore_uninitialized", lambda *args: 0)


def load(path, runtime="auto", server=SERVER, **model):
    return load_version(path, ModelConfig("m", path, runtime=runtime, **model), server, session_config(server), 1)


def assert_serves_keras3_model(keras3_model, runtime: str) -> None:
    """Loaded with the default config, on `runtime`, it answers as the Keras model does in-process."""
    path, x, expected = keras3_model
    loaded = load(path)
    try:
        assert loaded.runtime == runtime
        signature = loaded.signatures["serving_default"]
        [output] = signature.run({next(iter(signature.inputs)): x}, signature.all_output_keys).values()
        np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
    finally:
        loaded.close()


def test_keras3_model_runs_on_the_session_runtime(keras3_model, caplog):
    caplog.set_level(logging.INFO)
    assert_serves_keras3_model(keras3_model, "session")
    assert "model m version 1: session runtime (it loads and answers on it)" in caplog.text
    assert "restored 8 captured variables" in caplog.text and "freed 8" in caplog.text  # 2 Dense x 2, BatchNormalization 4
    assert "check of" in caplog.text and "serving_default answered a synthetic request" in caplog.text


def test_auto_falls_back_to_the_function_runtime_when_the_session_cannot_answer(keras3_model, loader_like_tf_serving, caplog):
    caplog.set_level(logging.INFO)
    assert_serves_keras3_model(keras3_model, "function")
    line = next(line for line in caplog.text.splitlines() if "model m version 1: function runtime" in line)
    assert "the session runtime cannot serve it" in line and "Could not find variable" in line


def test_an_explicit_runtime_that_cannot_answer_fails_the_load(keras3_model, loader_like_tf_serving):
    path, _, _ = keras3_model
    with pytest.raises(LoadError) as err:
        load(path, runtime="session")
    assert err.value.code == StatusCode.FAILED_PRECONDITION
    assert "signature serving_default cannot answer a synthetic request (session runtime)" in str(err.value)
    assert "Could not find variable" in str(err.value)


def test_the_check_can_be_turned_off(keras3_model, loader_like_tf_serving):
    path, _, _ = keras3_model
    for server, model in ((ServerConfig(check_before_available=False), {}), (SERVER, {"check_before_available": False})):
        loaded = load(path, runtime="session", server=server, **model)
        loaded.close()  # loaded unchecked: it would fail every request, as TF Serving's would


def test_a_version_no_runtime_can_load_fails_with_both_errors(tmp_path):
    path = export_adder(tmp_path / "1", offset=1)
    [data] = [f for f in os.listdir(os.path.join(path, "variables")) if f.startswith("variables.data")]
    data = os.path.join(path, "variables", data)
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    with pytest.raises(LoadError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"cannot load SavedModel at {path} (session runtime): ")
    assert "; the function runtime failed too: cannot load SavedModel" in message
    assert err.value.code != StatusCode.OK


class _ExampleParser(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def parse(self, examples):
        features = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([1], tf.float32)})  # required: no default
        return {"y": features["x"] * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def double(self, x):
        return {"y": x * 2.0}


def test_signatures_whose_inputs_cannot_be_made_up_are_skipped(tmp_path, caplog):
    module = _ExampleParser()
    path = str(tmp_path / "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.parse, "double": module.double})
    caplog.set_level(logging.INFO)
    loaded = load(path)
    loaded.close()
    assert loaded.runtime == "session"
    assert "double answered a synthetic request" in caplog.text
    skipped = next(line for line in caplog.text.splitlines() if "signature serving_default not checked" in line)
    assert "the model refuses a synthetic input" in skipped and "x" in skipped
