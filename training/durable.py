"""Writes that survive a crash or a full disk: the model store's pointer and version folders.

``os.replace`` and ``os.rename`` are atomic, but only what was fsynced before them is sure to be
on disk after a power cut: a version folder renamed into place could otherwise come back with a
truncated model file, and a pointer with no content. So files are fsynced before the rename and
the folder that holds the new name after it. A write that fails (a full disk, say) removes its
temporary file instead of leaving ``.current-*`` files behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str, *, prefix: str) -> None:
    """Replace ``path`` with ``text``: readers see the old content or the new, never a part.

    Raises:
        OSError: the write failed; ``path`` is unchanged and no temporary file is left.
    """
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and the folders themselves (before renaming it)."""
    for path in [*folder.rglob("*"), folder]:
        if path.is_dir():
            fsync_dir(path)
        else:
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that names created or renamed in it are on disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
