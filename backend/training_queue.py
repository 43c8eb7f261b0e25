"""Connecting the backend to the training queue: Redis when REDIS_URL is set, else embedded.

Embedded: an in-process fakeredis server and an RQ worker thread, so ``videoloop serve``
alone trains (one process; with several gunicorn workers each would run its own queue, so
set REDIS_URL there). The coordination code is the same in both modes.
"""

from __future__ import annotations

import logging

import redis

from backend.training_requests import TrainingRequests
from training.jobs.training import make_coordinator
from training.settings import Settings

log = logging.getLogger(__name__)

REDIS_CONNECT_TIMEOUT_S = 0.5
"""Connecting to Redis gives up after this long: /webhook must answer within Label Studio's 1 s."""
REDIS_SOCKET_TIMEOUT_S = 2.0


def open_training(settings: Settings) -> TrainingRequests:
    """Build the process's TrainingRequests (and, embedded, its worker thread) and start it."""
    if settings.redis_url:
        connection = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        )
        coordinator = make_coordinator(connection, settings)
    else:
        import fakeredis

        from training.jobs.worker import start_thread_worker

        server = fakeredis.FakeServer()
        coordinator = make_coordinator(fakeredis.FakeRedis(server=server), settings)
        worker_coordinator = make_coordinator(fakeredis.FakeRedis(server=server), settings)
        start_thread_worker(worker_coordinator)
        log.info("no REDIS_URL: training runs in this process (embedded queue)")
    return TrainingRequests(coordinator, settings).start()
