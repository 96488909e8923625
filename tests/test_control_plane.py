"""The control plane in-process: manager, registry and source with a fake loader (no TensorFlow, no server).

As TF Serving tests its manager with fake loaders: versions are real directories in tmp_path (a
saved_model.pb, sparse at the size the memory budget should see), the tests drive the polls, make
loads fail or wait, and watch the state sequence and what lookups see at each step. Each runs in
milliseconds.
"""
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from grpc import StatusCode

from fastserve.config import ModelConfig, ServerConfig, VersionPolicy
from fastserve.errors import LoadError, ServingError
from fastserve.servables.manager import EVICTED, NOT_LOADED, ModelManager
from fastserve.servables.registry import Registry, ServableVersion
from fastserve.servables.source import VersionScanner
from fastserve.servables.state import AVAILABLE, END, LOADING, START, UNLOADING, StateMonitor

MB = 2**20
LOADED = [START, LOADING, AVAILABLE]
BACKGROUND = ThreadPoolExecutor(4, thread_name_prefix="test-background")  # a poll, start or reload that waits on a load


class FakeModel:
    """What the manager keeps of a loaded version."""

    runtime = "session"

    def __init__(self, path: str):
        self.path = path
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Gate:
    """Holds one load until the test opens it."""

    def __init__(self):
        self.reached = threading.Event()
        self.opened = threading.Event()

    def wait_reached(self) -> None:
        assert self.reached.wait(5), "the load never started"

    def open(self) -> None:
        self.opened.set()


class FakeLoader:
    """Loads at once; fails or waits for a (model, version) when told; records every call."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []
        self.started: dict[tuple[str, int], float] = {}  # monotonic time each (model, version) last started loading
        self.models: dict[tuple[str, int], FakeModel] = {}  # the last one loaded of each
        self._failures: dict[tuple[str, int], list[Exception]] = {}
        self._gates: dict[tuple[str, int], Gate] = {}

    def fail(self, name: str, version: int, error: Exception, times: int = 1) -> None:
        self._failures[(name, version)] = [error] * times

    def block(self, name: str, version: int) -> Gate:
        gate = self._gates[(name, version)] = Gate()
        return gate

    def open_all(self) -> None:
        for gate in self._gates.values():
            gate.open()

    def __call__(self, path: str, model: ModelConfig, version: int) -> FakeModel:
        key = (model.name, version)
        self.calls.append(key)
        self.started[key] = time.monotonic()
        gate = self._gates.pop(key, None)
        if gate:
            gate.reached.set()
            assert gate.opened.wait(5), "the test never opened the gate"
        if self._failures.get(key):
            raise self._failures[key].pop()
        self.models[key] = FakeModel(path)
        return self.models[key]


class RecordingMonitor(StateMonitor):
    """The state monitor, keeping every transition in order."""

    def __init__(self):
        super().__init__()
        self.log: list[tuple[str, int, str]] = []
        self._changed = threading.Condition()

    def set(self, name, version, state, code=StatusCode.OK, message=""):
        super().set(name, version, state, code, message)
        with self._changed:
            self.log.append((name, version, state))
            self._changed.notify_all()

    def wait_for(self, name: str, version: int, state: str) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: (name, version, state) in self.log, timeout=5), (name, version, state)


class Plane:
    """A manager with its registry, monitor and fake loader. The poll period is an hour: only the test polls."""

    def __init__(self, models: tuple[ModelConfig, ...], **server):
        self.loader = FakeLoader()
        self.registry = Registry()
        self.monitor = RecordingMonitor()
        config = ServerConfig(models=models, **{"file_system_poll_wait_seconds": 3600, "load_retry_interval_seconds": 0, **server})
        self.manager = ModelManager(config, self.registry, self.monitor, self.loader)

    def poll(self) -> None:
        """One poll of every model, as the manager's ticker makes it."""
        for model in self.manager._current():
            self.manager._reconcile(model, rescan=True)

    def served(self, name: str) -> set[int]:
        entry = self.registry.entry(name)
        return set(entry.versions) if entry else set()

    def history(self, name: str, version: int) -> list[str]:
        return [state for n, v, state in self.monitor.log if (n, v) == (name, version)]

    def state(self, name: str, version: int) -> tuple[str, StatusCode, str]:
        state = self.monitor.versions(name)[version]
        return state.state, state.code, state.message


