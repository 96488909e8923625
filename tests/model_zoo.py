"""The model zoo: small SavedModels exported the ways TF users export them, with their answers.

`python -m tests.model_zoo ROOT` writes each model of MODELS to ROOT/<name>/1/ and
ROOT/cases.pkl, {name: [case, ...]}. A case is a dict:

    signature: the signature name
    method:    "predict", "classify" or "regress"
    inputs:    {input name: array}                   (predict)
    examples:  [{feature name: [float, ...]}, ...]   (classify, regress)
    outputs:   {output name: array}, computed in-process from the Python object
               (keras_model(x), module.fn(x), session.run) before export, never by reloading
    rest:      "instances" (row format) or "inputs" (columnar), for predict

String tensors are numpy object arrays of bytes. Keras 3 and Keras 2 (tf_keras) are
imported by the exporting process only, inside the functions that use them.
"""
import os
import pickle
import sys
import tempfile
import zlib

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2

MODELS = {}


def zoo_model(name):
    """Register `export(path, rng) -> cases` under `name`."""
    def register(export):
        MODELS[name] = export
        return export
    return register


def predict_case(inputs, outputs, signature="serving_default", rest="instances") -> dict:
    return {"method": "predict", "signature": signature, "rest": rest,
            "inputs": inputs, "outputs": {k: np.asarray(v) for k, v in outputs.items()}}


def example_proto(features: dict) -> example_pb2.Example:
    proto = example_pb2.Example()
    for name, values in features.items():
        proto.features.feature[name].float_list.value.extend(values)
    return proto


def _randomize(variables, rng) -> None:
    """Seeded weights, so that no layer is the identity (BatchNormalization's moving stats too)."""
    for v in variables:
        shape = tuple(v.shape)
        value = rng.uniform(0.5, 2.0, shape) if "variance" in v.name else rng.normal(0.0, 0.5, shape)
        v.assign(value.astype(tf.as_dtype(v.dtype).as_numpy_dtype))


def _floats(rng, *shape) -> np.ndarray:
    return rng.normal(0.0, 1.0, shape).astype(np.float32)


# ---------------------------------------------------------------- Keras 3


