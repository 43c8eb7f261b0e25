"""What a training run is given, as data: how long and on what split to train
(:class:`TrainConfig`), what to learn from (:class:`TrainingData`) and how to train and publish
(:class:`TrainingRun`).

No TensorFlow here: ``videoloop train`` takes its options' defaults from these before it
decides to train, and the job builds them before it imports Keras.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from training.model.config import ModelConfig
from training.video.clip import SamplingConfig

if TYPE_CHECKING:
    from training.learn.dataset import LabelledVideo
    from training.versions.store import VersionInfo
    from training.video.clipcache import ClipCache

PRETEXT_TASKS = ("order", "arrow")
"""TrainConfig.pretrain's tasks, besides ``none`` (training/learn/pretext.py)."""


def check_pretext(name: str) -> str:
    """``name`` if it is ``none`` or one of PRETEXT_TASKS.

    Raises:
        ValueError: naming the valid tasks.
    """
    if name != "none" and name not in PRETEXT_TASKS:
        raise ValueError(f"unknown pretext task {name!r}; one of none, {', '.join(PRETEXT_TASKS)}")
    return name


Progress = Callable[[dict], None]
"""Receives training's progress events (``{"stage": ..., ...}``)."""


def no_progress(_: dict) -> None:
    """The Progress of callers that do not follow training."""


@dataclass(frozen=True)
class TrainConfig:
    """How long and on what split to train; stored in meta.json."""

    epochs: int = 40
    batch_size: int = 8
    patience: int = 10
    """Epochs without validation-loss improvement before stopping (best weights are kept)."""
    min_epochs: int = 12
    """Epochs before early stopping and learning-rate cuts may act (capped at ``epochs``).

    Why: with the few clips of an early retrain (tens, a handful of batches an epoch),
    validation accuracy sat at chance for the first ~12 epochs and then jumped to 1.0
    (2 labels x 13 clips at 64 px); stopping on the epoch-1 validation loss kept a model
    that had learnt nothing. Best weights are tracked from this epoch on."""
    test_fraction: float = 0.2
    """Held out for the final evaluation, never seen in training or early stopping."""
    val_fraction: float = 0.15
    augment: bool = True
    """Brightness/contrast and small translations, the same for all frames of a clip:
    they keep temporal order and direction (no flips, no time reversal)."""
    seed: int = 0
    # Unlabelled videos and augmentation (docs/unlabelled-data.md)
    augment_temporal: bool = False
    """Speed changes and temporal crops (training/learn/augment.py); never time reversal."""
    pretrain: str = "none"
    """A first model's self-supervised pre-training on unlabelled clips
    (training/learn/pretext.py PRETEXT_TASKS): ``order`` (frames in order or shuffled?),
    ``arrow`` (played forward or backward?) or ``none``."""
    min_batches: int = 1
    """Batches an epoch of training has at least: a small training set is gone over several
    times an epoch, each time augmented anew (training/learn/pipeline.py)."""
    pretrain_epochs: int = 6
    pretrain_clips: int = 200
    """Most clips the pre-training learns from (unlabelled first, then the labelled ones);
    also the most unlabelled clips a run decodes, for pseudo-labels too."""
    pseudo_rounds: int = 0
    """Rounds of a first model's fine-tuning on its own confident predictions of the
    unlabelled clips (training/learn/pseudo_labels.py); 0: off."""
    pseudo_threshold: float = 0.8
    """Lowest top probability of an unlabelled clip taken as a pseudo-label."""
    pseudo_per_class: int = 20
    """Most pseudo-labelled clips a class takes in a round (the most confident ones)."""
    pseudo_epochs: int = 10
    """Epochs of each pseudo-label round's fine-tuning."""
    train_all_below: int = 0
    """While a run has fewer labelled videos than this (distinct split keys: the tasks whose
    video could be read), it holds none out: it trains on every one, with no validation part
    (best weights by training loss) and no test part (so no quality gate). 0: always hold
    out ``test_fraction`` and ``val_fraction``.

    Why: at 24 labels the split keeps 16 for training, and its 4 test clips cannot tell a
    good model from a bad one (each is 0.25 of the accuracy); see docs/active-learning.md."""

    def pseudo_labels_apply(self, classes: bool, timeline: bool) -> bool:
        """Whether a first model's pseudo-label rounds run: asked for, on a model with a class
        head and no timeline head (a pseudo-labelled clip has no frame targets)."""
        return self.pseudo_rounds > 0 and classes and not timeline

    def uses_unlabelled(self, classes: bool = True, timeline: bool = False) -> bool:
        """Whether a first model with these heads learns from unlabelled clips (pre-training,
        or pseudo-labels where they apply): the only case in which a run fetches and decodes
        them, so a timeline project under PSEUDO_LABELS alone fetches none."""
        return self.pretrain != "none" or self.pseudo_labels_apply(classes, timeline)

    def split_fractions(self, labelled: int) -> tuple[float, float]:
        """The (test, validation) shares a run of ``labelled`` distinct labelled videos holds
        out: none while under ``train_all_below``."""
        if labelled < self.train_all_below:
            return 0.0, 0.0
        return self.test_fraction, self.val_fraction

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainingData:
    """What a run learns from: the videos, the labels of each head, the videos' split keys."""

    videos: Sequence[LabelledVideo | tuple[str | os.PathLike, str]]
    """LabelledVideo items (a class, timeline segments, or both) or (path, label) pairs."""
    labels: Sequence[str] | None = None
    """The class order of the model's output; None: the sorted classes of ``videos`` (may be
    empty when ``timeline_labels`` is not: a timeline-only model)."""
    timeline_labels: Sequence[str] = ()
    """The frame-level labels (outputs 1..; 0 is "no label"); empty: no timeline head."""
    keys: Sequence[str] | None = None
    """One stable identity per video for the split (Label Studio task ids); None: the
    videos' content hashes."""
    unlabelled: Sequence[str | os.PathLike] = ()
    """Videos nobody labelled, for a first model's pre-training (TrainConfig.pretrain) and
    pseudo-labels (TrainConfig.pseudo_rounds); only decoded when one of them runs
    (TrainConfig.uses_unlabelled), at most TrainConfig.pretrain_clips of them."""


