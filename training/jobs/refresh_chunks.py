"""A refresh split into chunks of tasks, each its own RQ job, so that every idle worker takes a
share of a large project.

The refresh job of a version (``refresh-<project>-<version>``) lists the tasks to predict. When
they are more than REFRESH_CHUNK_TASKS it queues one chunk job per REFRESH_CHUNK_TASKS of them
(``refresh-<project>-<version>-c<n>``) and ends. Chunks are idempotent: a task is written only
under its claim (prediction_claims.py), so a chunk run twice, or beside /predict, writes
nothing twice. The refresh's progress is one Redis hash the chunks add to as they go, read by
``videoloop status`` and ``GET /training/<project>``; the chunk that finishes last (failed
chunks count as finished) runs the end of the refresh: the duplicates pass and the version
selection. A newer version's refresh cancels the chunks of older ones that have not started;
one already running stops at its next batch, when it sees its version is no longer current.

A chunk whose worker died (killed, its machine gone) is found by RQ's own clean-up of started
jobs once its heartbeat expires: it runs once more (``Retry(max=1)``: chunks are idempotent),
and a chunk that fails again is counted as finished by its failure callback
(:func:`training.jobs.training.chunk_failed`), which queues the end of the refresh when it was
the last: a dead worker never leaves a refresh without its end.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable

import redis
from rq import Callback, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from training.jobs.coordinator import make_coordinator
from training.labelstudio.tasks import TaskRefreshState
from training.settings import Settings

log = logging.getLogger(__name__)

CHUNK_FUNCTION = "training.jobs.training.refresh_chunk"
CHUNK_FAILED_FUNCTION = "training.jobs.training.chunk_failed"
END_FUNCTION = "training.jobs.training.end_refresh"
CHUNK_RETRIES = 1
"""Runs more of a chunk that failed or whose worker died (its claims keep it from writing twice)."""
PROGRESS_KEY = "videoloop:refresh:{project}:{fanout}:progress"
"""Hash per fan-out: version, fanout, total, chunks, chunks_done, chunks_failed, done, written,
skipped, already, started_at, finished_at."""
FINISHED_KEY = "videoloop:refresh:{project}:{fanout}:finished"
"""Set of the fan-out's chunk indexes that finished (done or failed): a chunk RQ runs twice
counts once, so the last one is told exactly once."""
LATEST_KEY = "videoloop:refresh:{project}:latest"
"""The fan-out id of the project's latest fanned-out refresh (whose progress status shows)."""
CHUNK_JOBS_KEY = "videoloop:refresh:{project}:chunk-jobs"
"""Set of the project's chunk job ids not yet finished, every version's."""
KEEP_S = 7 * 24 * 3600
"""How long the progress of a refresh is kept, in seconds (as long as RQ keeps results)."""
COUNTS = ("done", "written", "skipped", "already")


def chunk_job_id(project: str, version: str, fanout: str, index: int) -> str:
    return f"refresh-{project}-{version}-{fanout}-c{index}"


def in_progress(connection: redis.Redis, project: str, version: str) -> bool:
    """Whether the project's latest fan-out is of ``version`` and has chunks not finished
    (a new refresh of the version then waits for it: its last chunk makes another pass)."""
    fanout = connection.get(LATEST_KEY.format(project=project))
    if fanout is None:
        return False
    key = PROGRESS_KEY.format(project=project, fanout=fanout.decode())
    state_version, chunks = connection.hmget(key, ["version", "chunks"])
    if state_version is None or state_version.decode() != version:
        return False
    finished = connection.scard(FINISHED_KEY.format(project=project, fanout=fanout.decode()))
    if finished >= int(chunks or 0):
        return False
    # A chunk killed with its worker never finishes: once RQ has given up on every chunk
    # left (abandoned, failed), the fan-out no longer holds a new refresh back.
    mine = f"refresh-{project}-{version}-{fanout.decode()}-"
    left = [
        raw.decode()
        for raw in connection.smembers(CHUNK_JOBS_KEY.format(project=project))
        if raw.decode().startswith(mine)
    ]
    waiting = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
    for job in Job.fetch_many(left, connection=connection):
        if job is not None and job.get_status() in waiting:
            return True
    return False


def fan_out(
    connection: redis.Redis,
    project: str,
    version: str,
    settings: Settings,
    todo: list[TaskRefreshState],
    already: int,
) -> list[str]:
    """Queue the chunk jobs of a refresh of ``todo`` (the ordered tasks to predict); returns
    their ids. Cancels the older versions' chunks that have not started."""
    cancel_older_chunks(connection, project, version)
    size = max(1, settings.refresh_chunk_tasks)
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    fanout = uuid.uuid4().hex[:8]
    key = PROGRESS_KEY.format(project=project, fanout=fanout)
    pipe = connection.pipeline(transaction=True)
    pipe.hset(
        key,
        mapping={
            "version": version,
            "fanout": fanout,
            "total": len(todo),
            "chunks": len(chunks),
            "chunks_done": 0,
            "chunks_failed": 0,
            "started_at": time.time(),
            **dict.fromkeys(COUNTS, 0),
            "already": already,
        },
    )
    pipe.expire(key, KEEP_S)
    pipe.set(LATEST_KEY.format(project=project), fanout, ex=KEEP_S)
    pipe.execute()
    queue = make_coordinator(connection, settings).queue
    ids = []
    for index, chunk in enumerate(chunks):
        job_id = chunk_job_id(project, version, fanout, index)
        connection.sadd(CHUNK_JOBS_KEY.format(project=project), job_id)
        queue.enqueue_call(
            CHUNK_FUNCTION,
            args=(project, version, [dataclasses.asdict(t) for t in chunk], fanout, index),
            job_id=job_id,
            timeout=settings.train_timeout_s,
            result_ttl=KEEP_S,
            failure_ttl=KEEP_S,
            description=f"refresh {len(chunk)} tasks of project {project} with {version}",
            meta={"project": project, "version": version, "progress": {"stage": "queued"}},
            retry=Retry(max=CHUNK_RETRIES),
            on_failure=Callback(CHUNK_FAILED_FUNCTION),
        )
        ids.append(job_id)
    log.info("project %s: refresh of %s in %d chunks of %d tasks", project, version, len(ids), size)
    return ids


