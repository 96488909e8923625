"""The devices models run on: what the machine has, and the names configs use.

GPUs are listed through NVML (nvidia-ml-py), with their names and memory; a machine
without an NVIDIA driver, or without GPUs, runs on the CPU and says so once. This module
owns NVML: the metrics' GPU collector reads it through nvml() too. The CPU
can be split into several logical TensorFlow devices (server.cpu_devices), so a
model's executors can be spread over CPU devices the way they are over GPUs.
"""
import functools
import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?:/device:)?(cpu|gpu):(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Device:
    name: str  # TensorFlow's device name: /device:GPU:0
    description: str


def normalize(name: str) -> str:
    """'gpu:1', 'GPU:1' or '/device:GPU:1' -> '/device:GPU:1'; ValueError otherwise."""
    match = _NAME.match(name.strip()) if isinstance(name, str) else None
    if not match:
        raise ValueError(f"{name!r} is not a device name (expected CPU:N or GPU:N)")
    return f"/device:{match.group(1).upper()}:{int(match.group(2))}"


@functools.cache
def nvml():
    """pynvml, initialised once for the process (never shut down: the metrics read it at every
    scrape), and the handle of each GPU in NVML's order; None without a driver or GPUs."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        log.info("no NVIDIA driver (%s): models run on the CPU", exc)
        return None


def gpus() -> list[Device]:
    """The NVIDIA GPUs NVML reports (in NVML's order); [] without a driver or GPUs."""
    if (opened := nvml()) is None:
        return []
    library, handles = opened
    found = []
    for index, handle in enumerate(handles):
        name = library.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        memory = library.nvmlDeviceGetMemoryInfo(handle).total
        found.append(Device(f"/device:GPU:{index}", f"{name}, {memory / 2**30:.1f} GiB"))
    return found


def gpu_memory_used() -> dict[int, int]:
    """Bytes in use on each GPU now, by NVML index ({} without a driver or GPUs)."""
    if (opened := nvml()) is None:
        return {}
    library, handles = opened
    return {i: library.nvmlDeviceGetMemoryInfo(handle).used for i, handle in enumerate(handles)}


def split_cpu(count: int) -> None:
    """Make the CPU `count` logical TensorFlow devices (CPU:0 .. CPU:count-1).
    Must run before TensorFlow initialises its devices (before any model loads)."""
    if count <= 1:
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def available() -> set[str]:
    """TensorFlow's device names on this machine (/device:CPU:0, /device:GPU:0, ...)."""
    import tensorflow as tf

    return {normalize(d.name.rsplit("/", 1)[-1].replace("device:", "")) for d in tf.config.list_logical_devices()}


def log_inventory() -> None:
    found = gpus()
    for gpu in found:
        log.info("GPU %s: %s", gpu.name, gpu.description)
    log.info("TensorFlow devices: %s", ", ".join(sorted(available())))
