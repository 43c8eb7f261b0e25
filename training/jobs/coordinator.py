"""Per-project coalescing of training requests, kept in Redis so every process agrees.

The rules (the issue's "nothing lost, nothing doubled"):

* at most one training job per project is queued and at most one is running;
* a request while a job is queued joins it;
* requests while a job runs cause exactly one follow-up run after it;
* a job that dies (worker killed) is noticed when its lease expires: its events go back to
  pending and a new job is queued by :meth:`TrainingCoordinator.recover`, which the backend
  and every worker call periodically.

State per project, under ``videoloop:train:<project>:``:

=========  ===============================================================================
pending    events not yet taken by a run
force      set when a pending event was "Start training" (train even below thresholds)
queued     id of the queued job; ``queued_at`` when it was queued
running    id of the running job; expires unless the job renews its lease
taken      events (and force) the running job took, given back if it dies
followup   a run was requested while one was running
=========  ===============================================================================

All changes go through Redis transactions (WATCH/MULTI), which fakeredis supports too, so
the embedded mode runs this same code.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

if TYPE_CHECKING:
    from training.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "videoloop:train"
PROJECTS_KEY = f"{PREFIX}:projects"
"""Set of every project that ever asked for training (what recover() scans)."""

QUEUE_NAME = "videoloop-training"
JOB_FUNCTION = "training.jobs.training.train_project"
STALE_QUEUED_S = 10.0
"""A queued id whose RQ job does not exist this long after queueing is lost, in seconds."""


class RequestOutcome(StrEnum):
    """What a training request led to (returned to Label Studio in the webhook's answer)."""

    QUEUED = "queued"
    """A new job was queued."""
    JOINED = "joined"
    """A job was already queued; this request rides on it."""
    FOLLOW_UP = "follow_up"
    """A job is running; one follow-up run is queued when it finishes."""
    RECORDED = "recorded"
    """Counted towards TRAIN_EVERY; not enough new annotations to train yet."""


@dataclass(frozen=True)
class StartedRun:
    """What a job took when it started: how many events, and whether one forced training."""

    events: int
    force: bool


class TrainingCoordinator:
    """The training-request state machine over one Redis connection and RQ queue."""

    def __init__(
        self,
        connection: redis.Redis,
        *,
        queue_name: str = QUEUE_NAME,
        lease_s: float = 60.0,
        job_timeout_s: int = 3600,
        is_async: bool = True,
    ) -> None:
        self.connection = connection
        self.queue = Queue(queue_name, connection=connection, is_async=is_async)
        self.lease_s = lease_s
        self.job_timeout_s = job_timeout_s

    def _key(self, project: str, name: str) -> str:
        return f"{PREFIX}:{project}:{name}"

    def _last_key(self, project: str) -> str:
        return self._key(project, "last")

    # --- requests (the webhook) -----------------------------------------------------------

    def request(
        self, project: str, *, force: bool = False, train_every: int = 1, events: int = 1
    ) -> RequestOutcome:
        """Record training requests and queue a job if one is due.

        Args:
            project: Label Studio project id.
            force: "Start training": train now, whatever the thresholds.
            train_every: annotation events needed since the last run before training.
            events: how many events this call records (more than one when replaying events
                remembered while Redis was down).

        Raises:
            redis.RedisError: Redis is unreachable; nothing was recorded.
        """
        job_id = f"train-{project}-{uuid.uuid4().hex[:12]}"
        keys = [self._key(project, k) for k in ("pending", "force", "queued", "running")]

        def attempt(pipe: redis.client.Pipeline) -> RequestOutcome:
            pending = int(pipe.get(keys[0]) or 0) + events
            forced = force or bool(pipe.get(keys[1]))
            queued, running = pipe.get(keys[2]), pipe.get(keys[3])
            pipe.multi()
            pipe.set(keys[0], pending)
            pipe.sadd(PROJECTS_KEY, project)
            if force:
                pipe.set(keys[1], 1)
            if not forced and pending < train_every:
                return RequestOutcome.RECORDED
            if queued:
                return RequestOutcome.JOINED
            if running:
                pipe.set(self._key(project, "followup"), 1)
                return RequestOutcome.FOLLOW_UP
            pipe.set(keys[2], job_id)
            pipe.set(self._key(project, "queued_at"), time.time())
            return RequestOutcome.QUEUED

        outcome = self.connection.transaction(attempt, *keys, value_from_callable=True)
        if outcome is RequestOutcome.QUEUED:
            self._enqueue(project, job_id)
        return outcome

    def _enqueue(self, project: str, job_id: str) -> Job:
        return self.queue.enqueue_call(
            JOB_FUNCTION,
            args=(project,),
            job_id=job_id,
            timeout=self.job_timeout_s,
            result_ttl=7 * 24 * 3600,
            failure_ttl=7 * 24 * 3600,
            description=f"train project {project}",
            meta={"project": project, "progress": {"stage": "queued"}},
        )

    # --- the job's side -------------------------------------------------------------------

    def start(self, project: str, job_id: str) -> StartedRun | None:
        """Take the pending events for this job; None if another job of the project runs."""
        names = ("pending", "force", "queued", "running", "followup", "taken")
        keys = {n: self._key(project, n) for n in names}

        def attempt(pipe: redis.client.Pipeline) -> StartedRun | None:
            running = pipe.get(keys["running"])
            queued = pipe.get(keys["queued"])
            if running and running.decode() != job_id:
                pipe.multi()
                if queued and queued.decode() == job_id:
                    pipe.delete(keys["queued"])
                pipe.set(keys["followup"], 1)
                return None
            run = StartedRun(
                events=int(pipe.get(keys["pending"]) or 0), force=bool(pipe.get(keys["force"]))
            )
            pipe.multi()
            pipe.set(keys["running"], job_id, px=int(self.lease_s * 1000))
            if queued and queued.decode() == job_id:
                pipe.delete(keys["queued"])
            pipe.delete(keys["pending"], keys["force"], keys["followup"])
            pipe.set(keys["taken"], json.dumps({"events": run.events, "force": run.force}))
            return run

        return self.connection.transaction(attempt, *keys.values(), value_from_callable=True)

    def renew_lease(self, project: str, job_id: str) -> bool:
        """Keep the running job's lease alive; False if it was lost (it expired meanwhile)."""
        key = self._key(project, "running")

        def attempt(pipe: redis.client.Pipeline) -> bool:
            current = pipe.get(key)
            pipe.multi()
            if current is None or current.decode() != job_id:
                return False
            pipe.pexpire(key, int(self.lease_s * 1000))
            return True

        return self.connection.transaction(attempt, key, value_from_callable=True)

    def finish(
        self, project: str, job_id: str, *, result: dict, give_back: bool = False
    ) -> str | None:
        """End a run: record its result and queue the follow-up if one was requested.

        Args:
            result: a JSON-able summary stored as the project's last run.
            give_back: the run failed for a reason worth retrying: its events go back to
                pending (they are retried with the next request or follow-up).

        Returns:
            The follow-up job's id, or None.
        """
        names = ("pending", "force", "queued", "running", "followup", "taken")
        keys = {n: self._key(project, n) for n in names}
        follow_id = f"train-{project}-{uuid.uuid4().hex[:12]}"

        def attempt(pipe: redis.client.Pipeline) -> bool:
            running = pipe.get(keys["running"])
            taken = json.loads(pipe.get(keys["taken"]) or "{}")
            followup, queued = pipe.get(keys["followup"]), pipe.get(keys["queued"])
            mine = running is None or running.decode() == job_id
            pipe.multi()
            pipe.set(self._last_key(project), json.dumps({**result, "job_id": job_id}))
            if not mine:
                return False
            pipe.delete(keys["running"], keys["taken"])
            if give_back and taken.get("events"):
                pipe.incrby(keys["pending"], int(taken["events"]))
                if taken.get("force"):
                    pipe.set(keys["force"], 1)
            if followup and not queued:
                pipe.delete(keys["followup"])
                pipe.set(keys["queued"], follow_id)
                pipe.set(self._key(project, "queued_at"), time.time())
                return True
            return False

        if self.connection.transaction(attempt, *keys.values(), value_from_callable=True):
            self._enqueue(project, follow_id)
            return follow_id
        return None

    def requeue_if_forgotten(self, project: str, run: StartedRun) -> RequestOutcome | None:
        """Ask again for the run of a job that lost its lease because Redis lost its data (a
        restart of a Redis that keeps nothing on disk): no process would otherwise train the
        project until its next annotation. Nothing happens when Redis still knows the project:
        the lease then expired, and recovery has given the run to another job already."""
        if self.connection.sismember(PROJECTS_KEY, project):
            return None
        log.warning("project %s: Redis forgot the project; asking for its run again", project)
        return self.request(project, force=run.force, events=max(1, run.events))

    # --- repair ---------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Queue the work that was lost: runs whose worker died, queued ids with no RQ job.

        Safe to call from many processes at once. Returns the ids of jobs it queued.
        """
        queued: list[str] = []
        for raw in self.connection.smembers(PROJECTS_KEY):
            project = raw.decode()
            try:
                job_id = self._recover_project(project)
            except redis.WatchError:
                continue  # someone else changed it meanwhile; look again next time
            if job_id:
                log.warning("project %s: re-queued lost training work as %s", project, job_id)
                queued.append(job_id)
        return queued

    def _recover_project(self, project: str) -> str | None:
        names = ("pending", "force", "queued", "queued_at", "running", "followup", "taken")
        keys = {n: self._key(project, n) for n in names}
        new_id = f"train-{project}-{uuid.uuid4().hex[:12]}"
        queued_id = self.connection.get(keys["queued"])
        lost_queued = queued_id is not None and self._is_lost(
            queued_id.decode(), float(self.connection.get(keys["queued_at"]) or 0)
        )

        def attempt(pipe: redis.client.Pipeline) -> bool:
            running, taken = pipe.get(keys["running"]), pipe.get(keys["taken"])
            queued, followup = pipe.get(keys["queued"]), pipe.get(keys["followup"])
            died = running is None and taken is not None
            if queued != queued_id:
                return False
            if not (died or lost_queued or (followup and not running and not queued)):
                return False
            pipe.multi()
            if died:
                given = json.loads(taken)
                pipe.incrby(keys["pending"], int(given.get("events") or 0))
                if given.get("force"):
                    pipe.set(keys["force"], 1)
                pipe.delete(keys["taken"])
            pipe.delete(keys["followup"])
            pipe.set(keys["queued"], new_id)
            pipe.set(keys["queued_at"], time.time())
            return True

        if self.connection.transaction(attempt, *keys.values(), value_from_callable=True):
            self._enqueue(project, new_id)
            return new_id
        return None

    def _is_lost(self, job_id: str, queued_at: float) -> bool:
        """A queued job is lost when RQ no longer has it waiting (after a grace period)."""
        if time.time() - queued_at < STALE_QUEUED_S:
            return False
        try:
            status = Job.fetch(job_id, connection=self.connection).get_status()
        except NoSuchJobError:
            return True
        return status in (
            JobStatus.FAILED,
            JobStatus.STOPPED,
            JobStatus.CANCELED,
            JobStatus.FINISHED,
        )

    # --- reading ---------------------------------------------------------------------------

    def get_state(self, project: str) -> dict:
        """Pending events, the queued and running jobs (with progress) and the last result."""
        get = self.connection.get
        state: dict = {
            "project": project,
            "pending_events": int(get(self._key(project, "pending")) or 0),
            "follow_up_requested": bool(get(self._key(project, "followup"))),
            "queued": None,
            "running": None,
            "last": None,
        }
        for slot in ("queued", "running"):
            job_id = get(self._key(project, slot))
            if job_id:
                state[slot] = self.describe_job(job_id.decode())
        last = get(self._last_key(project))
        if last:
            state["last"] = json.loads(last)
        return state

    def describe_job(self, job_id: str) -> dict:
        """A job's id, RQ status and progress meta (or just its id if RQ no longer has it)."""
        try:
            job = Job.fetch(job_id, connection=self.connection)
        except NoSuchJobError:
            return {"id": job_id, "status": "unknown"}
        return {
            "id": job_id,
            "status": job.get_status(refresh=False),
            "progress": job.meta.get("progress"),
            "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
            "started_at": job.started_at.isoformat() if job.started_at else None,
        }


def make_coordinator(
    connection: redis.Redis, settings: Settings, *, is_async: bool = True
) -> TrainingCoordinator:
    """The coordinator every process builds the same way from the settings."""
    return TrainingCoordinator(
        connection,
        lease_s=settings.train_lease_s,
        job_timeout_s=settings.train_timeout_s,
        is_async=is_async,
    )
