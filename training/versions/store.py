"""The model store: immutable versions per Label Studio project and a ``current`` pointer.

The rules live here; the bytes live in a storage (training/versions/storage.py): a local or
NFS folder (``MODEL_DIR``, training/versions/local_storage.py) or an S3-compatible object
store (``MODEL_STORE_URL``, training/versions/s3_storage.py). Either way a reader never sees a
half-written version or pointer, and every process (serving, workers) reads the pointer from
the storage; nothing is cached per process here (versions, which never change, are cached on
disk by the S3 storage).

Versions never change once published; what happens to them (made current, rolled back to,
promoted by hand, rejected by the quality gate) goes into the project's history, one JSON line
per change, from which a version's status and the rollback target are derived. Rejected
versions past the newest few are deleted (training.versions.retention).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from training.versions import retention
from training.versions.local_storage import HISTORY_FILE as HISTORY_FILE
from training.versions.local_storage import LocalStorage
from training.versions.names import VERSION_RE as _VERSION_RE
from training.versions.retention import KEEP_REJECTED_VERSIONS
from training.versions.storage import META_FILE as META_FILE
from training.versions.storage import CurrentVersion, VersionStorage

if TYPE_CHECKING:
    from training.settings import Settings

MODEL_FILE = "model.keras"
SPLIT_FILE = "split.json"
"""Which data keys (task ids, file hashes) a version trained, validated and was tested on."""
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
    """Versions and current pointers, shared by all processes.

    Args:
        root: a local folder: the whole store (``MODEL_DIR``), or with ``storage`` given,
            this machine's cache of versions and the place versions are staged.
        keep_rejected: rejected versions kept per project (prune_rejected).
        storage: where versions live (default: the folder ``root`` itself).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        keep_rejected: int = KEEP_REJECTED_VERSIONS,
        storage: VersionStorage | None = None,
    ) -> None:
        self.root = Path(root)
        self.keep_rejected = retention.check_keep(keep_rejected)
        """Rejected versions kept per project; older ones are deleted (prune_rejected)."""
        self.storage: VersionStorage = storage or LocalStorage(self.root)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelStore:
        """The store MODEL_DIR and MODEL_STORE_URL name (training/versions/configured.py)."""
        from training.versions.configured import open_store

        return open_store(settings)

    def _project_dir(self, project: str) -> Path:
        return self.root / validate_project(project)

    def _lock(self, project: str):
        """The project's lock on this machine (the S3 storage's conditional writes order
        writers on different machines)."""
        pdir = self._project_dir(project)
        pdir.mkdir(parents=True, exist_ok=True)
        return retention.project_lock(pdir)

    def list_projects(self) -> list[str]:
        """Projects that have at least one published version."""
        return self.storage.list_projects()

    def get_pointer(self, project: str) -> CurrentVersion | None:
        """The current version and when it was set, or None when the project has none.

        Raises:
            ValueError: ``project`` is not a valid project id.
            OSError: the storage cannot be read.
        """
        return self.storage.read_pointer(validate_project(project))

    def get_current(self, project: str) -> str | None:
        """The current version's name, or None when the project has none."""
        current = self.get_pointer(project)
        return current.version if current else None

    def get_current_info(self, project: str) -> VersionInfo | None:
        version = self.get_current(project)
        return self.get_version(project, version) if version else None

    def _get_meta(self, project: str, version: str) -> dict:
        if not _VERSION_RE.match(version):
            raise StoreError(f"invalid version name {version!r}")
        meta = self.storage.read_meta(validate_project(project), version)
        if meta is None:
            raise StoreError(f"project {project} has no version {version}")
        return meta

    def get_version(self, project: str, version: str) -> VersionInfo:
        """The version's info, its files in a local folder; raises StoreError if it was never
        published."""
        meta = self._get_meta(project, version)
        path = self.storage.local_folder(project, version)
        return VersionInfo(project=project, version=version, path=path, meta=meta)

    def list_versions(self, project: str) -> list[VersionInfo]:
        """Published versions, oldest first, each with its status and metadata. Their files
        are not fetched (an S3 store's ``path`` may not exist yet: get_version fetches)."""
        names = self._version_names(project)
        if not names:
            return []
        statuses = self.get_statuses(project)
        folder, meta = self.storage.folder_of, self._get_meta
        return [
            VersionInfo(project, n, folder(project, n), meta(project, n), statuses.get(n))
            for n in names
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
            WriteConflict: other writers kept moving the pointer (S3 storage).
        """
        action = HistoryAction(action)
        if action not in MAKES_CURRENT:
            raise ValueError(f"{action} does not make a version current")
        self._get_meta(project, version)  # raises if absent (and creates no folder)
        with self._lock(project):  # no prune deletes it between check and write
            self._get_meta(project, version)
            previous = self.storage.write_pointer(project, version)
            more = details or {}
            self._append_history(project, version, action, reason, previous=previous, **more)
        return previous

    def record_rejection(self, project: str, version: str, reason: str, **details) -> None:
        """Record that ``version`` failed the quality gate; ``current`` stays as it is.

        Raises:
            StoreError: no such version.
        """
        self._get_meta(project, version)
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
        with self._lock(project):
            statuses = self.get_statuses(project)
            rejected = [
                v
                for v in self._version_names(project)
                if statuses.get(v) == VersionStatus.REJECTED  # one published meanwhile: no status
            ]
            pruned = retention.past_the_newest(rejected, self.keep_rejected)
            for version in pruned:
                self.storage.remove_version(project, version)
                reason = f"rejected, past the newest {self.keep_rejected} (KEEP_REJECTED_VERSIONS)"
                self._append_history(project, version, HistoryAction.PRUNED, reason)
        self.storage.finish_removals(project)
        return pruned

    def get_history(self, project: str) -> list[dict]:
        """The history's entries, oldest first (a torn last line, if any, is left out)."""
        text = self.storage.read_history(validate_project(project))
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
        """One JSON line; the storage keeps every concurrent writer's line whole."""
        entry = {
            "time": time.time(),
            "version": version,
            "action": str(action),
            "reason": reason,
            **details,
        }
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        self.storage.append_history(validate_project(project), line)

    def version_names(self, project: str) -> list[str]:
        """The project's version names, oldest first; on S3 nothing is downloaded."""
        return self._version_names(project)

    def _version_names(self, project: str) -> list[str]:
        names = self.storage.version_names(validate_project(project))
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
        pdir = self._project_dir(project)
        pdir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=pdir))
        try:
            meta = dict(write(staging))
            if not (staging / MODEL_FILE).is_file():
                raise StoreError(f"publishing {project}: no {MODEL_FILE} was written")
            version = self.storage.add_version(project, staging, meta)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if make_current:
            self.set_current(project, version, reason=reason)
        self.prune_rejected(project)
        return self.get_version(project, version)

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
