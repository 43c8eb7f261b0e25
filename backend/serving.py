"""The model owner of a serving process: one loaded version per project, swapped in whole.

The store's ``current`` pointer is the truth shared by every process. Each process compares
it with what it has loaded and, when they differ, loads the new version on a background
thread (load + warm-up), then swaps the project's reference under a lock that guards only
the swap. Requests read the reference once and use that bundle to the end, so a request
never mixes two versions. Nothing loads on a request thread: /predict for a project whose
first load is running waits for it (bounded); /setup only reads the pointer.

Version changes are noticed by :meth:`ModelServer.check` (rate-limited pointer reads on
/setup and /predict) and, later, by a Redis pub/sub listener calling
:meth:`ModelServer.notify`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from backend import protocol
from training.labelconfig import VideoChoices
from training.media import MediaError, MediaResolver, get_video_url
from training.sampler import VideoDecodeError, sample_clip
from training.sampling import Clip, stack_clips
from training.settings import Settings
from training.store import NO_MODEL_VERSION, ModelStore, VersionInfo

if TYPE_CHECKING:
    from training.predict import LoadedModel

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
"""Seconds between two reads of a project's current pointer by check()."""

FIRST_LOAD_WAIT_S = 60.0
"""Seconds a /predict waits for a project's first model load before answering "no model"."""

RETRY_FAILED_LOAD_S = 60.0
"""Seconds before a version that failed to load is tried again."""

LOAD_THREADS = 2
"""Background threads loading models (per process)."""

Loader = Callable[[VersionInfo, int], "LoadedModel"]


def load_with_tensorflow(info: VersionInfo, batch_size: int) -> LoadedModel:
    """The default loader; imports TensorFlow on the loading thread, never at import time."""
    from training.predict import load_version

    return load_version(info, batch_size=batch_size)


@dataclass
class _ProjectState:
    """Per-project bookkeeping; every field is read and written under ModelServer._lock."""

    model: LoadedModel | None = None
    loading: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    failed: dict[str, float] = field(default_factory=dict)
    checked_at: float = float("-inf")


