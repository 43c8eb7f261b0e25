"""One training run, end to end: decode, split, train, evaluate on the held-out split, gate,
publish a new version.

Used by ``videoloop train`` (offline) and by the RQ training job. Progress is reported as
plain dicts through a callback (``{"stage": "decode"|"train"|"evaluate"|"gate"|"publish",
...}``), which the CLI draws as a progress bar and the job stores in its RQ meta.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.learn.config import (
    Progress,
    TrainConfig,
    TrainingData,
    TrainingRun,
    no_progress,
)
from training.learn.dataset import (
    ClipArrays,
    as_labelled_video,
    content_keys,
    decode_labelled,
    held_out_split,
)
from training.learn.evaluate import NO_LABEL_NAME, evaluate, predict_outputs
from training.learn.fit import fit
from training.learn.gate import quality_gate
from training.learn.pretext import decode_unlabelled
from training.learn.reports import (
    CONFUSION_MATRIX_FILE,
    LEARNING_CURVE_FILE,
    TIMELINE_CONFUSION_MATRIX_FILE,
    plot_confusion_matrix,
    plot_learning_curve,
)
from training.learn.windowed_data import decode_windowed
from training.model.config import ModelConfig
from training.model.litert import META_KEY as LITERT_META
from training.model.litert_export import export_for_publish
from training.versions.store import MODEL_FILE, SPLIT_FILE, ModelStore, VersionInfo
from training.video.clip import SamplingConfig

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The data cannot train a model (too few usable videos or labels)."""


def train_and_publish(
    store: ModelStore,
    project: str,
    data: TrainingData,
    run: TrainingRun | None = None,
    *,
    progress: Progress = no_progress,
) -> VersionInfo:
    """Decode, split, train, evaluate on the held-out split, gate and publish a new version.

    The split is stable (training.learn.dataset.grouped_split on ``data.keys``): a video keeps
    its part across runs, so the quality gate's clips are ones the current version never
    trained on. The gate's figures go into ``meta["gate"]``, the split's keys into
    ``split.json``, the metrics into ``meta["metrics"]``.

    Raises:
        TrainingError: one class (or none, without timeline labels), a class without any
            readable video, or timeline labels without any annotated frame.
    """
    run = run or TrainingRun()
    sampling, model_config = run.configs()
    started = time.perf_counter()
    clips = _decode(data, sampling, run, progress)
    parts = clips.split(run.train_config)
    log.info("project %s: %s clips", project, parts)
    unlabelled = decode_unlabelled(
        data.unlabelled, sampling, run, labelled=[as_labelled_video(v).path for v in data.videos]
    )
    trained = _fit(clips, parts, sampling, model_config, run, progress, unlabelled)
    metrics, gate = _evaluate_and_gate(store, project, trained, clips, parts, run, progress)
    seconds = round(time.perf_counter() - started, 1)
    version = _NewVersion(trained, clips, parts, metrics, gate, seconds)
    if run.before_publish is not None:
        run.before_publish()
    progress({"stage": "publish"})
    write = functools.partial(
        _write_version, store=store, project=project, version=version, run=run
    )
    info = store.publish(project, write, make_current=run.make_current)
    progress({"stage": "done", "version": info.version, "test_accuracy": gate["candidate"]})
    return info


@dataclass(frozen=True)
class _Parts:
    """A run's clips split into the parts it trains, early-stops and is tested on."""

    train: ClipArrays
    val: ClipArrays
    test: ClipArrays

    def __str__(self) -> str:
        return f"{len(self.train)} train, {len(self.val)} val, {len(self.test)} test"


@dataclass(frozen=True)
class _Clips:
    """A run's decoded clips with the labels they are indexed by, the videos that could not
    be used, and the count of clips per class and of frames per timeline label."""

    data: ClipArrays
    labels: list[str]
    timeline_labels: list[str]
    videos: int
    skipped: list[tuple[str, str]]
    counts: np.ndarray
    frame_counts: np.ndarray

    def split(self, train_config: TrainConfig) -> _Parts:
        """The stable split, holding out what ``train_config`` does for this many labelled
        videos (held_out_split)."""
        train_idx, test_idx, val_idx = held_out_split(self.data.keys, self.data.y, train_config)
        subset = self.data.subset
        return _Parts(subset(train_idx), subset(val_idx), subset(test_idx))