@dataclass(frozen=True)
class TrainingRun:
    """How to train and publish: the settings, the version to start from, the clip cache,
    and whether publishing may make the new version current."""

    sampling: SamplingConfig | None = None
    """None: the parent's (to fine-tune it), else the defaults."""
    model_config: ModelConfig | None = None
    """None: the parent's, else the defaults."""
    train_config: TrainConfig = field(default_factory=TrainConfig)
    parent: VersionInfo | None = None
    """A version to fine-tune from (training.learn.fit.warm_start); None trains from scratch.
    The quality gate compares with it, else with the project's current version."""
    cache: ClipCache | None = None
    """Decoded-clip cache, so a retrain does not decode the same video again."""
    threads: int = 2
    """Decoding threads."""
    gate_tolerance: float = 0.0
    """See training.learn.gate.quality_gate."""
    make_current: bool = True
    """Point the project's ``current`` at the new version, whatever the gate says (callers
    that honour the gate pass False and decide with training.learn.gate.gate_allows)."""
    extra_meta: dict | None = None
    """More fields for meta.json (where the data came from, what triggered the run)."""
    before_publish: Callable[[], None] | None = None
    """Called right before publishing; raises to publish nothing (a training job that lost
    its lease: training/jobs/progress.py)."""
    clips_file: Path | None = None
    """Where the run writes its decoded clips, read back a batch at a time
    (training/learn/clip_file.py): memory no longer grows with the number of clips. None:
    they are held in memory."""
    litert: str = "off"
    """LiteRT export at publish (training/model/litert_export.py): 'off', 'float', or the
    float file and a quantised one, 'float16' or 'dynamic' (LITERT_EXPORT)."""

    def configs(self) -> tuple[SamplingConfig, ModelConfig]:
        """The sampling and model settings this run trains with, defaults resolved."""
        sampling, model_config = self.sampling, self.model_config
        if self.parent is not None:
            sampling = sampling or SamplingConfig.from_dict(self.parent.meta["sampling"])
            model_config = model_config or ModelConfig.from_dict(self.parent.meta["model"])
        return sampling or SamplingConfig(), model_config or ModelConfig()
