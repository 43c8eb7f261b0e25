"""The one way to read and change a project's current model version.

The truth is the store's pointer (``training/versions/store.py`` replaces it atomically: a
file in ``MODEL_DIR``, or an object written conditionally in the S3 store): the embedded mode,
a restarted process and any process that lost Redis read it.
Redis mirrors it for everyone else: :meth:`VersionPointer.set` writes
``videoloop:current:<project>`` and publishes a notice on ``videoloop:current``, so serving
processes swap within moments instead of at their next poll. Redis failing never fails a
change: the file is already written and serving processes also poll it (docs/design.md: no
per-process cache that goes stale).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable

import redis

from training.versions.storage import CurrentVersion as CurrentVersion
from training.versions.store import ModelStore, validate_project

log = logging.getLogger(__name__)

CURRENT_KEY = "videoloop:current:{0}"
"""Redis key (by project) mirroring the store's pointer: the version name, nothing else."""

CURRENT_CHANNEL = "videoloop:current"
"""Pub/sub channel announcing changes, as JSON ``{"project": ..., "version": ...}``."""

LISTEN_POLL_S = 1.0
"""Seconds a listener waits for a message before it looks at its stop flag again."""

RECONNECT_MIN_S = 0.5
"""Seconds a listener waits before its first reconnection attempt after Redis went away."""

RECONNECT_MAX_S = 10.0
"""Upper bound, in seconds, of the doubling wait between reconnection attempts."""


class VersionPointer:
    """Reads and changes current versions: the store's file first, then the Redis mirror.

    Args:
        store: the model store holding the pointer files.
        connection: Redis to mirror and announce changes on; None where there is no Redis
            (the CLI, tests): then only the file changes and serving processes poll it.
    """

    def __init__(self, store: ModelStore, connection: redis.Redis | None = None) -> None:
        self.store = store
        self.connection = connection

    def get(self, project: str) -> str | None:
        """The current version's name (from the store's file), or None when there is none."""
        current = self.get_current(project)
        return current.version if current else None

    def get_current(self, project: str) -> CurrentVersion | None:
        """The current version and the time it was set, read together from the store.

        Raises:
            ValueError: ``project`` is not a valid project id.
            OSError: the store cannot be read.
        """
        return self.store.get_pointer(project)

    def set(self, project: str, version: str, **history: object) -> str | None:
        """Make ``version`` current: the file atomically, then the Redis mirror and a notice.

        A Redis error is logged, not raised: the file is the truth and serving processes poll
        it, so the change still reaches them (within their poll interval instead of at once).

        Args:
            project: Label Studio project id.
            version: a published version of it.
            history: passed on to ``ModelStore.set_current`` (why it becomes current).

        Returns:
            What ``ModelStore.set_current`` returns (the previous version, where it says).

        Raises:
            StoreError: the version was never published.
            OSError: the pointer file cannot be written.
        """
        previous = self.store.set_current(project, version, **history)
        log.info("project %s: version %s is current", project, version)
        if self.connection is None:
            return previous
        notice = json.dumps({"project": project, "version": version})
        try:
            pipe = self.connection.pipeline(transaction=True)
            pipe.set(CURRENT_KEY.format(project), version)
            pipe.publish(CURRENT_CHANNEL, notice)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning(
                "project %s: version %s is current in the store, but Redis did not take the "
                "notice (%s: %s); serving processes will find it by polling the store",
                project,
                version,
                type(exc).__name__,
                exc,
            )
        return previous

    def get_mirror(self, project: str) -> str | None:
        """The version Redis mirrors for the project (None without Redis or without a key).

        Raises:
            redis.RedisError: Redis is unreachable.
        """
        if self.connection is None:
            return None
        raw = self.connection.get(CURRENT_KEY.format(validate_project(project)))
        return raw.decode() if isinstance(raw, bytes) else raw


class PointerListener:
    """Calls ``callback(project)`` for each change notice, on a daemon thread.

    Reconnects with a doubling backoff when Redis goes away; notices published meanwhile are
    lost (pub/sub keeps nothing), which is why serving processes also poll the store and why
    ``on_connect`` (called after every (re)subscription) is the place to catch up.

    Args:
        connection: any Redis connection (its pool lends the subscription a connection).
        callback: called with the project id of each notice; exceptions are logged.
        on_connect: called after each successful subscription, e.g. to re-read pointers.
    """

    def __init__(
        self,
        connection: redis.Redis,
        callback: Callable[[str], object],
        *,
        on_connect: Callable[[], object] | None = None,
        channel: str = CURRENT_CHANNEL,
    ) -> None:
        self._connection = connection
        self._callback = callback
        self._on_connect = on_connect
        self.channel = channel
        self._stop = threading.Event()
        self.connected = threading.Event()
        """Set while subscribed (tests and health checks wait on it)."""
        self._thread = threading.Thread(target=self._run, name="pointer-listener", daemon=True)

    def start(self) -> PointerListener:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2 * LISTEN_POLL_S) -> None:
        """Ask the thread to end and wait up to ``timeout_s`` for it."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff_s = RECONNECT_MIN_S
        down_since_logged = False
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._connection.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self.connected.set()
                if down_since_logged:
                    log.info("listening for version changes on Redis again")
                down_since_logged = False
                backoff_s = RECONNECT_MIN_S
                self._safely(self._on_connect)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=LISTEN_POLL_S)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message.get("data"))
            except (redis.RedisError, OSError) as exc:
                self.connected.clear()
                if not down_since_logged:
                    log.warning(
                        "not listening for version changes (Redis: %s: %s); retrying, "
                        "polling the store meanwhile",
                        type(exc).__name__,
                        exc,
                    )
                    down_since_logged = True
                self._stop.wait(backoff_s)
                backoff_s = min(2 * backoff_s, RECONNECT_MAX_S)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        pubsub.close()
        self.connected.clear()

    def _dispatch(self, data: object) -> None:
        try:
            project = json.loads(data)["project"]  # type: ignore[arg-type]
            project = validate_project(str(project))
        except (TypeError, ValueError, KeyError) as exc:
            log.warning("ignoring a malformed version notice %r: %s", data, exc)
            return
        self._safely(self._callback, project)

    @staticmethod
    def _safely(fn: Callable[..., object] | None, *args: object) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("version-change handler failed")
