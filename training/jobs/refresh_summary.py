"""The counts of a refresh run (training/jobs/refresh.py), reported as progress as it goes and
returned as the job's result."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("training.jobs.refresh")

Progress = Callable[[dict], None]

SKIPPED_LISTED = 50
"""At most this many skipped tasks are listed (with the reason) in the job's result."""


@dataclass
class RefreshSummary:
    """Counts of a refresh run, reported as progress and returned as the job's result."""

    project: str
    version: str
    progress: Progress = field(repr=False)
    total: int = 0
    written: int = 0
    skipped: int = 0
    already: int = 0
    """Tasks that had a prediction of this version (before the run, or written meanwhile)."""
    duplicates_deleted: int = 0
    skipped_tasks: list[dict] = field(default_factory=list)
    selected: bool = False
    """Whether the version was made the project's selected predictions version."""
    ranks: dict = field(default_factory=dict)
    """What writing the acquisition order did (acquisition_rank.rank_tasks), if it ran."""

    def skip(self, task_id: int, reason: str) -> None:
        log.warning("project %s: refresh skips task %s: %s", self.project, task_id, reason)
        self.skipped += 1
        if len(self.skipped_tasks) < SKIPPED_LISTED:
            self.skipped_tasks.append({"task": task_id, "reason": reason})

    def report(self) -> None:
        self.progress(
            {
                "stage": "refresh",
                "done": self.written + self.skipped,
                "total": self.total,
                "written": self.written,
                "skipped": self.skipped,
            }
        )

    def log_done(self, seconds: float) -> None:
        log.info(
            "project %s: refreshed predictions with %s in %.1f s: %d written, %d skipped, "
            "%d already there",
            self.project,
            self.version,
            seconds,
            self.written,
            self.skipped,
            self.already,
        )

    def as_dict(self, status: str) -> dict:
        return {
            "status": status,
            "version": self.version,
            "total": self.total,
            "written": self.written,
            "skipped": self.skipped,
            "already": self.already,
            "duplicates_deleted": self.duplicates_deleted,
            "selected": self.selected,
            "skipped_tasks": list(self.skipped_tasks),
            **self.ranks,
        }
