"""The model store: immutable versions per Label Studio project and a ``current`` pointer.

Layout under MODEL_DIR::

    <project>/versions/<version>/model.keras
    <project>/versions/<version>/meta.json
    <project>/current            one line: the current version's name
    <project>/history.jsonl      append-only: one JSON line per change of status

A version is written into a temporary folder beside ``versions/`` and renamed into place,
and ``current`` is replaced with ``os.replace``: a reader never sees a half-written version
or pointer. Every process (serving, workers) reads the pointer from disk; nothing is cached
per process here.

Versions never change once published; what happens to them (made current, rolled back to,
promoted by hand, rejected by the quality gate) goes into ``history.jsonl``, from which a
version's status and the rollback target are derived. Each line is one ``write`` on a file
opened with ``O_APPEND``, so lines from concurrent processes never interleave. Rejected
versions past the newest few are deleted (training.versions.retention).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from training.durable import fsync_dir, fsync_tree, write_atomically
from training.versions import retention
from training.versions.names import VERSION_RE as _VERSION_RE
from training.versions.retention import KEEP_REJECTED_VERSIONS

MODEL_FILE = "model.keras"
META_FILE = "meta.json"
SPLIT_FILE = "split.json"
"""Which data keys (task ids, file hashes) a version trained, validated and was tested on."""
HISTORY_FILE = "history.jsonl"
NO_MODEL_VERSION = "untrained"
"""The version string reported for a project that has no trained model yet."""

_PROJECT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class StoreError(RuntimeError):
    """The model store is asked for something it does not hold, or cannot write."""


class HistoryAction(StrEnum):
    """What a line of ``history.jsonl`` records."""

    CURRENT = "current"
    """Made current as it was published (training passed the gate, or had no gate)."""
    PROMOTE = "promote"
    """Made current by hand (``videoloop models promote``), or forced past the gate."""
    ROLLBACK = "rollback"
    """Made current again by rolling back from the version after it."""
    REJECTED = "rejected"
    """Kept but not made current: the quality gate found it worse than the current one."""
    PRUNED = "pruned"
    """Deleted: a rejected version past the newest KEEP_REJECTED_VERSIONS."""


MAKES_CURRENT = (HistoryAction.CURRENT, HistoryAction.PROMOTE, HistoryAction.ROLLBACK)


class VersionStatus(StrEnum):
    """A version's standing, derived from ``current`` and the history."""

    CURRENT = "current"
    PREVIOUS = "previous"
    """Was current before."""
    REJECTED = "rejected"
    """Failed the quality gate and was never current."""
    AVAILABLE = "available"
    """Published, never current, never rejected (e.g. published before the history existed)."""


@dataclass(frozen=True)
class VersionInfo:
    """A published version: its name, folder and metadata; ``status`` is filled in by
    :meth:`ModelStore.list_versions` (None elsewhere: it costs reading the history)."""

    project: str
    version: str
    path: Path
    meta: dict
    status: VersionStatus | None = field(default=None, compare=False)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])


def validate_project(project: str) -> str:
    """Return ``project`` if it is safe as a folder name, else raise ValueError."""
    project = str(project)
    if not _PROJECT_RE.match(project) or project in {".", ".."}:
        raise ValueError(f"invalid project id {project!r}")
    return project


