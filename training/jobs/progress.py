"""What a running job keeps up to date while it works: its progress, in the RQ job's meta
(what ``videoloop status`` and the backend's /training show), and its lease on the project
(what tells other processes the run is alive).
"""

from __future__ import annotations

import logging
import threading
import time

from training.jobs.coordinator import TrainingCoordinator

log = logging.getLogger(__name__)

META_SAVE_EVERY_S = 1.0
"""Progress is written to the job's meta at most this often (stage changes always), in seconds."""


class JobProgress:
    """Writes progress events into the RQ job's meta, throttled, and logs stage changes."""

    def __init__(self, job, project: str) -> None:
        self.job = job
        self.project = project
        self._stage: str | None = None
        self._saved_at = 0.0

    def __call__(self, event: dict) -> None:
        stage = event.get("stage")
        now = time.monotonic()
        if stage != self._stage:
            log.info("project %s: %s", self.project, event)
        elif now - self._saved_at < META_SAVE_EVERY_S:
            return
        self._stage, self._saved_at = stage, now
        if self.job is not None:
            self.job.meta["progress"] = event
            self.job.save_meta()


class LeaseKeeper:
    """Renews the running job's lease in the background while the job works."""

    def __init__(self, coordinator: TrainingCoordinator, project: str, job_id: str) -> None:
        self._coordinator, self._project, self._job_id = coordinator, project, job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        every = max(0.5, self._coordinator.lease_s / 4)
        while not self._stop.wait(every):
            try:
                if not self._coordinator.renew_lease(self._project, self._job_id):
                    log.warning("project %s: job %s lost its lease", self._project, self._job_id)
            except Exception:  # Redis blips must not kill training; the next renewal retries
                log.warning("project %s: could not renew the lease", self._project, exc_info=True)
