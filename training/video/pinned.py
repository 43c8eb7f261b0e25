"""Keeping a training run's videos until the run ends, whatever the media cache evicts.

A run fetches every labelled video first and decodes them later (and the quality gate may
decode them again at the current version's sampling). With more labelled video than
CACHE_MAX_MB, each download evicted videos fetched earlier in the same run, and those were
then skipped as missing: the run trained on a fraction of the project and said nothing. So a
run hard-links each file it fetched into a folder of its own: eviction may unlink the cache's
name, the run's name keeps the bytes until the run removes its folder. Hard links cost no
copy and work across processes sharing CACHE_DIR; where the filesystem refuses one, the file
is copied. Folders of runs that died (SIGKILL) are removed by the next run once they are
older than ``stale_after_s``.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

RUNS_SUBDIR = "runs"
"""The folder under CACHE_DIR holding one folder per training run in progress."""


class PinnedFiles:
    """A run's own names for the files it uses; see the module docstring.

    Use as a context manager: :meth:`keep` inside it, everything removed on exit.
    """

    def __init__(self, root: Path | str, *, stale_after_s: float) -> None:
        self.root = Path(root)
        self.stale_after_s = stale_after_s
        self.folder: Path | None = None
        self.bytes = 0
        self.copied = 0
        self._numbers = itertools.count()

    def __enter__(self) -> PinnedFiles:
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale()
        self.folder = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def keep(self, path: Path | str, name: str) -> Path:
        """The run's own path to ``path``'s content, valid until the run ends.

        Raises:
            FileNotFoundError: ``path`` vanished before it could be kept.
        """
        if self.folder is None:
            raise RuntimeError("PinnedFiles.keep outside its `with` block")
        source = Path(path)
        target = self.folder / f"{next(self._numbers)}-{Path(name).name}"
        try:
            os.link(source, target)
        except FileNotFoundError:
            raise
        except OSError:  # another filesystem, or one without hard links
            shutil.copyfile(source, target)
            self.copied += 1
        self.bytes += target.stat().st_size
        return target

    def _remove_stale(self) -> None:
        now = time.time()
        for folder in self.root.iterdir():
            try:
                if now - folder.stat().st_mtime > self.stale_after_s:
                    shutil.rmtree(folder, ignore_errors=True)
                    log.info("removed %s, left by a training run that ended abruptly", folder)
            except FileNotFoundError:
                continue