def _keras3_functional(rng):
    import keras

    inputs = keras.Input(shape=(4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    hidden = keras.layers.Dropout(0.5)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    _randomize(model.weights, rng)
    return model


def _keras3_sequential(rng):
    import keras

    model = keras.Sequential([
        keras.Input(shape=(5,), name="features"),
        keras.layers.Dense(6, activation="tanh"),
        keras.layers.BatchNormalization(),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(2, activation="softmax"),
    ])
    _randomize(model.weights, rng)
    return model


def _keras3_subclassed(rng):
    import keras

    class Scorer(keras.Model):
        """Two heads over one hidden layer; `call` returns a dict."""

        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(6, activation="relu")
            self.norm = keras.layers.BatchNormalization()
            self.logits = keras.layers.Dense(3)

        def call(self, x, training=False):
            logits = self.logits(self.norm(self.hidden(x), training=training))
            return {"logits": logits, "probabilities": keras.ops.softmax(logits)}

    model = Scorer()
    model(np.zeros((1, 3), np.float32))  # builds the layers
    _randomize(model.weights, rng)
    return model


def _keras_cases(call, input_name, width, rng, output_names=None, signatures=("serving_default",)):
    """Batches of 1 and 3 rows for each signature; a lone tensor output is named `output_names[0]`."""
    cases = []
    for signature in signatures:
        for rows in (1, 3):
            x = _floats(rng, rows, width)
            result = call(x)
            if not isinstance(result, dict):
                result = {output_names[0]: result}
            cases.append(predict_case({input_name: x}, {k: np.asarray(v) for k, v in result.items()}, signature))
    return cases


EXPORTED = ("serving_default", "serve")  # the signatures Keras 3's model.export writes


@zoo_model("keras3_functional_saved_model")
def _(path, rng):
    model = _keras3_functional(rng)
    tf.saved_model.save(model, path)
    return _keras_cases(lambda x: model(x, training=False), "inputs", 4, rng, ["output_0"])


@zoo_model("keras3_functional_export")
def _(path, rng):
    model = _keras3_functional(rng)
    model.export(path)
    return _keras_cases(lambda x: model(x, training=False), "features", 4, rng, ["output_0"], EXPORTED)


@zoo_model("keras3_sequential_saved_model")
def _(path, rng):
    model = _keras3_sequential(rng)
    tf.saved_model.save(model, path)
    return _keras_cases(lambda x: model(x, training=False), "inputs", 5, rng, ["output_0"])


@zoo_model("keras3_sequential_export")
def _(path, rng):
    model = _keras3_sequential(rng)
    model.export(path)
    return _keras_cases(lambda x: model(x, training=False), "features", 5, rng, ["output_0"], EXPORTED)


@zoo_model("keras3_subclassed_saved_model")
def _(path, rng):
    model = _keras3_subclassed(rng)
    serve = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    tf.saved_model.save(model, path, signatures={"serving_default": serve})
    return _keras_cases(lambda x: model(x, training=False), "x", 3, rng)


@zoo_model("keras3_subclassed_called_once_saved_model")
def _(path, rng):
    """No signature given: Keras 3 writes one for the shape of the first call, here a batch of 1."""
    model = _keras3_subclassed(rng)
    tf.saved_model.save(model, path)
    x = _floats(rng, 1, 3)
    return [predict_case({"inputs": x}, {k: np.asarray(v) for k, v in model(x, training=False).items()})]


@zoo_model("keras3_subclassed_export")
def _(path, rng):
    model = _keras3_subclassed(rng)
    model.export(path, input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    # ExportArchive names a dict's outputs by their keys.
    return _keras_cases(lambda x: model(x, training=False), "x", 3, rng, signatures=EXPORTED)


class _KerasLayersModule(tf.Module):
    """A tf.Module whose signature calls Keras 3 layers: Embedding, LSTM, BatchNormalization."""

    def __init__(self, rng):
        import keras

        super().__init__()
        self.embed = keras.layers.Embedding(20, 4)
        self.lstm = keras.layers.LSTM(5)
        self.norm = keras.layers.BatchNormalization()
        self.head = keras.layers.Dense(2)
        self._run(np.zeros((1, 6), np.int64), np.zeros((1, 2), np.float32))  # builds the layers
        _randomize([w for layer in (self.embed, self.lstm, self.norm, self.head) for w in layer.weights], rng)

    def _run(self, ids, extra):
        import keras

        hidden = self.norm(self.lstm(self.embed(ids)), training=False)
        return {"logits": self.head(keras.ops.concatenate([hidden, extra], axis=-1))}

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.int64, name="ids"), tf.TensorSpec([None, 2], tf.float32, name="extra")])
    def serve(self, ids, extra):
        return self._run(ids, extra)


@zoo_model("tf_module_keras_layers")
def _(path, rng):
    module = _KerasLayersModule(rng)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    cases = []
    for rows in (1, 4):
        inputs = {"ids": rng.integers(0, 20, (rows, 6)).astype(np.int64), "extra": _floats(rng, rows, 2)}
        outputs = {k: v.numpy() for k, v in module.serve(**inputs).items()}
        cases.append(predict_case(inputs, outputs))
    return cases


# ---------------------------------------------------------------- Keras 2 (tf_keras)


def _tf_keras_model(rng):
    import tf_keras

    inputs = tf_keras.Input(shape=(3,), name="x")
    hidden = tf_keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    hidden = tf_keras.layers.BatchNormalization(name="norm")(hidden)
    hidden = tf_keras.layers.Dropout(0.5)(hidden)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2, name="scores")(hidden))
    _randomize(model.weights, rng)
    return model


@zoo_model("tf_keras_saved_model")
def _(path, rng):
    model = _tf_keras_model(rng)
    tf.saved_model.save(model, path)
    return _keras_cases(lambda x: model(x, training=False), "x", 3, rng, ["scores"])


@zoo_model("tf_keras_model_save")
def _(path, rng):
    model = _tf_keras_model(rng)
    model.save(path, save_format="tf")
    return _keras_cases(lambda x: model(x, training=False), "x", 3, rng, ["scores"])


# ---------------------------------------------------------------- TF1 graphs


@zoo_model("tf1_saved_model_builder")
def _(path, rng):
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        w = tf.compat.v1.get_variable("w", initializer=_floats(rng, 3, 2))
        b = tf.compat.v1.get_variable("b", initializer=_floats(rng, 2))
        y = tf.matmul(x, w) + b
        best = tf.argmax(y, axis=1)
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(path)
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y, "best": best})
        builder.add_meta_graph_and_variables(session, [tf.saved_model.SERVING], signature_def_map={"serving_default": signature})
        builder.save()
        cases = []
        for rows in (1, 3):
            xs = _floats(rng, rows, 3)
            ys, bests = session.run([y, best], {x: xs})
            cases.append(predict_case({"x": xs}, {"y": ys, "best": bests}))
    return cases


