"""PyTriton serving the benchmark's SavedModels: run by bench/triton_peer.py with the PyTriton
venv's python, never imported by fastserve.

    python triton_peer_server.py SPEC_JSON

SPEC_JSON: {"http_port": P, "grpc_port": P, "metrics_port": P, "models": [{"name", "path",
"max_batch_size", "max_queue_delay_microseconds", "instances"}]}. Each model is its SavedModel's
serving_default signature (tf.saved_model.load) called from PyTriton's infer function, behind
Triton's dynamic batcher; `instances` infer functions (fastserve's num_batch_threads). It
serves until SIGTERM or SIGINT; V2's /v2/models/NAME/ready says when a model serves.
"""
import json
import signal
import sys

import numpy as np
import tensorflow as tf
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from named_threads import name_python_threads


def tensors(specs: dict) -> list:
    """PyTriton's tensor definitions from a signature's specs (without the batch dimension)."""
    return [Tensor(name=name, dtype=spec.dtype.as_numpy_dtype, shape=tuple(-1 if d is None else d for d in spec.shape[1:]))
            for name, spec in sorted(specs.items())]


def infer_function(signature):
    @batch
    def infer(**inputs):
        outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
        return {name: np.asarray(value) for name, value in outputs.items()}

    return infer


def main() -> None:
    spec = json.loads(sys.argv[1])
    name_python_threads()  # for the CPU split by thread role
    for stop in (signal.SIGTERM, signal.SIGINT):  # serve() stops on KeyboardInterrupt (also where SIGINT was ignored)
        signal.signal(stop, signal.default_int_handler)
    config = TritonConfig(http_address="127.0.0.1", http_port=spec["http_port"], grpc_address="127.0.0.1",
                          grpc_port=spec["grpc_port"], metrics_port=spec["metrics_port"])
    with Triton(config=config) as triton:
        for model in spec["models"]:
            signature = tf.saved_model.load(model["path"]).signatures["serving_default"]
            triton.bind(
                model_name=model["name"],
                infer_func=[infer_function(signature) for _ in range(model["instances"])],
                inputs=tensors(signature.structured_input_signature[1]),
                outputs=tensors(signature.structured_outputs),
                config=ModelConfig(max_batch_size=model["max_batch_size"], batcher=DynamicBatcher(
                    max_queue_delay_microseconds=model["max_queue_delay_microseconds"])),
            )
        triton.serve()


if __name__ == "__main__":
    main()
