"""The manager: makes the loaded versions of each model follow what is on disk.

For each model, a reconcile pass lists the complete versions (source), applies the
version policy (the aspired set), loads aspired versions that are not loaded yet
(LOADING -> AVAILABLE, with retries), publishes them to the registry, and only then
unloads versions that are no longer aspired (availability-preserving: an old version
goes only once an aspired one serves). Unloading removes the version from lookups
at once, waits for its in-flight requests to finish, then frees it (END).

Loads run on their own thread pool, one reconcile pass per model at a time, so a big
load never stalls serving, nor the loading of other models. A failed load is retried
on later passes (max_num_load_retries, load_retry_interval_seconds), never blocking.

On-demand models (`load: on_demand`) are scanned like the others, but load only when a
request asks for one (`load_on_demand`: concurrent requests share one load); once loaded
they follow their base path as any model. Every load is measured (servables/memory.py);
with a memory budget, a load that would pass it first unloads the least recently used
on-demand models that have no request in flight or queued, and an on-demand load that
still does not fit is refused (RESOURCE_EXHAUSTED); eager models are never unloaded for room.
"""
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grpc import StatusCode

from fastserve import metrics
from fastserve.config import ModelConfig, ServerConfig, is_url, outside_root
from fastserve.errors import LoadError, ServingError, not_found
from fastserve.servables.memory import Footprint, MemoryBudget, give_back
from fastserve.servables.registry import Registry, ServableVersion
from fastserve.servables.object_store import ObjectStoreScanner
from fastserve.servables.source import VersionScanner
from fastserve.servables.state import AVAILABLE, END, LOADING, START, UNLOADING, StateMonitor

if TYPE_CHECKING:  # the manager imports no TensorFlow: its loader does
    from fastserve.servables.saved_model import LoadedModel

log = logging.getLogger(__name__)

# Loads one version (path, model config, version) ready to serve, or raises (LoadError, or anything TF raises).
# The server's is version_loader.loader(config); the control-plane tests pass a fake.
Loader = Callable[[str, ModelConfig, int], "LoadedModel"]


@dataclass
class _Failure:
    contents: tuple  # the files that failed; new files get fresh attempts
    attempts: int
    next_try: float


class _Model:
    """The manager's own book-keeping for one configured model."""

    def __init__(self, config: ModelConfig, cache_dir: str, on_demand: bool):
        self.config = config
        self.on_demand = on_demand
        if is_url(config.base_path):
            self.scanner: VersionScanner | ObjectStoreScanner = ObjectStoreScanner(config.name, config.base_path, cache_dir)
        else:
            self.scanner = VersionScanner(config.name, config.base_path)
        self.ready: set[int] | None = None  # last scan
        self.loaded: dict[int, ServableVersion] = {}
        self.failed: dict[int, _Failure] = {}
        self.lock = threading.Lock()  # one reconcile pass at a time
        self.missing_base_logged = False
        self.removed = False  # dropped by a reload: a late reconcile pass must not load it again


