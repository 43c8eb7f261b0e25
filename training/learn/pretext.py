"""Self-supervised pre-training on unlabelled clips, before a project's first model.

Why: a first model learns from 2 clips a label, while the project holds hundreds of clips
nobody labelled. A pretext task whose answer comes from the clip itself trains the same
frame network and temporal layers the classifier uses; the classifier then starts from those
weights instead of random ones (training/learn/fit.py). Two tasks, both balanced (each clip
once as it is, label 1, and once transformed, label 0):

- ``order``: are the frames in order, or shuffled? Learnable whatever the classes are.
- ``arrow``: is the clip played forward or backward? Useless when the classes come in
  time-reversed pairs (left/right, approaching/receding): a reversed clip of one class is a
  forward clip of the other, so a balanced set of such clips holds no arrow of time.

Measured in docs/unlabelled-data.md. Later runs fine-tune the current version, which already
holds what the pre-training taught, so it runs once per project (see fit.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from training.learn.config import Progress, TrainConfig, TrainingRun, no_progress
from training.learn.dataset import ClipArrays, LabelledVideo, decode_labelled
from training.learn.fit import report_epochs
from training.model.config import ModelConfig
from training.video.clip import SamplingConfig
from training.video.clipcache import file_sha256

if TYPE_CHECKING:
    from training.video.clipcache import ClipCache

log = logging.getLogger(__name__)


def transform(frames: np.ndarray, real: int, task: str, rng: np.random.Generator) -> np.ndarray:
    """The clip's frames as the pretext's label 0 sees them: its ``real`` frames reversed
    (``arrow``) or shuffled into any order but forward and backward (``order``); padding
    stays where it is."""
    out = frames.copy()
    if task == "arrow":
        out[:real] = frames[:real][::-1]
        return out
    forward, backward = np.arange(real), np.arange(real)[::-1]
    while True:
        order = rng.permutation(real)
        if not (order == forward).all() and not (order == backward).all():
            break
    out[:real] = frames[order]
    return out


def pretext_clips(data: ClipArrays, task: str, seed: int = 0) -> ClipArrays:
    """Each clip of ``data`` as it is (y = 1) and transformed (y = 0), in that order; clips
    with fewer than 3 real frames (nothing to shuffle) are left out."""
    rng = np.random.default_rng(seed)
    frames, masks, ys = [], [], []
    for i in range(len(data)):
        clip, mask = data.frames[i], data.mask[i]
        real = int(mask.sum())
        if real < 3:
            continue
        frames += [clip, transform(clip, real, task, rng)]
        masks += [mask, mask]
        ys += [1, 0]
    t, h, w = data.frames.shape[1:4]
    stacked = np.stack(frames) if frames else np.zeros((0, t, h, w, 3), np.uint8)
    names = [f"pretext:{i}" for i in range(len(ys))]
    return ClipArrays(
        stacked, np.asarray(masks, bool).reshape(-1, t), np.asarray(ys, np.int32), names
    )


def decode_unlabelled(
    paths: Sequence, sampling: SamplingConfig, run: TrainingRun, labelled: Sequence = ()
) -> ClipArrays | None:
    """The first ``pretrain_clips`` unlabelled videos whose content is none of the
    ``labelled`` videos', decoded through the run's clip cache (unreadable ones are skipped);
    None when the run neither pre-trains nor pseudo-labels (TrainConfig.uses_unlabelled), or
    fine-tunes a parent.

    Why leave out copies of labelled videos: a duplicate upload, or an ``--unlabelled``
    folder that overlaps ``--data``, would otherwise put a test or validation clip into
    training under the model's own label, and the gate would score what it trained on."""
    config = run.train_config
    if not config.uses_unlabelled() or run.parent is not None or not paths:
        return None
    kept = _unlike(paths, labelled, config.pretrain_clips, run.cache)
    if len(kept) < min(len(paths), config.pretrain_clips):
        log.info("unlabelled videos: left out copies of labelled ones")
    videos = [LabelledVideo(p) for p in kept]
    arrays, skipped = decode_labelled(videos, [], sampling, threads=run.threads, cache=run.cache)
    if skipped:
        log.info("%d unlabelled videos could not be read", len(skipped))
    return arrays


def _unlike(paths: Sequence, labelled: Sequence, most: int, cache: ClipCache | None) -> list:
    """Up to ``most`` of ``paths``, in order, whose content hash no ``labelled`` file has.

    Hashes through the run's clip cache where there is one: it remembers each file's digest,
    so the labelled videos (hashed when they were decoded) and the unlabelled ones (hashed
    again when they are decoded) are each read for hashing once."""
    if not labelled:
        return list(paths)[:most]
    key = cache.digest if cache is not None else file_sha256

    def identity(path) -> str:
        try:
            return key(path)
        except OSError:  # unreadable: decoding will skip it
            return f"path:{os.fspath(path)}"

    taken = {identity(p) for p in labelled}
    kept = []
    for path in paths:
        if len(kept) >= most:
            break
        if identity(path) not in taken:
            kept.append(path)
    return kept


def pretrain(
    unlabelled: ClipArrays,
    train: ClipArrays,
    sampling: SamplingConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    progress: Progress = no_progress,
):
    """Train a 2-class model of the classifier's architecture on the pretext task, over the
    unlabelled clips and then the labelled ones (their labels unused), at most
    ``pretrain_clips`` in all. Returns (model, its last-epoch pretext accuracy)."""
    import keras

    from training.learn.pipeline import make_dataset
    from training.model.build import build_model

    started = time.perf_counter()
    keras.utils.set_random_seed(train_config.seed)
    cap = train_config.pretrain_clips
    take_unlabelled = np.arange(min(len(unlabelled), cap))
    take_labelled = np.arange(min(len(train), cap - len(take_unlabelled)))
    pool = concat_clips(unlabelled.subset(take_unlabelled), train.subset(take_labelled))
    clips = pretext_clips(pool, train_config.pretrain, train_config.seed)
    model = build_model(2, sampling, model_config)
    ds = make_dataset(
        clips,
        2,
        train_config.batch_size,
        shuffle=True,
        augment=train_config.augment,
        temporal=False,  # a speed change must not decide "in order"
        seed=train_config.seed,
    )
    epochs = train_config.pretrain_epochs
    history = model.fit(
        ds, epochs=epochs, verbose=0, callbacks=[report_epochs(epochs, progress, "pretrain")]
    )
    accuracy = float(history.history["accuracy"][-1])
    log.info(
        "pre-training (%s) on %d clips: accuracy %.2f after %d epochs, %.1f s",
        train_config.pretrain,
        len(pool),
        accuracy,
        epochs,
        time.perf_counter() - started,
    )
    return model, accuracy


def concat_clips(a: ClipArrays, b: ClipArrays) -> ClipArrays:
    """Two sets of clips as one, read into memory (classes, sources; keys are the sources,
    and per-frame targets are dropped: neither user trains a timeline head on them)."""
    return ClipArrays(
        np.concatenate([np.asarray(a.frames), np.asarray(b.frames)]),
        np.concatenate([a.mask, b.mask]),
        np.concatenate([a.y, b.y]),
        [*a.sources, *b.sources],
    )