@pytest.fixture
def plane():
    planes = []

    def make(*models: ModelConfig, **server) -> Plane:
        planes.append(Plane(models, **server))
        return planes[-1]

    yield make
    for p in planes:
        p.loader.open_all()
        p.manager.stop(drain_timeout=0)


def write_version(path: Path, size_mb: int = 0) -> None:
    path.mkdir(parents=True)
    with open(path / "saved_model.pb", "wb") as f:
        f.truncate(size_mb * MB)  # sparse: the size on disk the budget expects, no disk used


def model(tmp_path: Path, name: str, versions=(1,), size_mb: int = 0, **config) -> ModelConfig:
    for version in versions:
        write_version(tmp_path / name / str(version), size_mb)
    return ModelConfig(name, str(tmp_path / name), **config)


def lookup_error(registry: Registry, *args, **kwargs) -> tuple[StatusCode, str]:
    with pytest.raises(ServingError) as raised:
        registry.lookup(*args, **kwargs)
    return raised.value.code, raised.value.message


# ---------------------------------------------------------------- start and policies


def test_start_loads_the_latest_version_and_lookups_see_it(tmp_path, plane):
    p = plane(model(tmp_path, "m", versions=(1, 2)))
    p.manager.start()
    assert p.loader.calls == [("m", 2)]
    assert p.history("m", 2) == LOADED and p.history("m", 1) == []
    with p.registry.lookup("m") as handle:
        assert handle.version == 2 and handle.model is p.loader.models["m", 2]
    assert lookup_error(p.registry, "m", version=1) == (StatusCode.NOT_FOUND, "Servable not found for request: Specific(m, 1)")
    assert p.manager.all_available()


@pytest.mark.parametrize("policy, served", [
    (VersionPolicy("latest", 2), {2, 3}),
    (VersionPolicy("all"), {1, 2, 3}),
    (VersionPolicy("specific", versions=(1, 3)), {1, 3}),
    (VersionPolicy("specific", versions=(4,)), set()),
])
def test_the_version_policy_chooses_what_loads_newest_first(tmp_path, plane, policy, served):
    p = plane(model(tmp_path, "m", versions=(1, 2, 3), version_policy=policy))
    p.manager.start()
    assert p.loader.calls == [("m", v) for v in sorted(served, reverse=True)]
    assert p.served("m") == served and p.manager.all_available() == bool(served)


# ---------------------------------------------------------------- new versions: order of load and unload


def test_a_new_version_loads_once_complete_and_stable_then_the_old_one_unloads(tmp_path, plane):
    p = plane(model(tmp_path, "m"))
    p.manager.start()
    new = tmp_path / "m" / "2"
    new.mkdir()
    (new / "variables.data").write_bytes(b"x")
    p.poll()
    p.poll()
    assert p.served("m") == {1}  # no saved_model.pb: still being copied
    (new / "saved_model.pb").write_bytes(b"")
    p.poll()
    assert p.served("m") == {1}  # changed since the last poll: maybe still being written
    p.poll()
    assert p.served("m") == {2}
    assert p.monitor.log[-5:] == [("m", 2, START), ("m", 2, LOADING), ("m", 2, AVAILABLE), ("m", 1, UNLOADING), ("m", 1, END)]
    assert p.loader.models["m", 1].closed and not p.loader.models["m", 2].closed


@pytest.mark.parametrize("load_policy, served_while_loading", [("availability_preserving", {1}), ("resource_preserving", set())])
def test_what_serves_while_the_new_version_loads(tmp_path, plane, load_policy, served_while_loading):
    p = plane(model(tmp_path, "m", load_policy=load_policy))
    p.manager.start()
    write_version(tmp_path / "m" / "2")
    p.poll()  # first seen
    gate = p.loader.block("m", 2)
    polling = BACKGROUND.submit(p.poll)
    gate.wait_reached()
    assert p.served("m") == served_while_loading
    if not served_while_loading:  # resource-preserving: the old version went first
        assert p.history("m", 1) == LOADED + [UNLOADING, END]
        assert lookup_error(p.registry, "m") == (StatusCode.NOT_FOUND, "Servable not found for request: Latest(m)")
    gate.open()
    polling.result(5)
    assert p.served("m") == {2} and p.history("m", 1)[-1] == END


