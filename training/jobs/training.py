"""RQ job functions: what a worker runs, importable by name
(``training.jobs.training.train_project``).

A job receives only ids; it reads settings from the environment and every piece of data from
Label Studio and the model store, so any worker on any machine can run it (RQ's advice:
importable functions, no globals). Progress goes to the job's RQ meta and to the log.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from rq import get_current_job

from training.jobs.coordinator import TrainingCoordinator
from training.settings import Settings
from training.versions.current import VersionPointer

if TYPE_CHECKING:
    from training.versions.store import ModelStore, VersionInfo

log = logging.getLogger(__name__)

META_SAVE_EVERY_S = 1.0
"""Progress is written to the job's meta at most this often (stage changes always), in seconds."""

REFRESH_FUNCTION = "training.jobs.training.refresh_predictions"
"""The job that writes a new current version's predictions to Label Studio."""


class JobProgress:
    """Writes progress events into the RQ job's meta, throttled, and logs stage changes."""

    def __init__(self, job, project: str) -> None:
        self.job = job
        self.project = project
        self._stage: str | None = None
        self._saved_at = 0.0

    def __call__(self, event: dict) -> None:
        stage = event.get("stage")
        now = time.monotonic()
        if stage != self._stage:
            log.info("project %s: %s", self.project, event)
        elif now - self._saved_at < META_SAVE_EVERY_S:
            return
        self._stage, self._saved_at = stage, now
        if self.job is not None:
            self.job.meta["progress"] = event
            self.job.save_meta()


class LeaseKeeper:
    """Renews the running job's lease in the background while the job works."""

    def __init__(self, coordinator: TrainingCoordinator, project: str, job_id: str) -> None:
        self._coordinator, self._project, self._job_id = coordinator, project, job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        every = max(0.5, self._coordinator.lease_s / 4)
        while not self._stop.wait(every):
            try:
                if not self._coordinator.renew_lease(self._project, self._job_id):
                    log.warning("project %s: job %s lost its lease", self._project, self._job_id)
            except Exception:  # Redis blips must not kill training; the next renewal retries
                log.warning("project %s: could not renew the lease", self._project, exc_info=True)


def make_coordinator(
    connection, settings: Settings, *, is_async: bool = True
) -> TrainingCoordinator:
    """The coordinator every process builds the same way from the settings."""
    return TrainingCoordinator(
        connection,
        lease_s=settings.train_lease_s,
        job_timeout_s=settings.train_timeout_s,
        is_async=is_async,
    )


def train_project(project: str) -> dict:
    """Fine-tune the project's model on its labelled tasks and publish a new version.

    Coalescing: the job first takes the project's pending requests; if another run of the
    project is in progress it defers (that run queues the follow-up). Any failure records
    the run as failed; failures worth retrying (Label Studio or the store unreachable) give
    the events back so the next run takes them.
    """
    from training.labelstudio.client import LabelStudioError

    job = get_current_job()
    settings = Settings.from_env()
    coordinator = make_coordinator(job.connection, settings)
    run = coordinator.start(project, job.id)
    if run is None:
        log.info("project %s: another training run is in progress; %s defers", project, job.id)
        return {"status": "deferred"}
    progress = JobProgress(job, project)
    started = time.time()
    try:
        with LeaseKeeper(coordinator, project, job.id):
            result = run_training(project, settings, force=run.force, progress=progress)
    except Exception as exc:
        retry = isinstance(exc, LabelStudioError | OSError)
        coordinator.finish(
            project,
            job.id,
            result={
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "started_at": started,
                "finished_at": time.time(),
            },
            give_back=retry,
        )
        raise
    result = {**result, "events": run.events, "started_at": started, "finished_at": time.time()}
    coordinator.finish(project, job.id, result=result)
    progress({"stage": "done", **result})
    return result


