"""The response cache: a model's outputs for inputs it has answered before.

Off unless a model has a `response_cache` section. An entry is keyed by what determines
the outputs: the version, the signature, the outputs asked for, and each input's name,
dtype, shape and bytes (a 128-bit BLAKE2 digest of them). A hit is answered from the
pipeline without reaching the queue; the least recently used entries make room for new
ones within max_entries and max_bytes. A version's entries go when it unloads, so a new
version (or the same number loaded again) never answers from an old one's outputs.
"""
import hashlib
import threading
from collections import OrderedDict

import numpy as np

from fastserve import metrics
from fastserve.config import ResponseCacheConfig

class ResponseCache:
    def __init__(self, model: str, config: ResponseCacheConfig):
        self.config = config
        self._entries: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
        self._sizes: dict[tuple, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()  # the REST and gRPC event loops share it
        self._hits, self._misses, self._evictions = (metrics.RESPONSE_CACHE.labels(model, event) for event in ("hit", "miss", "eviction"))

    @staticmethod
    def key(version: int, signature_key: str, output_keys: tuple[str, ...], inputs: dict[str, np.ndarray]) -> tuple:
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(inputs):
            array = inputs[name]
            _framed(digest, name.encode())
            _framed(digest, f"{array.dtype.str}{array.shape}".encode())
            if array.dtype.hasobject:  # strings: each element framed by its length
                for item in array.flat:
                    _framed(digest, item if isinstance(item, bytes) else str(item).encode())
            else:
                digest.update(np.ascontiguousarray(array).view(np.uint8).data)
        return version, signature_key, output_keys, digest.digest()

    def get(self, key: tuple) -> dict[str, np.ndarray] | None:
        with self._lock:
            outputs = self._entries.get(key)
            if outputs is not None:
                self._entries.move_to_end(key)
        (self._misses if outputs is None else self._hits).inc()
        return outputs

    def put(self, key: tuple, outputs: dict[str, np.ndarray]) -> None:
        outputs = {name: np.array(array, copy=True) for name, array in outputs.items()}  # not views of a batch
        size = sum(_nbytes(array) for array in outputs.values())
        if size > self.config.max_bytes:
            return
        evicted = 0
        with self._lock:
            if key in self._entries:
                return
            self._entries[key], self._sizes[key] = outputs, size
            self._bytes += size
            while len(self._entries) > self.config.max_entries or self._bytes > self.config.max_bytes:
                old, _ = self._entries.popitem(last=False)
                self._bytes -= self._sizes.pop(old)
                evicted += 1
        if evicted:
            self._evictions.inc(evicted)

    def forget_version(self, version: int) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == version]:
                del self._entries[key]
                self._bytes -= self._sizes.pop(key)


class ResponseCaches:
    """The cache of each model that has one, by name."""

    def __init__(self):
        self._caches: dict[str, ResponseCache] = {}

    def configure(self, models) -> None:
        """At start and after a model config reload: a model whose cache settings are unchanged
        keeps its entries."""
        caches: dict[str, ResponseCache] = {}
        for model in models:
            if model.response_cache is not None:
                cache = self._caches.get(model.name)
                if cache is None or cache.config != model.response_cache:
                    cache = ResponseCache(model.name, model.response_cache)
                caches[model.name] = cache
        self._caches = caches

    def get(self, model: str) -> ResponseCache | None:
        return self._caches.get(model)

    def release_version(self, servable) -> None:
        """A version unloaded (the manager calls this): its entries go."""
        cache = self._caches.get(servable.name)
        if cache is not None:
            cache.forget_version(servable.version)


def _framed(digest, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _nbytes(array: np.ndarray) -> int:
    if array.dtype.hasobject:
        return sum(len(item) if isinstance(item, bytes) else 64 for item in array.flat)
    return array.nbytes
