"""The model owner of a serving process: one loaded version per project, swapped in whole.

The store's ``current`` pointer is the truth shared by every process
(training/versions/current.py). Each process compares it with what it has loaded and, when
they differ, loads the new version on a background thread (load + warm-up), then swaps the
project's reference under a lock that guards only the swap. Requests read the reference once
and use that bundle to the end, so a request never mixes two versions and never waits on a
swap. Nothing loads on a request thread: /predict for a project without a loaded model (first
load, or evicted) waits for its load (bounded); /setup only reads the pointer.

Every process swaps a new version in at the same instant, ``SWAP_DELAY_S`` after it was made
current (the pointer file's time, which all processes read alike), not each as soon as its own
load ends: Label Studio's requests land on any gunicorn worker, and processes swapping a few
hundred milliseconds apart would show a client the new version and then the old one again. A
process whose load takes longer swaps when it is ready.

Version changes reach it through backend/version_watch.py (a Redis pub/sub notice and a
background poll) and through a rate-limited pointer read on /setup and /predict
(:meth:`ModelServer.check`). Predicting is backend/predictor.py's.

Memory: one model per project (the old one is dropped at the swap and freed once the last
request holding it ends) and at most ``MAX_MODELS_IN_MEMORY`` projects; loading one more
drops the least recently used project whole.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from backend import metrics
from training.settings import Settings
from training.versions.current import CurrentVersion, VersionPointer
from training.versions.store import NO_MODEL_VERSION, ModelStore, VersionInfo
from training.warn_once import WarnOnce

if TYPE_CHECKING:
    from training.model.loaded import LoadedModel

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
"""Seconds between two reads of a project's current pointer by check() (request path)."""

SWAP_DELAY_S = 3.0
"""Seconds after a version is made current at which every process swaps it in, together.

Longer than a load and warm-up takes, so that every process is ready by then (small models
took 0.5-2.3 s on 2 cores saturated by /predict traffic: tests/backend/test_hot_swap.py,
bench/swap_latency.py); short enough that every process serves a new version within 5 s.
The first load of a project in a process is swapped in at once (nothing to stay consistent
with, and a request is waiting). Trap: when versions are made current less than this apart,
a process swaps to whatever the pointer says after its previous swap, so processes may skip
different intermediate versions and briefly disagree."""

FIRST_LOAD_WAIT_S = 60.0
"""Seconds a /predict waits for a project's first model load before answering "no model"."""

RETRY_FAILED_LOAD_S = 60.0
"""Seconds before a version that failed to load is tried again."""

LOAD_THREADS = 2
"""Background threads loading models (per process)."""

Loader = Callable[[VersionInfo, int], "LoadedModel"]


def load_with_tensorflow(info: VersionInfo, batch_size: int) -> LoadedModel:
    """The default loader; imports TensorFlow on the loading thread, never at import time."""
    from training.model.loaded import load_version

    return load_version(info, batch_size=batch_size)


def load_with_litert(info: VersionInfo, batch_size: int) -> LoadedModel:
    """SERVING_RUNTIME=litert: the version's LiteRT file; TensorFlow is never imported."""
    from training.model.litert import load_litert_version

    return load_litert_version(info, batch_size=batch_size)


def default_loader(settings: Settings) -> Loader:
    """The loader SERVING_RUNTIME names."""
    return load_with_litert if settings.serving_runtime == "litert" else load_with_tensorflow


@dataclass
class _ProjectState:
    """Per-project bookkeeping; every field is read and written under ModelServer._lock."""

    model: LoadedModel | None = None
    loading: str | None = None
    """The version being loaded (or loaded and waiting for its swap time)."""
    done: threading.Event = field(default_factory=threading.Event)
    failed: dict[str, float] = field(default_factory=dict)
    checked_at: float = float("-inf")
    used_at: float = float("-inf")
    """time.monotonic() of the last request; the least recently used project goes first."""
    swapped_at: float | None = None
    """time.time() of the last swap, for describe()."""