@zoo_model("tf1_estimator_style")
def _(path, rng):
    """What an Estimator's export_saved_model writes: serialized tf.Examples in, classify/regress/predict."""
    examples = [{"x": [2.0]}, {"x": [-1.5], "z": [3.0]}, {"x": [0.25], "z": [-0.5]}]
    serialized = np.array([example_proto(e).SerializeToString() for e in examples], dtype=object)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        inputs = tf.compat.v1.placeholder(tf.string, [None], name="input_example_tensor")
        features = tf.io.parse_example(inputs, {
            "x": tf.io.FixedLenFeature([1], tf.float32),
            "z": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
        })
        xz = tf.concat([features["x"], features["z"]], axis=1)
        w = tf.compat.v1.get_variable("w", initializer=_floats(rng, 2, 3))
        b = tf.compat.v1.get_variable("b", initializer=_floats(rng, 3))
        scores = tf.nn.softmax(tf.matmul(xz, w) + b)
        classes = tf.tile(tf.constant([[b"low", b"mid", b"high"]]), [tf.shape(inputs)[0], 1])
        w_reg = tf.compat.v1.get_variable("w_reg", initializer=_floats(rng, 2, 1))
        value = tf.matmul(xz, w_reg) + 0.5
        session.run(tf.compat.v1.global_variables_initializer())
        sig = tf.compat.v1.saved_model
        classify = sig.classification_signature_def(inputs, classes, scores)
        builder = sig.Builder(path)
        builder.add_meta_graph_and_variables(session, [tf.saved_model.SERVING], signature_def_map={
            "serving_default": classify,
            "classification": classify,
            "regression": sig.regression_signature_def(inputs, value),
            "predict": sig.predict_signature_def({"examples": inputs}, {"classes": classes, "scores": scores, "value": value}),
        })
        builder.save()
        got_classes, got_scores, got_value = session.run([classes, scores, value], {inputs: serialized})
    classified = {"classes": got_classes, "scores": got_scores}
    return [
        {"method": "classify", "signature": "serving_default", "examples": examples, "outputs": classified},
        {"method": "classify", "signature": "classification", "examples": examples[1:], "outputs": {k: v[1:] for k, v in classified.items()}},
        {"method": "regress", "signature": "regression", "examples": examples, "outputs": {"outputs": got_value}},
        predict_case({"examples": serialized}, {"classes": got_classes, "scores": got_scores, "value": got_value}, "predict"),
        predict_case({"inputs": serialized[:1]}, {k: v[:1] for k, v in classified.items()}),
    ]


# ---------------------------------------------------------------- tf.Module: assets, dtypes, signatures, shapes


class _Vocabulary(tf.Module):
    """Two tables over one vocabulary file: with out-of-vocabulary buckets, and with a default."""

    def __init__(self, vocab_file):
        super().__init__()

        def initializer():
            return tf.lookup.TextFileInitializer(vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                                 tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)

        self.buckets = tf.lookup.StaticVocabularyTable(initializer(), num_oov_buckets=3)
        self.strict = tf.lookup.StaticHashTable(initializer(), default_value=-1)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.string, name="words")])
    def lookup(self, words):
        return {"ids": self.buckets.lookup(words), "strict_ids": self.strict.lookup(words)}


@zoo_model("vocab_asset_lookup")
def _(path, rng):
    with tempfile.TemporaryDirectory() as vocab_dir:
        vocab_file = os.path.join(vocab_dir, "vocab.txt")
        with open(vocab_file, "w") as f:
            f.write("".join(f"{word}\n" for word in ("the", "cat", "sat", "on", "mat", "héllo")))
        module = _Vocabulary(vocab_file)
        tf.saved_model.save(module, path, signatures={"serving_default": module.lookup})
        words = np.array([[b"the", b"cat", b"zebra"], ["héllo".encode(), b"mat", b""]], dtype=object)
        outputs = {k: v.numpy() for k, v in module.lookup(words).items()}
    # The vocabulary file is gone now: the served model must read its own copy in assets/.
    return [predict_case({"words": words}, outputs), predict_case({"words": words[1:]}, {k: v[1:] for k, v in outputs.items()})]


