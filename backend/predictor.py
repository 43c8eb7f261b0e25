"""Label Studio tasks in, Label Studio predictions out, through the one prediction path.

The model comes from the process's ModelServer (backend/serving.py); fetching, decoding,
batching and scoring are training/model/inference.py's; the JSON is
training/labelstudio/results.py's. What is left here is what only /predict knows: the task
dicts Label Studio sends, and that every task gets an entry, in order (Label Studio stores
nothing when the counts differ).

A task gets a prediction, or ``[]``: Label Studio 1.23 stores nothing for ``[]`` and asks
again later, so no task ever shows an empty pre-annotation with score 0. ``[]`` goes to tasks
when the project has no model yet, when the model fills none of the config's controls, when
the video failed (the reason is logged), when the deadline cut the task short, and when the
refresh job already claimed the task's prediction of this version
(training/jobs/prediction_claims.py).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import redis

from backend import metrics
from backend.serving import FIRST_LOAD_WAIT_S, ModelServer
from training.jobs.prediction_claims import (
    PREDICT_CLAIM_S,
    PREDICT_OWNER,
    REFRESH_OWNER,
    PredictionClaims,
)
from training.labelstudio.labelconfig import VideoControls
from training.labelstudio.results import fillable_controls, video_prediction
from training.logs import log_context
from training.model.inference import Failure, predict_clips
from training.settings import Settings
from training.video.clip import Clip, SamplingConfig
from training.video.clipcache import ClipCache
from training.video.decoder import DecodeLimits, sample_clip
from training.video.media import MediaError, MediaResolver, get_video_url
from training.video.windows import WindowedVideo, open_video
from training.warn_once import WarnOnce

if TYPE_CHECKING:
    from training.model.loaded import LoadedModel

log = logging.getLogger(__name__)

NO_PREDICTION: list = []
"""A task's entry when it gets no prediction: Label Studio stores nothing and asks later."""
HANDED_OVER = ("queued", "pending")
"""What ``request_refresh`` answers when a refresh will predict the project's tasks."""