class ModelManager:
    def __init__(self, config: ServerConfig, registry: Registry, monitor: StateMonitor, loader: Loader):
        self._config = config
        self._registry = registry
        self._monitor = monitor
        self._load = loader
        self._models = {m.name: self._new_model(m) for m in config.models}
        self._models_lock = threading.Lock()  # guards the dict itself (reload adds/removes)
        # Loads run at a lower CPU priority: on a busy machine, requests of the loaded models come first.
        self._pool = ThreadPoolExecutor(config.num_load_threads, thread_name_prefix="fastserve-load", initializer=_lower_priority)
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.unload_listeners: list[Callable[[ServableVersion], None]] = []  # called with each drained version before it is freed
        self.budget = MemoryBudget(config.model_memory_budget_mb, config.gpu_memory_budget_mb)
        self._pacer = _LoadPacer(config.on_demand_load_share)
        self._demands: dict[str, Future] = {}  # model name -> the load its requests wait for
        self._demands_lock = threading.Lock()

    def _new_model(self, config: ModelConfig) -> _Model:
        return _Model(config, self._config.model_cache_dir, self._config.on_demand(config))

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Try to load what is on disk now (waits for one attempt each), then keep polling."""
        wait([self._pool.submit(self._reconcile, m, True) for m in self._current()])
        self._ticker = threading.Thread(target=self._tick_loop, name="fastserve-poll", daemon=True)
        self._ticker.start()

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop polling and unload every version, waiting up to drain_timeout for each to drain."""
        self._stop.set()
        if self._ticker:
            self._ticker.join()
        self._pool.shutdown(wait=True)
        for model in self._current():
            with model.lock:
                for version in sorted(model.loaded):
                    self._unload(model, version, drain_timeout)

    def _tick_loop(self) -> None:
        """Rescan every poll period (if polling); otherwise just retry failed loads when due."""
        poll = self._config.file_system_poll_wait_seconds
        interval = poll if poll > 0 else 1.0
        pending: dict[_Model, Future] = {}
        while not self._stop.wait(interval):
            for model in self._current():
                if poll <= 0 and not model.failed:
                    continue
                if model not in pending or pending[model].done():
                    pending[model] = self._pool.submit(self._reconcile, model, poll > 0)

    def _current(self) -> list[_Model]:
        with self._models_lock:
            return list(self._models.values())

    def all_available(self) -> bool:
        """Every configured model that loads at start has at least one version serving."""
        return all(m.loaded for m in self._current() if not m.on_demand)

    @property
    def models(self) -> list[ModelConfig]:
        return [m.config for m in self._current()]

    # ------------------------------------------------------------ runtime reload

    def reload(self, models: tuple[ModelConfig, ...], unload_all: bool = False) -> None:
        """Replace the model list: add, remove, change policy, relabel.

        Waits until added or changed models have had their load attempts. Raises
        ServingError (nothing changed) if a label would point at a version that is
        not available, as TF Serving does; if the list is empty while models serve,
        unless unload_all or server.allow_empty_model_config says so (an empty or
        half-written file must not unload everything); or if a serving model would
        move to a base path that does not exist (it would lose every version).
        """
        with self._models_lock:
            current = dict(self._models)
        if not models and current and not (unload_all or self._config.allow_empty_model_config):
            raise ServingError(
                StatusCode.FAILED_PRECONDITION,
                f"the new model config lists no models: refusing to unload all {len(current)} models "
                "(set server.allow_empty_model_config, or --allow_empty_model_config, to allow it)",
            )
        self._check_base_paths(models, current)
        self._check_labels(models, current)
        added, changed = [], []
        for config in models:
            model = current.get(config.name)
            if model is None or _loaded_as(model.config) != _loaded_as(config):
                added.append(config)
            elif model.config != config:
                changed.append((model, config))
        keep = {m.name for m in models}
        replaced = {c.name for c in added}
        removed = [m for name, m in current.items() if name not in keep or name in replaced]
        for model in removed:
            self._remove(model)
        new_models = [self._new_model(c) for c in added]
        with self._models_lock:
            for model in removed:
                self._models.pop(model.config.name, None)
            for model in new_models:
                self._models[model.config.name] = model
        for model, config in changed:
            with model.lock:
                model.config = config
                model.on_demand = self._config.on_demand(config)
                self._publish(model)
        todo = new_models + [m for m, _ in changed]
        wait([self._pool.submit(self._reconcile, m, True) for m in todo])
        log.info(
            "model config reloaded: %d models (added %s, removed %s, changed %s)", len(models),
            sorted(c.name for c in added), sorted(m.config.name for m in removed if m.config.name not in replaced),
            sorted(c.name for _, c in changed),
        )

    @staticmethod
    def _check_base_paths(models, current) -> None:
        for config in models:
            model = current.get(config.name)
            if model is None or not model.loaded or config.base_path == model.config.base_path or is_url(config.base_path):
                continue  # a store is not listed here: its versions load as the polls find them
            if not os.path.isdir(config.base_path):
                raise ServingError(
                    StatusCode.INVALID_ARGUMENT,
                    f"model {config.name}: base path {config.base_path} does not exist (or is not a directory); "
                    f"{config.name} keeps serving from {model.config.base_path}",
                )

    def _check_labels(self, models, current) -> None:
        allow_unloaded = self._config.allow_version_labels_for_unavailable_models
        for config in models:
            model = current.get(config.name)
            if model is None:
                continue  # a new model's labels apply as its versions become available
            loaded, old_labels = model.loaded.keys(), model.config.version_labels
            for label, version in config.version_labels.items():
                if version in loaded or old_labels.get(label) == version:
                    continue
                moving = label in old_labels
                if moving or not allow_unloaded:
                    raise ServingError(
                        StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {config.name}, "
                        "which is not currently available for inference",
                    )

    def _remove(self, model: _Model) -> None:
        with model.lock:
            model.removed = True
            for version in sorted(model.loaded):
                self._unload(model, version)
            self._registry.update(model.config.name, None)

    # ------------------------------------------------------------ on demand

    def load_on_demand(self, name: str) -> Future | None:
        """For an on-demand model with no version loaded: the load its requests wait for (shared
        by concurrent callers; it fails with the ServingError that answers them). None for any
        other model: its lookup's answer stands."""
        with self._models_lock:
            model = self._models.get(name)
        if model is None or not model.on_demand or model.loaded:
            return None
        with self._demands_lock:
            future = self._demands.get(name)
            if future is None or future.done():
                future = self._demands[name] = self._pool.submit(self._demand, model)
        return future

    def _demand(self, model: _Model) -> None:
        name = model.config.name
        with model.lock:
            if model.removed:
                raise not_found(f"Servable not found for request: Latest({name})")
            attempts = sum(f.attempts for f in model.failed.values())
            if not model.loaded:
                try:
                    self._reconcile_locked(model, rescan=model.ready is None, demand=True)
                except _NoRoom as exc:
                    metrics.ON_DEMAND_LOADS.labels(name, "no_room").inc()
                    raise exc.error from None
            if model.loaded:
                metrics.ON_DEMAND_LOADS.labels(name, "ok").inc()
                return
            if sum(f.attempts for f in model.failed.values()) > attempts:  # (not when the last failure is too recent to retry)
                metrics.ON_DEMAND_LOADS.labels(name, "failed").inc()
            failed = [s for v, s in sorted(self._monitor.versions(name).items()) if s.code != StatusCode.OK]
            if failed:
                raise ServingError(failed[-1].code, failed[-1].message)
            raise not_found(f"model {name} has no version to load under {model.config.base_path}")

    def _make_room(self, model: _Model, needed: Footprint, refuse: bool = True) -> None:
        """Unload least recently used idle on-demand models until `needed` fits the budgets;
        raises _NoRoom for an on-demand model when it does not (an eager one loads anyway)."""
        if self.budget.fits(needed):
            return
        others = [m for m in self._current() if m is not model and m.on_demand and m.loaded]
        for victim in sorted(others, key=lambda m: max((s.last_used for s in m.loaded.values()), default=0)):
            if not victim.lock.acquire(timeout=1.0):  # a poll pass is quick; a load is not
                continue  # loading: not idle (and never waited for long: it may be waiting for this budget)
            try:
                servables = list(victim.loaded.values())
                if victim.removed or not servables or any(s.in_flight for s in servables):
                    continue
                idle = time.monotonic() - max(s.last_used for s in servables)
                freed = sum(self._unload(victim, v, evicted=True) for v in sorted(victim.loaded))
            finally:
                victim.lock.release()
            give_back()
            metrics.EVICTIONS.labels(victim.config.name).inc()
            log.info("evicted model %s (idle %.1fs, %.1f MB freed) to make room for %s", victim.config.name, idle, freed / 2**20,
                     model.config.name, extra={"fields": {"model": victim.config.name, "idle_seconds": round(idle, 3),
                                                          "bytes_freed": freed, "for_model": model.config.name}})
            if self.budget.fits(needed):
                return
        if not refuse:
            return  # (after a load: nothing more to unload)
        if self.budget.fits(Footprint(needed.host, {})):  # the host has room: a GPU has not
            gpu, used = max(needed.gpus.items(), key=lambda item: item[1])
            message = (f"model {model.config.name} needs about {used / 2**20:.0f} MB on GPU {gpu}, and the GPU memory budget "
                       f"of {self.budget.gpu_budget / 2**20:.0f} MB (server.gpu_memory_budget_mb) is held by versions in use "
                       "or loaded eagerly; retry later")
        else:
            message = (f"model {model.config.name} needs about {needed.host / 2**20:.0f} MB, and the memory budget of "
                       f"{self.budget.budget / 2**20:.0f} MB (server.model_memory_budget_mb) is held by "
                       f"{self.budget.in_use / 2**20:.0f} MB of versions in use or loaded eagerly; retry later")
        if not model.on_demand:
            log.warning("%s: loading it anyway (it loads eagerly)", message)
        elif self.budget.in_use:
            raise _NoRoom(ServingError(StatusCode.RESOURCE_EXHAUSTED, message))
        # else alone, it may try: what it was expected to need may have included the process's own first costs

    # ------------------------------------------------------------ reconcile

    def _reconcile(self, model: _Model, rescan: bool) -> None:
        with model.lock:
            if model.removed:
                return
            try:
                self._reconcile_locked(model, rescan)
            except _NoRoom:
                pass  # its state says so; the next poll or request tries again
            except Exception:  # a bug here must not kill the poll loop
                log.exception("reconciling model %s failed", model.config.name)

    def _reconcile_locked(self, model: _Model, rescan: bool, demand: bool = False) -> None:
        if rescan or model.ready is None:
            try:
                model.ready = model.scanner.ready_versions()
            except OSError as exc:  # a missing base path, an unreachable store: what is loaded keeps serving
                if not model.missing_base_logged:
                    log.error("model %s: %s (the loaded versions keep serving)", model.config.name, exc)
                    model.missing_base_logged = True
                return
            if model.missing_base_logged:
                log.info("model %s: base path %s can be read again", model.config.name, model.config.base_path)
            model.missing_base_logged = False
        ready = model.ready
        aspired = model.config.version_policy.select(ready)
        if model.on_demand and not model.loaded and not demand:  # not in memory until a request asks
            known = self._monitor.versions(model.config.name)
            for version in aspired - known.keys():
                self._monitor.set(model.config.name, version, START, message=NOT_LOADED)
            return
        stale = model.loaded.keys() - aspired
        if model.config.load_policy == "resource_preserving":
            # Models too big for two copies: free the old version before loading the new.
            for version in sorted(stale):
                self._unload(model, version)
        for version in sorted(aspired - model.loaded.keys(), reverse=True):
            if self._stop.is_set():
                return
            self._load_if_due(model, version)
        stale = model.loaded.keys() - aspired
        if stale and (not aspired or aspired & model.loaded.keys()):
            for version in sorted(stale):
                self._unload(model, version)

    def _load_if_due(self, model: _Model, version: int) -> None:
        name, cfg = model.config.name, self._config
        attempts_allowed = 1 + max(0, cfg.max_num_load_retries)
        contents = model.scanner.contents(version)
        failure = model.failed.get(version)
        if failure and failure.contents != contents:
            failure = None  # new files: start over
        if failure and time.monotonic() < failure.next_try:
            return
        if failure and failure.attempts >= attempts_allowed and not model.on_demand:  # a request may try again
            return
        attempt = failure.attempts + 1 if failure else 1
        if attempt == 1:
            self._monitor.set(name, version, START)
        self._monitor.set(name, version, LOADING)
        try:
            path = model.scanner.local_path(version)  # object storage: copied into the cache first
            escaped = outside_root(path, cfg.model_root, recursive=True)
            if escaped:  # a version directory (or a file in it) linked from outside the model root
                raise LoadError(f"{path} resolves to {escaped}, outside model_root {cfg.model_root}", StatusCode.PERMISSION_DENIED)
            with self._pacer.turn() if model.on_demand else contextlib.nullcontext(), self.budget.one_at_a_time():
                try:
                    self._make_room(model, self.budget.expected(name, version, path))
                except _NoRoom as exc:
                    self._monitor.set(name, version, START, exc.error.code, exc.error.message)
                    raise
                with self.budget.measuring(path) as footprint, _short_turns:
                    loaded = self._load(path, model.config, version)
                self.budget.loaded(name, version, footprint())
                self._make_room(model, Footprint(0, {}), refuse=False)  # it may have taken more than expected
        except _NoRoom:
            raise
        except LoadError as exc:
            code, error = exc.code, str(exc)
        except Exception as exc:  # TF raises many types; none may escape the manager
            code, error = StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"
        else:
            model.failed.pop(version, None)
            model.loaded[version] = ServableVersion(name, version, loaded, model.on_demand)
            self._publish(model)
            metrics.model_runtime(name, version, loaded.runtime, loaded=True)
            self._monitor.set(name, version, AVAILABLE)
            return
        interval = max(0.0, cfg.load_retry_interval_seconds)
        model.failed[version] = _Failure(contents, attempt, time.monotonic() + interval)
        if model.on_demand:  # nothing retries until a request asks again, after the retry interval
            self._monitor.set(name, version, END, code, f"{error} (a request after {interval:g}s loads it again)")
        elif attempt >= attempts_allowed:
            self._monitor.set(name, version, END, code, error)
        else:
            self._monitor.set(
                name, version, LOADING, code,
                f"{error} (attempt {attempt} of {attempts_allowed} failed; retrying in {interval:g}s)",
            )

    def _unload(self, model: _Model, version: int, drain_timeout: float | None = None, evicted: bool = False) -> int:
        """Unload a version (after its requests); returns the host bytes its load took."""
        name = model.config.name
        servable = model.loaded.pop(version)
        self._publish(model)  # gone from new lookups before we wait
        self._monitor.set(name, version, UNLOADING)
        servable.retire()
        if not servable.wait_drained(drain_timeout):
            log.warning("model %s version %d: %d requests still in flight at unload", name, version, servable.in_flight)
        for listener in self.unload_listeners:
            listener(servable)
        metrics.model_runtime(name, version, servable.model.runtime, loaded=False)
        servable.model.close()
        model.scanner.release(version)
        freed = self.budget.unloaded(name, version)
        self._monitor.set(name, version, END, message=EVICTED if evicted else "")
        return freed

    def _publish(self, model: _Model) -> None:
        allow_unloaded = self._config.allow_version_labels_for_unavailable_models
        labels = {
            label: version
            for label, version in model.config.version_labels.items()
            if allow_unloaded or version in model.loaded
        }
        self._registry.update(model.config.name, model.loaded, labels)


