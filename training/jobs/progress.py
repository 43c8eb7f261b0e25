"""What a running job keeps up to date while it works: its progress, in the RQ job's meta
(what ``videoloop status`` and the backend's /training show), and its lease on the project
(what tells other processes the run is alive).
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from training.jobs.coordinator import TrainingCoordinator
from training.jobs.periodic import PeriodicTask

log = logging.getLogger(__name__)

META_SAVE_EVERY_S = 1.0
"""Progress is written to the job's meta at most this often (stage changes always), in seconds."""


class JobProgress:
    """Writes progress events into the RQ job's meta, throttled, and logs stage changes.

    Progress is for people watching: a write that fails because Redis is restarting is logged
    once and skipped, never a reason to stop a training run.
    """

    def __init__(self, job, project: str) -> None:
        self.job = job
        self.project = project
        self._stage: str | None = None
        self._saved_at = 0.0
        self._unsaved = False
        self._stage_started = time.monotonic()
        self._seconds: dict[str, float] = {}

    def __call__(self, event: dict) -> None:
        stage = event.get("stage")
        now = time.monotonic()
        if stage != self._stage:
            log.info("project %s: %s", self.project, event)
            self._close_stage(now)
        elif now - self._saved_at < META_SAVE_EVERY_S:
            return
        self._stage, self._saved_at = stage, now
        if self.job is not None:
            self.job.meta["progress"] = event
            try:
                self.job.save_meta()
            except redis.RedisError as exc:  # Redis restarting: the work goes on, the next write
                if not self._unsaved:  # shows it (the lease decides whether it may publish)
                    log.warning("project %s: progress not saved (Redis: %s)", self.project, exc)
                self._unsaved = True
            else:
                self._unsaved = False

    def _close_stage(self, now: float) -> None:
        if self._stage is not None:
            spent = now - self._stage_started
            self._seconds[self._stage] = self._seconds.get(self._stage, 0.0) + spent
        self._stage_started = now

    def stage_seconds(self) -> dict[str, float]:
        """Seconds spent in each stage so far (the current one up to now), in the order the
        stages came: the breakdown of a run's time that docs/retraining.md reports."""
        seconds = dict(self._seconds)
        if self._stage is not None:
            spent = time.monotonic() - self._stage_started
            seconds[self._stage] = seconds.get(self._stage, 0.0) + spent
        return {stage: round(value, 2) for stage, value in seconds.items()}


class LeaseLost(RuntimeError):
    """The job no longer owns its project's run: it must not publish or promote."""


class LeaseKeeper:
    """Renews the running job's lease in the background while the job works.

    A lease can still be lost (a pause longer than TRAIN_LEASE_S, a network blip): recovery
    then starts another run of the project. So the job asks :meth:`ensure_held` before it
    publishes and before it promotes, and stops there if the lease is gone: one run per
    project, always (docs/retraining.md).
    """

    CONFIRM_ATTEMPTS = 3
    """Tries of :meth:`ensure_held` while Redis does not answer, a second apart."""

    def __init__(self, coordinator: TrainingCoordinator, project: str, job_id: str) -> None:
        self._coordinator, self._project, self._job_id = coordinator, project, job_id
        self._lost = threading.Event()
        self._renewal = PeriodicTask(
            self._renew,
            max(0.5, coordinator.lease_s / 4),
            name="lease",
            expected=(redis.RedisError,),  # a blip: the next renewal retries
        )

    def __enter__(self) -> LeaseKeeper:
        self._renewal.start()
        return self

    def __exit__(self, *exc) -> None:
        self._renewal.stop(timeout_s=5)

    def _renew(self) -> None:
        if not self._lost.is_set() and not self._held():
            self._lost.set()
            log.warning(
                "project %s: job %s lost its lease; it will not publish",
                self._project,
                self._job_id,
            )

    def _held(self) -> bool:
        return self._coordinator.renew_lease(self._project, self._job_id)

    def ensure_held(self) -> None:
        """Return if the job still owns the run (renewing its lease), else raise.

        Raises:
            LeaseLost: the lease expired (another run may be under way), or Redis did not
                answer CONFIRM_ATTEMPTS times.
        """
        for attempt in range(self.CONFIRM_ATTEMPTS):
            if self._lost.is_set():
                break
            try:
                if self._held():
                    return
                self._lost.set()
            except redis.RedisError as exc:
                if attempt + 1 == self.CONFIRM_ATTEMPTS:
                    raise LeaseLost(
                        f"project {self._project}: cannot confirm job {self._job_id}'s lease: "
                        f"Redis does not answer ({exc})"
                    ) from exc
                time.sleep(1.0)
        raise LeaseLost(
            f"project {self._project}: job {self._job_id} lost its lease (TRAIN_LEASE_S); "
            "another run may own the project now, so this one publishes nothing"
        )
