"""Webhook events -> coalesced training requests, and what happens while Redis is down.

Label Studio waits 1 s for ``/webhook`` and never retries, so this only records and enqueues
(a few Redis round trips). If Redis does not answer, the request is kept in a journal file
under CACHE_DIR (backend/request_journal.py) and replayed by a background thread as soon as
Redis answers again, by this process or, after a restart, the next one; the webhook says 503 so
the failure is visible in Label Studio's logs, but the request is not lost.
"""

from __future__ import annotations

import logging
import re

import redis

from backend import protocol
from backend.request_journal import JOURNAL_FILE, RequestJournal
from training.jobs.coordinator import TrainingCoordinator
from training.jobs.periodic import PeriodicTask
from training.jobs.refresh_queue import request_refresh, resume_refreshes
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


FORCED_KEY = "videoloop:train:forced:{0}"
"""Set for FORCE_TRAINING_EVERY_S after a forced run of the project was requested."""

_LS_PROJECT_ID = re.compile(r"[1-9][0-9]{0,17}")


def label_studio_project(project: object) -> str:
    """The project id of a webhook event: Label Studio's are positive integers, and nothing
    else may add state in Redis.

    Raises:
        ValueError: missing, or not a positive integer.
    """
    text = protocol.normalize_project(project)
    if not _LS_PROJECT_ID.fullmatch(text):
        raise ValueError(f"project id must be a positive integer, got {text!r}")
    return text


class TrainingUnavailable(RuntimeError):
    """Redis is unreachable; the request was kept and will be queued later (HTTP 503)."""


class TrainingRequests:
    """Accepts webhook events for one process; owns the replay and recovery threads."""

    def __init__(self, coordinator: TrainingCoordinator, settings: Settings) -> None:
        self.coordinator = coordinator
        self.settings = settings
        self.journal = RequestJournal(settings.cache_dir / JOURNAL_FILE)
        expected = (redis.RedisError,)
        self._loops = (
            PeriodicTask(self.replay_kept, REPLAY_EVERY_S, name="replay-kept", expected=expected),
            PeriodicTask(
                self._recover,
                max(REPLAY_EVERY_S, settings.recover_every_s),
                name="recover",
                expected=expected,
            ),
        )

    def start(self) -> TrainingRequests:
        for loop in self._loops:
            loop.start()
        return self

    def close(self) -> None:
        for loop in self._loops:
            loop.stop()

    def handle(self, event: dict) -> dict:
        """Record one webhook event; returns the JSON answer.

        Raises:
            ValueError: the event names no project.
            TrainingUnavailable: Redis is down (the request is kept and replayed).
        """
        action = event.get("action")
        if not isinstance(action, str):
            raise ValueError("'action' must be a string")
        if action in REFRESH_ACTIONS:
            return self._refresh(action, label_studio_project(event.get("project")))
        if action not in TRAINING_ACTIONS:
            return {"status": "ignored", "action": action}
        project = label_studio_project(event.get("project"))
        force = action == "START_TRAINING"  # kept as asked if Redis is down (rate limit too)
        try:
            force = force and self._may_force(project)
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

    def _may_force(self, project: str) -> bool:
        """At most one forced run per project every FORCE_TRAINING_EVERY_S: "Start training"
        from anyone who can reach /webhook must not keep the workers busy."""
        key = FORCED_KEY.format(project)
        every_s = max(1, self.settings.force_training_every_s)
        if self.coordinator.connection.set(key, 1, nx=True, ex=every_s):
            return True
        log.info("project %s: forced run within %d s of the last one; not forced", project, every_s)
        return False

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
        return {p: e["events"] for p, e in self.journal.snapshot().items()}

    def _keep(self, project: str, force: bool) -> None:
        self.journal.add(project, force=force)
        log.warning("Redis unreachable: keeping a training request for project %s", project)

    def replay_kept(self) -> int:
        """Queue what was kept while Redis was down; returns how many projects were sent."""
        sent = 0
        for project, item in self.journal.snapshot().items():  # a copy: new ones stay kept
            try:
                outcome = self.coordinator.request(
                    project,
                    force=item["force"],
                    train_every=self.settings.train_every,
                    events=item["events"],
                )
            except redis.RedisError:
                return sent
            self.journal.remove(project, item["events"])
            log.info(
                "Redis is back: replayed %d request(s) for project %s: %s",
                item["events"],
                project,
                outcome.value,
            )
            sent += 1
        return sent

    def _recover(self) -> None:
        """Re-queue lost training work and resume refreshes that were interrupted."""
        self.coordinator.recover()
        resume_refreshes(self.coordinator.connection, self.settings)
