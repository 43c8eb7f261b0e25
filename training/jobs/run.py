"""One training run of a project, step by step: read its labelled tasks from Label Studio,
check there is enough to learn from, fetch the videos, train and publish a version, promote
it if the quality gate allows, queue the refresh of its predictions.

Run by the job :func:`training.jobs.training.train_project` in a worker process
(training/jobs/worker.py). This module does not import TensorFlow: the steps that train do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import redis
from rq import get_current_job

from training.jobs.promotion import promote
from training.jobs.refresh_queue import enqueue_refresh
from training.labelstudio.client import fetch_project_data
from training.labelstudio.tasks import ProjectData, count_per_label, count_per_timeline_label
from training.learn.accelerator import configure_accelerator
from training.learn.config import Progress, TrainingData, TrainingRun
from training.learn.dataset import LabelledVideo
from training.model.config import first_model_config
from training.settings import Settings
from training.versions.store import ModelStore, VersionInfo
from training.video.clipcache import ClipCache
from training.video.media import MediaError, MediaResolver
from training.video.pinned import RUNS_SUBDIR, PinnedFiles

log = logging.getLogger(__name__)


def run_training(
    project: str,
    settings: Settings,
    *,
    force: bool,
    progress: Progress,
    ensure_owner: Callable[[], None] = lambda: None,
) -> dict:
    """Pull labelled tasks, check there is enough to learn from, fetch, train, publish.

    The new version becomes current only if it passes the quality gate (or ``force`` and
    PROMOTE_ON_START_TRAINING); then a job refreshing the project's predictions is queued.
    ``ensure_owner()`` is called before publishing and before promoting, and raises when
    the job no longer owns the project's run (LeaseKeeper.ensure_held).

    Returns a summary: ``{"status": "trained"|"rejected", "version": ..., "gate": ...}`` or
    ``{"status": "skipped", "reason": ...}`` when labels are still too few.
    """
    from training.learn.publish import TrainingError, train_and_publish  # TensorFlow

    progress({"stage": "fetch_tasks"})
    tasks = fetch_labelled_tasks(project, settings)
    reason = tasks.not_ready(project, settings.min_per_label, force=force)
    if reason is not None:
        return {"status": "skipped", "reason": reason, "per_label": tasks.counts}
    configure_accelerator()
    store = ModelStore.from_settings(settings)
    store.cleanup_staging(project)  # what publishers killed mid-write left behind
    cache = ClipCache.from_settings(settings)  # CACHE_DIR/clips, CACHE_MAX_MB, decode limits
    with PinnedFiles(  # the run's videos outlive the media cache's evictions
        Path(settings.cache_dir) / RUNS_SUBDIR, stale_after_s=2 * settings.train_timeout_s
    ) as pinned:
        videos = fetch_videos(project, tasks, settings, progress, pinned)
        current = store.get_current_info(project)
        parent = version_to_fine_tune(project, current, tasks, settings)
        unlabelled = fetch_unlabelled(project, tasks, settings, parent, pinned)
        videos = replace(videos, data=replace(videos.data, unlabelled=unlabelled))
        run = training_run(
            settings,
            parent,
            cache,
            tasks,
            videos,
            force,
            ensure_owner,
            pinned.folder / "clips.u8",
            scratch_over_current=current is not None and parent is None,
        )
        try:
            info = train_and_publish(store, project, videos.data, run, progress=progress)
        except TrainingError as exc:
            return {"status": "skipped", "reason": str(exc), "per_label": tasks.counts}
    ensure_owner()  # the version is published (unpromoted): a lost lease stops here too
    promoted, refresh_job = promote_and_refresh(store, project, info, settings, force=force)
    return summary(info, promoted, refresh_job, cache, tasks)


@dataclass(frozen=True)
class TrainingLabels:
    """The labels a run trains on, per head, and those still short of MIN_PER_LABEL."""

    labels: list[str]
    timeline_labels: list[str]
    short: dict[str, int]


def training_labels(
    counts: dict[str, int], timeline_counts: dict[str, int], min_per_label: int
) -> TrainingLabels:
    """Which labels to train on, from the annotated videos per label of each control.

    A control nobody annotated yet does not hold training back (a project may label the
    class first and the segments later); on a control that has annotations, every label
    needs ``min_per_label`` videos (``short`` lists those that do not: timeline labels as
    ``timeline:<label>``) before annotation events train. The classes head needs two labels
    with videos; the timeline head one.
    """
    short: dict[str, int] = {}
    for prefix, per_label in (("", counts), ("timeline:", timeline_counts)):
        if any(per_label.values()):
            short.update({f"{prefix}{k}": v for k, v in per_label.items() if v < min_per_label})
    labels = [label for label, n in counts.items() if n > 0]
    timeline_labels = [label for label, n in timeline_counts.items() if n > 0]
    return TrainingLabels(labels if len(labels) >= 2 else [], timeline_labels, short)


@dataclass(frozen=True)
class LabelledTasks:
    """A project's tasks as Label Studio has them, the annotated videos per label of each
    control, and the labels a run would train on."""

    data: ProjectData
    counts: dict[str, int]
    timeline_counts: dict[str, int]
    wanted: TrainingLabels

    @property
    def heads(self) -> tuple[bool, bool]:
        """Whether a run trains a class head and a timeline head (TrainConfig.uses_unlabelled's
        ``classes`` and ``timeline``)."""
        return bool(self.wanted.labels), bool(self.wanted.timeline_labels)

    def not_ready(self, project: str, min_per_label: int, *, force: bool) -> str | None:
        """Why the project cannot train yet (None: it can). ``force`` ("Start training")
        trains labels short of ``min_per_label`` too, but never fewer than a head needs."""
        if self.wanted.short and not force:
            reason = f"every label needs {min_per_label} annotated videos; " + ", ".join(
                f"{k} has {v}" for k, v in self.wanted.short.items()
            )
            log.info("project %s: not training yet: %s", project, reason)
            return reason
        if not self.wanted.labels and not self.wanted.timeline_labels:
            timeline = f" and timeline {self.timeline_counts}" if self.timeline_counts else ""
            return (
                "need annotated videos of at least two labels (or timeline segments), have "
                f"{self.counts}{timeline}"
            )
        return None


def fetch_labelled_tasks(project: str, settings: Settings) -> LabelledTasks:
    """Read the project's tasks and count its annotated videos per label."""
    data = fetch_project_data(
        project, url=settings.label_studio_url, api_key=settings.label_studio_api_key
    )
    counts = count_per_label(data)
    timeline_counts = count_per_timeline_label(data)
    wanted = training_labels(counts, timeline_counts, settings.min_per_label)
    return LabelledTasks(data, counts, timeline_counts, wanted)