@dataclass(frozen=True)
class _Trained:
    """A fitted model with what it was trained with."""

    model: keras.Model
    history: dict
    init: str
    sampling: SamplingConfig
    model_config: ModelConfig
    unlabelled: int = 0
    """Unlabelled clips decoded for the pre-training."""


@dataclass(frozen=True)
class _NewVersion:
    """Everything a new version's folder is written from."""

    trained: _Trained
    clips: _Clips
    parts: _Parts
    metrics: dict
    gate: dict
    seconds: float


def _decode(
    data: TrainingData, sampling: SamplingConfig, run: TrainingRun, progress: Progress
) -> _Clips:
    """Decode the run's videos and check they can train a model (see TrainingError)."""
    items = [as_labelled_video(v) for v in data.videos]
    timeline_labels = list(data.timeline_labels)
    labels = data.labels
    if labels is None:
        labels = sorted({v.label for v in items if v.label is not None})
    labels = list(labels)
    if len(labels) == 1 or (not labels and not timeline_labels):
        raise TrainingError(f"need at least two labels to train, got {labels}")
    keys = data.keys if data.keys is not None else content_keys([v.path for v in items])
    progress({"stage": "decode", "done": 0, "total": len(items)})
    decode = decode_windowed if sampling.windowed else decode_labelled
    arrays, skipped = decode(
        items,
        labels,
        sampling,
        threads=run.threads,
        cache=run.cache,
        progress=lambda done, total: progress({"stage": "decode", "done": done, "total": total}),
        keys=keys,
        timeline_labels=timeline_labels,
        clips_file=run.clips_file,
    )
    counts = np.bincount(arrays.y[arrays.has_class], minlength=len(labels))
    if labels and (counts == 0).any():
        missing = [label for label, c in zip(labels, counts, strict=True) if c == 0]
        raise TrainingError(f"no readable video for labels {missing}")
    frame_counts = (
        np.bincount(arrays.frame_y[arrays.frame_y >= 0], minlength=len(timeline_labels) + 1)
        if arrays.frame_y is not None
        else np.zeros(1, np.int64)
    )
    if timeline_labels and not frame_counts[1:].sum():
        raise TrainingError(f"no annotated frame of the timeline labels {timeline_labels}")
    return _Clips(arrays, labels, timeline_labels, len(items), skipped, counts, frame_counts)


def _fit(
    clips: _Clips,
    parts: _Parts,
    sampling: SamplingConfig,
    model_config: ModelConfig,
    run: TrainingRun,
    progress: Progress,
    unlabelled: ClipArrays | None = None,
) -> _Trained:
    """Fit a model on the training part, early-stopping on the validation part (pre-trained
    on ``unlabelled`` first, when the run asks for it: training/learn/pretext.py)."""
    # Until the first epoch ends (then "train"): building, tf.data, tracing, that epoch.
    progress({"stage": "build"})
    model, history, init = fit(
        parts.train,
        parts.val,
        clips.labels,
        sampling,
        model_config,
        run.train_config,
        parent=run.parent,
        progress=progress,
        timeline_labels=clips.timeline_labels,
        unlabelled=unlabelled,
    )
    return _Trained(model, history, init, sampling, model_config, len(unlabelled or ()))


def _evaluate_and_gate(
    store: ModelStore,
    project: str,
    trained: _Trained,
    clips: _Clips,
    parts: _Parts,
    run: TrainingRun,
    progress: Progress,
) -> tuple[dict, dict]:
    """The new model's metrics on the test and validation clips, and its quality gate
    against ``run.parent``, else the project's current version."""
    labels, timeline_labels = clips.labels, clips.timeline_labels
    progress({"stage": "evaluate"})
    test_outputs = predict_outputs(trained.model, parts.test)
    val_outputs = predict_outputs(trained.model, parts.val)
    metrics = {
        "test": evaluate(test_outputs, parts.test, labels, timeline_labels),
        "val": evaluate(val_outputs, parts.val, labels, timeline_labels),
    }
    log.info("project %s: test metrics %s", project, metrics["test"])
    progress({"stage": "gate"})
    current = run.parent if run.parent is not None else store.get_current_info(project)
    gate = quality_gate(
        test_outputs,
        parts.test,
        labels,
        trained.sampling,
        current,
        tolerance=run.gate_tolerance,
        threads=run.threads,
        cache=run.cache,
        timeline_labels=timeline_labels,
    )
    log.info("project %s: quality gate: %s", project, gate["reason"])
    return metrics, gate


