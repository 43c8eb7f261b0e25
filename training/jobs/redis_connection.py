"""Opening Redis connections: one function, with the timeouts each kind of caller needs.

Why the timeouts differ: the serving process talks to Redis inside ``/webhook``, which Label
Studio waits 1 s for; a person running a ``videoloop`` command wants a clear error within
seconds; an RQ worker blocks on its queue for minutes and must not time out while it waits.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from training.settings import Settings


@dataclass(frozen=True)
class RedisTimeouts:
    """How long to wait for Redis, in seconds: ``connect_s`` for a connection to open,
    ``answer_s`` for each answer once connected (None: no limit of ours)."""

    connect_s: float
    answer_s: float | None


SERVING_TIMEOUTS = RedisTimeouts(connect_s=0.5, answer_s=2.0)
"""The serving process (webhooks, status): connecting gives up after 0.5 s so that /webhook
answers within Label Studio's 1 s, and the request is kept for replay; a connection that opened
but hangs releases the request thread after 2 s."""

COMMAND_TIMEOUTS = RedisTimeouts(connect_s=2.0, answer_s=5.0)
"""``videoloop status``, ``train`` and ``models``: a person waits, so a wrong REDIS_URL or a
stuck server becomes an error within seconds instead of a hang."""

WORKER_TIMEOUTS = RedisTimeouts(connect_s=5.0, answer_s=None)
"""``videoloop worker``: no answer limit here, since the worker blocks on its queue for
minutes (BLPOP) and RQ's Worker sets the socket timeout itself, just above that wait. A
connection attempt still gives up after 5 s instead of the system's TCP timeout (minutes):
RQ retries connection errors with back-off, so a dead server is retried sooner."""


def connect_redis(settings: Settings, timeouts: RedisTimeouts) -> redis.Redis:
    """A Redis client for REDIS_URL with these timeouts; it connects on its first command.

    Raises:
        ValueError: REDIS_URL is not set.
    """
    if not settings.redis_url:
        raise ValueError("REDIS_URL is not set")
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=timeouts.connect_s,
        socket_timeout=timeouts.answer_s,
    )