@dataclass(frozen=True)
class FetchedVideos:
    """What a run learns from (the local video files, keyed by task, so the stable split
    follows the task) and the tasks left out, with the reason."""

    data: TrainingData
    skipped: list[dict]


def fetch_videos(
    project: str,
    tasks: LabelledTasks,
    settings: Settings,
    progress: Progress,
    pinned: PinnedFiles,
) -> FetchedVideos:
    """Resolve every labelled task's video to a local file the run keeps (``pinned``) until
    it ends, a few at a time; a task whose video cannot be had is skipped, not fatal."""
    labels, timeline_labels = tasks.wanted.labels, tasks.wanted.timeline_labels
    resolver = MediaResolver.from_settings(settings)
    videos, keys, skipped = [], [], [{"task": t, "reason": r} for t, r in tasks.data.skipped]
    total = len(tasks.data.tasks)

    def fetch(task):
        path, error = fetch_one(resolver, pinned, task.task_id, task.video_url)
        return task, path, error

    with ThreadPoolExecutor(max_workers=max(1, settings.decode_threads)) as pool:
        for done, (task, path, error) in enumerate(pool.map(fetch, tasks.data.tasks), start=1):
            if error:
                log.warning("project %s: task %s skipped: %s", project, task.task_id, error)
                skipped.append({"task": task.task_id, "reason": error})
            else:
                video = LabelledVideo(
                    path,
                    task.label if task.label in labels else None,
                    task.segments if timeline_labels else None,
                    task.frame_rate,
                )
                if video.label is not None or video.segments is not None:
                    videos.append(video)
                    keys.append(f"task:{task.task_id}")  # the stable split follows the task
            progress({"stage": "fetch_videos", "done": done, "total": total})
    if resolver.max_bytes and pinned.bytes > resolver.max_bytes:
        log.warning(
            "project %s: its labelled videos take %.0f MB, more than CACHE_MAX_MB=%d: this run "
            "keeps them all until it ends, but the next run downloads most again; raise "
            "CACHE_MAX_MB above the project's size to keep them between runs",
            project,
            pinned.bytes / 1e6,
            settings.cache_max_mb,
        )
    return FetchedVideos(TrainingData(videos, labels, timeline_labels, keys), skipped)


def fetch_one(
    resolver: MediaResolver, pinned: PinnedFiles, task_id: int, url: str
) -> tuple[Path | None, str | None]:
    """A task's video as a file the run keeps (``pinned``), or the reason it cannot be had."""
    for _ in range(2):  # once more if another download evicted it before it was kept
        try:
            path = resolver.resolve(url, task_id)
            return pinned.keep(path, f"task-{task_id}{path.suffix}"), None
        except MediaError as exc:
            return None, str(exc)
        except FileNotFoundError:
            continue
    return None, "evicted from the media cache before it could be kept (CACHE_MAX_MB)"


