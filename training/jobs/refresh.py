"""Writing a new current version's predictions into Label Studio, so nobody has to ask.

Why: Label Studio re-predicts a task only when someone opens it or presses "Retrieve
predictions", which sends every selected task in one request that outlasts its 100 s timeout
for a few hundred videos (DESIGN.md). So once a version becomes current, a job on the
training queue predicts the project's tasks itself and stores each prediction through
``POST /api/predictions/`` with the version and its score: sorting by prediction score in the
Data Manager then reflects the new model.

Order and scope: unlabelled tasks first (the ones worth sorting), labelled ones after them only
with REFRESH_ALL_TASKS. A task that already has a prediction of this version is left alone, as
read from the task list and checked again right before writing, so running the job twice (or
after Label Studio predicted some tasks itself) writes nothing twice. Tasks go through in
batches of PREDICT_BATCH_SIZE clips: fetch (MediaResolver), decode (ClipCache), predict, write.
A video that cannot be fetched or decoded is skipped and counted. The job stops early when the
version is no longer current (a newer one's refresh takes over).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from training.labelstudio.client import LabelStudioError, LabelStudioSession, TaskPredictions
from training.labelstudio.labelconfig import LabelConfigError, parse_label_config
from training.settings import Settings
from training.versions.store import ModelStore

if TYPE_CHECKING:
    from training.labelstudio.labelconfig import VideoControls
    from training.model.loaded import LoadedModel
    from training.video.clip import Clip
    from training.video.clipcache import ClipCache
    from training.video.media import MediaResolver

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]

SKIPPED_LISTED = 50
"""At most this many skipped tasks are listed (with the reason) in the job's result."""

GONE_STATUSES = (400, 404)
"""Label Studio's answers to a prediction for a task deleted meanwhile: skip that task."""


def _noop(_: dict) -> None:
    pass


def order_tasks(
    tasks: list[TaskPredictions], version: str, *, include_labelled: bool
) -> list[TaskPredictions]:
    """The tasks to predict, unlabelled first (each group by id): those without a prediction
    of ``version``, labelled ones only when ``include_labelled``."""
    todo = [t for t in tasks if version not in t.model_versions]
    unlabelled = sorted((t for t in todo if not t.labelled), key=lambda t: t.task_id)
    labelled = sorted((t for t in todo if t.labelled), key=lambda t: t.task_id)
    return unlabelled + (labelled if include_labelled else [])


def refresh_predictions(
    project: str, version: str, settings: Settings, *, progress: Progress = _noop
) -> dict:
    """Predict the project's tasks with ``version`` and write the predictions to Label Studio.

    Args:
        project: Label Studio project id.
        version: the version to predict with; nothing is done unless it is current.
        settings: Label Studio, store, cache, batch size, REFRESH_ALL_TASKS.
        progress: called with ``{"stage": "refresh", "done", "total", "written", "skipped"}``.

    Returns:
        ``{"status": "done"|"superseded"|"skipped", "version", "written", "skipped",
        "already", "total", "skipped_tasks": [{"task", "reason"}, ...]}``.

    Raises:
        LabelStudioError: Label Studio unreachable or refusing (the job fails; run it again).
        StoreError: no such version.
    """
    from training.labelstudio.results import fillable_controls
    from training.model.loaded import load_version
    from training.video.clipcache import ClipCache
    from training.video.media import MediaResolver

    started = time.perf_counter()
    store = ModelStore(settings.model_dir)
    info = store.get_version(project, version)
    summary = RefreshSummary(project, version, progress)
    if store.get_current(project) != version:
        log.info("project %s: %s is no longer current; no refresh", project, version)
        return summary.as_dict("superseded")

    with LabelStudioSession(settings.label_studio_url, settings.label_studio_api_key) as ls:
        try:
            choices = parse_label_config(ls.get_label_config(project))
        except LabelConfigError as exc:
            raise LabelStudioError(f"project {project} cannot be predicted: {exc}") from exc
        tasks = list(ls.iter_task_predictions(project, choices))
        summary.already = sum(version in t.model_versions for t in tasks)
        todo = order_tasks(tasks, version, include_labelled=settings.refresh_all_tasks)
        summary.total = len(todo)
        summary.report()
        if not todo:
            if settings.select_new_version:
                summary.selected = _select(ls, store, project, version)
            return summary.as_dict("done")
        model = load_version(info, batch_size=settings.predict_batch_size)
        if not fillable_controls(model, choices):
            reason = (
                f"the model's labels {model.labels} / timeline labels {model.timeline_labels} "
                "fill none of the config's controls"
            )
            return {**summary.as_dict("skipped"), "reason": reason}

        batch = _Batch(
            ls=ls,
            choices=choices,
            model=model,
            measure=settings.uncertainty_measure,
            resolver=MediaResolver.from_settings(settings),
            cache=ClipCache(
                Path(settings.cache_dir) / "clips", max_bytes=settings.cache_max_mb * 1024 * 1024
            ),
            threads=max(1, settings.decode_threads),
            summary=summary,
        )
        status = "done"
        size = max(1, settings.predict_batch_size)
        with ThreadPoolExecutor(max_workers=batch.threads) as pool:
            for start in range(0, len(todo), size):
                if store.get_current(project) != version:
                    log.info("project %s: %s was replaced; refresh stops", project, version)
                    status = "superseded"
                    break
                batch.run(todo[start : start + size], pool)
                summary.report()
        if status == "done" and settings.select_new_version:
            summary.selected = _select(ls, store, project, version)
    log.info(
        "project %s: refreshed predictions with %s in %.1f s: %d written, %d skipped, "
        "%d already there",
        project,
        version,
        time.perf_counter() - started,
        summary.written,
        summary.skipped,
        summary.already,
    )
    return summary.as_dict(status)


