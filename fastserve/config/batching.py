"""Dynamic batching parameters: TF Serving's BatchingParameters (a models.yaml batching:
section, server.batching_parameters, or --batching_parameters_file's text proto) and
fastserve's own latency target and queue policies beside them."""
import os
from dataclasses import dataclass, field

from fastserve import text_proto
from fastserve.config.checks import ConfigError, known, mapping, typed


@dataclass(frozen=True)
class BatchingConfig:
    """TF Serving's BatchingParameters, with its defaults and meanings."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0  # 0 = max_batch_size
    # fastserve's own, beside TF Serving's (models.yaml): latency-aware scheduling and queue policies
    target_latency_ms: float = 0  # 0 = off: a batch closes when full or at batch_timeout_micros, as TF Serving's
    priority_levels: int = 1
    default_priority_level: int = 0  # 0 = the lowest (priority_levels)
    max_queue_delay_ms: float = 0  # every level's, unless priority_queue_policy says otherwise; 0 = none
    max_queue_size: int = 0  # rows waiting at one level; 0 = only max_enqueued_batches bounds the queue
    priority_queue_policy: tuple[tuple[int, "QueuePolicy"], ...] = ()  # (level, its own policy)
    max_concurrent_batches: int = 0  # batches of the model running at once, all versions; 0 = one per batch thread

    @property
    def execution_batch_size(self) -> int:
        """Rows in one executed batch (max_execution_batch_size applies only with splitting)."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    @property
    def timeout_seconds(self) -> float:
        """The longest a batch waits for more rows: batch_timeout_micros; with a latency target
        and no timeout of its own, the target."""
        if self.batch_timeout_micros or not self.target_latency_ms:
            return self.batch_timeout_micros / 1e6
        return self.target_latency_ms / 1e3

    @property
    def default_level(self) -> int:
        return self.default_priority_level or self.priority_levels

    def level(self, priority: int) -> int:
        """The level (1 = highest) of a request's priority: 0 or one past the last level is the
        default level, as Triton's."""
        return priority if 0 < priority <= self.priority_levels else self.default_level

    def queue_policy(self, level: int) -> "QueuePolicy":
        return dict(self.priority_queue_policy).get(level, QueuePolicy(self.max_queue_delay_ms, self.max_queue_size))

    def padded_size(self, rows: int) -> int:
        """The batch size a batch of `rows` runs at: the next allowed size, else rows."""
        for size in self.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


@dataclass(frozen=True)
class QueuePolicy:
    """What one priority level's queue allows."""

    max_queue_delay_ms: float = 0  # a request that waited longer is answered UNAVAILABLE, never run; 0 = no limit
    max_queue_size: int = 0  # rows; a request beyond it is refused at once (RESOURCE_EXHAUSTED); 0 = no limit


_QUEUE_POLICY_TYPES = {"max_queue_delay_ms": (int, float), "max_queue_size": int}
_BATCHING_TYPES = {
    "max_batch_size": int,
    "batch_timeout_micros": int,
    "max_enqueued_batches": int,
    "num_batch_threads": int,
    "allowed_batch_sizes": list,
    "pad_variable_length_inputs": bool,
    "enable_large_batch_splitting": bool,
    "max_execution_batch_size": int,
    "target_latency_ms": (int, float),
    "priority_levels": int,
    "default_priority_level": int,
    "max_queue_delay_ms": (int, float),
    "max_queue_size": int,
    "priority_queue_policy": dict,
    "max_concurrent_batches": int,
}


