"""Versions in a local or NFS folder shared by every process (the default ``MODEL_DIR``).

A version is written into a staging folder beside ``versions/`` and renamed into place, and
``current`` is replaced with ``os.replace``: a reader never sees a half-written version or
pointer. History lines are each one ``write`` on a file opened with ``O_APPEND``, so lines
from concurrent processes never interleave. Number allocation and pointer changes run under
the project's ``flock`` (training/versions/retention.py), which ``ModelStore`` takes.

Layout under the root: ``<project>/versions/<version>/``, ``<project>/current`` (one line, the
version's name; its modification time is when it was set), ``<project>/history.jsonl``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from training.durable import fsync_dir, fsync_tree, write_atomically
from training.versions import retention
from training.versions.names import VERSION_RE, new_version_name
from training.versions.storage import META_FILE, CurrentVersion, stamp_meta

CURRENT_FILE = "current"
HISTORY_FILE = "history.jsonl"


class LocalStorage:
    """The :class:`~training.versions.storage.VersionStorage` of a folder on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _versions_dir(self, project: str) -> Path:
        return self.root / project / "versions"

    def list_projects(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir())

    def read_pointer(self, project: str) -> CurrentVersion | None:
        """Read from one open file: the name and the time it was set belong together."""
        try:
            with open(self.root / project / CURRENT_FILE) as fh:
                set_at = os.fstat(fh.fileno()).st_mtime
                version = fh.read().strip()
        except FileNotFoundError:
            return None
        return CurrentVersion(version, set_at) if version else None

    def write_pointer(self, project: str, version: str) -> str | None:
        """Called under the project's lock, so the previous one read here is exact."""
        previous = self.read_pointer(project)
        write_atomically(self.root / project / CURRENT_FILE, version + "\n", prefix=".current-")
        return previous.version if previous else None

    def read_history(self, project: str) -> str:
        try:
            return (self.root / project / HISTORY_FILE).read_text()
        except FileNotFoundError:
            return ""

    def append_history(self, project: str, line: bytes) -> None:
        """One ``write`` to a file opened with O_APPEND: lines never interleave."""
        path = self.root / project / HISTORY_FILE
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def version_names(self, project: str) -> list[str]:
        vdir = self._versions_dir(project)
        if not vdir.is_dir():
            return []
        return [p.name for p in vdir.iterdir() if VERSION_RE.match(p.name)]

    def read_meta(self, project: str, version: str) -> dict | None:
        try:
            return json.loads((self._versions_dir(project) / version / META_FILE).read_text())
        except FileNotFoundError:
            return None

    def local_folder(self, project: str, version: str) -> Path:
        return self._versions_dir(project) / version

    folder_of = local_folder

    def add_version(self, project: str, staging: Path, meta: dict) -> str:
        """Name the version with the next number and rename it into place, under the
        project's lock: concurrent publishers (threads, processes) each get their own number."""
        vdir = self._versions_dir(project)
        vdir.mkdir(parents=True, exist_ok=True)
        fsync_tree(staging)  # complete on disk before a name says so
        with retention.project_lock(self.root / project):
            existing = [VERSION_RE.match(p.name) for p in vdir.iterdir()]
            number = 1 + max((int(m.group(1)) for m in existing if m), default=0)
            version = new_version_name(number)
            text = stamp_meta(meta, project, version)
            write_atomically(staging / META_FILE, text, prefix=".meta-")
            os.rename(staging, vdir / version)
            fsync_dir(vdir)
        return version

    def remove_version(self, project: str, version: str) -> None:
        retention.move_aside(self._versions_dir(project), self.root / project, version)

    def finish_removals(self, project: str) -> None:
        retention.delete_moved_aside(self.root / project)
