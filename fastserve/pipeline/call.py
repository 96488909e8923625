"""An inference request on its way through the pipeline, whatever its API, wire form and transport.

A service decodes a request (a Predict proto, a REST JSON body, a V2 infer request, a
Classify proto ...) into an InferenceCall of its own kind, which says what the request
names (model, version or label, signature) and, once the signature is known, what its
inputs are, which outputs it wants and how its answer is written. The transport that
brought it gives it `reply`, the one way its answer goes back. The call is itself the
Member the batch queue holds: its deadline and cancellation travel with it.
"""
from typing import Any, NamedTuple
from collections.abc import Callable

import numpy as np
from grpc import StatusCode

from fastserve.errors import ServingError
from fastserve.pipeline.member import Member
from fastserve.servables.registry import ServableHandle
from fastserve.servables.signature import Signature

# reply(call, error, payload): the call's answer, an error or its encoded response (bytes for
# gRPC, an http Response for REST), back to its transport; called once, on the call's event loop.
Reply = Callable[["InferenceCall", ServingError | None, Any], None]

PREDICT = "Predict"  # TF Serving's method name: the metrics' API label of a Predict call, over REST too


class InferenceCall(Member):
    """The base of every API's calls. A subclass sets `api` (the metrics' API label) and
    implements `inputs_for` and `encode`; the others have the TF Serving Predict meaning."""

    __slots__ = ("entrypoint", "model", "version", "label", "signature_key", "output_filter", "started", "reply", "reply_to",
                 "answered", "cache_key")
    api = PREDICT
    reply: Reply  # its one way back, set by the transport that brought it before it is submitted

    def __init__(self, model: str, version: int | None, label: str | None, signature_key: str, output_filter=()):
        # The Member's fields, set here directly: one call less on every request.
        self.inputs = {}  # once resolved: {name: array} for the signature
        self.rows = 0
        self.deadline = None
        self.cancelled = False
        self.priority = 0
        self.trace = None
        self.model = model
        self.version = version
        self.label = label
        self.signature_key = signature_key
        self.output_filter = tuple(output_filter) if output_filter else ()
        self.answered = False
        self.cache_key: tuple | None = None  # with a response cache: where its outputs go
        # Set by the transport that brought it (entrypoint "": a part of a request, as
        # MultiInference's tasks are: counted by that request):
        self.entrypoint = ""  # "GRPC" or "REST", for metrics
        self.started = 0.0  # time.perf_counter() on arrival
        self.reply_to: Any = None  # what the transport answers it by: a call id, a future

    # ------------------------------------------------------------ what the API means

    def signature(self, handle: ServableHandle) -> Signature:
        signature = handle.model.signatures.get(self.signature_key)
        if signature is None:
            raise self.missing_signature(handle)
        return signature

    def missing_signature(self, handle: ServableHandle) -> ServingError:
        """The error for a signature the version does not have, in the API's words."""
        return ServingError(StatusCode.FAILED_PRECONDITION, f'Serving signature key "{self.signature_key}" not found.')

    def inputs_for(self, signature: Signature, max_elements: int) -> dict[str, np.ndarray]:
        """The request's inputs for this signature (decoded for its dtypes where the wire form needs
        them); max_elements is the operator's limit (0: none), which bounds implied values too."""
        raise NotImplementedError

    def check(self, signature: Signature, inputs: dict[str, np.ndarray]) -> None:
        """The API's own checks of inputs against the signature, before the common ones."""

    def output_keys(self, signature: Signature) -> tuple[str, ...]:
        return signature.output_keys(self.output_filter)

    def encode(self, handle: ServableHandle, signature: Signature, outputs: dict[str, np.ndarray]) -> object:
        """The response holding these outputs, as its transport sends it."""
        raise NotImplementedError

    @classmethod
    def encode_group(cls, calls: list["InferenceCall"], handle: ServableHandle, signature: Signature,
                     outputs: dict[str, np.ndarray]) -> list:
        """The responses of calls that ran together (outputs stacked in call order). A wire form
        that can cut its responses from the stacked outputs overrides this."""
        if len(calls) == 1:
            return [calls[0].encode(handle, signature, outputs)]
        responses, first = [], 0
        for call in calls:
            own = {k: v[first : first + call.rows] for k, v in outputs.items()}
            responses.append(call.encode(handle, signature, own))
            first += call.rows
        return responses



class Inference(NamedTuple):
    """A method-table entry for an inference method: the transport parses the request message
    and `make_call(request)` turns it into the call the pipeline serves."""
    request_class: type
    make_call: Callable[[Any], InferenceCall]  # given the parsed request_class message


class StreamedInference(NamedTuple):
    """A method-table entry for a bidirectional stream of inference requests: each message is
    served as Inference's are, and `frame(payload, error)` makes its answer a stream message
    (an error does not end the stream)."""
    request_class: type
    make_call: Callable[[Any], InferenceCall]
    frame: Callable[[bytes | None, ServingError | None], bytes]