def test_an_unloading_version_waits_for_its_requests_in_flight(tmp_path, plane):
    p = plane(model(tmp_path, "m"))
    p.manager.start()
    handle = p.registry.lookup("m")
    write_version(tmp_path / "m" / "2")
    p.poll()
    polling = BACKGROUND.submit(p.poll)
    p.monitor.wait_for("m", 1, UNLOADING)
    assert p.served("m") == {2}  # new requests already go to version 2
    assert lookup_error(p.registry, "m", version=1)[0] == StatusCode.NOT_FOUND
    assert not polling.done() and not p.loader.models["m", 1].closed
    handle.__exit__(None, None, None)
    polling.result(5)
    assert p.history("m", 1)[-1] == END and p.loader.models["m", 1].closed


# ---------------------------------------------------------------- failures and retries


def test_a_new_version_that_fails_leaves_the_old_one_serving_until_its_files_change(tmp_path, plane):
    p = plane(model(tmp_path, "m"), max_num_load_retries=0)
    p.loader.fail("m", 2, LoadError("not a SavedModel: no file", StatusCode.NOT_FOUND))
    p.manager.start()
    write_version(tmp_path / "m" / "2")
    p.poll()
    p.poll()
    p.poll()
    assert p.loader.calls == [("m", 1), ("m", 2)]  # no retry left
    assert p.state("m", 2) == (END, StatusCode.NOT_FOUND, "not a SavedModel: no file")
    assert p.served("m") == {1}
    (tmp_path / "m" / "2" / "saved_model.pb").write_bytes(b"fixed")
    p.poll()
    p.poll()  # stable again: new files get a fresh attempt
    assert p.served("m") == {2} and p.loader.calls[-1] == ("m", 2)


def test_a_failed_load_is_retried_on_later_polls(tmp_path, plane):
    p = plane(model(tmp_path, "m"), max_num_load_retries=2)
    p.loader.fail("m", 1, RuntimeError("boom"), times=2)
    p.manager.start()
    assert p.state("m", 1) == (LOADING, StatusCode.UNKNOWN, "RuntimeError: boom (attempt 1 of 3 failed; retrying in 0s)")
    p.poll()
    assert p.state("m", 1)[2] == "RuntimeError: boom (attempt 2 of 3 failed; retrying in 0s)"
    p.poll()
    assert p.history("m", 1) == [START] + [LOADING] * 5 + [AVAILABLE]
    assert p.state("m", 1)[1] == StatusCode.OK and p.served("m") == {1}


def test_a_load_that_fails_every_attempt_ends_with_its_error(tmp_path, plane):
    p = plane(model(tmp_path, "m"), max_num_load_retries=1)
    p.loader.fail("m", 1, LoadError("bad graph", StatusCode.INVALID_ARGUMENT), times=9)
    p.manager.start()
    for _ in range(3):
        p.poll()
    assert len(p.loader.calls) == 2
    assert p.state("m", 1) == (END, StatusCode.INVALID_ARGUMENT, "bad graph")
    assert lookup_error(p.registry, "m")[0] == StatusCode.NOT_FOUND and not p.manager.all_available()


def test_a_retry_waits_for_the_retry_interval(tmp_path, plane):
    p = plane(model(tmp_path, "m"), load_retry_interval_seconds=3600)
    p.loader.fail("m", 1, RuntimeError("boom"))
    p.manager.start()
    p.poll()
    assert len(p.loader.calls) == 1
    assert p.state("m", 1)[2] == "RuntimeError: boom (attempt 1 of 6 failed; retrying in 3600s)"


def test_the_loaded_versions_keep_serving_when_the_base_path_disappears(tmp_path, plane):
    p = plane(model(tmp_path, "m"))
    p.manager.start()
    shutil.rmtree(tmp_path / "m")
    p.poll()
    assert p.served("m") == {1} and p.history("m", 1) == LOADED


# ---------------------------------------------------------------- labels and rollback


