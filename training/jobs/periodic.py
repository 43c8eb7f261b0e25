"""A step run every few seconds on a daemon thread, for background upkeep.

Why one class: the backend and every worker repair lost training work periodically, and the
backend also replays requests kept while Redis was down. Such a loop must survive failures:
the ones expected now and then (Redis down) are logged at debug level without a traceback,
any other is logged with its traceback, and neither stops the loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicTask:
    """Calls ``step()`` every ``every_s`` seconds, the first time ``every_s`` after start,
    until :meth:`stop`.

    Args:
        step: the work; what it returns is ignored.
        every_s: seconds between the end of one step and the start of the next.
        name: the thread's name, also what the log messages say.
        expected: exception types that only mean "not now" (logged at debug level).
    """

    def __init__(
        self,
        step: Callable[[], object],
        every_s: float,
        *,
        name: str,
        expected: tuple[type[Exception], ...] = (),
    ) -> None:
        self.name = name
        self._step = step
        self._every_s = every_s
        self._expected = expected
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> PeriodicTask:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 0.0) -> None:
        """Ask the loop to end, and wait up to ``timeout_s`` for a step under way to finish
        (0: do not wait; the daemon thread ends on its own)."""
        self._stop.set()
        if (
            timeout_s > 0
            and self._thread.is_alive()
            and self._thread is not threading.current_thread()
        ):
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self._step()
            except self._expected as exc:
                log.debug("%s skipped: %s", self.name, exc)
            except Exception:
                log.exception("%s failed", self.name)