class ModelServer:
    """Holds each project's loaded model and predicts tasks with it.

    Args:
        settings: decode_threads, predict_batch_size, max_models_in_memory, model_dir and
            the media settings.
        store: the model store (default: ModelStore.from_settings).
        loader: loads a version (default: the one SERVING_RUNTIME names, default_loader).
        swap_delay_s: see SWAP_DELAY_S; tests pass 0 to swap as soon as a load ends.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: ModelStore | None = None,
        loader: Loader | None = None,
        swap_delay_s: float = SWAP_DELAY_S,
    ) -> None:
        self.settings = settings
        self.store = store or ModelStore.from_settings(settings)
        self.pointer = VersionPointer(self.store)
        self.max_models = max(1, settings.max_models_in_memory)
        self.swap_delay_s = swap_delay_s
        self._loader = loader or default_loader(settings)
        self._lock = threading.Lock()
        self._states: dict[str, _ProjectState] = {}
        self._warn_once = WarnOnce(log)
        self._load_pool = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="model-load")
        self._stop = threading.Event()

    # -- versions ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load projects from the store in the background; returns at once.

        At most ``max_models`` projects are loaded up front; the others on their first request.
        """
        projects = self.store.list_projects()
        if len(projects) > self.max_models:
            log.info(
                "%d projects in the store, loading %d now (MAX_MODELS_IN_MEMORY), the others "
                "on their first request",
                len(projects),
                self.max_models,
            )
        for project in projects[: self.max_models]:
            self.notify(project)

    def get_version(self, project: str) -> str:
        """The version this process answers /predict with: cheap, for /setup.

        The loaded version when there is one (a newer pointer is being loaded meanwhile and
        takes over after the swap), so /setup and the predictions agree; else the pointer
        (the first load is on its way and /predict will wait for it); else NO_MODEL_VERSION.
        """
        self.check(project)
        with self._lock:
            state = self._states.get(project)
            model = state.model if state else None
            failed = dict(state.failed) if state else {}
        if model is not None:
            return model.version
        current = self._read_pointer(project)
        if current is None or current.version in failed:
            return NO_MODEL_VERSION
        return current.version

    def get_loaded(self, project: str) -> LoadedModel | None:
        """The model loaded now, without waiting or checking."""
        with self._lock:
            state = self._states.get(project)
            return state.model if state else None

    def describe(self) -> dict[str, dict]:
        """What this process holds, per project: loaded version, version loading, last swap."""
        with self._lock:
            return {
                project: {
                    "version": state.model.version if state.model else None,
                    "loading": state.loading,
                    "swapped_at": state.swapped_at,
                }
                for project, state in self._states.items()
                if state.model is not None or state.loading is not None
            }

    def check(self, project: str) -> None:
        """Schedule a background load if the pointer moved; reads it at most every ~1 s."""
        now = time.monotonic()
        with self._lock:
            state = self._states.setdefault(project, _ProjectState())
            if now - state.checked_at < CHECK_INTERVAL_S:
                return
            state.checked_at = now
        self._schedule(project, self._read_pointer(project))

    def notify(self, project: str, *, held_only: bool = False) -> threading.Event | None:
        """Compare the pointer now (no rate limit) and schedule a load if it moved.

        ``held_only``: nothing for a project this process no longer holds (see
        :meth:`_schedule`).

        Returns:
            An event set when the scheduled (or running) load ends, or None when nothing
            is to be loaded.
        """
        with self._lock:
            if held_only and project not in self._states:
                return None
            self._states.setdefault(project, _ProjectState()).checked_at = time.monotonic()
        return self._schedule(project, self._read_pointer(project), held_only=held_only)

    def poll_once(self) -> None:
        """Compare every loaded project's pointer with its model (the background poll); a
        project dropped since the list was read is not loaded back."""
        with self._lock:
            projects = [p for p, s in self._states.items() if s.model is not None]
        for project in projects:
            self.notify(project, held_only=True)

    def on_notice(self, project: str) -> None:
        """A pub/sub notice: swap a project held here; load a new one only if there is room.
        A held project dropped for room before the notice is acted on stays dropped."""
        with self._lock:
            state = self._states.get(project)
            held = state is not None and (state.model is not None or state.loading is not None)
            room = sum(s.model is not None for s in self._states.values()) < self.max_models
        if held or room:
            self.notify(project, held_only=not room)

    def _read_pointer(self, project: str) -> CurrentVersion | None:
        try:
            return self.pointer.get_current(project)
        except (OSError, ValueError) as exc:
            self._warn_once(("pointer", project, str(exc)), "project %s: %s", project, exc)
            return None

    def _schedule(
        self, project: str, current: CurrentVersion | None, *, held_only: bool = False
    ) -> threading.Event | None:
        """Start a background load of ``current`` unless it is loaded, loading or failed
        lately. ``held_only``: only for a project this process still holds; a re-check racing
        its eviction must not load back what was just dropped for room."""
        if current is None or self._stop.is_set():
            return None
        version = current.version
        with self._lock:
            if held_only and project not in self._states:
                return None
            state = self._states.setdefault(project, _ProjectState())
            if state.loading is not None:
                return state.done  # the loader re-reads the pointer when it finishes
            if state.model is not None and state.model.version == version:
                return None
            failed_at = state.failed.get(version)
            if failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_LOAD_S:
                return None
            state.loading = version
            state.done = threading.Event()
            done = state.done
        log.info("project %s: loading version %s in the background", project, version)
        self._load_pool.submit(self._load, project, current)
        return done

    def _load(self, project: str, current: CurrentVersion) -> None:
        """Runs on a load thread: build and warm the model, then swap it in at its time."""
        started = time.perf_counter()
        model: LoadedModel | None = None
        try:
            info = self.store.get_version(project, current.version)
            model = self._loader(info, self.settings.predict_batch_size)
        except Exception:
            log.exception("project %s: loading version %s failed", project, current.version)
        with self._lock:
            first = self._states[project].model is None
        wait_s = 0.0
        if model is not None and not first:
            # Capped: a pointer time in the future (clock skew) must not hold the swap back.
            wait_s = min(current.set_at + self.swap_delay_s - time.time(), self.swap_delay_s)
        load_s = time.perf_counter() - started
        if wait_s > 0:
            timer = threading.Timer(wait_s, self._install, (project, current, model, load_s))
            timer.name, timer.daemon = f"swap-{project}", True
            timer.start()
        else:
            self._install(project, current, model, load_s)

    def _install(
        self,
        project: str,
        current: CurrentVersion,
        model: LoadedModel | None,
        load_s: float,
    ) -> None:
        """The swap: one assignment under the lock; the old model is dropped with it."""
        version = current.version
        evicted: list[tuple[str, str]] = []
        with self._lock:
            state = self._states[project]
            old = state.model.version if state.model is not None else None
            if model is None:
                state.failed[version] = time.monotonic()
            else:
                state.model = model  # requests read this reference once
                state.failed.pop(version, None)
                state.swapped_at = time.time()
                evicted = self._evict_locked(keep=project)
            state.loading = None
            state.done.set()
        if model is None:
            metrics.count_load_failure()
            return
        metrics.record_served(project, old, version)
        for dropped, dropped_version in evicted:
            metrics.record_served(dropped, dropped_version, None)
        log.info(
            "project %s: serving version %s (loaded and warmed up in %.2f s; swapped in "
            "%.2f s after it became current)",
            project,
            version,
            load_s,
            time.time() - current.set_at,
        )
        if evicted:
            log.info(
                "dropped the models of %s (least recently used; MAX_MODELS_IN_MEMORY=%d)",
                ", ".join(p for p, _ in evicted),
                self.max_models,
            )
        # The pointer may have moved while we loaded (unless the project was dropped since).
        self._schedule(project, self._read_pointer(project), held_only=True)

    def _evict_locked(self, keep: str) -> list[tuple[str, str]]:
        """Drop least recently used projects beyond max_models; never one being loaded.
        Returns the (project, version) pairs dropped."""
        loaded = sum(s.model is not None for s in self._states.values())
        candidates = sorted(
            (s.used_at, p)
            for p, s in self._states.items()
            if p != keep and s.model is not None and s.loading is None
        )
        victims = [p for _, p in candidates[: max(0, loaded - self.max_models)]]
        dropped = []
        for project in victims:
            model = self._states.pop(project).model  # it goes once in-flight requests end
            dropped.append((project, model.version if model is not None else ""))
        return dropped

    def get_model(self, project: str, wait_s: float = FIRST_LOAD_WAIT_S) -> LoadedModel | None:
        """The project's model for a request, waiting up to ``wait_s`` for a first load.

        Returns None when the project has no version, or its load failed or is still running
        after ``wait_s``. Never loads on the calling thread; never waits when a model is
        loaded (a newer version loads in the background meanwhile).
        """
        with self._lock:
            state = self._states.setdefault(project, _ProjectState())
            state.used_at = time.monotonic()
            model = state.model
        if model is not None:
            self.check(project)
            return model
        done = self.notify(project)
        if done is not None and not done.wait(wait_s):
            log.warning("project %s: model still loading after %.0f s", project, wait_s)
        model = self.get_loaded(project)
        if model is None:
            self._warn_once(("no model", project), "project %s: no model to predict with", project)
        return model

    def close(self) -> None:
        """Stop loading (running loads finish meanwhile; nothing new is scheduled)."""
        self._stop.set()
        self._load_pool.shutdown(wait=False, cancel_futures=True)
