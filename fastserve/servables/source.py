"""The source: which versions of a model are complete and ready to load.

A version is a sub-directory of the model's base_path whose name is a number
(leading zeros allowed: 00000123 is version 123); other entries are ignored.

Half-written versions: a version that appears while the server runs counts as ready
once it holds saved_model.pb (or saved_model.pbtxt) and its contents (every file's
path, size and mtime) are the same on two consecutive polls, so a version still being
copied is not loaded. Versions present when the server starts are taken as they are
on the first poll (a directory that is not a SavedModel then fails to load, with the
reason in the model's status). servables/object_store.py applies the same rule to
base paths in object storage.
"""
import logging
import os

log = logging.getLogger(__name__)

_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def version_dirs(base_path: str) -> dict[int, str]:
    """{version: path} of the numeric sub-directories of base_path."""
    try:
        entries = list(os.scandir(base_path))
    except OSError as exc:
        raise FileNotFoundError(f"Could not find base path {base_path}: {exc.strerror}") from None
    versions = {}
    for entry in entries:
        if entry.name.isdigit() and entry.is_dir():
            versions[int(entry.name)] = entry.path
    return versions


def fingerprint(path: str) -> tuple:
    """Every file's relative path, size and mtime: changes while a copy is under way."""
    items = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            items.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(items))


def has_saved_model(contents: tuple) -> bool:
    """Whether a version's contents (as fingerprint lists them) hold the SavedModel file."""
    return any(item[0] in _SAVED_MODEL_FILES for item in contents)


class VersionScanner:
    """Polls one local base_path and reports the versions that are complete on disk."""

    def __init__(self, name: str, base_path: str):
        self.name = name
        self.base_path = base_path
        self._paths: dict[int, str] = {}  # where each version of the last poll lives
        self._last: dict[int, tuple] = {}
        self._first = True
        self._warned_empty = False

    def listing(self) -> dict[int, tuple]:
        """{version: contents} of every version under base_path; OSError if it cannot be listed."""
        self._paths = version_dirs(self.base_path)
        return {version: fingerprint(path) for version, path in self._paths.items()}

    def ready_versions(self) -> set[int]:
        """The complete versions; raises OSError (FileNotFoundError if base_path is missing)."""
        listing = self.listing()
        ready = {
            version for version, contents in listing.items()
            if self._first or (self._last.get(version) == contents and has_saved_model(contents))
        }
        self._last, self._first = listing, False
        if not listing and not self._warned_empty:
            log.warning(
                "No versions of servable %s found under base path %s. "
                "Did you forget to name your leaf directory as a number (eg. '/1/')?",
                self.name,
                self.base_path,
            )
        self._warned_empty = not listing
        return ready

    def contents(self, version: int) -> tuple:
        """The version's contents at the last poll: a failed load is tried again once they change."""
        return self._last[version]

    def local_path(self, version: int) -> str:
        """The directory to load the version from."""
        return self._paths[version]

    def release(self, version: int) -> None:
        """The version was unloaded: a local directory has nothing to free."""