def cancel_older_chunks(connection: redis.Redis, project: str, version: str) -> int:
    """Cancel the project's queued chunks of other versions; returns how many."""
    key = CHUNK_JOBS_KEY.format(project=project)
    cancelled = 0
    for raw in connection.smembers(key):
        job_id = raw.decode()
        if job_id.startswith(f"refresh-{project}-{version}-"):
            continue
        try:
            job = Job.fetch(job_id, connection=connection)
            if job.get_status() == JobStatus.QUEUED:
                job.cancel()
                cancelled += 1
            elif job.get_status() == JobStatus.STARTED:
                continue  # it stops by itself at its next batch
        except (NoSuchJobError, InvalidJobOperation):
            pass
        connection.srem(key, job_id)
    if cancelled:
        log.info("project %s: cancelled %d queued chunks of older versions", project, cancelled)
    return cancelled


def queue_end(connection: redis.Redis, project: str, version: str, fanout: str) -> str:
    """Queue the end of a fan-out whose last chunk could not run it (its worker died)."""
    queue = make_coordinator(connection, Settings.from_env()).queue
    job = queue.enqueue_call(
        END_FUNCTION,
        args=(project, version),
        job_id=f"refresh-{project}-{version}-{fanout}-end",
        result_ttl=KEEP_S,
        failure_ttl=KEEP_S,
        description=f"end the refresh of project {project} with {version}",
        meta={"project": project, "version": version},
    )
    return job.id


def tasks_of(chunk: list[dict]) -> list[TaskRefreshState]:
    """The chunk job's argument back as TaskRefreshState."""
    return [
        TaskRefreshState(**{**task, "model_versions": frozenset(task["model_versions"])})
        for task in chunk
    ]


class ChunkProgress:
    """Adds a chunk's progress to its fan-out's hash as it goes, and passes each event on to
    ``report`` (the chunk job's own meta)."""

    def __init__(
        self,
        connection: redis.Redis,
        project: str,
        fanout: str,
        index: int,
        report: Callable[[dict], None],
    ) -> None:
        self._connection, self._report, self._index = connection, report, index
        self._key = PROGRESS_KEY.format(project=project, fanout=fanout)
        self._finished_key = FINISHED_KEY.format(project=project, fanout=fanout)
        self._jobs_key = CHUNK_JOBS_KEY.format(project=project)
        self._added = dict.fromkeys(COUNTS, 0)

    def __call__(self, event: dict) -> None:
        self._report(event)
        self.add({name: event.get(name, 0) for name in COUNTS})

    def add(self, counts: dict[str, int]) -> None:
        """Add what ``counts`` (this chunk's totals so far) holds beyond what was added."""
        deltas = {n: int(counts.get(n) or 0) - self._added[n] for n in COUNTS}
        deltas = {n: d for n, d in deltas.items() if d > 0}
        if not deltas:
            return
        try:
            pipe = self._connection.pipeline(transaction=False)
            for name, delta in deltas.items():
                pipe.hincrby(self._key, name, delta)
            pipe.execute()
        except redis.RedisError as exc:  # progress only: the next event adds it
            log.warning("refresh progress not saved (Redis: %s)", exc)
            return
        for name, delta in deltas.items():
            self._added[name] += delta

    def finish(self, job_id: str, *, failed: bool) -> bool:
        """Count this chunk as finished (once, however often it runs); True when it is the
        fan-out's last one, told to exactly one chunk."""
        pipe = self._connection.pipeline(transaction=True)
        pipe.sadd(self._finished_key, self._index)
        pipe.expire(self._finished_key, KEEP_S)
        pipe.scard(self._finished_key)
        pipe.hget(self._key, "chunks")
        pipe.srem(self._jobs_key, job_id)
        added, _, finished, chunks, _ = pipe.execute()
        if added:
            self._connection.hincrby(self._key, "chunks_failed" if failed else "chunks_done", 1)
        last = bool(added) and chunks is not None and finished == int(chunks)
        if last:
            self._connection.hset(self._key, "finished_at", time.time())
        return last


def describe_refresh(connection: redis.Redis, project: str) -> dict | None:
    """The progress of the project's latest fanned-out refresh, or None."""
    fanout = connection.get(LATEST_KEY.format(project=project))
    if fanout is None:
        return None
    raw = connection.hgetall(PROGRESS_KEY.format(project=project, fanout=fanout.decode()))
    if not raw:
        return None
    state: dict = {k.decode(): v.decode() for k, v in raw.items()}
    for name in ("total", "chunks", "chunks_done", "chunks_failed", *COUNTS):
        state[name] = int(state.get(name) or 0)
    for name in ("started_at", "finished_at"):
        state[name] = float(state[name]) if name in state else None
    finished = connection.scard(FINISHED_KEY.format(project=project, fanout=fanout.decode()))
    state["status"] = "running" if finished < state["chunks"] else "done"
    return state
