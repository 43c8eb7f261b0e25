"""The refresh's last step under ACQUISITION: each task's place in the order to label, written
to a task data field the Data Manager sorts by.

Why a data field: the prediction score must stay the confidence (docs/active-learning.md),
and a batch-aware choice (kcenter, badge) is not a per-task score at all: which task comes
third depends on the first two. Label Studio 1.23's Data Manager sorts by any ``data.<field>``
column, as text unless someone sets the column's display type to Number, so the rank is
written zero-padded (``"000003"``): text and number order agree, on SQLite and PostgreSQL.

While the refresh predicts, each task's signal (score, BALD, probabilities, embedding) is
kept (:class:`Signals`: in memory, or in a Redis hash that every chunk of a fanned-out refresh
adds to); at the end the order is chosen over all of them at once (acquisition.choose_order)
and written with one ``PATCH /api/tasks/<id>/`` per task whose rank changed, the task's data
sent whole with the video URL as listed. A task that refuses is a per-task failure with the
reason; the predictions are written either way.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

import numpy as np
import redis

from training.labelstudio.client import LabelStudioSession
from training.labelstudio.errors import LabelStudioError
from training.model.acquisition import Strategy, bald, choose_order, mc_dropout_probs
from training.model.embedding import ClassifierHead
from training.model.inference import ClipPrediction
from training.settings import Settings

log = logging.getLogger(__name__)

SIGNALS_KEY = "videoloop:refresh:{project}:{version}:signals"
"""Hash per refresh: task id -> packed float32 signal (TaskSignal.pack)."""
SIGNALS_KEEP_S = 24 * 3600
"""How long a version's signals stay in Redis, in seconds: a later pass of the same version
(tasks imported meanwhile) orders them together with its own; a newer version has its own."""
RANK_WIDTH = 6
"""Digits of the written rank: ``"000001"``; wider numbers still sort after narrower ones."""
FAILURES_LISTED = 50


@dataclass(frozen=True)
class TaskSignal:
    """What acquisition needs of one predicted task."""

    score: float
    bald: float = 0.0
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)

    def pack(self) -> bytes:
        head = [self.score, self.bald, len(self.probs)]
        return np.concatenate([head, self.probs, self.embedding]).astype(np.float32).tobytes()

    @classmethod
    def unpack(cls, raw: bytes) -> TaskSignal:
        values = np.frombuffer(raw, np.float32)
        k = int(values[2])
        return cls(float(values[0]), float(values[1]), values[3 : 3 + k], values[3 + k :])


def signal_of(
    prediction: ClipPrediction, score: float, head: ClassifierHead | None, samples: int
) -> TaskSignal:
    """The task's signal; BALD from ``samples`` dropout passes through ``head`` (seeded by the
    clip's embedding, so a chunk run twice measures the same)."""
    if prediction.embedding is None or prediction.classes is None:
        return TaskSignal(score)
    h = prediction.embedding
    mi = 0.0
    if head is not None:
        rng = np.random.default_rng(zlib.crc32(h.tobytes()))
        passes = mc_dropout_probs(h[None], head.kernel, head.bias, head.rate, samples, rng)
        mi = float(bald(passes)[0])
    return TaskSignal(score, mi, np.asarray(prediction.classes, np.float32), h)


class Signals:
    """Each predicted task's signal until the refresh's end: in memory (``connection`` None,
    a refresh in one job) or in Redis (every chunk of a fan-out, and every pass of the
    version, adds; the end reads them all). About (D + K + 3) * 4 bytes a task."""

    def __init__(self, connection: redis.Redis | None, project: str, version: str) -> None:
        self._connection = connection
        self._key = SIGNALS_KEY.format(project=project, version=version)
        self._memory: dict[int, TaskSignal] = {}

    def add(self, task_id: int, signal: TaskSignal) -> None:
        if self._connection is None:
            self._memory[task_id] = signal
            return
        pipe = self._connection.pipeline(transaction=False)
        pipe.hset(self._key, str(task_id), signal.pack())
        pipe.expire(self._key, SIGNALS_KEEP_S)
        pipe.execute()

    def all(self) -> dict[int, TaskSignal]:
        if self._connection is None:
            return dict(self._memory)
        raw = self._connection.hgetall(self._key)
        return {int(k): TaskSignal.unpack(v) for k, v in raw.items()}


