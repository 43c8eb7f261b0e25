"""Keras models of published versions that a worker loaded, kept for its next jobs.

Why: a worker's jobs load the same few versions again and again: the refresh job (and every
chunk of a fanned-out refresh) loads the version it writes, a retrain loads its parent to
start from, the quality gate loads the current version to score it. Each load read the file
and built the model anew (and traced its predict step): about a second each, more on a loaded
machine, several times per Submit. A version's model file never changes once it is
published (training/versions/store.py), so a kept model is always the right one.

Only ``videoloop worker`` turns this on (``WORKER_KEEP_WARM``); a few models at most (a
compact model is a few MB) and the worker still replaces itself every ``WORKER_MAX_JOBS``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any


class KeptVersions:
    """The last ``size`` version models loaded, by file path, least recently used first."""

    def __init__(self, size: int = 3) -> None:
        self.enabled = False
        self.size = size
        self.loads = 0
        self._lock = threading.Lock()
        self._models: OrderedDict[str, Any] = OrderedDict()

    def load(self, path: str | Path) -> Any:
        """The Keras model saved at ``path`` (training.model.build.load_keras_model), kept
        for the next call when enabled."""
        from training.model.build import load_keras_model

        if not self.enabled:
            self.loads += 1
            return load_keras_model(path)
        key = str(Path(path).resolve())
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            self.loads += 1
            model = load_keras_model(key)
            self._models[key] = model
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


KEPT_VERSIONS = KeptVersions()
"""This process's kept models; ``videoloop worker`` enables it."""
