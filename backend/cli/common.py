"""What every ``videoloop`` subcommand shares: quiet TensorFlow logs, a Redis for commands."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from training.settings import Settings

if TYPE_CHECKING:
    import redis


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def command_redis(settings: Settings) -> redis.Redis | None:
    """A Redis connection when REDIS_URL is set (to read the training state, and to mirror
    and announce version changes), with the timeouts of a command a person waits for."""
    if not settings.redis_url:
        return None
    from training.jobs.redis_connection import COMMAND_TIMEOUTS, connect_redis

    return connect_redis(settings, COMMAND_TIMEOUTS)
