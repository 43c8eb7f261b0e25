"""Queueing the refresh job, which writes a current version's predictions to Label Studio:
when a version becomes current, when tasks are imported (TASKS_CREATED), and when recovery
finds a request that no job took up.

A refresh has its own job id per version (``refresh-<project>-<version>``) on the training
queue, not through the coordinator: it never holds up training, and one version is never
refreshed twice at once.
"""

from __future__ import annotations

import logging

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from training.jobs.coordinator import make_coordinator
from training.jobs.refresh_chunks import in_progress as chunks_in_progress
from training.settings import Settings
from training.versions.store import ModelStore

log = logging.getLogger(__name__)

REFRESH_FUNCTION = "training.jobs.training.refresh_predictions"
"""The job that writes a new current version's predictions to Label Studio."""

REFRESH_AGAIN_KEY = "videoloop:refresh:{project}:{version}:again"
"""Set when tasks were added to a project (TASKS_CREATED): its refresh of ``version`` makes
one more pass if it is running, and recovery queues one if none is queued or running."""
REFRESH_AGAIN_TTL_S = 24 * 3600
"""A flag nobody acted on is dropped after this long, in seconds (the next version's refresh
predicts every task anyway)."""


def enqueue_refresh(
    connection: redis.Redis, project: str, version: str, settings: Settings
) -> str | None:
    """Queue the refresh of a version that just became current (REFRESH_FUNCTION). Returns
    the job id, or None when that version's refresh is already queued or running (its chunks
    too: the last one makes another pass when REFRESH_AGAIN_KEY asks for it)."""
    job_id = f"refresh-{project}-{version}"
    try:
        status = Job.fetch(job_id, connection=connection).get_status()
    except NoSuchJobError:
        status = None
    if status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        log.info("project %s: refresh of %s is already %s", project, version, status)
        return None
    if chunks_in_progress(connection, project, version):
        log.info("project %s: refresh of %s is under way in chunks", project, version)
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


def request_refresh(connection: redis.Redis, project: str, settings: Settings) -> str:
    """New tasks in Label Studio: predict them with the project's current version.

    Returns ``"queued"`` (a refresh job was queued), ``"pending"`` (one is queued or running:
    it makes another pass), ``"no_model"`` (the project has no version yet), or
    ``"no_label_studio"`` (LABEL_STUDIO_URL is not set: a refresh could not write anything).
    """
    if not settings.label_studio_url:
        return "no_label_studio"
    version = ModelStore.from_settings(settings).get_current(project)
    if version is None:
        return "no_model"
    key = REFRESH_AGAIN_KEY.format(project=project, version=version)
    connection.set(key, 1, ex=REFRESH_AGAIN_TTL_S)
    return "queued" if enqueue_refresh(connection, project, version, settings) else "pending"


def resume_refreshes(connection: redis.Redis, settings: Settings) -> list[str]:
    """Queue the refreshes that new tasks asked for and no job took up (the request came as
    a refresh was finishing); drop requests for versions no longer current. Returns the ids
    of the jobs queued. Run by the backend's recovery loop."""
    store = ModelStore.from_settings(settings)
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