class _Typed(tf.Module):
    """One input and one output of each dtype TF Serving's codecs must carry exactly."""

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="text"),
        tf.TensorSpec([None], tf.int64, name="count"),
        tf.TensorSpec([None], tf.bool, name="flag"),
        tf.TensorSpec([None, 2], tf.float16, name="half"),
        tf.TensorSpec([None, 2], tf.bfloat16, name="brain"),
    ])
    def serve(self, text, count, flag, half, brain):
        return {
            "text_upper": tf.strings.upper(text),
            "text_bytes": tf.strings.join([text, b"\xff"]),  # not UTF-8: b64 in JSON
            "count_next": count * 3 - 7,
            "flag_not": tf.logical_not(flag),
            "half_doubled": half * 2,
            "brain_plus_one": brain + 1,
            "sum": tf.reduce_sum(tf.cast(half, tf.float32) + tf.cast(brain, tf.float32), axis=1),
        }


@zoo_model("typed_io")
def _(path, rng):
    module = _Typed()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    bfloat16 = tf.bfloat16.as_numpy_dtype
    cases = []
    for rows in (1, 3):
        inputs = {
            "text": np.array([b"hello", "w\xf6rld".encode(), b"\x00\xfe"][:rows], dtype=object),
            "count": np.array([2**40 + 1, -5, 0][:rows], np.int64),
            "flag": np.array([True, False, True][:rows]),
            "half": np.array([[0.5, -1.25], [1024.0, 0.0], [3.0, 2.0**-10]][:rows], np.float16),  # exact in JSON
            "brain": np.array([[1.5, -2.0], [256.0, 0.125], [-0.0, 7.0]][:rows], bfloat16),
        }
        outputs = {k: v.numpy() for k, v in module.serve(**inputs).items()}
        cases.append(predict_case(inputs, outputs))
    return cases


class _MultiSignature(tf.Module):
    def __init__(self, rng):
        super().__init__()
        self.w = tf.Variable(_floats(rng, 2, 3))
        self.b = tf.Variable(_floats(rng, 3))

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def affine(self, x):
        return {"y": tf.matmul(x, self.w) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="n")])
    def double(self, n):
        return {"doubled": n * 2}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="a"), tf.TensorSpec([None], tf.string, name="b")])
    def join(self, a, b):
        return {"joined": tf.strings.join([a, b], separator="-")}


@zoo_model("multi_signature")
def _(path, rng):
    module = _MultiSignature(rng)
    tf.saved_model.save(module, path, signatures={"serving_default": module.affine, "double": module.double, "join": module.join})
    x = _floats(rng, 2, 2)
    n = np.array([3, -4, 2**30 - 1], np.int32)
    a, b = np.array([b"a", b"bc"], dtype=object), np.array([b"x", b""], dtype=object)
    return [
        predict_case({"x": x}, {k: v.numpy() for k, v in module.affine(x).items()}),
        predict_case({"n": n}, {k: v.numpy() for k, v in module.double(n).items()}, "double"),
        predict_case({"a": a, "b": b}, {k: v.numpy() for k, v in module.join(a, b).items()}, "join"),
    ]


class _Unbatched(tf.Module):
    """A batched input beside a [3] and a scalar input (no batch dimension)."""

    def __init__(self, rng):
        super().__init__()
        self.bias = tf.Variable(_floats(rng, 3))

    @tf.function(input_signature=[
        tf.TensorSpec([None, 3], tf.float32, name="x"),
        tf.TensorSpec([3], tf.float32, name="weights"),
        tf.TensorSpec([], tf.float32, name="scale"),
    ])
    def serve(self, x, weights, scale):
        return {"y": x * weights * scale + self.bias}


@zoo_model("unbatched_inputs")
def _(path, rng):
    module = _Unbatched(rng)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    cases = []
    for rows in (1, 3):
        inputs = {"x": _floats(rng, rows, 3), "weights": _floats(rng, 3), "scale": np.float32(rng.normal())}
        outputs = {k: v.numpy() for k, v in module.serve(**inputs).items()}
        cases.append(predict_case(inputs, outputs, rest="inputs"))
    return cases


def export_all(root: str) -> None:
    cases = {}
    for name, export in MODELS.items():
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        cases[name] = export(os.path.join(root, name, "1"), rng)
    with open(os.path.join(root, "cases.pkl"), "wb") as f:
        pickle.dump(cases, f)


if __name__ == "__main__":
    export_all(sys.argv[1])
