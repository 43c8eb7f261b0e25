"""Writing a new current version's predictions into Label Studio, so nobody has to ask.

Why: Label Studio re-predicts a task only when someone opens it or presses "Retrieve
predictions", which sends every selected task in one request that outlasts its 100 s timeout
for a few hundred videos (docs/design.md). So once a version becomes current, a job on the
training queue predicts the project's tasks itself and stores the predictions with the
version and its score, a batch at a time (training/jobs/prediction_writes.py): sorting by
prediction score in the Data Manager then reflects the new model.

Order and scope: unlabelled tasks first (the ones worth sorting), labelled ones after them only
with REFRESH_ALL_TASKS. One prediction per task and version: a task that already has one is
left alone (read from the task list, checked again right before writing), and a task is
written only after claiming it in Redis, so neither a twin job nor Label Studio storing
/predict's answers at the same time adds a second one (training/jobs/prediction_claims.py).
Duplicates that got past that anyway are deleted at the end. Tasks go through in
batches of PREDICT_BATCH_SIZE clips: fetch (MediaResolver), decode (ClipCache), predict, write.
A video that cannot be fetched or decoded is skipped and counted. The job stops early when the
version is no longer current (a newer one's refresh takes over). More tasks than
REFRESH_CHUNK_TASKS are split into chunk jobs that idle workers share (refresh_chunks.py).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from training.jobs.prediction_claims import REFRESH_CLAIM_S, REFRESH_OWNER, PredictionClaims
from training.jobs.prediction_writes import PendingWrites
from training.jobs.refresh_summary import Progress, RefreshSummary
from training.labelstudio.client import LabelStudioSession
from training.labelstudio.errors import LabelStudioError
from training.labelstudio.labelconfig import LabelConfigError, parse_label_config
from training.labelstudio.tasks import TaskRefreshState
from training.settings import Settings
from training.versions.store import ModelStore, VersionInfo

if TYPE_CHECKING:
    from training.jobs.acquisition_rank import Signals
    from training.labelstudio.labelconfig import VideoControls
    from training.model.inference import ClipPrediction
    from training.model.loaded import LoadedModel
    from training.video.clip import Clip
    from training.video.clipcache import ClipCache
    from training.video.media import MediaResolver
    from training.video.windows import WindowedVideo

log = logging.getLogger(__name__)

FanOut = Callable[[list[TaskRefreshState], int], list[str]]


def _noop(_: dict) -> None:
    pass


def order_tasks(
    tasks: list[TaskRefreshState], version: str, *, include_labelled: bool
) -> list[TaskRefreshState]:
    """The tasks to predict, unlabelled first (each group by id): those without a prediction
    of ``version``, labelled ones only when ``include_labelled``."""
    todo = [t for t in tasks if version not in t.model_versions]
    unlabelled = sorted((t for t in todo if not t.labelled), key=lambda t: t.task_id)
    labelled = sorted((t for t in todo if t.labelled), key=lambda t: t.task_id)
    return unlabelled + (labelled if include_labelled else [])


def refresh_predictions(
    project: str,
    version: str,
    settings: Settings,
    *,
    progress: Progress = _noop,
    claims: PredictionClaims | None = None,
    fan_out: FanOut | None = None,
    signals: Signals | None = None,
) -> dict:
    """Predict the project's tasks with ``version`` and write the predictions to Label Studio.

    Args:
        project: Label Studio project id.
        version: the version to predict with; nothing is done unless it is current.
        settings: Label Studio, store, cache, batch size, REFRESH_ALL_TASKS.
        progress: called with ``{"stage": "refresh", "done", "total", "written", "skipped"}``.
        claims: where tasks are claimed before writing (None: no claims, a lone writer).
        fan_out: ``fan_out(todo, already)`` queues chunk jobs for the tasks to predict when
            they are more than REFRESH_CHUNK_TASKS (training/jobs/refresh_chunks.py), and
            returns their ids; None: this call predicts every task itself.
        signals: where each task's acquisition signal is kept until the end (None: in memory).

    Returns:
        ``{"status": "done"|"superseded"|"skipped"|"fanned_out", "version", "written",
        "skipped", "already", "duplicates_deleted", "total", "skipped_tasks": [{"task",
        "reason"}, ...]}``, and ``"chunks"`` (how many) and ``"chunk_jobs"`` (their ids)
        when fanned out.

    Raises:
        LabelStudioError: Label Studio unreachable or refusing (the job fails; run it again).
        StoreError: no such version.
    """
    started = time.perf_counter()
    store = ModelStore.from_settings(settings)
    info = store.get_version(project, version)
    summary = RefreshSummary(project, version, progress)
    if store.get_current(project) != version:
        log.info("project %s: %s is no longer current; no refresh", project, version)
        return summary.as_dict("superseded")

    signals = signals or _memory_signals(project, version)
    with LabelStudioSession(settings.label_studio_url, settings.label_studio_api_key) as ls:
        controls, todo = _list_tasks(ls, project, summary, settings.refresh_all_tasks)
        chunk = settings.refresh_chunk_tasks
        if fan_out is not None and chunk > 0 and len(todo) > chunk:
            jobs = fan_out(todo, summary.already)
            return {**summary.as_dict("fanned_out"), "chunks": len(jobs), "chunk_jobs": jobs}
        status, reason = "done", None
        if todo:
            status, reason = _predict_and_write(
                ls, store, info, controls, todo, summary, claims, settings, signals
            )
        if status == "done":
            _finish(ls, store, summary, settings, signals)
    summary.log_done(time.perf_counter() - started)
    result = summary.as_dict(status)
    return result if reason is None else {**result, "reason": reason}


def refresh_chunk(
    project: str,
    version: str,
    todo: list[TaskRefreshState],
    settings: Settings,
    *,
    progress: Progress = _noop,
    claims: PredictionClaims | None = None,
    signals: Signals | None = None,
) -> dict:
    """Predict and write one chunk of a fanned-out refresh (training/jobs/refresh_chunks.py):
    the same steps and result as :func:`refresh_predictions` over ``todo``, without the end
    of the refresh (:func:`finish_refresh`, which the last chunk runs)."""
    store = ModelStore.from_settings(settings)
    info = store.get_version(project, version)
    summary = RefreshSummary(project, version, progress, total=len(todo))
    if store.get_current(project) != version:
        log.info("project %s: %s is no longer current; chunk not run", project, version)
        return summary.as_dict("superseded")
    with LabelStudioSession(settings.label_studio_url, settings.label_studio_api_key) as ls:
        controls = _label_config(ls, project)
        status, reason = _predict_and_write(
            ls, store, info, controls, todo, summary, claims, settings, signals
        )
    result = summary.as_dict(status)
    return result if reason is None else {**result, "reason": reason}


def finish_refresh(
    project: str, version: str, settings: Settings, signals: Signals | None = None
) -> dict:
    """The end of a fanned-out refresh, run by its last chunk: the duplicates pass, the
    version selection and the acquisition order over every chunk's ``signals``. Returns
    ``{"duplicates_deleted", "selected"}`` and what writing the order did."""
    store = ModelStore.from_settings(settings)
    summary = RefreshSummary(project, version, _noop)
    with LabelStudioSession(settings.label_studio_url, settings.label_studio_api_key) as ls:
        _finish(ls, store, summary, settings, signals)
    selected = {"duplicates_deleted": summary.duplicates_deleted, "selected": summary.selected}
    return {**selected, **summary.ranks}


def _finish(
    ls: LabelStudioSession,
    store: ModelStore,
    summary: RefreshSummary,
    settings: Settings,
    signals: Signals | None,
) -> None:
    from training.jobs.acquisition_rank import rank_tasks

    summary.duplicates_deleted = _delete_duplicates(ls, summary.project, summary.version)
    if settings.select_new_version:
        summary.selected = _select(ls, store, summary.project, summary.version)
    summary.ranks = rank_tasks(ls, summary.project, summary.version, settings, signals)


def _memory_signals(project: str, version: str) -> Signals:
    from training.jobs.acquisition_rank import Signals

    return Signals(None, project, version)


def _predict_and_write(
    ls: LabelStudioSession,
    store: ModelStore,
    info: VersionInfo,
    controls: VideoControls,
    todo: list[TaskRefreshState],
    summary: RefreshSummary,
    claims: PredictionClaims | None,
    settings: Settings,
    signals: Signals | None = None,
) -> tuple[str, str | None]:
    """Load the version and run the TaskRefresher over ``todo``: (status, why skipped)."""
    from training.labelstudio.results import fillable_controls
    from training.model.loaded import load_version

    embeddings = settings.acquisition != "score"  # acquisition_rank needs them
    model = load_version(info, batch_size=settings.predict_batch_size, embeddings=embeddings)
    if not fillable_controls(model, controls):
        return "skipped", (
            f"the model's labels {model.labels} / timeline labels "
            f"{model.timeline_labels} fill none of the config's controls"
        )
    refresher = TaskRefresher(ls, controls, model, settings, summary, claims, signals)
    project, version = summary.project, summary.version
    return refresher.run(todo, lambda: store.get_current(project) == version), None


def _list_tasks(
    ls: LabelStudioSession, project: str, summary: RefreshSummary, include_labelled: bool
) -> tuple[VideoControls, list[TaskRefreshState]]:
    """The project's label config and the tasks to predict, in order; counts them."""
    controls = _label_config(ls, project)
    tasks = list(ls.iter_task_refresh_states(project, controls))
    summary.already = sum(summary.version in t.model_versions for t in tasks)
    todo = order_tasks(tasks, summary.version, include_labelled=include_labelled)
    summary.total = len(todo)
    summary.report()
    return controls, todo


