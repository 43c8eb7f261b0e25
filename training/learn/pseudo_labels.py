"""Confident pseudo-labels: a first model fine-tuned on its own surest predictions of the
project's unlabelled clips.

Why: a first model learns from 2 clips a label while hundreds of clips wait unlabelled. The
clips it classifies with a high probability are mostly right, and each shows its class in
another scene (background, speed, distractors); fine-tuning on them widens what the model has
seen of every class. At most ``pseudo_per_class`` clips a class, the most confident first,
keeps the classes balanced and the wrong picks few; each round picks again from all the
unlabelled clips with the fine-tuned model, so a wrong pick of one round can be dropped.

Only for the class head of a model without a timeline head (a pseudo-labelled clip has no
per-frame targets); validation stays on the real labelled clips. Runs once per project, after
the first model's fit (training/learn/fit.py); measured in docs/unlabelled-data.md.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from training.learn.config import Progress, TrainConfig, no_progress
from training.learn.dataset import ClipArrays
from training.learn.evaluate import predict_arrays
from training.learn.fit import (
    recalibrate_batchnorm,
    report_epochs,
    training_callbacks,
    training_datasets,
)
from training.learn.pretext import concat_clips

log = logging.getLogger(__name__)


def select_confident(
    probs: np.ndarray, threshold: float, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """The clips to pseudo-label: per class, up to ``per_class`` of the clips predicted as
    that class with a top probability of at least ``threshold``, the most confident first.

    Args:
        probs: (clips, classes) class probabilities.
        threshold: lowest top probability taken.
        per_class: most clips taken per predicted class.

    Returns:
        The taken clips' indices into ``probs`` and their predicted classes (int32), class by
        class.
    """
    top, confidence = probs.argmax(axis=1), probs.max(axis=1)
    taken = []
    for c in range(probs.shape[1]):
        candidates = np.flatnonzero((top == c) & (confidence >= threshold))
        taken.append(candidates[np.argsort(-confidence[candidates], kind="stable")][:per_class])
    idx = np.concatenate(taken).astype(np.int64) if taken else np.zeros(0, np.int64)
    return idx, top[idx].astype(np.int32)


def fine_tune_on_pseudo_labels(
    model,
    train: ClipArrays,
    val: ClipArrays | None,
    unlabelled: ClipArrays,
    num_classes: int,
    train_config: TrainConfig,
    progress: Progress = no_progress,
) -> tuple[dict[str, list[float]], list[list[int]]]:
    """Fine-tune ``model`` (in place) for ``pseudo_rounds`` rounds of ``pseudo_epochs`` epochs
    on ``train`` plus its confident predictions of ``unlabelled`` (:func:`select_confident`),
    validating on ``val`` only; progress stage ``"pseudo"``.

    Each round predicts with the model as it would be published (BatchNorm recalibrated on
    ``train``: a first model's moving statistics lag its few batches). A round that takes
    no clip ends the rounds.

    Returns:
        The fine-tuning epochs' history (model.fit's keys, rounds one after the other) and
        the clips taken per class in each round.
    """
    config = replace(train_config, epochs=train_config.pseudo_epochs)
    history: dict[str, list[float]] = {}
    taken: list[list[int]] = []
    for round_ in range(1, train_config.pseudo_rounds + 1):
        recalibrate_batchnorm(model, train, config.batch_size)
        probs = predict_arrays(model, unlabelled, config.batch_size)
        idx, classes = select_confident(probs, config.pseudo_threshold, config.pseudo_per_class)
        counts = np.bincount(classes, minlength=num_classes).tolist()
        taken.append(counts)
        log.info(
            "pseudo-labels round %d/%d: %d of %d unlabelled clips taken, per class %s",
            round_,
            config.pseudo_rounds,
            len(idx),
            len(unlabelled),
            counts,
        )
        if not len(idx):
            break
        data = concat_clips(train, replace(unlabelled.subset(idx), y=classes))
        train_ds, val_ds = training_datasets(data, val, num_classes, 0, config)
        result = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            verbose=0,
            callbacks=[
                report_epochs(config.epochs, progress, "pseudo"),
                *training_callbacks(config, has_val=val_ds is not None),
            ],
        )
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
    return history, taken
