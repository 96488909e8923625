"""The Open Inference Protocol's model repository extension over the version manager.

The repository is every model the server has been configured with: at start and by
later model-config reloads. Unload takes a model out of the served list (in-flight
requests finish first, then its versions unload); load puts a repository model back.
Both are model-config reloads, so the manager's rules apply; with config-file polling
on, the file stays the source of truth and its next change replaces these edits.
"""
import threading
from collections.abc import Callable

from fastserve.config import ModelConfig
from fastserve.errors import not_found
from fastserve.servables.state import AVAILABLE, END, LOADING, START, UNLOADING, StateMonitor

# TF Serving's version states -> the repository extension's model states.
_STATES = {START: "LOADING", LOADING: "LOADING", AVAILABLE: "READY", UNLOADING: "UNLOADING", END: "UNAVAILABLE"}


class ModelRepository:
    def __init__(
        self, served: Callable[[], list[ModelConfig]], monitor: StateMonitor,
        reload_models: Callable[..., None], configured: tuple[ModelConfig, ...],
    ):
        self._served = served  # the manager's current model list
        self._monitor = monitor
        self._reload_models = reload_models  # blocking
        self._known = {m.name: m for m in configured}
        self._lock = threading.Lock()  # one read-modify-reload at a time

    def _served_by_name(self) -> dict[str, ModelConfig]:
        served = {m.name: m for m in self._served()}
        self._known.update(served)  # models added by reloads join the repository
        return served

    def index(self, ready_only: bool = False) -> list[dict]:
        served = self._served_by_name()
        rows = []
        for name in sorted(self._known):
            states = self._monitor.versions(name) if name in served else {}
            if not states:
                reason = "no version loaded yet" if name in served else "unloaded"
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
            for version, state in sorted(states.items()):
                rows.append({"name": name, "version": str(version), "state": _STATES[state.state], "reason": state.message})
        return [row for row in rows if row["state"] == "READY"] if ready_only else rows

    def load(self, name: str) -> None:
        """Serve a repository model again (blocking); serving already is success."""
        with self._lock:
            served = self._served_by_name()
            if name in served:
                return
            if name not in self._known:
                raise not_found(f"model {name} is not in the model repository")
            self._reload_models((*served.values(), self._known[name]))

    def unload(self, name: str) -> None:
        """Stop serving a model (blocking); not serving already is success."""
        with self._lock:
            served = self._served_by_name()
            if name not in served:
                if name not in self._known:
                    raise not_found(f"model {name} is not in the model repository")
                return
            self._reload_models(tuple(m for n, m in served.items() if n != name), unload_all=True)