class ModelStore:
    """Versions and current pointers under one root folder, shared by all processes."""

    def __init__(self, root: Path | str, *, keep_rejected: int = KEEP_REJECTED_VERSIONS) -> None:
        self.root = Path(root)
        self.keep_rejected = retention.check_keep(keep_rejected)
        """Rejected versions kept per project; older ones are deleted (prune_rejected)."""

    def _project_dir(self, project: str) -> Path:
        return self.root / validate_project(project)

    def _versions_dir(self, project: str) -> Path:
        return self._project_dir(project) / "versions"

    def list_projects(self) -> list[str]:
        """Projects that have at least one published version."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir())

    def get_current(self, project: str) -> str | None:
        """The current version's name, or None when the project has none."""
        try:
            text = (self._project_dir(project) / "current").read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def get_current_info(self, project: str) -> VersionInfo | None:
        version = self.get_current(project)
        return self.get_version(project, version) if version else None

    def get_version(self, project: str, version: str) -> VersionInfo:
        """The version's info; raises StoreError if it was never published."""
        if not _VERSION_RE.match(version):
            raise StoreError(f"invalid version name {version!r}")
        path = self._versions_dir(project) / version
        try:
            meta = json.loads((path / META_FILE).read_text())
        except FileNotFoundError:
            raise StoreError(f"project {project} has no version {version}") from None
        return VersionInfo(project=project, version=version, path=path, meta=meta)

    def list_versions(self, project: str) -> list[VersionInfo]:
        """Published versions, oldest first, each with its status."""
        names = self._version_names(project)
        if not names:
            return []
        statuses = self.get_statuses(project)
        return [
            dataclasses.replace(self.get_version(project, n), status=statuses.get(n)) for n in names
        ]

    def set_current(
        self,
        project: str,
        version: str,
        *,
        action: HistoryAction | str = HistoryAction.CURRENT,
        reason: str = "published",
        details: dict | None = None,
    ) -> str | None:
        """Point ``current`` at an existing version, atomically, and record it in the history.

        Args:
            action: why it becomes current: ``current`` (published), ``promote``, ``rollback``.
            reason: free text for people reading the history.
            details: more JSON-able fields for the history line (e.g. the gate's figures).

        Returns:
            The version that was current before (None if none).

        Raises:
            StoreError: no such version.
        """
        action = HistoryAction(action)
        if action not in MAKES_CURRENT:
            raise ValueError(f"{action} does not make a version current")
        self.get_version(project, version)  # raises if absent (and creates no folder)
        pdir = self._project_dir(project)
        with retention.project_lock(pdir):  # no prune deletes it between check and write
            self.get_version(project, version)
            previous = self.get_current(project)
            write_atomically(pdir / "current", version + "\n", prefix=".current-")
            more = details or {}
            self._append_history(project, version, action, reason, previous=previous, **more)
        return previous

    def record_rejection(self, project: str, version: str, reason: str, **details) -> None:
        """Record that ``version`` failed the quality gate; ``current`` stays as it is.

        Raises:
            StoreError: no such version.
        """
        self.get_version(project, version)
        self._append_history(
            project,
            version,
            HistoryAction.REJECTED,
            reason,
            previous=self.get_current(project),
            **details,
        )
        self.prune_rejected(project)

    def prune_rejected(self, project: str) -> list[str]:
        """Delete the rejected versions past the newest ``keep_rejected`` (never one that is
        or was current, nor an available one), recording each in the history; returns them."""
        pdir = self._project_dir(project)
        with retention.project_lock(pdir):
            statuses = self.get_statuses(project)
            rejected = [
                v
                for v in self._version_names(project)
                if statuses.get(v) == VersionStatus.REJECTED  # one published meanwhile: no status
            ]
            pruned = retention.past_the_newest(rejected, self.keep_rejected)
            for version in pruned:
                retention.move_aside(self._versions_dir(project), pdir, version)
                reason = f"rejected, past the newest {self.keep_rejected} (KEEP_REJECTED_VERSIONS)"
                self._append_history(project, version, HistoryAction.PRUNED, reason)
        retention.delete_moved_aside(pdir)
        return pruned

    def get_history(self, project: str) -> list[dict]:
        """The history's entries, oldest first (a torn last line, if any, is left out)."""
        try:
            text = (self._project_dir(project) / HISTORY_FILE).read_text()
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("version"):
                entries.append(entry)
        return entries

    def get_statuses(self, project: str) -> dict[str, VersionStatus]:
        """Status of every version that has one other than ``available``, plus the current."""
        current = self.get_current(project)
        statuses: dict[str, VersionStatus] = {}
        for entry in self.get_history(project):
            version, action = entry["version"], entry.get("action")
            if action in MAKES_CURRENT:
                statuses[version] = VersionStatus.PREVIOUS
            elif action == HistoryAction.REJECTED and version not in statuses:
                statuses[version] = VersionStatus.REJECTED
            elif action == HistoryAction.PRUNED:
                statuses.pop(version, None)
        if current:
            statuses[current] = VersionStatus.CURRENT
        for version in self._version_names(project):
            statuses.setdefault(version, VersionStatus.AVAILABLE)
        return statuses

    def get_rollback_target(self, project: str) -> str | None:
        """The version that was current before the present one, or None.

        Replays the history as a stack: publishing or promoting pushes a version, a rollback
        pops one, so rolling back twice from v3 goes to v2, then v1 (not back to v3).
        """
        stack: list[str] = []
        for entry in self.get_history(project):
            version, action = entry["version"], entry.get("action")
            if action == HistoryAction.ROLLBACK:
                if stack:
                    stack.pop()
                while stack and stack[-1] != version:
                    stack.pop()
                if not stack:
                    stack.append(version)
            elif action in MAKES_CURRENT:
                if version in stack:
                    stack.remove(version)
                stack.append(version)
        current = self.get_current(project)
        existing = set(self._version_names(project))
        for version in reversed(stack):
            if version != current and version in existing:
                return version
        return None

    def _append_history(
        self, project: str, version: str, action: HistoryAction, reason: str, **details
    ) -> None:
        """One line, one ``write`` to a file opened with O_APPEND: concurrent writers never
        interleave within a line."""
        entry = {
            "time": time.time(),
            "version": version,
            "action": str(action),
            "reason": reason,
            **details,
        }
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        path = self._project_dir(project) / HISTORY_FILE
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def _version_names(self, project: str) -> list[str]:
        vdir = self._versions_dir(project)
        if not vdir.is_dir():
            return []
        names = [p.name for p in vdir.iterdir() if _VERSION_RE.match(p.name)]
        names.sort(key=lambda n: int(_VERSION_RE.match(n).group(1)))  # type: ignore[union-attr]
        return names

    def publish(
        self,
        project: str,
        write: Callable[[Path], dict],
        *,
        make_current: bool = True,
        reason: str = "published",
    ) -> VersionInfo:
        """Publish a new version.

        Args:
            project: Label Studio project id.
            write: called with an empty folder; writes ``model.keras`` (and any extra files)
                into it and returns the metadata (labels, sampling, metrics, ...).
            make_current: point ``current`` at the new version once it is in place.
            reason: the history's reason when it is made current.

        Returns:
            The published version.

        Raises:
            StoreError: ``write`` did not produce a model file.
        """
        vdir = self._versions_dir(project)
        vdir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self._project_dir(project)))
        try:
            meta = dict(write(staging))
            if not (staging / MODEL_FILE).is_file():
                raise StoreError(f"publishing {project}: no {MODEL_FILE} was written")
            version = self._rename_into_place(project, staging, meta)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if make_current:
            self.set_current(project, version, reason=reason)
        self.prune_rejected(project)
        return self.get_version(project, version)

    def _rename_into_place(self, project: str, staging: Path, meta: dict) -> str:
        """Name the version with the next number and rename it into place, under the
        project's lock: concurrent publishers (threads, processes) each get their own number."""
        vdir = self._versions_dir(project)
        fsync_tree(staging)  # complete on disk before a name says so
        with retention.project_lock(self._project_dir(project)):
            existing = [_VERSION_RE.match(p.name) for p in vdir.iterdir()]
            number = 1 + max((int(m.group(1)) for m in existing if m), default=0)
            version = f"v{number}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
            meta.update(version=version, project=project)
            meta.setdefault("created_at", time.time())
            write_atomically(
                staging / META_FILE, json.dumps(meta, indent=2, sort_keys=True), prefix=".meta-"
            )
            os.rename(staging, vdir / version)
            fsync_dir(vdir)
        return version

    def cleanup_staging(self, project: str, older_than_s: float = 3600.0) -> int:
        """Remove staging folders left by publishers that died; returns how many."""
        pdir = self._project_dir(project)
        if not pdir.is_dir():
            return 0
        removed = 0
        for p in pdir.glob(".staging-*"):
            if time.time() - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        return removed
