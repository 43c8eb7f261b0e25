"""training/learn/pretext.py: the pretext task's clips, the clips it reads from the clip cache,
and copying its weights into the classifier (training/learn/fit.py). A whole pre-trained first
model is trained by tests/backend/cli/test_cli.py (``videoloop train --unlabelled``)."""

from __future__ import annotations

import numpy as np
import pytest

from training.learn.config import TrainConfig, TrainingRun, check_pretext
from training.learn.dataset import ClipArrays
from training.learn.fit import copy_layers
from training.learn.pretext import decode_unlabelled, pretext_clips
from training.model.build import build_model
from training.model.config import ModelConfig
from training.video.clip import SamplingConfig
from training.video.clipcache import ClipCache
from training.video.synth import generate_dataset

TINY = ModelConfig(conv_filters=(8, 8, 8, 8), frame_features=8, lstm_units=8)
SAMPLING = SamplingConfig(frames=6, height=32, width=32)


def random_clips(real: list[int], seed: int = 0) -> ClipArrays:
    rng = np.random.default_rng(seed)
    n, t = len(real), SAMPLING.frames
    frames = rng.integers(0, 255, (n, t, 32, 32, 3), dtype=np.uint8)
    mask = np.arange(t)[None, :] < np.asarray(real)[:, None]
    frames[~mask] = 0
    return ClipArrays(frames, mask, np.full(n, -1, np.int32), [f"u{i}" for i in range(n)])


def test_arrow_clips_are_balanced_and_exact_reversals_of_the_real_frames():
    data = random_clips([6, 4, 2])
    clips = pretext_clips(data, "arrow")
    assert clips.y.tolist() == [1, 0, 1, 0]  # the 2-frame clip is left out
    for k, source in enumerate([0, 1]):
        real = int(data.mask[source].sum())
        forward, backward = clips.frames[2 * k], clips.frames[2 * k + 1]
        assert (forward == data.frames[source]).all()
        assert (backward[:real] == data.frames[source][:real][::-1]).all()
        assert not backward[real:].any() and (clips.mask[2 * k + 1] == data.mask[source]).all()


def test_order_clips_hold_the_same_frames_in_neither_order():
    data = random_clips([6] * 20 + [3] * 5)
    clips = pretext_clips(data, "order", seed=3)
    assert (clips.y == 1).sum() == (clips.y == 0).sum() == 25
    for k in range(25):
        real = int(data.mask[k].sum())
        original = data.frames[k][:real].reshape(real, -1)
        shuffled = clips.frames[2 * k + 1][:real].reshape(real, -1)
        where = [int(np.flatnonzero((original == f).all(1))[0]) for f in shuffled]
        assert sorted(where) == list(range(real))  # the same frames, each once
        assert where not in (list(range(real)), list(range(real))[::-1])


def test_check_pretext_refuses_unknown_tasks():
    assert check_pretext("order") == "order" and check_pretext("none") == "none"
    with pytest.raises(ValueError, match="arrow"):
        check_pretext("jigsaw")


def test_copy_layers_carries_everything_but_the_heads():
    pretext, classifier = build_model(2, SAMPLING, TINY), build_model(3, SAMPLING, TINY)
    copied = copy_layers(classifier, pretext, skip=("classes", "timeline"))
    assert copied > 5
    for name in ("conv0", "bn0", "frame_features", "lstm"):
        mine = classifier.get_layer(name).get_weights()
        theirs = pretext.get_layer(name).get_weights()
        assert all((a == b).all() for a, b in zip(mine, theirs, strict=True))
    assert classifier.get_layer("classes").get_weights()[0].shape[-1] == 3  # its own head


def test_unlabelled_clips_come_from_the_clip_cache(tmp_path):
    manifest = generate_dataset(
        tmp_path / "v", classes=["grow", "shrink"], per_class=2, width=64, height=48
    )
    videos = sorted(manifest.parent.rglob("*.mp4"))
    cache = ClipCache(tmp_path / "clips", 10**8)
    for video in videos[:3]:
        cache.sample(video, SAMPLING)  # as the refresh job decodes a project's tasks
    cache.hits = cache.misses = 0
    run = TrainingRun(cache=cache, train_config=TrainConfig(pretrain="order", pretrain_clips=3))

    arrays = decode_unlabelled(videos, SAMPLING, run)
    assert len(arrays) == 3 and (cache.hits, cache.misses) == (3, 0)  # nothing decoded again
    assert decode_unlabelled(videos, SAMPLING, TrainingRun(cache=cache)) is None  # pretrain none
