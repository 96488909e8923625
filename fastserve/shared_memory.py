"""The V2 system shared-memory extension: tensors passed through POSIX shared memory.

A client on the same host creates a region (shm_open: /dev/shm/KEY), registers it under a
name with an offset and size, then names it in a tensor's parameters
(shared_memory_region, shared_memory_byte_size, shared_memory_offset): an input's bytes
are read from there (raw, as the binary tensor extension lays them out), an output's
written there instead of into the response. Regions belong to the server process; every
offset and size is checked against the region before any byte is touched.
"""
import mmap
import os
import re
import threading
from dataclasses import dataclass

from grpc import StatusCode

from fastserve.errors import ServingError, invalid_argument, not_found

SHM_DIR = "/dev/shm"
_KEY = re.compile(r"/?[A-Za-z0-9_.\-]{1,255}")  # a shm_open name: one path component, no traversal
REGION, OFFSET, SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"


@dataclass(frozen=True)
class Placement:
    """Where one tensor lies: a registered region, an offset in it and a size."""

    region: str
    offset: int
    byte_size: int


@dataclass
class _Region:
    key: str
    offset: int
    byte_size: int
    memory: mmap.mmap


class Regions:
    def __init__(self):
        self._lock = threading.Lock()
        self._regions: dict[str, _Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise invalid_argument("a shared memory region needs a name")
        if _KEY.fullmatch(key) is None or key.strip("/") in (".", ".."):
            raise invalid_argument(f"shared memory key '{key[:64]}' is not a shm_open name ('/name')")
        if offset < 0 or byte_size <= 0:
            raise invalid_argument(f"shared memory region '{name}': offset must be >= 0 and byte_size > 0")
        path = os.path.join(SHM_DIR, key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise invalid_argument(f"Unable to open shared memory region '{key}': {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise invalid_argument(
                    f"shared memory region '{name}': offset {offset} + byte_size {byte_size} is beyond the "
                    f"{size} bytes of '{key}'")
            memory = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        with self._lock:
            if name in self._regions:
                memory.close()
                raise ServingError(StatusCode.ALREADY_EXISTS, f"shared memory region '{name}' is already registered")
            self._regions[name] = _Region(key, offset, byte_size, memory)

    def unregister(self, name: str = "") -> None:
        """Forget one region ("" every one); a name not registered is success, as in Triton."""
        with self._lock:
            names = list(self._regions) if not name else [name] if name in self._regions else []
            regions = [self._regions.pop(n) for n in names]
        for region in regions:
            region.memory.close()

    def status(self, name: str = "") -> list[dict]:
        with self._lock:
            if name and name not in self._regions:
                raise not_found(f"Unable to find system shared memory region: '{name}'")
            return [{"name": n, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                    for n, r in sorted(self._regions.items()) if not name or n == name]

    def read(self, place: Placement, tensor: str) -> bytes:
        """A copy of an input's bytes (the client may reuse the region as soon as it is answered)."""
        region, start = self._span(place, place.byte_size, tensor)
        return region.memory[start : start + place.byte_size]

    def write(self, place: Placement, data: bytes, tensor: str) -> None:
        region, start = self._span(place, len(data), tensor)
        region.memory[start : start + len(data)] = data

    def _span(self, place: Placement, size: int, tensor: str) -> tuple[_Region, int]:
        with self._lock:
            region = self._regions.get(place.region)
        if region is None:
            raise invalid_argument(f"tensor '{tensor}': unable to find shared memory region '{place.region}'")
        if size > place.byte_size:
            raise invalid_argument(
                f"tensor '{tensor}': {size} bytes do not fit the {place.byte_size} given in shared memory region "
                f"'{place.region}'")
        if place.offset + place.byte_size > region.byte_size:
            raise invalid_argument(
                f"tensor '{tensor}': offset {place.offset} + byte_size {place.byte_size} is beyond the "
                f"{region.byte_size} bytes of shared memory region '{place.region}'")
        return region, region.offset + place.offset


def placement(parameters: dict, tensor: str) -> Placement | None:
    """The tensor's shared memory placement from its parameters (plain values), or None."""
    region = parameters.get(REGION)
    if region is None:
        return None
    size, offset = parameters.get(SIZE), parameters.get(OFFSET, 0)
    if not isinstance(region, str) or not region:
        raise invalid_argument(f"tensor '{tensor}': {REGION} must be a region's name")
    for what, value in ((SIZE, size), (OFFSET, offset)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise invalid_argument(f"tensor '{tensor}': {what} must be a non-negative integer")
    assert isinstance(size, int) and isinstance(offset, int)  # checked just above
    return Placement(region, offset, size)


def no_cuda_regions(name: str = "") -> list:
    """CUDA shared memory status: fastserve registers none (tools that clean up every kind ask)."""
    if name:
        raise not_found(f"Unable to find cuda shared memory region: '{name}'")
    return []


def refuse_cuda_region() -> None:
    raise ServingError(StatusCode.UNIMPLEMENTED, "CUDA shared memory is not supported: use system shared memory")


regions = Regions()  # the server's (one per process)
