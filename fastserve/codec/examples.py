"""TF Serving's Input message (a list of tf.Examples, perhaps with a context) -> the
serialized-examples tensor a classification or regression signature takes."""
import numpy as np
from tensorflow_serving.apis import input_pb2

from fastserve.errors import invalid_argument


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """The request's examples as a DT_STRING vector; a context is prepended to each
    example's bytes, which protobuf parsing merges (the example's features win)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        items = [example.SerializeToString() for example in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        context = with_context.context.SerializeToString()
        items = [context + example.SerializeToString() for example in with_context.examples]
    else:
        items = []
    if not items:
        raise invalid_argument("Input is empty.")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array
