"""The registry: what the request path looks up.

Lookups read one immutable snapshot {model name -> ModelEntry}; the control plane
builds a new snapshot and swaps the reference (a single atomic assignment), so a
lookup never locks against a load and never sees half a change. A ServableHandle
counts the request in flight on its version, so an unloading version is freed only
after its last request has finished.
"""
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fastserve.errors import invalid_argument, not_found

if TYPE_CHECKING:  # lookups import no TensorFlow
    from fastserve.servables.saved_model import LoadedModel


class ServableVersion:
    """One AVAILABLE version of a model, with a count of the requests using it."""

    def __init__(self, name: str, version: int, model: "LoadedModel", on_demand: bool = False):
        self.name = name
        self.version = version
        self.model = model
        self.on_demand = on_demand  # loaded on a request; may be unloaded to make room
        self.last_used = time.monotonic()  # the last lookup: the least recently used make room first
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retired = False
        self._drained = threading.Event()

    def acquire(self) -> bool:
        """Count one more request; False once the version is retired (look up again)."""
        with self._lock:
            if self._retired:
                return False
            self._in_flight += 1
        self.last_used = time.monotonic()
        return True

    def hold(self) -> None:
        """One more reference for work started by a request that already holds a handle."""
        with self._lock:
            self._in_flight += 1

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._retired and self._in_flight == 0:
                self._drained.set()

    def retire(self) -> None:
        """No new requests; wait_drained() returns once the in-flight ones finish."""
        with self._lock:
            self._retired = True
            if self._in_flight == 0:
                self._drained.set()

    def wait_drained(self, timeout: float | None = None) -> bool:
        return self._drained.wait(timeout)

    @property
    def in_flight(self) -> int:
        return self._in_flight


class ServableHandle:
    """Keeps a version alive while a request uses it. Use as a context manager."""

    __slots__ = ("servable",)

    def __init__(self, servable: ServableVersion):
        self.servable = servable

    @property
    def name(self) -> str:
        return self.servable.name

    @property
    def version(self) -> int:
        return self.servable.version

    @property
    def model(self) -> "LoadedModel":
        return self.servable.model

    def __enter__(self) -> "ServableHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.servable.release()


@dataclass(frozen=True)
class ModelEntry:
    name: str
    versions: Mapping[int, ServableVersion] = field(default_factory=dict)
    labels: Mapping[str, int] = field(default_factory=dict)
    latest: ServableVersion | None = None  # the highest AVAILABLE version, found once per snapshot


class Registry:
    def __init__(self):
        self._snapshot: Mapping[str, ModelEntry] = MappingProxyType({})
        self._write_lock = threading.Lock()  # writers only; readers never take it

    def lookup(self, name: str, version: int | None = None, label: str | None = None) -> ServableHandle:
        """Resolve a model spec to a handle on one version (release it when done)."""
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        while True:
            servable = self._resolve(self._snapshot, name, version, label)
            if servable.acquire():
                return ServableHandle(servable)
            # Retired between the snapshot read and acquire: the next snapshot no longer has it.

    @staticmethod
    def _resolve(snapshot, name, version, label) -> ServableVersion:
        entry = snapshot.get(name)
        if label is not None:
            if entry is None or label not in entry.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = entry.labels[label]
        if version is None:
            servable = entry.latest if entry else None
            if servable is None:
                raise not_found(f"Servable not found for request: Latest({name})")
            return servable
        servable = entry.versions.get(version) if entry else None
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return servable

    def entry(self, name: str) -> ModelEntry | None:
        return self._snapshot.get(name)

    def names(self) -> list[str]:
        return sorted(self._snapshot)

    def update(self, name: str, versions: Mapping[int, ServableVersion] | None, labels: Mapping[str, int] | None = None) -> None:
        """Publish a model's new set of versions (None removes the model)."""
        with self._write_lock:
            snapshot = dict(self._snapshot)
            if versions is None:
                snapshot.pop(name, None)
            else:
                latest = versions[max(versions)] if versions else None
                snapshot[name] = ModelEntry(
                    name, MappingProxyType(dict(versions)), MappingProxyType(dict(labels or {})), latest
                )
            self._snapshot = MappingProxyType(snapshot)

