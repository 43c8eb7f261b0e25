"""Webhook events -> coalesced training requests, and what happens while Redis is down.

Label Studio waits 1 s for ``/webhook`` and never retries, so this only records and enqueues
(a few Redis round trips). If Redis does not answer, the request is kept in this process and
replayed by a background thread as soon as Redis answers again; the webhook says 503 so the
failure is visible in Label Studio's logs, but the request is not lost.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis

from backend import protocol
from training.jobs.coordinator import TrainingCoordinator
from training.jobs.training import request_refresh, resume_refreshes
from training.settings import Settings

log = logging.getLogger(__name__)

TRAINING_ACTIONS = frozenset(
    {
        "ANNOTATION_CREATED",
        "ANNOTATIONS_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATIONS_DELETED",
        "START_TRAINING",
    }
)
"""Events that ask for training. START_TRAINING ("Start training") carries only the project.
ANNOTATIONS_CREATED is the Data Manager's "Create Annotations From Predictions" (many at once,
and the only event it sends: bulk-created annotations never trigger train-on-submit)."""

REFRESH_ACTIONS = frozenset({"TASKS_CREATED"})
"""Events that ask for predictions: tasks imported into a project with a model get them from
the current version at once (Label Studio asks the backend itself only while the model, not
a version, is selected for predictions: see SELECT_NEW_VERSION)."""

REPLAY_EVERY_S = 1.0
"""How often requests kept while Redis was down are retried, in seconds."""


class TrainingUnavailable(RuntimeError):
    """Redis is unreachable; the request was kept and will be queued later (HTTP 503)."""


@dataclass
class _Kept:
    events: int = 0
    force: bool = False


class TrainingRequests:
    """Accepts webhook events for one process; owns the replay and recovery thread."""

    def __init__(self, coordinator: TrainingCoordinator, settings: Settings) -> None:
        self.coordinator = coordinator
        self.settings = settings
        self._kept: dict[str, _Kept] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TrainingRequests:
        self._thread = threading.Thread(target=self._run, name="training-requests", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def handle(self, event: dict) -> dict:
        """Record one webhook event; returns the JSON answer.

        Raises:
            ValueError: the event names no project.
            TrainingUnavailable: Redis is down (the request is kept and replayed).
        """
        action = event.get("action")
        if action in REFRESH_ACTIONS:
            return self._refresh(action, protocol.normalize_project(event.get("project")))
        if action not in TRAINING_ACTIONS:
            return {"status": "ignored", "action": action}
        project = protocol.normalize_project(event.get("project"))
        force = action == "START_TRAINING"
        try:
            outcome = self.coordinator.request(
                project, force=force, train_every=self.settings.train_every
            )
        except redis.RedisError as exc:
            self._keep(project, force)
            raise TrainingUnavailable(
                f"Redis is unreachable ({type(exc).__name__}); the training request for "
                f"project {project} is kept and will be queued when Redis answers"
            ) from None
        log.info("webhook %s project %s: %s", action, project, outcome.value)
        return {"status": outcome.value, "action": action, "project": project}

    def _refresh(self, action: str, project: str) -> dict:
        """Queue predictions of the new tasks; not kept while Redis is down (the next
        version's refresh predicts every task)."""
        try:
            outcome = request_refresh(self.coordinator.connection, project, self.settings)
        except redis.RedisError as exc:
            raise TrainingUnavailable(
                f"Redis is unreachable ({type(exc).__name__}); new tasks of project {project} "
                "get predictions with the next version"
            ) from None
        log.info("webhook %s project %s: refresh %s", action, project, outcome)
        return {"status": f"refresh_{outcome}", "action": action, "project": project}

    def get_kept(self) -> dict[str, int]:
        """Events per project waiting for Redis to come back (for status and tests)."""
        with self._lock:
            return {p: k.events for p, k in self._kept.items()}

    def _keep(self, project: str, force: bool) -> None:
        with self._lock:
            kept = self._kept.setdefault(project, _Kept())
            kept.events += 1
            kept.force = kept.force or force
        log.warning("Redis unreachable: keeping a training request for project %s", project)

    def replay_kept(self) -> int:
        """Queue what was kept while Redis was down; returns how many projects were sent."""
        with self._lock:
            kept = dict(self._kept)
        sent = 0
        for project, item in kept.items():
            try:
                outcome = self.coordinator.request(
                    project,
                    force=item.force,
                    train_every=self.settings.train_every,
                    events=item.events,
                )
            except redis.RedisError:
                return sent
            with self._lock:
                current = self._kept.get(project)
                if current is not None:
                    current.events -= item.events
                    if current.events <= 0:
                        del self._kept[project]
            log.info(
                "Redis is back: replayed %d request(s) for project %s: %s",
                item.events,
                project,
                outcome.value,
            )
            sent += 1
        return sent

    def _run(self) -> None:
        ticks_per_recover = max(1, round(self.settings.recover_every_s / REPLAY_EVERY_S))
        tick = 0
        while not self._stop.wait(REPLAY_EVERY_S):
            tick += 1
            try:
                if self._kept:
                    self.replay_kept()
                if tick % ticks_per_recover == 0:
                    self.coordinator.recover()
                    resume_refreshes(self.coordinator.connection, self.settings)
            except redis.RedisError as exc:
                log.debug("training requests: Redis unavailable: %s", exc)
            except Exception:
                log.exception("training requests: background step failed")
