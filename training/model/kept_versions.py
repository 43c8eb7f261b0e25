"""Models of published versions that a worker loaded, kept for its next jobs.

Why: a worker's jobs load the same few versions again and again: the refresh job (and every
chunk of a fanned-out refresh) loads the version it writes, a retrain loads its parent to
start from, the quality gate loads the current version to score it. Each load read the file
and built the model anew (and traced its predict step): about a second each, more on a loaded
machine, several times per Submit. A version's model file never changes once it is
published (training/versions/store.py), so a kept model is always the right one, and so is
the serving bundle made from it (training/model/loaded.py: its traced predict step), which
every refresh job made anew.

Only ``videoloop worker`` turns this on (``WORKER_KEEP_WARM``); a few models at most (a
compact model is a few MB) and the worker still replaces itself every ``WORKER_MAX_JOBS``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any


class KeptVersions:
    """The last ``size`` things made from version files (models by file path, serving
    bundles), least recently used first."""

    def __init__(self, size: int = 6) -> None:
        self.enabled = False
        self.size = size
        self.loads = 0
        self._lock = threading.RLock()  # a bundle is made from a model kept here too
        self._models: OrderedDict[str, Any] = OrderedDict()

    def load(self, path: str | Path) -> Any:
        """The Keras model saved at ``path`` (training.model.build.load_keras_model), kept
        for the next call when enabled."""
        from training.model.build import load_keras_model

        def load() -> Any:
            self.loads += 1
            return load_keras_model(path)

        return self.keep(str(Path(path).resolve()), load)

    def keep(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """What ``make()`` gives, kept under ``key`` when enabled (anything made from one
        version's file alone: its model, its serving bundle at a batch size)."""
        if not self.enabled:
            return make()
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            made = self._models[key] = make()
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return made

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


KEPT_VERSIONS = KeptVersions()
"""This process's kept models; ``videoloop worker`` enables it."""
