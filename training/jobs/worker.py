"""Running training jobs: ``videoloop worker`` (RQ on Redis) and the embedded thread worker.

``videoloop worker`` runs each job in its own process, without RQ's fork per job: TensorFlow
is imported once, before the first job, instead of once per job (3-5 s each time, more on a
loaded machine, and the lease renewals of a starting horse starved meanwhile). Nothing forks
after TensorFlow has started (docs/design.md). The last trained model stays built and traced,
and the versions it loaded stay loaded, for the next jobs (``WORKER_KEEP_WARM``; else Keras
state is cleared after every job). After ``WORKER_MAX_JOBS`` jobs the process asks to be
replaced by a fresh one (the CLI re-execs itself), so nothing one job leaves behind
accumulates. Killing the process kills its job:
the run's lease expires and recovery queues it again (docs/retraining.md).

The embedded worker (no REDIS_URL) runs jobs in a thread of the serving process against an
in-process fakeredis, with RQ's thread-based timeout instead of SIGALRM.
"""

from __future__ import annotations

import logging
import sys
import threading
from enum import Enum

import redis
from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from training.jobs.coordinator import TrainingCoordinator, make_coordinator
from training.jobs.periodic import PeriodicTask
from training.jobs.redis_connection import WORKER_TIMEOUTS, connect_redis
from training.settings import Settings

log = logging.getLogger(__name__)


class WorkerExit(Enum):
    """Why :func:`run_worker` returned."""

    STOPPED = "stopped"
    """Asked to stop (SIGTERM, SIGINT), or the queue is empty in burst mode."""
    RECYCLE = "recycle"
    """It ran WORKER_MAX_JOBS jobs: replace this process with a fresh one."""
    RESTART = "restart"
    """RQ's loop quit on an error (Redis restarting as a job ended): start a fresh process
    after a pause."""


class JobWorker(SimpleWorker):
    """Runs jobs in this process, one after another, with RQ's SIGALRM job timeout."""

    jobs_run = 0
    stop_requested = False
    """Set by SIGTERM or SIGINT (RQ's own flag is private)."""

    keep_warm = False
    """Keep the last trained model and the loaded versions between jobs (WORKER_KEEP_WARM)."""

    def execute_job(self, job, queue) -> None:
        self.jobs_run += 1
        try:
            super().execute_job(job, queue)
        finally:
            if not self.keep_warm:
                _release_models()

    def request_stop(self, signum, frame) -> None:
        self.stop_requested = True
        super().request_stop(signum, frame)

    def register_birth(self) -> None:
        """Register, replacing this very process's own record where a restart found one
        (same host and pid: the CLI re-execs in place) that Redis kept because the loop quit
        without registering its death."""
        hostname, pid, death = self.connection.hmget(self.key, ["hostname", "pid", "death"])
        mine = hostname == self.hostname.encode() and pid == str(self.pid).encode()
        if mine and death is None:
            self.connection.delete(self.key)
        super().register_birth()


def _release_models() -> None:
    """Drop what Keras keeps between jobs (models, traced functions) in this process."""
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.backend.clear_session()


def _import_tensorflow(keep_warm: bool) -> None:
    """Import TensorFlow and Keras once, before the first job: every job needs them. With
    ``keep_warm``, jobs keep their models for the next ones (WORKER_KEEP_WARM)."""
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    from training.learn.warm_model import WARM_MODEL
    from training.model.kept_versions import KEPT_VERSIONS

    WARM_MODEL.enabled = KEPT_VERSIONS.enabled = keep_warm


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> WorkerExit:
    """Run an RQ worker on the training queue of REDIS_URL until stopped (or idle, if burst),
    or until it has run WORKER_MAX_JOBS jobs.

    Raises:
        ValueError: REDIS_URL is not set (the embedded queue lives inside ``videoloop serve``).
    """
    if not settings.redis_url:
        raise ValueError(
            "REDIS_URL is not set: `videoloop worker` takes jobs from Redis; without it, "
            "`videoloop serve` trains in its own process"
        )
    connection = connect_redis(settings, WORKER_TIMEOUTS)
    coordinator = make_coordinator(connection, settings)
    recovery = PeriodicTask(
        coordinator.recover,
        settings.recover_every_s,
        name="recover",
        expected=(redis.RedisError,),
    ).start()
    try:
        _import_tensorflow(settings.worker_keep_warm)
        worker = JobWorker([coordinator.queue], connection=connection, name=name)
        worker.keep_warm = settings.worker_keep_warm
        max_jobs = settings.worker_max_jobs if settings.worker_max_jobs > 0 else None
        try:
            worker.work(
                burst=burst,
                logging_level=settings.log_level,
                with_scheduler=False,
                max_jobs=max_jobs,
            )
        except redis.RedisError as exc:  # its teardown could not reach Redis either
            log.warning("worker %s: RQ's loop ended on a Redis error: %s", worker.name, exc)
    finally:
        recovery.stop()
    if max_jobs is not None and worker.jobs_run >= max_jobs and not burst:
        log.info("worker %s ran %d jobs: a fresh process replaces it", worker.name, max_jobs)
        return WorkerExit.RECYCLE
    if burst or worker.stop_requested:
        return WorkerExit.STOPPED
    log.warning("worker %s: RQ's loop quit on an error; a fresh process starts", worker.name)
    return WorkerExit.RESTART


class ThreadWorker(SimpleWorker):
    """An RQ worker that runs inside a thread: no signal handlers, timer-based timeouts."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


def start_thread_worker(coordinator: TrainingCoordinator) -> ThreadWorker:
    """Start an embedded worker on the coordinator's queue in a daemon thread."""
    worker = ThreadWorker([coordinator.queue], connection=coordinator.connection)
    thread = threading.Thread(
        target=worker.work,
        kwargs={
            "with_scheduler": False,
            "logging_level": logging.getLevelName(log.getEffectiveLevel()),
        },
        name="embedded-worker",
        daemon=True,
    )
    thread.start()
    return worker
