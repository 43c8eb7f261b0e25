"""training/labelstudio/results.py and training/model/inference.py ClipPrediction: the
Label Studio JSON built from one clip's model outputs, and the scores measured on them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.labelstudio.labelconfig import TimelineLabels, VideoControls
from training.labelstudio.results import (
    choices_result,
    make_prediction,
    video_prediction,
)
from training.model.inference import ClipPrediction
from training.video.clip import Clip
from training.video.decoder import frame_indices

CONTROLS = VideoControls(
    video_name="video",
    video_value_key="video",
    choices_name="label",
    choice_values=("run", "walk", "sit"),
)


def predicted(
    *,
    classes=None,
    labels=(),
    timeline=None,
    timeline_labels=(),
    clip: Clip | None = None,
    version: str = "v1",
) -> ClipPrediction:
    """A ClipPrediction as training/model/inference.py builds it from model outputs."""
    clip = clip or clip_of(40, 4)
    return ClipPrediction(
        version=version,
        clip=clip,
        labels=tuple(labels),
        timeline_labels=tuple(timeline_labels),
        classes=None if classes is None else np.asarray(classes, np.float32),
        timeline=None if timeline is None else np.asarray(timeline, np.float32),
    )


def test_choices_result_is_the_shape_label_studio_stores():
    assert choices_result("label", "video", "run") == {
        "from_name": "label",
        "to_name": "video",
        "type": "choices",
        "value": {"choices": ["run"]},
    }


def test_make_prediction_clips_score_into_unit_interval():
    assert make_prediction([], 1.0000001, "v1")["score"] == 1.0
    assert make_prediction([], -0.2, "v1")["score"] == 0.0
    assert make_prediction([], float("nan"), "v1")["score"] == 0.0
    prediction = make_prediction([{"x": 1}], np.float32(0.25), "v3-x")
    assert prediction == {"result": [{"x": 1}], "score": 0.25, "model_version": "v3-x"}
    assert type(prediction["score"]) is float  # JSON-serialisable, not numpy


def test_best_label_is_the_argmax_among_offered_labels_with_its_own_probability():
    prediction = predicted(classes=[0.7, 0.2, 0.1], labels=["jump", "run", "sit"])
    label, score = prediction.best_label(CONTROLS.choice_values)
    assert label == "run"  # "jump" is likelier but not offered
    assert score == pytest.approx(0.2)  # not renormalised over the offered labels
    assert prediction.best_label([]) is None
    assert prediction.best_label() == ("jump", pytest.approx(0.7))  # every label: the CLI


def test_classification_prediction_builds_the_result():
    rng = np.random.default_rng(1)
    labels = ["walk", "sit", "run", "fly"]
    for _ in range(20):
        probs = rng.dirichlet(np.ones(len(labels)))
        prediction = video_prediction(
            predicted(classes=probs, labels=labels, version="v5-20250101-000000"), CONTROLS
        )
        offered = [i for i, name in enumerate(labels) if name in CONTROLS.choice_values]
        best = max(offered, key=lambda i: probs[i])
        assert prediction["result"] == [choices_result("label", "video", labels[best])]
        assert math.isclose(prediction["score"], probs[best], rel_tol=1e-6)  # float32 outputs
        assert prediction["model_version"] == "v5-20250101-000000"


def test_no_prediction_when_no_label_fits():  # never an empty one stored with score 0
    prediction = video_prediction(predicted(classes=[0.5, 0.5], labels=["fly", "swim"]), CONTROLS)
    assert prediction is None


TIMELINE = VideoControls(
    video_name="video",
    video_value_key="video",
    choices_name="label",
    choice_values=("run", "walk", "sit"),
    frame_rate=25.0,
    timeline=TimelineLabels("tl", ("Jump", "Fall")),
)


def clip_of(frame_count: int, t: int) -> Clip:
    indices = frame_indices(frame_count, t)
    return Clip(
        frames=np.zeros((t, 8, 8, 3), np.uint8),
        mask=np.ones(t, bool),
        indices=indices,
        fps=25.0,
        frame_count=frame_count,
        duration_s=frame_count / 25.0,
    )


def test_a_clip_and_its_frames_each_get_their_result():
    frame_probs = np.zeros((4, 3))
    frame_probs[:, 0] = 1.0  # no label ...
    frame_probs[2:, :] = [0.1, 0.8, 0.1]  # ... then Jump for the second half
    prediction = video_prediction(
        predicted(
            classes=[0.1, 0.9, 0.0],
            labels=["sit", "run", "fly"],
            timeline=frame_probs,
            timeline_labels=["Jump", "Fall"],
            clip=clip_of(100, 4),
            version="v2",
        ),
        TIMELINE,
        frame_rate=25.0,
    )
    choice, region = prediction["result"]
    assert choice == choices_result("label", "video", "run")
    assert region["type"] == "timelinelabels" and region["from_name"] == "tl"
    assert region["value"] == {"ranges": [{"start": 51, "end": 100}], "timelinelabels": ["Jump"]}
    assert region["score"] == pytest.approx(0.8)
    # the task is as sure as its least sure part: the frames average 0.9, the class 0.9
    assert prediction["score"] == pytest.approx(0.9)


def test_timeline_labels_the_config_dropped_are_never_predicted():
    frame_probs = np.tile([0.1, 0.2, 0.7], (4, 1))  # "Fall" everywhere, "Jump" second
    controls = VideoControls("video", "video", timeline=TimelineLabels("tl", ("Jump",)))
    prediction = video_prediction(
        predicted(timeline=frame_probs, timeline_labels=["Jump", "Fall"]), controls
    )
    (region,) = prediction["result"]
    assert region["value"]["timelinelabels"] == ["Jump"]
    # no choices control: no class result even if the model has a classes output
    alone = video_prediction(
        predicted(
            classes=[1.0, 0.0],
            labels=["run", "walk"],
            timeline=frame_probs,
            timeline_labels=["Jump", "Fall"],
        ),
        controls,
    )
    assert all(r["type"] == "timelinelabels" for r in alone["result"])


@pytest.mark.parametrize(
    ("measure", "expected"), [("least_confidence", 0.5), ("margin", 0.2), ("entropy", 0.0628)]
)
def test_the_score_follows_the_configured_measure(measure, expected):
    probs = np.array([0.3, 0.5, 0.2])
    prediction = video_prediction(
        predicted(classes=probs, labels=["walk", "run", "sit"]), CONTROLS, measure=measure
    )
    assert prediction["score"] == pytest.approx(expected, abs=1e-4)
