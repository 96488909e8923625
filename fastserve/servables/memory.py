"""What loaded model versions cost in memory, and the budget they share.

Each load is measured: the process's resident memory before and after (and each GPU's
used memory, from NVML, where there are GPUs). Not TensorFlow's allocator statistics: its
CPU allocator keeps none unless C++ code turns them on (get_memory_info("CPU:0") reads 0),
and the resident memory holds what that allocator took, the graph and Python objects too.
With a budget, loads are measured one at a time so that each delta is that version's own.
A version about to load is expected to need what it needed last time, else its size on disk
(as TensorFlow holds its variables and graph in memory, at least that). Unloads give memory
back to the system: the allocator's freed pages are returned (glibc's malloc_trim) after
Python has collected the version.
"""
import contextlib
import ctypes
import gc
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from fastserve import metrics

_PAGE = os.sysconf("SC_PAGE_SIZE")
_malloc_trim: Callable[[int], int] | None
try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc: its allocator returns memory its own way
    _malloc_trim = None


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def disk_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def give_back() -> None:
    """Return freed memory to the system after an unload."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


@dataclass
class Footprint:
    host: int  # bytes of resident memory
    gpus: dict[int, int]  # GPU index -> bytes


class MemoryBudget:
    def __init__(self, budget_mb: int, gpu_budget_mb: int = 0):
        self.budget = budget_mb * 2**20  # 0: none
        self.gpu_budget = gpu_budget_mb * 2**20
        self._lock = threading.Lock()  # the books
        self._measuring = threading.Lock()  # with a budget, one measured load at a time
        self._loaded: dict[tuple[str, int], Footprint] = {}
        self._last: dict[tuple[str, int], Footprint] = {}  # what each version needed when it last loaded
        metrics.MEMORY_BUDGET.set(self.budget)

    @property
    def in_use(self) -> int:
        with self._lock:
            return sum(f.host for f in self._loaded.values())

    def gpu_in_use(self, gpu: int) -> int:
        with self._lock:
            return sum(f.gpus.get(gpu, 0) for f in self._loaded.values())

    def expected(self, name: str, version: int, path: str) -> Footprint:
        """What a version is expected to need: its last footprint, else its size on disk (on the host;
        what it puts on GPUs is known once it has loaded)."""
        last = self._last.get((name, version))
        return last if last is not None else Footprint(disk_bytes(path), {})

    def fits(self, needed: Footprint) -> bool:
        """Whether `needed` more fits the host budget and each GPU's."""
        if self.budget and self.in_use + needed.host > self.budget:
            return False
        return not self.gpu_budget or all(self.gpu_in_use(gpu) + used <= self.gpu_budget for gpu, used in needed.gpus.items())

    def one_at_a_time(self):
        """Around making room and loading: with a budget, one load at a time (each measured alone,
        and none fitting into room another one took)."""
        return self._measuring if self.budget or self.gpu_budget else contextlib.nullcontext()

    @contextlib.contextmanager
    def measuring(self, path: str):
        """Around the load of the version at `path`: yields a function that gives its footprint once
        loaded. The host part is at least the version's size on disk: memory the allocator had
        kept from an unload is reused without growing the process."""
        from fastserve.batching import devices

        host, gpus = resident_bytes(), devices.gpu_memory_used()
        yield lambda: Footprint(max(disk_bytes(path), resident_bytes() - host),
                                {i: max(0, used - gpus.get(i, 0)) for i, used in devices.gpu_memory_used().items()})

    def loaded(self, name: str, version: int, footprint: Footprint) -> None:
        with self._lock:
            self._loaded[(name, version)] = self._last[(name, version)] = footprint
            in_use = sum(f.host for f in self._loaded.values())
        metrics.model_memory(name, version, footprint.host, footprint.gpus)
        metrics.MEMORY_IN_USE.set(in_use)

    def unloaded(self, name: str, version: int) -> int:
        """Forget a version's footprint; returns its host bytes."""
        with self._lock:
            footprint = self._loaded.pop((name, version), None)
            in_use = sum(f.host for f in self._loaded.values())
        metrics.model_memory(name, version, None, footprint.gpus if footprint else {})
        metrics.MEMORY_IN_USE.set(in_use)
        return footprint.host if footprint else 0

