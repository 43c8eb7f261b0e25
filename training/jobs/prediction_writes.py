"""A refresh's predictions go to Label Studio a batch at a time, a few requests side by side.

Why: two requests a task, one after the other (a last look at the task's predictions, then
``POST /api/predictions/``), made waiting on Label Studio the refresh's bottleneck. On 2,000
tasks (bench/scale.py) one worker took 283 s, both cores three quarters idle. The refresh
claims each task as before (training/jobs/prediction_claims.py) and hands its prediction here;
a batch of WRITE_BATCH is then checked and written WRITES_AT_ONCE tasks at a time (one
worker: 283 s down to 182 s).

Not Label Studio's import of many predictions (``POST /api/projects/<id>/import/predictions``):
tried, it cost Label Studio more CPU per prediction than one POST each (112 s against 88 s on
the 2,000 tasks, its task counters recomputed per import), and Label Studio is what every
annotator shares.

A task whose last look finds the version keeps its claim and counts as already there; a task
deleted meanwhile (400, 404) is skipped with the reason and its claim given back. Any other
failure gives back the claims of every task of the batch not written, so a later refresh
writes those: nothing stays claimed and unwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from training.jobs.refresh_summary import RefreshSummary
from training.labelstudio.client import LabelStudioSession
from training.labelstudio.errors import LabelStudioError

WRITE_BATCH = 16
"""Predictions collected before they are written: at most this many wait."""

WRITES_AT_ONCE = 2
"""Tasks checked and written side by side, per refresh. One worker on 2,000 tasks
(bench/scale.py): 283 s one at a time, 182 s two at a time, 163 s four at a time, with
Label Studio using 88, 82 and 97 CPU seconds; two, since Label Studio is shared by the
annotators and by every other worker's writes."""

GONE_STATUSES = (400, 404)
"""Label Studio's answers about a task deleted meanwhile: skip that task."""

WRITTEN, ALREADY = "written", "already"

Write = tuple[int, Mapping[str, Any]]


@dataclass
class PendingWrites:
    """Claimed predictions waiting to be checked and written (``add``, ``flush``, ``drop``)."""

    ls: LabelStudioSession
    summary: RefreshSummary
    release: Callable[[int], None]
    """Gives up this refresh's claim on a task it will not write."""
    size: int = WRITE_BATCH
    _pending: list[Write] = field(default_factory=list)
    _group: object = None

    def add(self, task_id: int, prediction: Mapping[str, Any], group: object = None) -> None:
        """Queue a claimed task's prediction (``{"result", "score", "model_version"}``).
        A batch never mixes ``group``s: a new group first stores what waits, so every task
        of a group added earlier (the unlabelled tasks) is stored before the next group's."""
        if self._pending and group != self._group:
            self.flush()
        self._group = group
        self._pending.append((task_id, prediction))
        if len(self._pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        """Check and write what waits. Raises LabelStudioError (the claims of what was not
        written given back) when Label Studio refuses for another reason than a deleted task."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        with ThreadPoolExecutor(min(WRITES_AT_ONCE, len(batch))) as pool:
            outcomes = list(pool.map(self._check_and_write, batch))
        failed = None
        for (task_id, _), outcome in zip(batch, outcomes, strict=True):
            if outcome == WRITTEN:
                self.summary.written += 1
            elif outcome == ALREADY:
                self.summary.already += 1  # stored before the claims were taken
            else:
                self.release(task_id)
                if outcome.status in GONE_STATUSES:
                    self.summary.skip(task_id, str(outcome))
                else:
                    failed = failed or outcome
        if failed is not None:
            raise failed

    def drop(self) -> None:
        """Forget what waits, giving back its claims (the refresh failed before writing it)."""
        batch, self._pending = self._pending, []
        for task_id, _ in batch:
            self.release(task_id)

    def _check_and_write(self, item: Write) -> str | LabelStudioError:
        """One task: a last look at its predictions, then the write unless the version is
        there already (runs on the flush's pool; errors come back as values)."""
        task_id, prediction = item
        try:
            if str(prediction["model_version"]) in self.ls.get_prediction_versions(task_id):
                return ALREADY
            self.ls.create_prediction(task_id, prediction)
        except LabelStudioError as exc:
            return exc
        return WRITTEN