def test_labels_resolve_to_available_versions(tmp_path, plane):
    labels = {"stable": 1, "canary": 2, "next": 3}
    policy = VersionPolicy("specific", versions=(1, 2))
    p = plane(model(tmp_path, "m", versions=(1, 2, 3), version_policy=policy, version_labels=labels))
    p.manager.start()
    assert p.registry.lookup("m", label="stable").version == 1 and p.registry.lookup("m", label="canary").version == 2
    assert lookup_error(p.registry, "m", label="next") == (StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: next")


def test_labels_may_name_unavailable_versions_when_allowed(tmp_path, plane):
    policy = VersionPolicy("specific", versions=(1,))
    p = plane(model(tmp_path, "m", versions=(1, 2), version_policy=policy, version_labels={"next": 2}),
              allow_version_labels_for_unavailable_models=True)
    p.manager.start()
    assert lookup_error(p.registry, "m", label="next") == (StatusCode.NOT_FOUND, "Servable not found for request: Specific(m, 2)")


def test_a_label_moves_only_to_an_available_version(tmp_path, plane):
    config = model(tmp_path, "m", versions=(1, 2), version_policy=VersionPolicy("all"), version_labels={"stable": 1})
    p = plane(config)
    p.manager.start()
    p.manager.reload((ModelConfig("m", config.base_path, VersionPolicy("all"), {"stable": 2}),))
    assert p.registry.lookup("m", label="stable").version == 2
    with pytest.raises(ServingError) as refused:
        p.manager.reload((ModelConfig("m", config.base_path, VersionPolicy("all"), {"stable": 3}),))
    assert refused.value.code == StatusCode.FAILED_PRECONDITION
    assert refused.value.message == ("Request to assign label to version 3 of model m, which is not currently available "
                                     "for inference")
    assert p.registry.lookup("m", label="stable").version == 2


def test_rollback_by_pinning_an_older_version(tmp_path, plane):
    config = model(tmp_path, "m", versions=(1, 2))
    p = plane(config)
    p.manager.start()
    p.manager.reload((ModelConfig("m", config.base_path, VersionPolicy("specific", versions=(1,))),))
    assert p.served("m") == {1}
    assert p.monitor.log[-5:] == [("m", 1, START), ("m", 1, LOADING), ("m", 1, AVAILABLE), ("m", 2, UNLOADING), ("m", 2, END)]


def test_rollback_by_deleting_the_newest_version(tmp_path, plane):
    p = plane(model(tmp_path, "m", versions=(1, 2)))
    p.manager.start()
    shutil.rmtree(tmp_path / "m" / "2")
    p.poll()
    assert p.served("m") == {1} and p.history("m", 2) == LOADED + [UNLOADING, END]


def test_a_reload_that_lists_no_models_is_refused(tmp_path, plane):
    p = plane(model(tmp_path, "m"))
    p.manager.start()
    with pytest.raises(ServingError) as refused:
        p.manager.reload(())
    assert refused.value.code == StatusCode.FAILED_PRECONDITION and p.served("m") == {1}


# ---------------------------------------------------------------- changes while a load runs


def test_a_reload_while_a_model_loads_adds_others_without_waiting(tmp_path, plane):
    a = model(tmp_path, "a")
    p = plane(a)
    gate = p.loader.block("a", 1)
    starting = BACKGROUND.submit(p.manager.start)
    gate.wait_reached()
    p.manager.reload((a, model(tmp_path, "b")))
    assert p.served("b") == {1} and p.history("a", 1) == [START, LOADING]
    gate.open()
    starting.result(5)
    assert p.served("a") == {1}


def test_a_model_removed_while_it_loads_is_unloaded_once_loaded_and_never_again(tmp_path, plane):
    p = plane(model(tmp_path, "a"))
    gate = p.loader.block("a", 1)
    starting = BACKGROUND.submit(p.manager.start)
    gate.wait_reached()
    [removed] = p.manager._current()
    reloading = BACKGROUND.submit(p.manager.reload, (model(tmp_path, "b"),))
    gate.open()
    reloading.result(5)
    starting.result(5)
    assert p.history("a", 1) == LOADED + [UNLOADING, END] and p.registry.entry("a") is None
    p.manager._reconcile(removed, rescan=True)  # a poll pass queued before the reload
    assert p.loader.calls.count(("a", 1)) == 1 and p.registry.entry("a") is None and p.served("b") == {1}


def test_a_version_deleted_while_it_loads_serves_until_the_next_poll(tmp_path, plane):
    p = plane(model(tmp_path, "m"))
    p.manager.start()
    write_version(tmp_path / "m" / "2")
    p.poll()
    gate = p.loader.block("m", 2)
    polling = BACKGROUND.submit(p.poll)
    gate.wait_reached()
    shutil.rmtree(tmp_path / "m" / "2")
    gate.open()
    polling.result(5)
    assert p.served("m") == {2}  # loaded from what it had read
    p.poll()  # follows the disk again: never without a version in between
    assert p.served("m") == {1}
    assert p.history("m", 2) == LOADED + [UNLOADING, END]
    assert p.loader.calls == [("m", 1), ("m", 2), ("m", 1)]


# ---------------------------------------------------------------- on demand, memory budget


def on_demand(tmp_path, name, size_mb=1000):
    return model(tmp_path, name, size_mb=size_mb, load="on_demand")


def test_an_on_demand_model_loads_on_its_first_request_shared_by_concurrent_callers(tmp_path, plane):
    p = plane(on_demand(tmp_path, "a"), model(tmp_path, "e"))
    p.manager.start()
    assert p.loader.calls == [("e", 1)] and p.state("a", 1) == (START, StatusCode.OK, NOT_LOADED)
    assert lookup_error(p.registry, "a")[0] == StatusCode.NOT_FOUND and p.manager.all_available()
    gate = p.loader.block("a", 1)
    first = p.manager.load_on_demand("a")
    gate.wait_reached()
    assert p.manager.load_on_demand("a") is first
    gate.open()
    assert first.result(5) is None
    assert p.served("a") == {1} and p.loader.calls == [("e", 1), ("a", 1)]
    assert p.manager.load_on_demand("a") is None  # loaded: its lookups answer
    assert p.manager.load_on_demand("e") is None and p.manager.load_on_demand("unknown") is None


def test_a_failed_on_demand_load_answers_its_callers_and_the_next_request_tries_again(tmp_path, plane):
    p = plane(on_demand(tmp_path, "a"))
    p.manager.start()
    p.loader.fail("a", 1, LoadError("bad graph", StatusCode.INVALID_ARGUMENT))
    with pytest.raises(ServingError) as failed:
        p.manager.load_on_demand("a").result(5)
    assert (failed.value.code, failed.value.message) == (StatusCode.INVALID_ARGUMENT, "bad graph (a request after 0s loads it again)")
    assert p.state("a", 1)[0] == END
    p.manager.load_on_demand("a").result(5)
    assert p.served("a") == {1} and len(p.loader.calls) == 2


def test_on_demand_loads_take_at_most_their_share_of_the_time_and_eager_ones_are_not_paced(tmp_path, plane):
    p = plane(on_demand(tmp_path, "a"), on_demand(tmp_path, "b"), model(tmp_path, "e"), on_demand_load_share=0.5)
    p.manager.start()
    gate = p.loader.block("a", 1)
    first = p.manager.load_on_demand("a")
    gate.wait_reached()
    time.sleep(0.2)  # a load of 0.2 s: at a share of 0.5 the next on-demand load starts 0.2 s after it
    gate.open()
    first.result(5)
    ended = time.monotonic()
    write_version(tmp_path / "e" / "2")
    p.poll()
    p.poll()  # (a new version loads once two polls agree it is complete)
    p.monitor.wait_for("e", 2, AVAILABLE)
    assert p.loader.started["e", 2] - ended < 0.15  # an eager model's new version: not paced
    p.manager.load_on_demand("b").result(5)
    assert p.loader.started["b", 1] - ended >= 0.15


def test_a_load_past_the_budget_evicts_the_least_recently_used_idle_model(tmp_path, plane):
    p = plane(*(on_demand(tmp_path, name) for name in "abc"), model_memory_budget_mb=2500)
    p.manager.start()
    p.manager.load_on_demand("a").result(5)
    p.manager.load_on_demand("b").result(5)
    with p.registry.lookup("a"):
        pass  # a is used after b loaded: b is the least recently used
    p.manager.load_on_demand("c").result(5)
    assert (p.served("a"), p.served("b"), p.served("c")) == ({1}, set(), {1})
    assert p.state("b", 1) == (END, StatusCode.OK, EVICTED) and p.loader.models["b", 1].closed
    assert p.manager.budget.in_use == 2000 * MB


def test_a_model_with_a_request_in_flight_is_not_evicted(tmp_path, plane):
    p = plane(*(on_demand(tmp_path, name) for name in "abc"), model_memory_budget_mb=2500)
    p.manager.start()
    p.manager.load_on_demand("a").result(5)
    with p.registry.lookup("a"):  # the least recently used, but in use
        p.manager.load_on_demand("b").result(5)
        p.manager.load_on_demand("c").result(5)
    assert (p.served("a"), p.served("b"), p.served("c")) == ({1}, set(), {1})


def test_an_eager_model_is_never_evicted_and_a_load_with_no_room_is_refused(tmp_path, plane):
    p = plane(model(tmp_path, "e", size_mb=1000), on_demand(tmp_path, "a"), model_memory_budget_mb=1500)
    p.manager.start()
    with pytest.raises(ServingError) as refused:
        p.manager.load_on_demand("a").result(5)
    message = ("model a needs about 1000 MB, and the memory budget of 1500 MB (server.model_memory_budget_mb) is held by "
               "1000 MB of versions in use or loaded eagerly; retry later")
    assert (refused.value.code, refused.value.message) == (StatusCode.RESOURCE_EXHAUSTED, message)
    assert p.state("a", 1) == (START, StatusCode.RESOURCE_EXHAUSTED, message)
    assert p.loader.calls == [("e", 1)] and p.served("e") == {1}


def test_eager_models_load_even_past_the_budget(tmp_path, plane):
    p = plane(model(tmp_path, "e", size_mb=1000), model(tmp_path, "f", size_mb=1000), model_memory_budget_mb=1500)
    p.manager.start()
    assert p.served("e") == p.served("f") == {1} and p.manager.budget.in_use == 2000 * MB


# ---------------------------------------------------------------- registry


def servable(version: int) -> ServableVersion:
    return ServableVersion("m", version, FakeModel(f"/m/{version}"))


def test_registry_resolves_the_latest_a_version_or_a_label():
    registry = Registry()
    registry.update("m", {1: servable(1), 3: servable(3)}, {"stable": 1})
    assert registry.lookup("m").version == 3
    assert registry.lookup("m", version=1).version == 1 and registry.lookup("m", label="stable").version == 1
    assert lookup_error(registry, "") == (StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    assert lookup_error(registry, "x") == (StatusCode.NOT_FOUND, "Servable not found for request: Latest(x)")
    assert lookup_error(registry, "m", version=2) == (StatusCode.NOT_FOUND, "Servable not found for request: Specific(m, 2)")
    assert lookup_error(registry, "m", label="x") == (StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: x")
    registry.update("m", None)
    assert registry.entry("m") is None


def test_a_registry_snapshot_never_changes_under_a_reader():
    registry = Registry()
    registry.update("m", {1: servable(1)})
    before = registry.entry("m")
    registry.update("m", {2: servable(2)})
    assert set(before.versions) == {1} and before.latest.version == 1
    assert set(registry.entry("m").versions) == {2}
    with pytest.raises(TypeError):
        before.versions[3] = servable(3)  # read-only


def test_a_handle_keeps_its_version_in_flight_until_released():
    version = servable(1)
    registry = Registry()
    registry.update("m", {1: version})
    with registry.lookup("m"):
        assert version.in_flight == 1
        version.retire()
        assert not version.wait_drained(0) and not version.acquire()  # no new requests once retired
    assert version.in_flight == 0 and version.wait_drained(0)


# ---------------------------------------------------------------- source


def test_the_scanner_takes_the_numbered_directories_present_at_the_first_poll(tmp_path):
    write_version(tmp_path / "0007")
    (tmp_path / "2").mkdir()  # not a SavedModel: it fails to load, with the reason in its status
    (tmp_path / "tmp").mkdir()
    (tmp_path / "5").write_text("a file")
    scanner = VersionScanner("m", str(tmp_path))
    assert scanner.ready_versions() == {2, 7}
    assert scanner.local_path(7) == str(tmp_path / "0007")
    assert scanner.contents(7) == (("saved_model.pb", 0, (tmp_path / "0007" / "saved_model.pb").stat().st_mtime_ns),)


def test_a_later_version_is_ready_once_it_has_a_saved_model_and_two_identical_polls(tmp_path):
    scanner = VersionScanner("m", str(tmp_path))
    assert scanner.ready_versions() == set()
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pbtxt").write_text("")
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "variables.data").write_bytes(b"x")
    assert scanner.ready_versions() == set()  # first seen
    assert scanner.ready_versions() == {1}  # 2 has no saved_model.pb
    with open(tmp_path / "1" / "saved_model.pbtxt", "a") as f:
        f.write("more")
    assert scanner.ready_versions() == set()  # 1 changed: maybe being written again
    assert scanner.ready_versions() == {1}


def test_the_scanner_reports_a_missing_base_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="Could not find base path"):
        VersionScanner("m", str(tmp_path / "missing")).ready_versions()
