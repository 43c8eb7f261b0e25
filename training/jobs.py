"""RQ job functions: what a worker runs. Importable by name (``training.jobs.train_project``).

A job receives only ids; it reads settings from the environment and every piece of data from
Label Studio and the model store, so any worker on any machine can run it (RQ's advice:
importable functions, no globals). Progress goes to the job's RQ meta and to the log.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import redis
from rq import get_current_job

from training.coordinator import TrainingCoordinator
from training.current import VersionPointer
from training.settings import Settings

if TYPE_CHECKING:
    from training.store import ModelStore, VersionInfo

log = logging.getLogger(__name__)

META_SAVE_EVERY_S = 1.0
"""Progress is written to the job's meta at most this often (stage changes always), in seconds."""

REFRESH_FUNCTION = "training.jobs.refresh_predictions"
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
    from training.labelstudio import LabelStudioError

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
    from training.store import HistoryAction
    from training.train import gate_allows

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


def refresh_predictions(project: str, version: str) -> dict:
    """RQ job: predict the project's tasks with ``version`` and write the predictions to
    Label Studio (see training/refresh.py). Progress ``{"stage": "refresh", "done",
    "total"}`` is in the job's meta."""
    from training.refresh import refresh_predictions as refresh

    job = get_current_job()
    progress = JobProgress(job, project)
    result = refresh(project, version, Settings.from_env(), progress=progress)
    progress({"stage": "done", **{k: v for k, v in result.items() if k != "skipped_tasks"}})
    return result


def run_training(project: str, settings: Settings, *, force: bool, progress) -> dict:
    """Pull labelled tasks, check there is enough to learn from, fetch, train, publish.

    The new version becomes current only if it passes the quality gate (or ``force`` and
    PROMOTE_ON_START_TRAINING); then a job refreshing the project's predictions is queued.

    Returns a summary: ``{"status": "trained"|"rejected", "version": ..., "gate": ...}`` or
    ``{"status": "skipped", "reason": ...}`` when labels are still too few.
    """
    from training.accelerator import configure_accelerator
    from training.clipcache import ClipCache
    from training.labelstudio import count_per_label, fetch_project_data
    from training.media import MediaError, MediaResolver
    from training.sampling import SamplingConfig
    from training.store import ModelStore
    from training.train import TrainConfig, TrainingError, train_and_publish

    progress({"stage": "fetch_tasks"})
    data = fetch_project_data(
        project, url=settings.label_studio_url, api_key=settings.label_studio_api_key
    )
    counts = count_per_label(data)
    short = {label: counts.get(label, 0) for label in data.labels}
    short = {k: v for k, v in short.items() if v < settings.min_per_label}
    if short and not force:
        reason = f"every label needs {settings.min_per_label} annotated videos; " + ", ".join(
            f"{k} has {v}" for k, v in short.items()
        )
        log.info("project %s: not training yet: %s", project, reason)
        return {"status": "skipped", "reason": reason, "per_label": counts}
    labels = [label for label in data.labels if counts.get(label, 0) > 0]
    if len(labels) < 2:
        return {
            "status": "skipped",
            "reason": f"need annotated videos of at least two labels, have {counts}",
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
            elif task.label in labels:
                videos.append((path, task.label))
                keys.append(f"task:{task.task_id}")  # the stable split follows the task
            progress({"stage": "fetch_videos", "done": done, "total": total})

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
            parent=parent,
            sampling=None
            if parent
            else SamplingConfig(
                frames=settings.train_frames,
                height=settings.train_frame_size,
                width=settings.train_frame_size,
            ),
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
        "clips": {"decoded": cache.misses, "from_cache": cache.hits},
        "per_label": counts,
    }