def order_of(strategy: str, signals: dict[int, TaskSignal], batch: int, seed: str) -> list[int]:
    """The task ids in the order to label them (acquisition.choose_order over every signal;
    embeddings only when every task has one of one size)."""
    ids = sorted(signals)
    if not ids:
        return []
    picked = [signals[t] for t in ids]
    sizes = {(len(s.probs), len(s.embedding)) for s in picked}
    whole = len(sizes) == 1 and min(sizes.pop()) > 0
    order = choose_order(
        strategy,
        np.array([s.score for s in picked]),
        bald_scores=np.array([s.bald for s in picked]) if whole else None,
        embeddings=np.stack([s.embedding for s in picked]) if whole else None,
        probs=np.stack([s.probs for s in picked]) if whole else None,
        batch=batch,
        seed=zlib.crc32(seed.encode()),
    )
    return [ids[i] for i in order]


def rank_text(rank: int) -> str:
    return str(rank).zfill(RANK_WIDTH)


UNRANKED = "9" * RANK_WIDTH
"""The rank of every task the order does not place: after all of them, the same each time."""


def write_ranks(ls: LabelStudioSession, project: str, order: list[int], name: str) -> dict:
    """Write each task's rank to ``data[name]``: the ordered tasks 1, 2, ...; every other task
    (labelled, or predicted before this refresh) UNRANKED, after them, so no stale rank from
    an earlier version puts it first. Only changed ranks are written, so a refresh after a few
    imports writes a few. Label Studio stores the dict whole, so each write sends the data of
    the listing's page with the rank added: an edit of that task made since its page was read
    (seconds) is written over.

    Returns:
        ``{"ranked", "rank_written", "rank_failed": [{"task", "reason"}, ...]}``.

    Raises:
        LabelStudioError: the task list could not be read (nothing written).
    """
    place = {task: i + 1 for i, task in enumerate(order)}
    written, failed = 0, []
    for task in ls.iter_tasks(project):
        task_id = task.get("id")
        wanted = rank_text(place[task_id]) if task_id in place else UNRANKED
        data = task.get("data")
        if not isinstance(data, dict) or data.get(name) == wanted:
            continue
        try:
            # Not a fresh GET of the task: Label Studio 1.23 answers GET /api/tasks/<id>/ by
            # asking the ML backend to predict it (a second prediction of the version).
            ls.update_task_data(task_id, {**data, name: wanted})
            written += 1
        except (LabelStudioError, ValueError) as exc:
            if len(failed) < FAILURES_LISTED:
                failed.append({"task": task_id, "reason": str(exc)})
    if failed:
        log.warning("project %s: %d task ranks not written: %s", project, len(failed), failed[0])
    return {"ranked": len(order), "rank_written": written, "rank_failed": failed}


def rank_tasks(
    ls: LabelStudioSession,
    project: str,
    version: str,
    settings: Settings,
    signals: Signals | None,
) -> dict:
    """The end of a refresh under ACQUISITION (nothing under ``score``): choose the order over
    ``signals`` and write it; a failure is logged and reported, never raised (the predictions
    are written, and the next refresh writes the order again)."""
    if settings.acquisition == Strategy.SCORE.value or signals is None:
        return {}
    try:
        order = order_of(settings.acquisition, signals.all(), settings.acquisition_batch, version)
        if not order:
            return {}  # nothing predicted: keep the order there is, never one by id alone
        result = write_ranks(ls, project, order, settings.acquisition_field)
    except Exception as exc:  # Label Studio, Redis, odd signals: the predictions stand
        log.warning("project %s: acquisition order not written: %s", project, exc)
        return {"ranked": 0, "rank_written": 0, "rank_failed": [{"task": None, "reason": str(exc)}]}
    log.info("project %s: %s order of %d tasks written", project, settings.acquisition, len(order))
    return result