class TaskPredictor:
    """Predicts a request's tasks with the project's loaded model, within a deadline.

    Each request fetches and decodes on a pool of its own (DECODE_THREADS threads), so one
    request's slow media never queues another request's; the number of requests at once is
    bounded by the server's threads. Past PREDICT_DEADLINE_S the request answers with what is
    ready: the other tasks get ``[]`` (Label Studio stores nothing and asks again later) and
    ``on_unfinished(project)`` is called so that a background refresh predicts them. A request
    of more than REFRESH_CHUNK_TASKS tasks goes to that refresh before any is predicted.

    Args:
        server: which model each project serves.
        settings: decode_threads, predict_deadline_s, uncertainty_measure, media settings.
        media: resolves video references (default: MediaResolver.from_settings).
        on_unfinished: called with the project when a deadline cut a request short, or for
            a request larger than a refresh chunk; answers as ``request_refresh`` does.
        claims: where a task's prediction of a version is claimed (None: no claims; tests
            and a process without Redis).
    """

    def __init__(
        self,
        server: ModelServer,
        settings: Settings,
        media: MediaResolver | None = None,
        on_unfinished: Callable[[str], object] | None = None,
        claims: PredictionClaims | None = None,
    ) -> None:
        self.server = server
        self.claims = claims
        self.settings = settings
        self.media = media or MediaResolver.from_settings(settings)
        self.on_unfinished = on_unfinished
        self.clips = ClipCache.from_settings(settings) if settings.serving_clip_cache else None
        """Decoded clips by video content and sampling, shared with the workers' jobs: a video
        asked for again (under a new version, by another task) is not decoded again."""
        self._threads = max(1, settings.decode_threads)
        self._warn_once = WarnOnce(log)

    def predict(
        self, project: str, tasks: Sequence[object], controls: VideoControls
    ) -> list[dict | list]:
        """One entry per task, in order: its prediction, or ``[]`` (see the module docstring).

        Each task is counted in the metrics (backend/metrics.py): predicted, or why not.
        """
        with log_context(project=project):
            deadline = time.monotonic() + self.settings.predict_deadline_s
            model = self._usable_model(project, controls, deadline, len(tasks))
            if model is None or self._handed_over(project, len(tasks)):
                return [NO_PREDICTION for _ in tasks]
            results = self._predict(project, model, tasks, controls, deadline)
            metrics.count_predicted(sum(1 for r in results if r))
            return results

    def _usable_model(
        self, project: str, controls: VideoControls, deadline: float, tasks: int
    ) -> LoadedModel | None:
        """The project's model if it fills a control of the config; else None, counted."""
        model = self.server.get_model(project, wait_s=min(FIRST_LOAD_WAIT_S, self._left(deadline)))
        if model is None:
            metrics.count_failed("no_model", tasks)
            return None
        if not fillable_controls(model, controls):
            self._warn_once(
                ("no overlap", project, model.version, controls),
                "project %s: version %s (labels %s, timeline labels %s) fills no control of "
                "the config (choices %s, timeline %s)",
                project,
                model.version,
                model.labels,
                model.timeline_labels,
                list(controls.choice_values),
                list(controls.timeline.labels) if controls.timeline else None,
            )
            metrics.count_failed("no_matching_control", tasks)
            return None
        return model

    def _handed_over(self, project: str, tasks: int) -> bool:
        """Give a request of more tasks than one refresh chunk (REFRESH_CHUNK_TASKS) to the
        refresh at once; True when it took them (every task then gets ``[]``).

        Why: "Retrieve predictions" sends every task in one request. Predicted here, a large
        one kept this process decoding for PREDICT_DEADLINE_S while the workers waited, and
        the refresh that followed predicted again what the answer held (it lists tasks before
        Label Studio has stored the answer). Handed over, the refresh's chunks are shared by
        every worker from the start, and Label Studio has its answer in a moment. Not without
        LABEL_STUDIO_URL, which the refresh needs to write.
        """
        chunk = self.settings.refresh_chunk_tasks
        if self.on_unfinished is None or not self.settings.label_studio_url:
            return False
        if chunk <= 0 or tasks <= chunk:
            return False
        try:
            outcome = self.on_unfinished(project)
        except Exception:  # Redis down: predict them here, within the deadline
            log.exception("project %s: could not hand %d tasks to the refresh", project, tasks)
            return False
        if outcome not in HANDED_OVER:
            return False
        metrics.count_failed("handed_over", tasks)
        log.info(
            "project %s: %d tasks, more than REFRESH_CHUNK_TASKS=%d: [] for each, the refresh "
            "predicts them (%s)",
            project,
            tasks,
            chunk,
            outcome,
        )
        return True

    def _predict(
        self,
        project: str,
        model: LoadedModel,
        tasks: Sequence[object],
        controls: VideoControls,
        deadline: float,
    ) -> list[dict | list]:
        sources = [
            functools.partial(
                contextvars.copy_context().run, self._clip, task, controls, model.sampling
            )
            for task in tasks
        ]
        window = max(2 * model.batch_size, 2 * self._threads)
        results: list[dict | list] = [NO_PREDICTION for _ in tasks]
        unfinished = 0
        pool = ThreadPoolExecutor(self._threads, thread_name_prefix="decode")
        try:
            outcomes = predict_clips(
                model,
                sources,
                pool,
                window=window,
                deadline=deadline,
                on_batch=metrics.observe_model,
            )
            for i, outcome in outcomes:
                if isinstance(outcome, Failure):
                    unfinished += outcome.unfinished
                    results[i] = self._failed(project, tasks[i], outcome, model.version)
                    continue
                formatted = video_prediction(
                    outcome,
                    controls,
                    frame_rate=controls.task_frame_rate(_task_data(tasks[i])),
                    measure=self.settings.uncertainty_measure,
                )
                if formatted is None:  # said once: every task of this config would say it
                    metrics.count_failed("no_result")
                    self._warn_once(
                        ("no result", project, model.version),
                        "project %s: version %s gave no result for task %s (nothing to store)",
                        project,
                        model.version,
                        _task_id(tasks[i]),
                    )
                results[i] = NO_PREDICTION if formatted is None else formatted
        finally:  # never wait for a slow download: it ends at its own deadline
            pool.shutdown(wait=False, cancel_futures=True)
        if unfinished:
            self._hand_over(project, unfinished, len(tasks))
        return self._claimed(project, model.version, tasks, results)

    def _claimed(
        self, project: str, version: str, tasks: Sequence[object], results: list[dict | list]
    ) -> list[dict | list]:
        """``[]`` for the tasks whose prediction of ``version`` a refresh job is writing; the
        others are claimed for /predict. A task without an integer id keeps its prediction."""
        ids = {i: _task_id(task) for i, task in enumerate(tasks) if results[i]}
        claimable = {i: t for i, t in ids.items() if isinstance(t, int) and not isinstance(t, bool)}
        if self.claims is None or not claimable:
            return results
        try:
            owners = self.claims.claim(
                project, version, claimable.values(), owner=PREDICT_OWNER, ttl_s=PREDICT_CLAIM_S
            )
        except redis.RedisError as exc:  # availability first; the refresh removes duplicates
            self._warn_once(("claims", project), "project %s: cannot claim tasks: %s", project, exc)
            return results
        refreshing = {t for t, owner in owners.items() if owner.startswith(REFRESH_OWNER)}
        metrics.count_failed("refresh_claimed", sum(t in refreshing for t in claimable.values()))
        if refreshing:
            log.info(
                "project %s: %d tasks get their prediction of %s from the refresh job: []",
                project,
                len(refreshing),
                version,
            )
        return [
            NO_PREDICTION if claimable.get(i) in refreshing else r for i, r in enumerate(results)
        ]

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.0, deadline - time.monotonic())

    def _failed(self, project: str, task: object, failure: Failure, version: str) -> list:
        """A task without a prediction; why is logged unless the deadline cut it short."""
        metrics.count_failed(failure.kind)
        if not failure.unfinished:
            log.warning(
                "project %s task %s: no prediction of %s: %s",
                project,
                _task_id(task),
                version,
                failure.reason,
                extra={"task": _task_id(task)},
            )
        return NO_PREDICTION

    def _hand_over(self, project: str, unfinished: int, total: int) -> None:
        log.warning(
            "project %s: %d of %d tasks not ready within PREDICT_DEADLINE_S=%g s; they get "
            "their predictions from the background refresh",
            project,
            unfinished,
            total,
            self.settings.predict_deadline_s,
        )
        if self.on_unfinished is not None:
            try:
                self.on_unfinished(project)
            except Exception:  # Redis down: the next version's refresh predicts them
                log.exception("project %s: could not queue the refresh", project)

    def _clip(
        self, task: object, controls: VideoControls, sampling: SamplingConfig
    ) -> Clip | WindowedVideo:
        """Fetch and sample one task's video (runs on the decode pool, in the request's log
        context); each step is timed for the metrics."""
        data = _task_data(task)
        if data is None:
            raise MediaError("task has no data")
        with log_context(task=_task_id(task)):
            url = get_video_url(data, controls.video_value_key)
            started = time.perf_counter()
            path = self.media.resolve(url, task_id=_task_id(task))
            fetched = time.perf_counter()
            metrics.observe_fetch(fetched - started)
            limits = DecodeLimits.from_settings(self.settings)
            if sampling.windowed:  # a long video's windows stream through the model
                clip = open_video(path, sampling, limits=limits)
            elif self.clips is None:
                clip = sample_clip(path, sampling, limits=limits)
            else:
                clip, hit = self.clips.sample_counted(path, sampling, limits)
                metrics.count_clip_cache(hit)
            metrics.observe_decode(time.perf_counter() - fetched)
            return clip


def _task_id(task: object) -> object:
    return task.get("id") if isinstance(task, Mapping) else None


def _task_data(task: object) -> Mapping | None:
    data = task.get("data") if isinstance(task, Mapping) else None
    return data if isinstance(data, Mapping) else None
