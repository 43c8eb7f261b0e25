"""Connecting the backend to the training queue: Redis when REDIS_URL is set, else embedded.

Embedded: an in-process fakeredis server and an RQ worker thread, so ``videoloop serve``
alone trains (one process; with several gunicorn workers each would run its own queue, so
set REDIS_URL there). The coordination code is the same in both modes.
"""

from __future__ import annotations

import logging

from backend.training_requests import TrainingRequests
from training.jobs.coordinator import make_coordinator
from training.jobs.redis_connection import SERVING_TIMEOUTS, connect_redis
from training.settings import Settings

log = logging.getLogger(__name__)


def open_training(settings: Settings) -> TrainingRequests:
    """Build the process's TrainingRequests (and, embedded, its worker thread) and start it."""
    if settings.redis_url:
        coordinator = make_coordinator(connect_redis(settings, SERVING_TIMEOUTS), settings)
    else:
        import fakeredis

        from training.jobs.worker import start_thread_worker

        server = fakeredis.FakeServer()
        coordinator = make_coordinator(fakeredis.FakeRedis(server=server), settings)
        worker_coordinator = make_coordinator(fakeredis.FakeRedis(server=server), settings)
        start_thread_worker(worker_coordinator)
        log.info("no REDIS_URL: training runs in this process (embedded queue)")
    return TrainingRequests(coordinator, settings).start()
