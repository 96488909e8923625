"""Model versions in object storage: a base_path such as s3://bucket/prefix, gs://... or any
other fsspec URL (fsspec with s3fs or gcsfs: pip install 'fastserve[s3]' or '[gcs]').

Each poll lists the whole prefix once (one paginated listing, not one per version). A version
is a numeric "directory" under it, its contents every object's key, size and ETag, and it is
ready by the local rule (servables/source.py): it holds saved_model.pb and its contents are
the same on two consecutive polls. A version is copied into server.model_cache_dir/MODEL/
VERSION only when the manager loads it, into a partial directory renamed into place once
every object is there, so TensorFlow never reads a half copy. A copy is deleted when its
version is unloaded or leaves the store. Credentials come from each library's own
environment variables and config files (AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_ENDPOINT_URL_S3,
GOOGLE_APPLICATION_CREDENTIALS, ...), never from fastserve's config, so nothing logs them.
"""
import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

from grpc import StatusCode

from fastserve.config import ConfigError
from fastserve.errors import LoadError
from fastserve.servables.source import VersionScanner

# What says an object changed, by filesystem: S3's ETag, GCS's etag, else the modification time.
_STAMPS = ("ETag", "etag", "mtime", "LastModified")


@cache
def _temporary_cache() -> str:
    """The cache when server.model_cache_dir is not set: this process's own, removed at exit."""
    path = tempfile.mkdtemp(prefix="fastserve-model-cache-")
    atexit.register(shutil.rmtree, path, True)
    return path


def _filesystem(name: str, base_path: str):
    try:
        import fsspec

        return fsspec.core.url_to_fs(base_path)
    except (ImportError, ValueError) as exc:  # fsspec names the package a protocol needs, or an unknown protocol
        raise ConfigError(f"model {name}: base_path {base_path}: {exc}") from None


class ObjectStoreScanner(VersionScanner):
    """Polls one base_path URL; copies a version into the cache when it is to be loaded."""

    def __init__(self, name: str, base_path: str, cache_dir: str):
        super().__init__(name, base_path)
        self._fs, self._root = _filesystem(name, base_path)
        self._root = self._root.rstrip("/")
        self._cache = Path(cache_dir or _temporary_cache()) / name
        shutil.rmtree(self._cache, ignore_errors=True)  # copies an earlier process left: what they hold is unknown
        self._copied: dict[int, tuple] = {}  # version -> the contents its copy was made from

    def listing(self) -> dict[int, tuple]:
        self._fs.invalidate_cache()  # fsspec caches listings; each poll must see the store as it is now
        try:
            objects = self._fs.find(self._root, detail=True)
        except Exception as exc:  # each library has its own errors (botocore's, aiohttp's, ...)
            raise OSError(f"cannot list {self.base_path}: {type(exc).__name__}: {exc}") from None
        versions: dict[int, list] = {}
        self._paths = {}
        for key, info in objects.items():
            directory, _, relative = key[len(self._root) + 1:].partition("/")
            if directory.isdigit() and relative:
                version = int(directory)
                self._paths[version] = f"{self._root}/{directory}"
                stamp = next((info[k] for k in _STAMPS if k in info), None)
                versions.setdefault(version, []).append((relative, info["size"], str(stamp)))
        return {version: tuple(sorted(items)) for version, items in versions.items()}

    def ready_versions(self) -> set[int]:
        ready = super().ready_versions()
        for version in self._copied.keys() - self._last.keys():  # gone from the store
            self.release(version)
        return ready

    def local_path(self, version: int) -> str:
        """The version's copy in the cache, made now unless it holds the version's current contents."""
        target = self._cache / str(version)
        contents = self._last[version]
        if self._copied.get(version) != contents:
            self.release(version)
            self._copy(version, contents, target)
            self._copied[version] = contents
        return str(target)

    def _copy(self, version: int, contents: tuple, target: Path) -> None:
        partial = self._cache / f".{version}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        remote = [f"{self._paths[version]}/{relative}" for relative, _size, _stamp in contents]
        local = [partial / relative for relative, _size, _stamp in contents]
        for path in local:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fs.get(remote, [str(path) for path in local])
        except Exception as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise LoadError(f"cannot copy {self.base_path}/{version}: {type(exc).__name__}: {exc}", StatusCode.UNAVAILABLE) from None
        partial.rename(target)

    def release(self, version: int) -> None:
        self._copied.pop(version, None)
        shutil.rmtree(self._cache / str(version), ignore_errors=True)
