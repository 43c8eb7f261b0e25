"""RQ job functions: what a worker runs, importable by name. RQ stores the dotted names
(``training.jobs.training.train_project``, coordinator.JOB_FUNCTION, and
``training.jobs.training.refresh_predictions``, refresh_queue.REFRESH_FUNCTION) with every
queued job, so these two stay here, thin, over the steps in run.py and refresh.py.

A job receives only ids; it reads settings from the environment and every piece of data from
Label Studio and the model store, so any worker on any machine can run it (RQ's advice:
importable functions, no globals). Progress goes to the job's RQ meta and to the log (each
line naming the project and job: training/logs.py), durations and outcomes to Redis
(training/jobs/job_metrics.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from datetime import UTC
from typing import TYPE_CHECKING

import redis
from rq import get_current_job
from rq.job import Job

from training.jobs import refresh_chunks as chunks
from training.jobs.coordinator import TrainingCoordinator, make_coordinator
from training.jobs.job_metrics import JobTimer, record_version, timed_job
from training.jobs.prediction_claims import PredictionClaims
from training.jobs.progress import JobProgress, LeaseKeeper, LeaseLost
from training.jobs.refresh_queue import REFRESH_AGAIN_KEY, enqueue_refresh
from training.logs import log_context
from training.settings import Settings

if TYPE_CHECKING:
    from training.jobs.acquisition_rank import Signals

log = logging.getLogger(__name__)


def train_project(project: str) -> dict:
    """Fine-tune the project's model on its labelled tasks and publish a new version.

    Coalescing: the job first takes the project's pending requests; if another run of the
    project is in progress it defers (that run queues the follow-up). Any failure records
    the run as failed; failures worth retrying (Label Studio or the store unreachable) give
    the events back so the next run takes them. Its duration, outcome and the gate's verdict
    are counted in Redis (training/jobs/job_metrics.py).
    """
    job = get_current_job()
    with log_context(project=project, job=job.id), timed_job(job.connection, "training") as timer:
        result = _train(job, project, timer)
    if result["status"] in ("trained", "rejected"):
        record_version(job.connection, published=result["status"] == "trained")
    return result


def _train(job: Job, project: str, timer: JobTimer) -> dict:
    from training.jobs.run import run_training

    settings = Settings.from_env()
    coordinator = make_coordinator(job.connection, settings)
    run = coordinator.start(project, job.id)
    if run is None:
        log.info("project %s: another training run is in progress; %s defers", project, job.id)
        timer.outcome = "deferred"
        return {"status": "deferred"}
    progress = JobProgress(job, project)
    started = time.time()
    try:
        with LeaseKeeper(coordinator, project, job.id) as lease:
            result = run_training(
                project,
                settings,
                force=run.force,
                progress=progress,
                ensure_owner=lease.ensure_held,
            )
    except LeaseLost:
        timer.outcome = "lease_lost"
        _requeue_if_forgotten(coordinator, project, run)
        raise  # the project's run is another job's now: its record is not this job's to write
    except Exception as exc:
        _record_failure(coordinator, project, job.id, exc, started)
        raise
    result = {
        **result,
        "events": run.events,
        "started_at": started,
        "finished_at": time.time(),
        "queued_s": _queued_seconds(job, started),
        "stage_s": progress.stage_seconds(),
    }
    coordinator.finish(project, job.id, result=result)
    progress({"stage": "done", **result})
    timer.outcome = result["status"]
    return result


def _queued_seconds(job: Job, started: float) -> float | None:
    """Seconds the job waited in the queue before a worker took it (RQ's enqueued_at)."""
    if job.enqueued_at is None:
        return None
    return round(max(0.0, started - job.enqueued_at.replace(tzinfo=UTC).timestamp()), 2)


def _requeue_if_forgotten(coordinator: TrainingCoordinator, project: str, run) -> None:
    """Ask for the run again if Redis lost the project's state; while Redis does not answer
    (it may be restarting), try for up to a lease."""
    deadline = time.monotonic() + coordinator.lease_s
    while True:
        try:
            coordinator.requeue_if_forgotten(project, run)
            return
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                log.warning("project %s: could not check the run's state: %s", project, exc)
                return
            time.sleep(1.0)


def _record_failure(
    coordinator: TrainingCoordinator, project: str, job_id: str, exc: Exception, started: float
) -> None:
    """Record the run as failed; give its events back when retrying may succeed (Label Studio
    or the store unreachable)."""
    from training.labelstudio.errors import LabelStudioError

    coordinator.finish(
        project,
        job_id,
        result={
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "started_at": started,
            "finished_at": time.time(),
        },
        give_back=isinstance(exc, LabelStudioError | OSError),
    )


def refresh_predictions(project: str, version: str) -> dict:
    """RQ job: predict the project's tasks with ``version`` and write the predictions to
    Label Studio (see training/jobs/refresh.py). Progress ``{"stage": "refresh", "done",
    "total"}`` is in the job's meta. Tasks imported during a pass get another pass."""
    job = get_current_job()
    connection = job.connection if job is not None else None
    with (
        log_context(project=project, job=job.id if job is not None else None),
        timed_job(connection, "refresh") as timer,
    ):
        result = _refresh(job, project, version)
        timer.outcome = result["status"]
    return result


def _refresh(job: Job | None, project: str, version: str) -> dict:
    from training.jobs.refresh import refresh_predictions as refresh

    progress = JobProgress(job, project)
    settings = Settings.from_env()
    again = REFRESH_AGAIN_KEY.format(project=project, version=version)
    claims = PredictionClaims(job.connection) if job is not None else None
    passes = 0
    while True:
        if job is not None:
            job.connection.delete(again)  # this pass lists every task there is now
        fan_out = None
        if job is not None:
            fan_out = functools.partial(chunks.fan_out, job.connection, project, version, settings)
        result = refresh(
            project,
            version,
            settings,
            progress=progress,
            claims=claims,
            fan_out=fan_out,
            signals=_signals(job, project, version, settings),
        )
        passes += 1
        if job is None or result["status"] != "done" or not job.connection.exists(again):
            break
        log.info("project %s: tasks were added during the refresh; another pass", project)
    result["passes"] = passes
    progress({"stage": "done", **{k: v for k, v in result.items() if k != "skipped_tasks"}})
    return result


def refresh_chunk(project: str, version: str, tasks: list[dict], fanout: str, index: int) -> dict:
    """RQ job: chunk ``index`` of the fan-out ``fanout`` of a refresh
    (training/jobs/refresh_chunks.py). Its progress adds to the refresh's; the last chunk to
    finish, done or failed, ends the refresh, and queues another pass if tasks were imported
    meanwhile."""
    job = get_current_job()
    with log_context(project=project, job=job.id), timed_job(job.connection, "refresh") as timer:
        result = _refresh_chunk(job, project, version, tasks, fanout, index)
        timer.outcome = result["status"]
    return result


def _refresh_chunk(
    job: Job, project: str, version: str, tasks: list[dict], fanout: str, index: int
) -> dict:
    from training.jobs.refresh import refresh_chunk as run_chunk

    settings = Settings.from_env()
    report = JobProgress(job, project)
    progress = chunks.ChunkProgress(job.connection, project, fanout, index, report)
    try:
        result = run_chunk(
            project,
            version,
            chunks.tasks_of(tasks),
            settings,
            progress=progress,
            claims=PredictionClaims(job.connection),
            signals=_signals(job, project, version, settings),
        )
    except Exception:
        if job.retries_left:  # RQ runs it again: not finished yet
            raise
        with contextlib.suppress(Exception):  # the chunk's own error is the one to keep
            if progress.finish(job.id, failed=True):
                _end_or_queue(job, project, version, fanout, settings)
        raise
    progress.add(result)
    if progress.finish(job.id, failed=False):
        result["end"] = _end_or_queue(job, project, version, fanout, settings)
    return result


def _end_or_queue(
    job: Job, project: str, version: str, fanout: str, settings: Settings
) -> dict | None:
    """The end of the refresh, run by its last chunk; if it fails, it is queued as a job of
    its own (the chunk counts as finished already: failing it would re-predict its tasks and
    never end the refresh)."""
    try:
        return _end_refresh(job, project, version, settings)
    except Exception:
        log.exception("project %s: the end of the refresh failed; queued on its own", project)
        chunks.queue_end(job.connection, project, version, fanout)
        return None


def chunk_failed(job: Job, connection: redis.Redis, *exc_info: object) -> None:
    """RQ failure callback of a chunk job, also called by RQ's clean-up for a chunk whose
    worker died (AbandonedJobError). Once RQ will not run it again, it is counted as finished
    (failed); if it was the fan-out's last, the end of the refresh is queued."""
    if job.retries_left:
        return
    project, version, _, fanout, index = job.args
    progress = chunks.ChunkProgress(connection, project, fanout, index, lambda event: None)
    if progress.finish(job.id, failed=True):
        end = chunks.queue_end(connection, project, version, fanout)
        log.warning("project %s: chunk %s failed last; %s ends the refresh", project, job.id, end)


def end_refresh(project: str, version: str) -> dict | None:
    """RQ job: the end of a refresh whose last chunk died with its worker (chunk_failed)."""
    job = get_current_job()
    with log_context(project=project, job=job.id):
        return _end_refresh(job, project, version, Settings.from_env())


def _end_refresh(job: Job, project: str, version: str, settings: Settings) -> dict | None:
    """The last chunk's work: the duplicates pass and the selection (while the version is
    still current), and another pass if tasks were imported meanwhile."""
    from training.jobs.refresh import finish_refresh
    from training.versions.store import ModelStore

    if ModelStore.from_settings(settings).get_current(project) != version:
        return None
    end = finish_refresh(project, version, settings, _signals(job, project, version, settings))
    if job.connection.exists(REFRESH_AGAIN_KEY.format(project=project, version=version)):
        log.info("project %s: tasks were added during the refresh; another pass", project)
        enqueue_refresh(job.connection, project, version, settings)
    return end


def _signals(job: Job | None, project: str, version: str, settings: Settings) -> Signals | None:
    """Where a refresh keeps acquisition signals: Redis under a job (the chunks of a fan-out,
    and passes after the first, add to one hash), else memory; none needed under ``score``."""
    from training.jobs.acquisition_rank import Signals

    if job is None or settings.acquisition == "score":
        return None
    return Signals(job.connection, project, version)
