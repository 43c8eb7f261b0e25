"""Running training jobs: ``videoloop worker`` (RQ on Redis) and the embedded thread worker.

The real worker forks a work horse per job (RQ's default), so TensorFlow is imported fresh in
each horse and never in the long-lived parent: forking after TensorFlow has started breaks
(docs/design.md). The embedded worker (no REDIS_URL) runs jobs in a thread of the serving process
against an in-process fakeredis, with RQ's thread-based timeout instead of SIGALRM.
"""

from __future__ import annotations

import logging
import threading

import redis
from rq import SimpleWorker, Worker
from rq.timeouts import TimerDeathPenalty

from training.jobs.coordinator import TrainingCoordinator, make_coordinator
from training.jobs.periodic import PeriodicTask
from training.jobs.redis_connection import WORKER_TIMEOUTS, connect_redis
from training.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Run an RQ worker on the training queue of REDIS_URL until stopped (or idle, if burst).

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
        worker = Worker([coordinator.queue], connection=connection, name=name)
        return worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)
    finally:
        recovery.stop()


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
