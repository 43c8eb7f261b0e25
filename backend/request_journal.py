"""Training requests accepted while Redis was down, kept in a file until Redis takes them.

Label Studio sends each webhook once and never retries, so a request that arrives while Redis
does not answer must outlive this process: a restart (a deploy, a crash) must not lose it. The
requests live in one JSON file under CACHE_DIR, ``{project: {"events": n, "force": bool}}``,
shared by every serving process of the machine: each change is a read-modify-write under an
exclusive ``flock`` and an atomic replace (training/durable.py), so processes never lose each
other's entries and a crash mid-write leaves the old file. Whichever process sees Redis back
first replays them all.
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from training.durable import write_atomically

log = logging.getLogger(__name__)

JOURNAL_FILE = "kept-training-requests.json"
"""The journal's name under CACHE_DIR."""


class RequestJournal:
    """The kept requests; see the module docstring."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def add(self, project: str, *, force: bool) -> None:
        """Keep one more event for ``project`` (forced if any kept event was)."""
        with self._locked() as entries:
            entry = entries.setdefault(project, {"events": 0, "force": False})
            entry["events"] += 1
            entry["force"] = bool(entry["force"] or force)

    def snapshot(self) -> dict[str, dict]:
        """What is kept now, per project: ``{"events": n, "force": bool}``."""
        with self._locked(write=False) as entries:
            return entries

    def remove(self, project: str, events: int) -> None:
        """``events`` of ``project``'s requests were queued: forget them (events kept since
        stay)."""
        with self._locked() as entries:
            entry = entries.get(project)
            if entry is not None:
                entry["events"] -= events
                if entry["events"] <= 0:
                    del entries[project]

    @contextmanager
    def _locked(self, *, write: bool = True) -> Iterator[dict[str, dict]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = self._read()
                before = json.dumps(entries, sort_keys=True)
                yield entries
                if write and json.dumps(entries, sort_keys=True) != before:
                    write_atomically(
                        self.path, json.dumps(entries, sort_keys=True), prefix=".journal-"
                    )
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, dict]:
        try:
            entries = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # a damaged file must not stop the webhook
            log.error("cannot read %s (%s); starting a new one", self.path, exc)
            return {}
        return {
            str(p): {"events": int(e.get("events", 0)), "force": bool(e.get("force"))}
            for p, e in entries.items()
            if isinstance(e, dict)
        }