def promote(
    store: ModelStore,
    project: str,
    info: VersionInfo,
    *,
    connection: redis.Redis | None,
    force: bool = False,
) -> bool:
    """Make a just-published version current if its quality gate allows, and tell every
    serving process; otherwise keep it, recorded as rejected with the gate's figures.

    Args:
        store: the ModelStore ``info`` was published to.
        info: the published VersionInfo (its ``meta["gate"]`` decides).
        connection: the job's Redis (pub/sub notice to serving processes), or None.
        force: make it current even if it failed the gate ("Start training" with
            PROMOTE_ON_START_TRAINING, ``videoloop train --promote-anyway``).

    Returns:
        True if the version is now current.
    """
    from training.learn.train import gate_allows
    from training.versions.store import HistoryAction

    gate = info.meta.get("gate")
    reason = (gate or {}).get("reason") or "published"
    if not gate_allows(gate, force=force):
        store.record_rejection(project, info.version, reason, gate=gate)
        log.warning(
            "project %s: %s rejected by the quality gate (%s); %s stays current",
            project,
            info.version,
            reason,
            store.get_current(project),
        )
        return False
    if gate_allows(gate):
        action = HistoryAction.CURRENT
    else:
        action, reason = HistoryAction.PROMOTE, f"promoted past the gate (forced): {reason}"
    VersionPointer(store, connection).set(
        project, info.version, action=action, reason=reason, details={"gate": gate}
    )
    return True


def enqueue_refresh(
    connection: redis.Redis, project: str, version: str, settings: Settings
) -> str | None:
    """Queue :func:`refresh_predictions` for a version that just became current.

    On the training queue with its own job id (``refresh-<project>-<version>``), not through
    the coordinator: it never holds up training. Returns the job id, or None when that
    version's refresh is already queued or running.
    """
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    job_id = f"refresh-{project}-{version}"
    try:
        status = Job.fetch(job_id, connection=connection).get_status()
    except NoSuchJobError:
        status = None
    if status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        log.info("project %s: refresh of %s is already %s", project, version, status)
        return None
    make_coordinator(connection, settings).queue.enqueue_call(
        REFRESH_FUNCTION,
        args=(project, version),
        job_id=job_id,
        timeout=settings.train_timeout_s,
        result_ttl=7 * 24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"refresh predictions of project {project} with {version}",
        meta={"project": project, "version": version, "progress": {"stage": "queued"}},
    )
    log.info("project %s: queued %s", project, job_id)
    return job_id


REFRESH_AGAIN_KEY = "videoloop:refresh:{project}:{version}:again"
"""Set when tasks were added to a project (TASKS_CREATED): its refresh of ``version`` makes
one more pass if it is running, and recovery queues one if none is queued or running."""
REFRESH_AGAIN_TTL_S = 24 * 3600
"""A flag nobody acted on is dropped after this long, in seconds (the next version's refresh
predicts every task anyway)."""


def refresh_predictions(project: str, version: str) -> dict:
    """RQ job: predict the project's tasks with ``version`` and write the predictions to
    Label Studio (see training/jobs/refresh.py). Progress ``{"stage": "refresh", "done",
    "total"}`` is in the job's meta. Tasks imported during a pass get another pass."""
    from training.jobs.refresh import refresh_predictions as refresh

    job = get_current_job()
    progress = JobProgress(job, project)
    settings = Settings.from_env()
    again = REFRESH_AGAIN_KEY.format(project=project, version=version)
    passes = 0
    while True:
        if job is not None:
            job.connection.delete(again)  # this pass lists every task there is now
        result = refresh(project, version, settings, progress=progress)
        passes += 1
        if job is None or result["status"] != "done" or not job.connection.exists(again):
            break
        log.info("project %s: tasks were added during the refresh; another pass", project)
    result["passes"] = passes
    progress({"stage": "done", **{k: v for k, v in result.items() if k != "skipped_tasks"}})
    return result