def version_to_fine_tune(
    project: str, current: VersionInfo | None, tasks: LabelledTasks, settings: Settings
) -> VersionInfo | None:
    """The version a run fine-tunes: the project's current one, or None (a new model from
    scratch, trained as a first model is) while the project has fewer labelled tasks than
    TRAIN_SCRATCH_BELOW and the run would learn from its unlabelled tasks (pre-training or
    pseudo-labels that apply). Why: a model fine-tuned from one that saw 2 clips a label keeps
    that start's mistakes, while a first model's pseudo-labels learn from the unlabelled tasks
    afresh each run; without them a scratch run only loses the fine-tune
    (docs/active-learning.md)."""
    labelled = len(tasks.data.tasks)
    if current is None or labelled >= settings.train_scratch_below:
        return current
    if not settings.train_config().uses_unlabelled(*tasks.heads):
        return current
    log.info(
        "project %s: %d labelled tasks, under TRAIN_SCRATCH_BELOW=%d: a new model from scratch",
        project,
        labelled,
        settings.train_scratch_below,
    )
    return None


def fetch_unlabelled(
    project: str,
    tasks: LabelledTasks,
    settings: Settings,
    parent: VersionInfo | None,
    pinned: PinnedFiles,
) -> list[Path]:
    """The videos of up to PRETRAIN_CLIPS tasks nobody annotated, for a first model's
    pre-training and pseudo-labels (none when both are off, PRETRAIN ``none`` and
    PSEUDO_LABELS 0, or the run fine-tunes a version: ``parent``, see
    :func:`version_to_fine_tune`). Their clips come
    from the clip cache when the refresh job decoded them; the others are fetched and decoded
    once, then cached (docs/unlabelled-data.md)."""
    if not settings.train_config().uses_unlabelled(*tasks.heads) or parent is not None:
        return []
    resolver = MediaResolver.from_settings(settings)
    todo = tasks.data.unlabelled[: settings.pretrain_clips]
    with ThreadPoolExecutor(max_workers=max(1, settings.decode_threads)) as pool:
        fetched = list(pool.map(lambda t: fetch_one(resolver, pinned, *t), todo))
    paths = [path for path, _ in fetched if path is not None]
    log.info("project %s: %d of %d unlabelled videos to learn from", project, len(paths), len(todo))
    return paths


def training_run(
    settings: Settings,
    parent: VersionInfo | None,
    cache: ClipCache,
    tasks: LabelledTasks,
    videos: FetchedVideos,
    force: bool,
    before_publish: Callable[[], None] | None = None,
    clips_file: Path | None = None,
    *,
    scratch_over_current: bool = False,
) -> TrainingRun:
    """How the job trains: fine-tuning the current version with its own settings, or a first
    model with the settings' sampling and temporal head; published without becoming current
    (:func:`promote` decides). ``scratch_over_current``: TRAIN_SCRATCH_BELOW chose a new model
    over the current version (:func:`version_to_fine_tune`), recorded in ``meta.source``."""
    model = first_model_config(
        bool(tasks.wanted.timeline_labels), settings.train_temporal, settings.train_network
    )
    first = settings.first_sampling()
    source = {
        "label_studio_tasks": len(tasks.data.tasks),
        "skipped_tasks": videos.skipped,
        "forced": force,
    }
    if scratch_over_current:
        source["train_scratch_below"] = settings.train_scratch_below
    return TrainingRun(
        sampling=None if parent else first,
        model_config=None if parent else model,
        train_config=settings.train_config(),
        parent=parent,
        cache=cache,
        threads=settings.decode_threads,
        gate_tolerance=settings.gate_tolerance,
        make_current=False,
        extra_meta={"source": source},
        before_publish=before_publish,
        clips_file=clips_file,
        litert=settings.litert_export_mode,
    )


def promote_and_refresh(
    store: ModelStore, project: str, info: VersionInfo, settings: Settings, *, force: bool
) -> tuple[bool, str | None]:
    """Promote the new version (see :func:`promote`) and, when it became current, queue the
    refresh of the project's predictions. Returns (promoted, refresh job id or None)."""
    job = get_current_job()
    connection = job.connection if job is not None else None
    promoted = promote(
        store,
        project,
        info,
        connection=connection,
        force=force and settings.promote_on_start_training,
    )
    refresh_job = None
    if promoted and connection is not None:
        try:
            refresh_job = enqueue_refresh(connection, project, info.version, settings)
        except redis.RedisError as exc:  # the version is current; predictions refresh lazily
            log.warning("project %s: could not queue the refresh: %s", project, exc)
    return promoted, refresh_job


def summary(
    info: VersionInfo,
    promoted: bool,
    refresh_job: str | None,
    cache: ClipCache,
    tasks: LabelledTasks,
) -> dict:
    """What the job reports of a published version: whether it became current, its gate,
    its lineage, its scores, and how many clips were decoded anew."""
    metrics = info.meta["metrics"]
    return {
        "status": "trained" if promoted else "rejected",
        "promoted": promoted,
        "gate": info.meta.get("gate"),
        "refresh_job": refresh_job,
        "version": info.version,
        "parent": info.meta.get("parent"),
        "init": info.meta.get("init"),
        "test_accuracy": metrics["test"]["accuracy"],
        "val_accuracy": metrics["val"]["accuracy"],
        "test_frame_accuracy": (metrics["test"].get("timeline") or {}).get("frame_accuracy"),
        "clips": {"decoded": cache.misses, "from_cache": cache.hits},
        "per_label": tasks.counts,
        "per_timeline_label": tasks.timeline_counts,
    }
