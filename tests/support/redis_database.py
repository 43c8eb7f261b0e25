"""A database of the real Redis on 127.0.0.1:6379 that one test process holds for its session.

rq's tests pick an empty database (``find_empty_redis_database`` in rq/rq
``tests/__init__.py``) and flush it around each test. With pytest-xdist several test processes
run at once, and other pytest runs may share the server: a database that is empty when one
process looks can be picked by another a moment later, and each would flush the other's jobs
away. So a process *claims* one: it sets ``CLAIM_KEY`` (NX) in a database it found empty, and
holds it for its session. Each flush is FLUSHDB and the claim again in one MULTI/EXEC, so the
database never looks empty to anyone else while it is held; the claim expires after
``CLAIM_TTL_S`` (renewed by every flush) so a killed run does not keep it for ever. Database 0
is never used: it is a developer's default.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import redis

HOST, PORT = "127.0.0.1", 6379
CLAIM_KEY = "videoloop-tests:claimed-by"
CLAIM_TTL_S = 3600
DATABASES = range(15, 0, -1)


class NoEmptyDatabase(RuntimeError):
    pass


@dataclass(frozen=True)
class RedisDatabase:
    db: int
    owner: str

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{PORT}/{self.db}"

    def connect(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=PORT, db=self.db)

    def flush(self) -> None:
        """Empty the database but for the claim, in one transaction."""
        with self.connect() as connection:
            pipe = connection.pipeline(transaction=True)
            pipe.flushdb()
            pipe.set(CLAIM_KEY, self.owner, ex=CLAIM_TTL_S)
            pipe.execute()

    def release(self) -> None:
        with self.connect() as connection:
            if connection.get(CLAIM_KEY) == self.owner.encode():
                connection.flushdb()


def claim_empty_database() -> RedisDatabase:
    """Claim the first empty database counting down from 15.

    Raises:
        NoEmptyDatabase: none is empty (or Redis does not answer), with the reason.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    owner = f"{socket.gethostname()}:{os.getpid()}:{worker}"
    try:
        for db in DATABASES:
            with redis.Redis(host=HOST, port=PORT, db=db) as connection:
                if connection.dbsize() != 0:
                    continue
                if not connection.set(CLAIM_KEY, owner, nx=True, ex=CLAIM_TTL_S):
                    continue  # another process claimed it since we looked
                if connection.dbsize() == 1:
                    return RedisDatabase(db, owner)
                # Someone that does not claim (an older checkout's tests, a bench script)
                # started writing there meanwhile: leave it to them.
                if connection.get(CLAIM_KEY) == owner.encode():
                    connection.delete(CLAIM_KEY)
    except redis.RedisError as exc:
        raise NoEmptyDatabase(
            f"Redis on {HOST}:{PORT} does not answer ({exc}): run scripts/ensure-redis"
        ) from exc
    raise NoEmptyDatabase(
        f"no empty Redis database among {DATABASES.stop + 1}..{DATABASES.start} on {HOST}:{PORT} "
        "(other test runs hold them, or something else uses them)"
    )
