"""Noticing that a project's current version moved, so the process's ModelServer swaps it in.

Two ways beside the request path's own rate-limited read (ModelServer.check), neither
depending on the other: a Redis pub/sub notice from VersionPointer.set (within milliseconds),
and a background poll of every loaded project's pointer, so an idle process swaps too and a
notice lost while Redis was away is caught within ``POLL_INTERVAL_S``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.serving import ModelServer
from training.jobs.periodic import PeriodicTask
from training.versions.current import PointerListener

if TYPE_CHECKING:
    import redis

POLL_INTERVAL_S = 1.0
"""Seconds between two background reads of every loaded project's pointer."""


class VersionWatch:
    """Polls the pointers of the projects ``server`` holds and listens for Redis notices."""

    def __init__(self, server: ModelServer, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.server = server
        self._poll = PeriodicTask(server.poll_once, poll_interval_s, name="pointer-poll")
        self._listener: PointerListener | None = None

    def start(self, connection: redis.Redis | None = None) -> VersionWatch:
        """Start polling, and listening on ``connection`` when one is given."""
        self._poll.start()
        if connection is not None:
            self.listen(connection)
        return self

    def listen(self, connection: redis.Redis) -> PointerListener:
        """Swap on Redis pub/sub notices of new current versions (VersionPointer.set)."""
        if self._listener is None:
            self._listener = PointerListener(
                connection, self.server.on_notice, on_connect=self.server.poll_once
            ).start()
        return self._listener

    def stop(self) -> None:
        self._poll.stop()
        if self._listener is not None:
            self._listener.stop()