def _write_version(
    folder: Path, *, store: ModelStore, project: str, version: _NewVersion, run: TrainingRun
) -> dict:
    """Write the model, its pictures and split.json into ``folder``; return its meta."""
    trained, clips, parts = version.trained, version.clips, version.parts
    trained.model.save(folder / MODEL_FILE)
    plot_learning_curve(trained.history, folder / LEARNING_CURVE_FILE)
    if clips.labels:
        matrix = np.asarray(version.metrics["test"]["confusion_matrix"])
        plot_confusion_matrix(matrix, clips.labels, folder / CONFUSION_MATRIX_FILE)
    if clips.timeline_labels:
        matrix = np.asarray(version.metrics["test"]["timeline"]["confusion_matrix"])
        names = [NO_LABEL_NAME, *clips.timeline_labels]
        plot_confusion_matrix(matrix, names, folder / TIMELINE_CONFUSION_MATRIX_FILE)
    split = {"train": parts.train.keys, "val": parts.val.keys, "test": parts.test.keys}
    (folder / SPLIT_FILE).write_text(json.dumps(split))
    meta = _meta(store, project, version, run)
    if run.litert != "off":  # beside the Keras model, before publish uploads the folder
        meta[LITERT_META] = export_for_publish(
            trained.model, trained.sampling, folder, run.litert, _parity_clips(parts)
        )
    return meta


PARITY_TRAIN_CLIPS = 16
"""Training clips the LiteRT parity check falls back on when a run held none out."""


def _parity_clips(parts: _Parts) -> ClipArrays:
    """The clips the LiteRT export is checked on: the test clips, else the validation ones,
    else (a run that held none out: few videos a class, TRAIN_ALL_BELOW) the first training
    clips. Parity compares LiteRT with Keras, not with labels, so clips the model trained on
    do as well; without any, a LiteRT deployment would have no file to serve."""
    for part in (parts.test, parts.val):
        if len(part):
            return part
    return parts.train.subset(np.arange(min(PARITY_TRAIN_CLIPS, len(parts.train))))


def _meta(store: ModelStore, project: str, version: _NewVersion, run: TrainingRun) -> dict:
    """A new version's meta.json: what it was trained on and with, and how it scored."""
    trained, parent = version.trained, run.parent
    history = trained.history
    return {
        "labels": version.clips.labels,
        "timeline_labels": version.clips.timeline_labels,
        "sampling": trained.sampling.to_dict(),
        "model": {
            **trained.model_config.to_dict(),
            "parameters": int(trained.model.count_params()),
        },
        "training": {
            **run.train_config.to_dict(),
            "epochs_run": len(history.get("loss", [])),
            "seconds": version.seconds,
        },
        "history": history,
        "metrics": version.metrics,
        "gate": version.gate,
        "dataset": {
            **_dataset_meta(version.clips, version.parts),
            "unlabelled": trained.unlabelled,
        },
        "parent": parent.version if parent is not None and trained.init != "scratch" else None,
        "init": trained.init,
        "previous_current": store.get_current(project),
        **(run.extra_meta or {}),
        "created_at": time.time(),
        "software": _software_versions(),
    }


def _dataset_meta(clips: _Clips, parts: _Parts) -> dict:
    """meta.json's ``dataset``: how many videos, clips per part and per label, what was
    skipped and why."""
    dataset = {
        "videos": clips.videos,
        "train": len(parts.train),
        "val": len(parts.val),
        "test": len(parts.test),
        "per_label": {label: int(c) for label, c in zip(clips.labels, clips.counts, strict=True)},
        "skipped": [{"video": v, "reason": r} for v, r in clips.skipped],
        "split": "stable",
    }
    if clips.timeline_labels:
        names = [NO_LABEL_NAME, *clips.timeline_labels]
        dataset["timeline_frames"] = {
            name: int(c) for name, c in zip(names, clips.frame_counts, strict=True)
        }
    return dataset


def _software_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}
