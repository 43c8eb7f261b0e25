"""What the model store needs from where versions live: the interface both places implement.

``ModelStore`` (training/versions/store.py) keeps the rules (history, statuses, rollback,
pruning); a storage keeps the bytes. Two implement it: a local or NFS folder
(training/versions/local_storage.py: renames, ``O_APPEND``, ``flock``) and any S3-compatible
object store (training/versions/s3_storage.py: conditional writes, a local read-through
cache), so several machines share versions without a shared filesystem (docs/kubernetes.md).

Both keep the same local layout under the store's root, which for S3 is this machine's cache::

    <project>/versions/<version>/model.keras, meta.json, ...
    <project>/.staging-*         a version being written, before it is published
    <project>/.lock              serialises this machine's writers (retention.project_lock)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

META_FILE = "meta.json"
"""Written last: a version without it is not a version (a half-upload is never listed)."""


@dataclass(frozen=True)
class CurrentVersion:
    """A project's current version and when it was made current (seconds since the epoch).

    ``set_at`` is stored with the pointer (a file's modification time, an S3 pointer's own
    field): every process reading the same pointer gets the same instant, which serving
    processes use to swap at the same moment.
    """

    version: str
    set_at: float


class StorageUnavailable(OSError):
    """The storage could not be read or written (an S3 error, a network failure). An OSError,
    so that the code which already survives an unreadable folder survives this too."""


class WriteConflict(RuntimeError):
    """Other writers won every attempt of a conditional write (S3): this one gave up."""


def stamp_meta(meta: dict, project: str, version: str) -> str:
    """Fill in what the store itself sets on publication; returns the text of ``meta.json``."""
    meta.update(version=version, project=project)
    meta.setdefault("created_at", time.time())
    return json.dumps(meta, indent=2, sort_keys=True)


class VersionStorage(Protocol):
    """Where a store's versions, pointers and histories live. Project ids and version names
    reaching it are already validated."""

    def list_projects(self) -> list[str]:
        """Projects that have published versions (or had: their versions folder exists)."""
        ...

    def read_pointer(self, project: str) -> CurrentVersion | None:
        """The current version and when it was set; None when the project has none."""
        ...

    def write_pointer(self, project: str, version: str) -> str | None:
        """Point ``current`` at ``version`` in one atomic step; returns the one it replaced.

        Raises:
            WriteConflict: other writers kept winning (S3's conditional write).
        """
        ...

    def read_history(self, project: str) -> str:
        """The history's text ('' without one)."""
        ...

    def append_history(self, project: str, line: bytes) -> None:
        """Add one line; concurrent writers' lines are all kept, never interleaved.

        Raises:
            WriteConflict: other writers kept winning (S3's conditional write).
        """
        ...

    def version_names(self, project: str) -> list[str]:
        """Names of the published versions, in no particular order."""
        ...

    def read_meta(self, project: str, version: str) -> dict | None:
        """A published version's metadata; None when there is no such version."""
        ...

    def local_folder(self, project: str, version: str) -> Path:
        """A local folder holding all of a published version's files (S3: fetched once)."""
        ...

    def folder_of(self, project: str, version: str) -> Path:
        """Where :meth:`local_folder` has or will have the version's files, fetching nothing."""
        ...

    def add_version(self, project: str, staging: Path, meta: dict) -> str:
        """Publish the complete folder ``staging`` under the next free number; returns the
        version's name. It becomes visible in one step, with every file in place."""
        ...

    def remove_version(self, project: str, version: str) -> None:
        """Make a version invisible at once (called under the project's lock)."""
        ...

    def finish_removals(self, project: str) -> None:
        """Delete what ``remove_version`` left, a dead process's leftovers included."""
        ...
