"""The state monitor: every version's state transitions, with errors and timing.

GetModelStatus, the REST status endpoint and (later) metrics read it.
"""
import logging
import threading
import time
from dataclasses import dataclass

from grpc import StatusCode

from fastserve import metrics

log = logging.getLogger(__name__)

# TF Serving's ModelVersionStatus.State names, in lifecycle order.
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
STATES = (START, LOADING, AVAILABLE, UNLOADING, END)


@dataclass(frozen=True)
class VersionState:
    state: str
    code: StatusCode = StatusCode.OK
    message: str = ""
    since: float = 0.0


class StateMonitor:
    def __init__(self):
        self._lock = threading.Lock()
        self._states: dict[str, dict[int, VersionState]] = {}

    def set(self, name: str, version: int, state: str, code: StatusCode = StatusCode.OK, message: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            versions = self._states.setdefault(name, {})
            previous = versions.get(version)
            versions[version] = VersionState(state, code, message, now)
        load_began = previous.since if previous is not None and previous.state == LOADING else None
        metrics.model_state(name, version, state, STATES,
                            loaded_in=now - load_began if load_began is not None and state == AVAILABLE else None,
                            load_failed=load_began is not None and code != StatusCode.OK)
        took = f" after {now - previous.since:.3f}s in {previous.state}" if previous else ""
        fields = {"model": name, "version": version, "state": state, "code": code.name}
        if previous:
            fields.update(previous_state=previous.state, seconds_in_previous_state=round(now - previous.since, 6))
        if code == StatusCode.OK:
            log.info("model %s version %d: %s%s", name, version, state, took, extra={"fields": fields})
        else:
            fields["error"] = message
            log.error("model %s version %d: %s%s: %s: %s", name, version, state, took, code.name, message, extra={"fields": fields})

    def versions(self, name: str) -> dict[int, VersionState]:
        with self._lock:
            return dict(self._states.get(name, {}))
