"""Export the example SavedModels served by examples/models.yaml (and used by the tests).

    python examples/export_models.py [OUTPUT_DIR] [MODEL ...]   (default: examples/models, all models)

* half_plus_two/1 -- TF2 (tf.Module): y = 0.5 * x + 2 on float32 [-1, 1].
* half_plus_three/1 -- TF1-style (Session + SignatureDef, reference variables):
  y = 0.5 * x + 3, loaded through the session runtime as TF1 models are.
* multi_io/1 -- TF2, several inputs and outputs of several dtypes:
  a float32 [-1, 2], b int64 [-1], tag string [-1] ->
  sum float32 [-1] (a[:, 0] + a[:, 1] + b), b_doubled int64 [-1],
  tag_bytes string [-1] (tag as given), tag_upper string [-1].
* example_scorer/1 -- TF1-style, tf.Example inputs (feature x float, optional bias float,
  default 0): y = 0.5 * x + 2 + bias. Signatures classify_x_to_y (classify: classes
  ["low", "high"], scores [10 - y, y]), regress_x_to_y (regress: outputs y [-1, 1]) and
  serving_default (predict on float x [-1, 1]).
* bool_mask/1 -- TF2: flag bool [-1], x float32 [-1] -> masked float32 [-1]
  (x where flag, else 0) and flag_not bool [-1].

The files are small and committed, so the examples run without exporting first.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402 - after TF_CPP_MIN_LOG_LEVEL, which TensorFlow reads on import


class HalfPlusTwo(tf.Module):
    def __init__(self):
        super().__init__()
        self.a = tf.Variable(0.5, name="a")
        self.b = tf.Variable(2.0, name="b")

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def predict(self, x):
        return {"y": self.a * x + self.b}


class MultiIO(tf.Module):
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.float32, name="a"),
            tf.TensorSpec([None], tf.int64, name="b"),
            tf.TensorSpec([None], tf.string, name="tag"),
        ]
    )
    def predict(self, a, b, tag):
        return {
            "sum": tf.reduce_sum(a, axis=1) + tf.cast(b, tf.float32),
            "b_doubled": b * 2,
            "tag_bytes": tf.identity(tag),
            "tag_upper": tf.strings.upper(tag),
        }


class BoolMask(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.bool, name="flag"), tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, flag, x):
        return {"masked": tf.where(flag, x, tf.zeros_like(x)), "flag_not": tf.logical_not(flag)}


def export_tf2(module, path):
    tf.saved_model.save(module, path, signatures={"serving_default": module.predict})


def export_half_plus_three_tf1(path):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
        a = tf.compat.v1.get_variable("a", initializer=0.5, use_resource=False)
        c = tf.compat.v1.get_variable("c", initializer=3.0, use_resource=False)
        y = tf.add(a * x, c, name="y")
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(path)
            signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(
                session, [tf.compat.v1.saved_model.SERVING], signature_def_map={"serving_default": signature}
            )
            builder.save()


def export_example_scorer_tf1(path):
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        features = tf.io.parse_example(serialized, {
            "x": tf.io.FixedLenFeature([1], tf.float32),
            "bias": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
        })
        a = tf.compat.v1.get_variable("a", initializer=0.5, use_resource=False)
        y = tf.identity(a * features["x"] + 2.0 + features["bias"], name="y")
        scores = tf.concat([10.0 - y, y], axis=1, name="scores")
        classes = tf.tile(tf.constant([["low", "high"]]), [tf.shape(y)[0], 1], name="classes")
        x = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
        y_predict = tf.add(a * x, 2.0, name="y_predict")
        sig = tf.compat.v1.saved_model.signature_def_utils
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(
                session, [tf.compat.v1.saved_model.SERVING],
                signature_def_map={
                    "classify_x_to_y": sig.classification_signature_def(serialized, classes, scores),
                    "regress_x_to_y": sig.regression_signature_def(serialized, y),
                    "serving_default": sig.predict_signature_def({"x": x}, {"y": y_predict}),
                },
            )
            builder.save()


MODELS = {
    "half_plus_two": lambda path: export_tf2(HalfPlusTwo(), path),
    "half_plus_three": export_half_plus_three_tf1,
    "multi_io": lambda path: export_tf2(MultiIO(), path),
    "example_scorer": export_example_scorer_tf1,
    "bool_mask": lambda path: export_tf2(BoolMask(), path),
}


def main(out_dir: str, names: list[str]) -> None:
    for name in names or MODELS:
        MODELS[name](os.path.join(out_dir, name, "1"))
    print(f"exported {', '.join(names or MODELS)} to {out_dir}")


if __name__ == "__main__":
    args = sys.argv[1:]
    out = args.pop(0) if args and args[0] not in MODELS else os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
    main(out, args)