def batching_config(values, where: str) -> BatchingConfig:
    """Validate a batching section (models.yaml, or a parsed BatchingParameters)."""
    values = dict(mapping(values, where))
    known(values, tuple(_BATCHING_TYPES), where)
    typed(values, _BATCHING_TYPES, where)
    for key in ("max_batch_size", "max_enqueued_batches", "num_batch_threads", "priority_levels"):
        if key in values and values[key] < 1:
            raise ConfigError(f"{where}.{key}: must be at least 1, got {values[key]}")
    for key in ("batch_timeout_micros", "max_execution_batch_size", "target_latency_ms", "default_priority_level",
                "max_queue_delay_ms", "max_queue_size", "max_concurrent_batches"):
        if key in values and values[key] < 0:
            raise ConfigError(f"{where}.{key}: must not be negative, got {values[key]}")
    levels = values.get("priority_levels", 1)
    if values.get("default_priority_level", 0) > levels:
        raise ConfigError(f"{where}.default_priority_level: must be a level from 1 to priority_levels ({levels})")
    if "priority_queue_policy" in values:
        model_wide = {k: values[k] for k in _QUEUE_POLICY_TYPES if k in values}
        values["priority_queue_policy"] = _queue_policies(values["priority_queue_policy"], levels, model_wide,
                                                          f"{where}.priority_queue_policy")
    sizes = values.get("allowed_batch_sizes", [])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise ConfigError(f"{where}.allowed_batch_sizes: expected positive integers, got {sizes!r}")
    values["allowed_batch_sizes"] = tuple(sizes)
    config = BatchingConfig(**values)
    if config.max_execution_batch_size > config.max_batch_size:
        raise ConfigError(f"{where}.max_execution_batch_size: must not exceed max_batch_size ({config.max_batch_size})")
    if sizes:
        if any(a >= b for a, b in zip(sizes, sizes[1:])):
            raise ConfigError(f"{where}.allowed_batch_sizes: entries must be monotonically increasing, got {sizes}")
        if sizes[-1] != config.execution_batch_size:
            limit = "max_execution_batch_size" if config.execution_batch_size != config.max_batch_size else "max_batch_size"
            raise ConfigError(
                f"{where}.allowed_batch_sizes: the final entry ({sizes[-1]}) must equal {limit} ({config.execution_batch_size})"
            )
    return config


def _queue_policies(doc: dict, levels: int, model_wide: dict, where: str) -> tuple[tuple[int, QueuePolicy], ...]:
    """{level: {max_queue_delay_ms, max_queue_size}} of priority_queue_policy; what a level does
    not say is the model's."""
    policies = []
    for level, policy in doc.items():
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= levels:
            raise ConfigError(f"{where}.{level}: expected a priority level from 1 to priority_levels ({levels})")
        policy = dict(mapping(policy, f"{where}.{level}"))
        known(policy, tuple(_QUEUE_POLICY_TYPES), f"{where}.{level}")
        typed(policy, _QUEUE_POLICY_TYPES, f"{where}.{level}")
        for key, value in policy.items():
            if value < 0:
                raise ConfigError(f"{where}.{level}.{key}: must not be negative, got {value}")
        policies.append((level, QueuePolicy(**{**model_wide, **policy})))
    return tuple(sorted(policies))


def load_batching_parameters_file(path: str) -> BatchingConfig:
    """Parse TF Serving's --batching_parameters_file (a BatchingParameters text proto)."""
    return parse_batching_parameters(text_proto.read(path, "batching parameters file", ConfigError), path)


def parse_batching_parameters(text: str, where: str = "batching parameters") -> BatchingConfig:
    proto = text_proto.parse(text, _BATCHING_PARAMETERS(), where, ConfigError)
    values = {}
    for descriptor, value in proto.ListFields():
        if descriptor.name == "thread_pool_name":
            continue  # fastserve runs each model's batches on its own threads
        if descriptor.message_type is not None:  # google.protobuf.*Value wrappers
            value = value.value
        values[descriptor.name] = list(value) if descriptor.name == "allowed_batch_sizes" else value
    return batching_config(values, where)


# tensorflow.serving.BatchingParameters (session_bundle_config.proto), which the pip package
# tensorflow-serving-api does not ship.
_BATCHING_PARAMETERS = text_proto.message_classes("fastserve/batching_parameters.proto", "tensorflow.serving", {
    "BatchingParameters": [
        (1, "max_batch_size", "google.protobuf.Int64Value"),
        (2, "batch_timeout_micros", "google.protobuf.Int64Value"),
        (3, "max_enqueued_batches", "google.protobuf.Int64Value"),
        (4, "num_batch_threads", "google.protobuf.Int64Value"),
        (5, "thread_pool_name", "google.protobuf.StringValue"),
        (6, "allowed_batch_sizes", "repeated int64"),
        (7, "pad_variable_length_inputs", "bool"),
        (8, "enable_large_batch_splitting", "google.protobuf.BoolValue"),
        (9, "max_execution_batch_size", "google.protobuf.Int64Value"),
    ],
})["BatchingParameters"]
