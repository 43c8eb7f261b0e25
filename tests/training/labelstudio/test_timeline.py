"""training/labelstudio/timeline.py: TimelineLabels regions <-> per-frame targets, segments."""

from __future__ import annotations

import numpy as np
import pytest

from training.labelstudio.timeline import (
    IGNORE,
    NO_LABEL,
    Segment,
    frame_targets,
    ls_frame,
    predict_segments,
    segment_f1,
    segments_from_labels,
    segments_from_result,
    timeline_metrics,
    timeline_result,
)
from training.video.decoder import frame_indices

LABELS = ("Run", "Walk")


def region(start, end, *labels, name="tl", to="video"):
    return {
        "id": f"r{start}",
        "from_name": name,
        "to_name": to,
        "type": "timelinelabels",
        "value": {"ranges": [{"start": start, "end": end}], "timelinelabels": list(labels)},
    }


def test_segments_from_an_annotation_result():
    result = [
        region(10, 20, "Walk"),
        region(1, 5, "Run"),
        region(3, 4, "Run", name="other"),  # another control
        {"type": "choices", "from_name": "c", "to_name": "video", "value": {"choices": ["A"]}},
        region(7, 6, "Run"),  # end before start: dropped
        region(30, 31, "Fly"),  # not a label of the config
        {**region(40, 41, "Run"), "value": {"ranges": [{"start": "x"}], "timelinelabels": ["Run"]}},
    ]
    assert segments_from_result(result, "tl", "video", LABELS) == [
        Segment(1, 5, "Run"),
        Segment(10, 20, "Walk"),
    ]


def test_label_studio_frame_numbers():
    assert list(ls_frame(np.array([0, 1, 24]), 25.0, 25.0)) == [1, 2, 25]
    # a 50 fps video in a config that says 25: two video frames per Label Studio frame
    assert list(ls_frame(np.array([0, 1, 2, 3]), 50.0, 25.0)) == [1, 1, 2, 2]


def test_frame_targets_follow_the_segments_at_the_sampled_frames():
    indices = [0, 10, 20, 30, 40]  # 0-based video frames
    segments = [Segment(1, 15, "Run"), Segment(25, 35, "Walk")]
    targets = frame_targets(segments, LABELS, indices, 25.0, 25.0, frames=7)
    # frame numbers 1, 11, 21, 31, 41 -> Run, Run, none, Walk, none; then padding
    assert targets.tolist() == [1, 1, NO_LABEL, 2, NO_LABEL, IGNORE, IGNORE]


def test_unannotated_clip_counts_nowhere_and_overlaps_go_to_the_latest_start():
    assert (frame_targets(None, LABELS, [0, 1], 25, 25, 3) == IGNORE).all()
    nested = [Segment(1, 100, "Walk"), Segment(40, 60, "Run")]
    targets = frame_targets(nested, LABELS, [0, 49, 79], 25, 25, 3)
    assert targets.tolist() == [2, 1, 2]


def test_predicted_segments_cover_the_video_in_its_own_numbering():
    frame_count = 100
    indices = frame_indices(frame_count, 10)  # 5, 15, ..., 95
    labels_per_sample = [1, 1, 1, 1, 2, 2, 2, 0, 0, 1]
    probs = np.full((10, 3), 0.05)
    for t, k in enumerate(labels_per_sample):
        probs[t, k] = 0.9
    probs[0, 1] = 0.7  # segment scores are means over their samples
    scored = predict_segments(probs, indices, 25.0, frame_count, 25.0, LABELS)
    assert [s.segment for s in scored] == [
        Segment(1, 40, "Run"),  # samples 0-3 stand for frames 0..39
        Segment(41, 70, "Walk"),
        Segment(91, 100, "Run"),  # the last segment runs to the last frame
    ]
    assert scored[0].score == pytest.approx((0.7 + 0.9 * 3) / 4)
    # the round trip: the sampled frames get back the labels they were predicted
    back = frame_targets([s.segment for s in scored], LABELS, indices, 25.0, 25.0, 10)
    assert back.tolist() == labels_per_sample


def test_padding_rows_are_ignored():
    probs = np.zeros((4, 3))
    probs[:, 1] = 1.0
    scored = predict_segments(probs, [0, 1], 25.0, 2, 25.0, LABELS)
    assert [s.segment for s in scored] == [Segment(1, 2, "Run")]


def test_timeline_result_is_the_shape_label_studio_stores():
    (scored,) = predict_segments(np.array([[0.1, 0.9, 0.0]]), [0], 25.0, 10, 25.0, LABELS)
    assert timeline_result("tl", "video", scored) == {
        "id": "tl-1",
        "from_name": "tl",
        "to_name": "video",
        "type": "timelinelabels",
        "value": {"ranges": [{"start": 1, "end": 10}], "timelinelabels": ["Run"]},
        "score": 0.9,
    }


def test_segment_f1():
    truth = [Segment(1, 10, "Run"), Segment(11, 20, "Walk")]
    assert segment_f1(truth, truth) == 1.0
    assert segment_f1(truth, [Segment(1, 10, "Walk"), Segment(11, 20, "Run")]) == 0.0
    # one good hit (IoU 9/10), one too short (IoU 3/10) -> P = R = 1/2
    assert segment_f1(truth, [Segment(1, 9, "Run"), Segment(11, 13, "Walk")]) == 0.5
    assert segment_f1([], []) is None
    assert segment_f1(truth, []) == 0.0


def test_timeline_metrics_count_only_annotated_frames():
    targets = np.array([[1, 1, 2, 2], [IGNORE] * 4])
    probs = np.zeros((2, 4, 3))
    probs[0, :, 1] = 1.0  # predicts Run everywhere
    probs[1, :, 2] = 1.0  # not counted
    metrics = timeline_metrics(targets, probs, LABELS)
    assert metrics["frame_accuracy"] == 0.5
    assert metrics["frames"] == 4 and metrics["clips"] == 1
    # one predicted Run segment (frames 1-4) vs true Run 1-2 (IoU 0.5, a hit) and Walk 3-4
    assert metrics["segment_f1@0.5"] == pytest.approx(2 * 1.0 * 0.5 / 1.5, abs=1e-4)


def test_segments_from_per_frame_labels():
    labels = ["a", "a", None, "b", "b", "b", "a"]
    assert segments_from_labels(labels) == [
        Segment(1, 2, "a"),
        Segment(4, 6, "b"),
        Segment(7, 7, "a"),
    ]
    assert segments_from_labels(["a", None, "a"]) == [Segment(1, 1, "a"), Segment(3, 3, "a")]