class ModelServer:
    """Holds each project's loaded model and predicts tasks with it.

    Args:
        settings: decode_threads, predict_batch_size, model_dir and the media settings.
        store: the model store (default: ModelStore(settings.model_dir)).
        media: resolves video references (default: MediaResolver.from_settings).
        loader: loads a version (default: TensorFlow via training.predict.load_version).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: ModelStore | None = None,
        media: MediaResolver | None = None,
        loader: Loader | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or ModelStore(settings.model_dir)
        self.media = media or MediaResolver.from_settings(settings)
        self._loader = loader or load_with_tensorflow
        self._lock = threading.Lock()
        self._states: dict[str, _ProjectState] = {}
        self._logged: set[tuple] = set()
        self._load_pool = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="model-load")
        self._decode_pool = ThreadPoolExecutor(
            max(1, settings.decode_threads), thread_name_prefix="decode"
        )

    # -- versions ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start loading every project in the store in the background; returns at once."""
        for project in self.store.list_projects():
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
        pointer = self.store.get_current(project)
        if pointer is None or pointer in failed:
            return NO_MODEL_VERSION
        return pointer

    def get_loaded(self, project: str) -> LoadedModel | None:
        """The model loaded now, without waiting or checking."""
        with self._lock:
            state = self._states.get(project)
            return state.model if state else None

    def check(self, project: str) -> None:
        """Schedule a background load if the pointer moved; reads it at most every ~1 s."""
        now = time.monotonic()
        with self._lock:
            state = self._states.setdefault(project, _ProjectState())
            if now - state.checked_at < CHECK_INTERVAL_S:
                return
            state.checked_at = now
        self._schedule(project, self._read_pointer(project))

    def notify(self, project: str) -> threading.Event | None:
        """Compare the pointer now (no rate limit) and schedule a load if it moved.

        The seam for push notifications (Redis pub/sub) of a new current version.

        Returns:
            An event set when the scheduled (or running) load ends, or None when nothing
            is to be loaded.
        """
        with self._lock:
            self._states.setdefault(project, _ProjectState()).checked_at = time.monotonic()
        return self._schedule(project, self._read_pointer(project))

    def _read_pointer(self, project: str) -> str | None:
        try:
            return self.store.get_current(project)
        except (OSError, ValueError) as exc:
            self._log_once(("pointer", project, str(exc)), "project %s: %s", project, exc)
            return None

    def _schedule(self, project: str, version: str | None) -> threading.Event | None:
        if version is None:
            return None
        with self._lock:
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
        self._load_pool.submit(self._load, project, version)
        return done

    def _load(self, project: str, version: str) -> None:
        """Runs on a load thread: build and warm the model, then swap the reference."""
        started = time.perf_counter()
        model: LoadedModel | None = None
        try:
            info = self.store.get_version(project, version)
            model = self._loader(info, self.settings.predict_batch_size)
        except Exception:
            log.exception("project %s: loading version %s failed", project, version)
        with self._lock:
            state = self._states[project]
            if model is None:
                state.failed[version] = time.monotonic()
            else:
                state.model = model  # the swap: requests read this reference once
                state.failed.pop(version, None)
            state.loading = None
            state.done.set()
        if model is not None:
            log.info(
                "project %s: serving version %s (loaded in %.2f s)",
                project,
                version,
                time.perf_counter() - started,
            )
            # The pointer may have moved while we loaded.
            pointer = self._read_pointer(project)
            if pointer is not None and pointer != version:
                self._schedule(project, pointer)

    def get_model(self, project: str, wait_s: float = FIRST_LOAD_WAIT_S) -> LoadedModel | None:
        """The project's model for a request, waiting up to ``wait_s`` for a first load.

        Returns None when the project has no version, or its load failed or is still running
        after ``wait_s``. Never loads on the calling thread.
        """
        model = self.get_loaded(project)
        if model is not None:
            self.check(project)
            return model
        done = self.notify(project)
        if done is not None and not done.wait(wait_s):
            log.warning("project %s: model still loading after %.0f s", project, wait_s)
        model = self.get_loaded(project)
        if model is None:
            self._log_once(("no model", project), "project %s: no model to predict with", project)
        return model

    # -- prediction -------------------------------------------------------------------------

    def predict(self, project: str, tasks: Sequence[dict], choices: VideoChoices) -> list[dict]:
        """One prediction per task, in order.

        Videos are fetched and decoded on the decode pool, a bounded window ahead of the
        model; decoded clips go through the model in batches. A task whose video cannot be
        fetched or decoded gets an empty prediction and a warning; the others are predicted.
        """
        model = self.get_model(project)
        if model is None:
            return [protocol.empty_prediction(NO_MODEL_VERSION) for _ in tasks]
        if not protocol.allowed_label_indices(model.labels, choices.choice_values):
            self._log_once(
                ("no overlap", project, model.version, choices.choice_values),
                "project %s: none of version %s's labels %s is among the config's choices %s",
                project,
                model.version,
                model.labels,
                list(choices.choice_values),
            )
            return [protocol.empty_prediction(model.version) for _ in tasks]

        results: list[dict | None] = [None] * len(tasks)
        batch: list[tuple[int, Clip]] = []
        batch_size = max(1, self.settings.predict_batch_size)
        window = max(2 * batch_size, 2 * self.settings.decode_threads)
        pending: deque[tuple[int, Future[Clip]]] = deque()
        next_task = 0

        def flush() -> None:
            if not batch:
                return
            frames, mask = stack_clips([clip for _, clip in batch])
            probs = model.predict_proba(frames, mask)
            for (i, _), row in zip(batch, probs, strict=True):
                results[i] = protocol.classification_prediction(
                    row, model.labels, choices, model.version
                )
            batch.clear()

        while next_task < len(tasks) or pending:
            while next_task < len(tasks) and len(pending) < window:
                future = self._decode_pool.submit(self._prepare, tasks[next_task], choices, model)
                pending.append((next_task, future))
                next_task += 1
            i, future = pending.popleft()
            try:
                batch.append((i, future.result()))
            except (MediaError, VideoDecodeError) as exc:
                log.warning(
                    "project %s task %s: no prediction: %s", project, _task_id(tasks[i]), exc
                )
                results[i] = protocol.empty_prediction(model.version)
            except Exception:
                log.exception("project %s task %s: no prediction", project, _task_id(tasks[i]))
                results[i] = protocol.empty_prediction(model.version)
            if len(batch) >= batch_size:
                flush()
        flush()
        return [r if r is not None else protocol.empty_prediction(model.version) for r in results]

    def _prepare(self, task: dict, choices: VideoChoices, model: LoadedModel) -> Clip:
        """Fetch and sample one task's video (runs on the decode pool)."""
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise MediaError("task has no data")
        url = get_video_url(data, choices.video_value_key)
        path = self.media.resolve(url, task_id=task.get("id"))
        return sample_clip(path, model.sampling)

    def close(self) -> None:
        """Stop the thread pools (running loads finish in the background)."""
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._load_pool.shutdown(wait=False, cancel_futures=True)

    def _log_once(self, key: tuple, msg: str, *args: object) -> None:
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        log.warning(msg, *args)


def _task_id(task: object) -> object:
    return task.get("id") if isinstance(task, dict) else None
