"""What a classification or regression signature is (TF Serving's tf.Example APIs).

A classification or regression signature takes one input, "inputs": a vector of
serialized tf.Example protos. Classification reads the outputs "classes" (DT_STRING
[batch, n]) and/or "scores" (DT_FLOAT [batch, n]); regression reads "outputs" (DT_FLOAT
[batch] or [batch, 1]). Checks and error texts follow TF Serving's classifier.cc and
regressor.cc. As in TF Serving (without --enable_signature_method_name_check), a
signature's method_name is not enforced: TF2 exports label every signature "predict".
"""
from grpc import StatusCode

from fastserve.errors import ServingError, invalid_argument
from fastserve.servables.signature import Signature

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
INPUTS, CLASSES, SCORES, OUTPUTS = "inputs", "classes", "scores", "outputs"


def _one_input(signature: Signature, kind: str) -> None:
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if INPUTS not in signature.inputs:
        raise ServingError(
            StatusCode.FAILED_PRECONDITION,
            f'No {kind} inputs found in SignatureDef "{signature.key}": its one input must be named "{INPUTS}"',
        )


def classification_outputs(signature: Signature) -> tuple[str, ...]:
    """The outputs a classification reads; raises if the signature cannot classify."""
    _one_input(signature, "classification")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    keys = tuple(k for k in (CLASSES, SCORES) if k in signature.outputs)
    if not keys:
        raise ServingError(
            StatusCode.FAILED_PRECONDITION,
            f'Expected classification signature outputs to contain at least one of "{CLASSES}" or "{SCORES}". '
            f'Signature "{signature.key}" has: {", ".join(sorted(signature.outputs))}',
        )
    return keys


def regression_outputs(signature: Signature) -> tuple[str, ...]:
    _one_input(signature, "regression")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if OUTPUTS not in signature.outputs:
        raise ServingError(
            StatusCode.FAILED_PRECONDITION,
            f'No regression outputs found in SignatureDef "{signature.key}": its one output must be named "{OUTPUTS}"',
        )
    return (OUTPUTS,)