def _select(ls: LabelStudioSession, store: ModelStore, project: str, version: str) -> bool:
    """SELECT_NEW_VERSION: show this version's predictions (and scores) in Label Studio; a
    failure is logged, not raised (the predictions are written)."""
    known = {v.version for v in store.list_versions(project)}
    try:
        return ls.select_version(project, version, is_ours=known.__contains__) == version
    except LabelStudioError as exc:
        log.warning("project %s: could not select %s in Label Studio: %s", project, version, exc)
        return False


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
    skipped_tasks: list[dict] = field(default_factory=list)
    selected: bool = False
    """Whether the version was made the project's selected predictions version."""

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

    def as_dict(self, status: str) -> dict:
        return {
            "status": status,
            "version": self.version,
            "total": self.total,
            "written": self.written,
            "skipped": self.skipped,
            "already": self.already,
            "selected": self.selected,
            "skipped_tasks": list(self.skipped_tasks),
        }


@dataclass
class _Batch:
    """Fetch, decode, predict and write one batch of tasks."""

    ls: LabelStudioSession
    choices: VideoControls
    model: LoadedModel
    resolver: MediaResolver
    cache: ClipCache
    threads: int
    summary: RefreshSummary
    measure: str

    def run(self, tasks: list[TaskPredictions], pool: ThreadPoolExecutor) -> None:
        from training.video.clip import stack_clips
        from training.video.decoder import VideoDecodeError, decode_many

        fetched = []
        for task, path, error in pool.map(self._fetch, tasks):
            if error:
                self.summary.skip(task.task_id, error)
            else:
                fetched.append((task, path))
        clips = decode_many(
            [path for _, path in fetched],
            self.model.sampling,
            threads=self.threads,
            cache=self.cache,
        )
        readable = []
        for (task, _), clip in zip(fetched, clips, strict=True):
            if isinstance(clip, VideoDecodeError):
                self.summary.skip(task.task_id, str(clip))
            else:
                readable.append((task, clip))
        if not readable:
            return
        outputs = self.model.predict(*stack_clips([clip for _, clip in readable]))
        for row, (task, clip) in enumerate(readable):
            self._write(task, clip, {head: value[row] for head, value in outputs.items()})

    def _fetch(self, task: TaskPredictions) -> tuple[TaskPredictions, Path | None, str | None]:
        from training.video.media import MediaError

        if task.video_url is None:
            return task, None, f"no video URL under data[{self.choices.video_value_key!r}]"
        try:
            return task, self.resolver.resolve(task.video_url, task.task_id), None
        except MediaError as exc:
            return task, None, str(exc)

    def _write(self, task: TaskPredictions, clip: Clip, outputs: dict) -> None:
        """One prediction, unless the task got one of this version since it was listed."""
        from training.labelstudio.results import video_prediction

        version = self.model.version
        if version in self.ls.get_prediction_versions(task.task_id):
            self.summary.already += 1  # Label Studio asked /predict meanwhile, or a twin job
            return
        prediction = video_prediction(
            outputs,
            self.model.labels,
            self.choices,
            version,
            timeline_labels=self.model.timeline_labels,
            clip=clip,
            frame_rate=task.frame_rate,
            measure=self.measure,
        )
        try:
            self.ls.create_prediction(task.task_id, prediction)
        except LabelStudioError as exc:
            if exc.status not in GONE_STATUSES:
                raise
            self.summary.skip(task.task_id, str(exc))
            return
        self.summary.written += 1
