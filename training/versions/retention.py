"""What the model store deletes so that it never grows without bound.

Every training run publishes a version, and one the quality gate rejects is kept so that a
person can still promote it; a project whose runs keep failing the gate would fill the disk.
Rejected versions past the newest KEEP_REJECTED_VERSIONS are deleted when another version is
published or rejected. Versions that are or were current (rollback targets) and available ones
are never deleted. A deletion takes the project's lock, as does making a version current, so
a version promoted by hand at that moment is either kept or refused, never left dangling.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KEEP_REJECTED_VERSIONS = 5
"""Default number of rejected versions kept per project (setting KEEP_REJECTED_VERSIONS)."""

PRUNED_PREFIX = ".pruned-"
"""A pruned version is renamed to this prefix + its name (readers stop seeing it at once),
then deleted; leftovers of a process that died in between are deleted at the next prune."""

LOCK_FILE = ".lock"


@contextmanager
def project_lock(project_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the project's lock file (across threads and processes;
    over NFS, Linux maps it to the server's locks)."""
    fd = os.open(project_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_keep(keep: int) -> int:
    """At least 1, so the newest version is never deleted and its number never reused."""
    if keep < 1:
        raise ValueError(f"KEEP_REJECTED_VERSIONS must be at least 1, got {keep}")
    return keep


def past_the_newest(rejected: list[str], keep: int) -> list[str]:
    """The rejected versions (oldest first) to delete so that the newest ``keep`` remain."""
    return rejected[: max(len(rejected) - keep, 0)]


def move_aside(versions_dir: Path, project_dir: Path, version: str) -> None:
    """Take a version out of ``versions/`` in one rename: readers never see half of it."""
    os.rename(versions_dir / version, project_dir / f"{PRUNED_PREFIX}{version}")


def delete_moved_aside(project_dir: Path) -> None:
    """Delete every version moved aside, a dead process's leftovers included."""
    for path in project_dir.glob(f"{PRUNED_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
