"""A signature of a loaded model: its input/output specs and how to run it."""
import copy
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from fastserve.codec.shapes import check_rank
from fastserve.errors import invalid_argument
from fastserve_client import dtypes

DEFAULT_SIGNATURE = "serving_default"

# runner(inputs, output_keys) -> {output key: array}; runs on an executor thread.
Runner = Callable[[dict[str, np.ndarray], tuple[str, ...]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class TensorSpec:
    key: str  # the alias clients use ("x")
    tensor_name: str  # the graph tensor ("x:0")
    dtype: int  # tensorflow DataType
    shape: tuple[int, ...] | None  # -1 for unknown dims; None for unknown rank

    @classmethod
    def from_tensor_info(cls, key: str, info: meta_graph_pb2.TensorInfo) -> "TensorSpec":
        shape = None
        if not info.tensor_shape.unknown_rank:
            shape = tuple(d.size for d in info.tensor_shape.dim)
        return cls(key, info.name, info.dtype, shape)


class Signature:
    def __init__(self, key: str, signature_def: meta_graph_pb2.SignatureDef, runner: Runner,
                 instances: dict[str | None, Runner] | None = None):
        self.key = key
        self.inputs = {k: TensorSpec.from_tensor_info(k, v) for k, v in signature_def.inputs.items()}
        self.outputs = {k: TensorSpec.from_tensor_info(k, v) for k, v in signature_def.outputs.items()}
        self.input_dtypes = {k: spec.dtype for k, spec in self.inputs.items()}
        self.all_output_keys = tuple(sorted(self.outputs))
        # Batching stacks requests along dimension 0: only for signatures whose every input
        # and output has one of unknown size (or is of unknown rank, as TF1 signatures may be).
        self.batchable = bool(self.inputs) and all(
            spec.shape is None or (spec.shape and spec.shape[0] == -1) for spec in (*self.inputs.values(), *self.outputs.values())
        )
        self._runner = runner
        self._instances = instances or {None: runner}  # device -> the runner of the instance placed there

    def on(self, device: str | None) -> "Signature":
        """This signature as run by the version's instance on `device` (the default instance
        for None, or for a device the version has no instance on)."""
        runner = self._instances.get(device, self._runner)
        if runner is self._runner:
            return self
        placed = copy.copy(self)
        placed._runner = runner
        return placed

    def validate(self, inputs: dict[str, np.ndarray]) -> None:
        """Names and dtypes must match the signature, ranks stay within codec.shapes.MAX_RANK;
        shapes are left to TensorFlow."""
        if inputs.keys() != self.inputs.keys():
            sent, expected = set(inputs), set(self.inputs)
            if len(sent) != len(expected):
                raise invalid_argument(
                    f"input size does not match signature: {len(sent)}!={len(expected)} "
                    f"len({_set(sent)}) != len({_set(expected)}). "
                    f"Sent extra: {_set(sent - expected)}. Missing but required: {_set(expected - sent)}."
                )
            alias = sorted(sent - expected)[0]
            raise invalid_argument(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {_set(expected)}."
            )
        for key, array in inputs.items():
            check_rank(array.ndim, key)  # the decoders refused it already; nothing above it reaches TensorFlow
            want = self.inputs[key].dtype
            got = dtypes.from_numpy(array.dtype).enum
            if got != want:
                raise invalid_argument(
                    f"input '{key}': expects dtype {dtypes.name(want)} but got {dtypes.name(got)}"
                )

    def output_keys(self, output_filter) -> tuple[str, ...]:
        """The outputs to compute: all of them, or the requested subset (TF Serving's output_filter)."""
        if not output_filter:
            return self.all_output_keys
        seen = set()
        for key in output_filter:
            if key not in self.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {key} "
                    f"Outputs expected to be in the set {_set(self.outputs)}."
                )
            if key in seen:
                raise invalid_argument(f"duplicate output tensor alias: {key}")
            seen.add(key)
        return tuple(output_filter)

    def run(self, inputs: dict[str, np.ndarray], output_keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        return self._runner(inputs, output_keys)


def _set(names) -> str:
    return "{" + ",".join(sorted(names)) + "}"