def request_refresh(connection: redis.Redis, project: str, settings: Settings) -> str:
    """New tasks in Label Studio: predict them with the project's current version.

    Returns ``"queued"`` (a refresh job was queued), ``"pending"`` (one is queued or running:
    it makes another pass), or ``"no_model"`` (the project has no version yet).
    """
    from training.versions.store import ModelStore

    version = ModelStore(settings.model_dir).get_current(project)
    if version is None:
        return "no_model"
    key = REFRESH_AGAIN_KEY.format(project=project, version=version)
    connection.set(key, 1, ex=REFRESH_AGAIN_TTL_S)
    return "queued" if enqueue_refresh(connection, project, version, settings) else "pending"


def resume_refreshes(connection: redis.Redis, settings: Settings) -> list[str]:
    """Queue the refreshes that new tasks asked for and no job took up (the request came as
    a refresh was finishing); drop requests for versions no longer current. Returns the ids
    of the jobs queued. Run by the backend's recovery loop."""
    from training.versions.store import ModelStore

    store = ModelStore(settings.model_dir)
    queued = []
    for raw in connection.scan_iter(match=REFRESH_AGAIN_KEY.format(project="*", version="*")):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        _, _, project, version, _ = key.split(":")
        if store.get_current(project) != version:
            connection.delete(key)
            continue
        job_id = enqueue_refresh(connection, project, version, settings)
        if job_id:
            queued.append(job_id)
    return queued


