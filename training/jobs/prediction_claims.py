"""Exactly one prediction per (task, version), whoever writes it.

Two writers can store a task's prediction of a version: the refresh job (training/jobs/
refresh.py, through ``POST /api/predictions/``) and Label Studio itself, storing what
``/predict`` answered ("Retrieve predictions", or a task opened with pre-annotation on). A check
of the task's predictions before writing cannot stop both (label-studio #6933: the check and
the write of one interleave with the other's). So each writer first takes a claim on
``(project, version, task)`` with one atomic ``SET NX`` in Redis, naming itself as the owner:
``/predict`` answers ``[]`` for a task a refresh owns (Label Studio stores nothing), and a
refresh writes only the tasks it owns, skipping those ``/predict`` answered. ``/predict`` still
answers a task it answered before: Label Studio asks only for tasks without a prediction of
the current version, so a second request means the first answer was not stored.

Claims expire. A ``/predict`` claim lives PREDICT_CLAIM_S, longer than Label Studio's 100 s
predict timeout: by then Label Studio has stored the answer or never will, and the refresh's own
check of the task's predictions takes over. A refresh claim lives a day; the refresh releases it
when its write fails. As a safety net the refresh deletes same-version duplicates at its end
(``LabelStudioSession.delete_duplicate_predictions``).
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

CLAIM_KEY = "videoloop:claim:{project}:{version}:{task}"

PREDICT_CLAIM_S = 300
"""How long a task answered by /predict stays claimed (Label Studio waits 100 s at most)."""

REFRESH_CLAIM_S = 24 * 3600
"""How long a task the refresh job wrote stays claimed."""

PREDICT_OWNER = "predict"
REFRESH_OWNER = "refresh:"
"""Prefix of a refresh job's owner name; the job id follows, so twin jobs tell each other apart."""


class PredictionClaims:
    """Claims on (project, version, task) in Redis; see the module docstring."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    def claim(
        self, project: str, version: str, task_ids: Iterable[int], *, owner: str, ttl_s: int
    ) -> dict[int, str]:
        """Claim these tasks for ``owner`` where nobody has; returns each task's owner after
        the call (``owner`` where this call took it, or where ``owner`` held it already).

        Raises:
            redis.RedisError: Redis unreachable.
        """
        ids = list(dict.fromkeys(int(t) for t in task_ids))
        if not ids:
            return {}
        pipe = self.connection.pipeline(transaction=False)
        for task in ids:
            pipe.set(self._key(project, version, task), owner, nx=True, ex=ttl_s)
        taken = pipe.execute()
        owners = {task: owner for task, ok in zip(ids, taken, strict=True) if ok}
        others = [task for task in ids if task not in owners]
        if others:
            pipe = self.connection.pipeline(transaction=False)
            for task in others:
                pipe.get(self._key(project, version, task))
            for task, raw in zip(others, pipe.execute(), strict=True):
                # expired between the two calls: nobody holds it, so it is free to write
                owners[task] = owner if raw is None else _text(raw)
        return owners

    def release(self, project: str, version: str, task_id: int) -> None:
        """Give a claim back (the write it was taken for failed)."""
        self.connection.delete(self._key(project, version, task_id))

    @staticmethod
    def _key(project: str, version: str, task: int) -> str:
        return CLAIM_KEY.format(project=project, version=version, task=int(task))


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