def _label_config(ls: LabelStudioSession, project: str) -> VideoControls:
    try:
        return parse_label_config(ls.get_label_config(project))
    except LabelConfigError as exc:
        raise LabelStudioError(f"project {project} cannot be predicted: {exc}") from exc


def _delete_duplicates(ls: LabelStudioSession, project: str, version: str) -> int:
    """The clean-up pass behind the claims; a failure is logged, not raised (the predictions
    are written, and the next refresh runs the pass again)."""
    try:
        return ls.delete_duplicate_predictions(project, version)
    except LabelStudioError as exc:
        log.warning(
            "project %s: duplicate predictions of %s not checked: %s", project, version, exc
        )
        return 0


def _select(ls: LabelStudioSession, store: ModelStore, project: str, version: str) -> bool:
    """SELECT_NEW_VERSION: show this version's predictions (and scores) in Label Studio; a
    failure is logged, not raised (the predictions are written)."""
    try:
        known = set(store.version_names(project))  # names only: list_versions downloads on S3
        return ls.select_version(project, version, is_ours=known.__contains__) == version
    except (LabelStudioError, OSError) as exc:  # OSError: the store (S3) unreachable
        log.warning("project %s: could not select %s in Label Studio: %s", project, version, exc)
        return False


@dataclass
class TaskRefresher:
    """Predicts a refresh's tasks through the one prediction path and writes each prediction."""

    ls: LabelStudioSession
    controls: VideoControls
    model: LoadedModel
    settings: Settings
    summary: RefreshSummary
    claims: PredictionClaims | None = None
    signals: Signals | None = None
    """Where each predicted task's acquisition signal goes (acquisition_rank.py)."""
    owner: str = field(default_factory=lambda: f"{REFRESH_OWNER}{uuid.uuid4().hex}")
    """Whose claims these are: each refresh its own, so twin jobs never both write."""

    writes: PendingWrites = field(init=False)
    """The claimed predictions waiting to be written, a batch at a time."""

    def __post_init__(self) -> None:
        self.writes = PendingWrites(self.ls, self.summary, self._release)

    def run(self, todo: list[TaskRefreshState], still_current: Callable[[], bool]) -> str:
        """Predict and write ``todo`` in order; stops early ("superseded") once
        ``still_current()`` says no (checked before each batch of tasks). Predictions are
        written in batches (prediction_writes.py); a failed run leaves no claim unwritten."""
        try:
            status = self._predict_all(todo, still_current)
        except BaseException:
            self.writes.drop()
            raise
        self.writes.flush()
        self.summary.report()
        return status

    def _predict_all(self, todo: list[TaskRefreshState], still_current: Callable[[], bool]) -> str:
        from training.model.inference import Failure, predict_clips
        from training.video.clipcache import ClipCache
        from training.video.media import MediaResolver

        settings = self.settings
        resolver = MediaResolver.from_settings(settings)
        cache = ClipCache.from_settings(settings)
        sources = [functools.partial(self._clip, resolver, cache, task) for task in todo]
        check_every = max(1, self.model.batch_size)
        threads = max(1, settings.decode_threads)
        with ThreadPoolExecutor(threads, thread_name_prefix="refresh-decode") as pool:
            outcomes = predict_clips(self.model, sources, pool, window=2 * check_every)
            for done, (i, outcome) in enumerate(outcomes):
                if done % check_every == 0:
                    self.summary.report()
                    if not still_current():
                        log.info("%s was replaced; refresh stops", self.model.version)
                        return "superseded"
                if isinstance(outcome, Failure):
                    self.summary.skip(todo[i].task_id, outcome.reason)
                else:
                    self._write(todo[i], outcome)
        return "done"

    def _clip(
        self, resolver: MediaResolver, cache: ClipCache, task: TaskRefreshState
    ) -> Clip | WindowedVideo:
        """Fetch and decode one task's video (runs on the decode pool)."""
        from training.video.media import MediaError

        if task.video_url is None:
            raise MediaError(f"no video URL under data[{self.controls.video_value_key!r}]")
        path = resolver.resolve(task.video_url, task.task_id)
        return cache.open(path, self.model.sampling)

    def _write(self, task: TaskRefreshState, prediction: ClipPrediction) -> None:
        """One prediction to write, unless the task got one of this version since it was
        listed or another writer claimed it."""
        from training.labelstudio.results import video_prediction

        formatted = video_prediction(
            prediction,
            self.controls,
            frame_rate=task.frame_rate,
            measure=self.settings.uncertainty_measure,
        )
        if formatted is None:
            self.summary.skip(task.task_id, "the model fills none of the task's controls")
            return
        if self.signals is not None:
            self._keep_signal(task.task_id, prediction, float(formatted["score"]))
        if not self._claim(task.task_id):
            self.summary.already += 1  # /predict answered it, or a twin job writes it
            return
        # After a last look at its predictions; the unlabelled tasks all stored first.
        self.writes.add(task.task_id, formatted, group=task.labelled)

    def _keep_signal(self, task_id: int, prediction: ClipPrediction, score: float) -> None:
        from training.jobs.acquisition_rank import signal_of

        samples = self.settings.acquisition_mc_samples
        self.signals.add(task_id, signal_of(prediction, score, self.model.head, samples))  # type: ignore[union-attr]

    def _claim(self, task_id: int) -> bool:
        if self.claims is None:
            return True
        owners = self.claims.claim(
            self.summary.project,
            self.summary.version,
            [task_id],
            owner=self.owner,
            ttl_s=REFRESH_CLAIM_S,
        )
        return owners[task_id] == self.owner

    def _release(self, task_id: int) -> None:
        if self.claims is not None:
            self.claims.release(self.summary.project, self.summary.version, task_id)