def _lower_priority() -> None:
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOAD_NICENESS)


LOAD_SWITCH_INTERVAL = 0.0005  # seconds a thread holds the GIL, while a load runs, before a waiting one gets it


class _ShortTurns:
    """While any load runs, Python hands the GIL over every LOAD_SWITCH_INTERVAL instead of
    every 5 ms: a load runs Python between its TensorFlow calls, and a request to a loaded model
    takes the GIL several times (decode, batch, reply), waiting out the loading thread's turn
    each time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running = 0
        self._usual = sys.getswitchinterval()

    def __enter__(self) -> None:
        with self._lock:
            if not self._running:
                self._usual = sys.getswitchinterval()
                sys.setswitchinterval(LOAD_SWITCH_INTERVAL)
            self._running += 1

    def __exit__(self, *_) -> None:
        with self._lock:
            self._running -= 1
            if not self._running:
                sys.setswitchinterval(self._usual)


_short_turns = _ShortTurns()


class _LoadPacer:
    """On-demand loads take at most `share` of the time: after a load of t seconds the next one
    starts t * (1/share - 1) later. Most of a load is TensorFlow's C++ on its shared thread pools
    (graph optimisation, restore, the check), which the load threads' nice value does not reach:
    the pause is what leaves the cores to the models serving."""

    def __init__(self, share: float):
        self._pause = 1 / share - 1
        self._lock = threading.Lock()  # held through the wait: waiting loads start in turn
        self._next = 0.0  # monotonic time the next load may start

    @contextlib.contextmanager
    def turn(self):
        with self._lock:
            time.sleep(max(0.0, self._next - time.monotonic()))
            started = time.monotonic()
        try:
            yield
        finally:
            ended = time.monotonic()
            with self._lock:
                self._next = max(self._next, ended + (ended - started) * self._pause)


LOAD_NICENESS = 10  # of the load threads (Linux schedules threads by their own nice value)
NOT_LOADED = "not loaded: it loads on its first request (load: on_demand)"
EVICTED = "unloaded to make room within the memory budget: it loads again on its next request"


class _NoRoom(Exception):
    """An on-demand load that the memory budget has no room for."""

    def __init__(self, error: ServingError):
        super().__init__(error.message)
        self.error = error


def _loaded_as(config: ModelConfig) -> tuple:
    """What a loaded version is made of: a change reloads the model's versions."""
    return config.base_path, config.runtime, config.devices