def run_training(project: str, settings: Settings, *, force: bool, progress) -> dict:
    """Pull labelled tasks, check there is enough to learn from, fetch, train, publish.

    The new version becomes current only if it passes the quality gate (or ``force`` and
    PROMOTE_ON_START_TRAINING); then a job refreshing the project's predictions is queued.

    Returns a summary: ``{"status": "trained"|"rejected", "version": ..., "gate": ...}`` or
    ``{"status": "skipped", "reason": ...}`` when labels are still too few.
    """
    from training.labelstudio.client import (
        count_per_label,
        count_per_timeline_label,
        fetch_project_data,
    )
    from training.learn.accelerator import configure_accelerator
    from training.learn.dataset import LabelledVideo
    from training.learn.train import TrainConfig, TrainingError, train_and_publish
    from training.model.config import AUTO_TEMPORAL, ModelConfig, default_temporal
    from training.versions.store import ModelStore
    from training.video.clip import SamplingConfig
    from training.video.clipcache import ClipCache
    from training.video.media import MediaError, MediaResolver

    progress({"stage": "fetch_tasks"})
    data = fetch_project_data(
        project, url=settings.label_studio_url, api_key=settings.label_studio_api_key
    )
    counts = count_per_label(data)
    timeline_counts = count_per_timeline_label(data)
    wanted = training_labels(counts, timeline_counts, settings.min_per_label)
    if wanted.short and not force:
        reason = f"every label needs {settings.min_per_label} annotated videos; " + ", ".join(
            f"{k} has {v}" for k, v in wanted.short.items()
        )
        log.info("project %s: not training yet: %s", project, reason)
        return {"status": "skipped", "reason": reason, "per_label": counts}
    labels, timeline_labels = wanted.labels, wanted.timeline_labels
    if not labels and not timeline_labels:
        return {
            "status": "skipped",
            "reason": (
                "need annotated videos of at least two labels (or timeline segments), have "
                f"{counts}" + (f" and timeline {timeline_counts}" if timeline_counts else "")
            ),
            "per_label": counts,
        }

    resolver = MediaResolver.from_settings(settings)
    videos, keys, skipped = [], [], [{"task": t, "reason": r} for t, r in data.skipped]
    total = len(data.tasks)

    def fetch(task):
        try:
            return task, resolver.resolve(task.video_url, task.task_id), None
        except MediaError as exc:
            return task, None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, settings.decode_threads)) as pool:
        for done, (task, path, error) in enumerate(pool.map(fetch, data.tasks), start=1):
            if error:
                log.warning("project %s: task %s skipped: %s", project, task.task_id, error)
                skipped.append({"task": task.task_id, "reason": error})
            else:
                video = LabelledVideo(
                    path,
                    task.label if task.label in labels else None,
                    task.segments if timeline_labels else None,
                    task.frame_rate,
                )
                if video.label is not None or video.segments is not None:
                    videos.append(video)
                    keys.append(f"task:{task.task_id}")  # the stable split follows the task
            progress({"stage": "fetch_videos", "done": done, "total": total})

    temporal = settings.train_temporal
    if temporal == AUTO_TEMPORAL:
        temporal = default_temporal(bool(timeline_labels))
    configure_accelerator()
    store = ModelStore(settings.model_dir)
    store.cleanup_staging(project)  # what publishers killed mid-write left behind
    parent = store.get_current_info(project)
    cache = ClipCache(settings.cache_dir / "clips", max_bytes=settings.cache_max_mb * 1024 * 1024)
    try:
        info = train_and_publish(
            store,
            project,
            videos,
            labels=labels,
            timeline_labels=timeline_labels,
            parent=parent,
            sampling=None
            if parent
            else SamplingConfig(
                frames=settings.train_frames,
                height=settings.train_frame_size,
                width=settings.train_frame_size,
            ),
            model_config=None if parent else ModelConfig(temporal=temporal),
            cache=cache,
            train_config=TrainConfig(epochs=settings.train_epochs),
            threads=settings.decode_threads,
            extra_meta={
                "source": {
                    "label_studio_tasks": len(data.tasks),
                    "skipped_tasks": skipped,
                    "forced": force,
                }
            },
            make_current=False,
            keys=keys,
            gate_tolerance=settings.gate_tolerance,
            progress=progress,
        )
    except TrainingError as exc:
        return {"status": "skipped", "reason": str(exc), "per_label": counts}
    job = get_current_job()
    connection = job.connection if job is not None else None
    promoted = promote(
        store,
        project,
        info,
        connection=connection,
        force=force and settings.promote_on_start_training,
    )
    refresh_job = None
    if promoted and connection is not None:
        try:
            refresh_job = enqueue_refresh(connection, project, info.version, settings)
        except redis.RedisError as exc:  # the version is current; predictions refresh lazily
            log.warning("project %s: could not queue the refresh: %s", project, exc)
    return {
        "status": "trained" if promoted else "rejected",
        "promoted": promoted,
        "gate": info.meta.get("gate"),
        "refresh_job": refresh_job,
        "version": info.version,
        "parent": info.meta.get("parent"),
        "init": info.meta.get("init"),
        "test_accuracy": info.meta["metrics"]["test"]["accuracy"],
        "val_accuracy": info.meta["metrics"]["val"]["accuracy"],
        "test_frame_accuracy": (info.meta["metrics"]["test"].get("timeline") or {}).get(
            "frame_accuracy"
        ),
        "clips": {"decoded": cache.misses, "from_cache": cache.hits},
        "per_label": counts,
        "per_timeline_label": timeline_counts,
    }


@dataclass(frozen=True)
class TrainingLabels:
    """The labels a run trains on, per head, and those still short of MIN_PER_LABEL."""

    labels: list[str]
    timeline_labels: list[str]
    short: dict[str, int]


def training_labels(
    counts: dict[str, int], timeline_counts: dict[str, int], min_per_label: int
) -> TrainingLabels:
    """Which labels to train on, from the annotated videos per label of each control.

    A control nobody annotated yet does not hold training back (a project may label the
    class first and the segments later); on a control that has annotations, every label
    needs ``min_per_label`` videos (``short`` lists those that do not: timeline labels as
    ``timeline:<label>``) before annotation events train. The classes head needs two labels
    with videos; the timeline head one.
    """
    short: dict[str, int] = {}
    for prefix, per_label in (("", counts), ("timeline:", timeline_counts)):
        if any(per_label.values()):
            short.update({f"{prefix}{k}": v for k, v in per_label.items() if v < min_per_label})
    labels = [label for label, n in counts.items() if n > 0]
    timeline_labels = [label for label, n in timeline_counts.items() if n > 0]
    return TrainingLabels(labels if len(labels) >= 2 else [], timeline_labels, short)
