"""Warnings logged once per process for a condition that holds on every request.

Why: "no model for project 3" or "this config offers none of the model's labels" is true for
every /predict until someone acts; logged each time it would bury everything else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable


class WarnOnce:
    """Logs a warning the first time its key is seen, and never again for that key."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[Hashable] = set()
        self._lock = threading.Lock()

    def __call__(self, key: Hashable, msg: str, *args: object) -> None:
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        self._logger.warning(msg, *args)
