"""The quality gate: before a new version may become current, it and the project's current
version are scored on the same held-out clips.

Those clips are this run's test split minus any clip the current version trained or
early-stopped on (its ``split.json``), so neither version is scored on clips it learnt from.
The figures go into the new version's ``meta["gate"]``; whether it then becomes current is
the caller's decision (:func:`gate_allows`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from training.learn.dataset import ClipArrays
from training.learn.evaluate import predict_outputs
from training.versions.store import SPLIT_FILE, VersionInfo
from training.video.clip import SamplingConfig, stack_clips
from training.video.decoder import decode_many

if TYPE_CHECKING:
    from training.video.clipcache import ClipCache

log = logging.getLogger(__name__)

GATE_METRICS = {"classes": "accuracy", "timeline": "frame_accuracy"}
"""What the quality gate compares, per head it judges: the share of held-out clips each
version classifies right, or (timeline-only models) the mean share of each clip's annotated
frames it labels right."""
_GATE_EPSILON = 1e-9
NOTHING_HELD_OUT = (
    "this run held out no clip (every class has fewer than 3 labelled videos, or TRAIN_ALL_BELOW)"
)
"""The gate's reason when the run trained on every labelled clip: nothing to compare on."""


def gate_head(labels: Sequence[str], timeline_labels: Sequence[str] = ()) -> str:
    """The head the gate judges a model by: its classes when it has them, else its timeline."""
    return "classes" if labels else "timeline"


def clip_scores(
    probs: np.ndarray,
    data: ClipArrays,
    head: str,
    model_labels: Sequence[str],
    data_labels: Sequence[str],
) -> list[float | None]:
    """Per clip, how right one head of a model is: 1/0 for the class, the share of counted
    frames for the timeline; None where the clip has no target for that head.

    Labels are compared by name, so a model with other labels (the current version) is
    scored on the same footing: ``model_labels`` name the model's outputs, ``data_labels``
    what ``data.y`` / ``data.frame_y`` index (timeline index 0 is "no label" on both sides).
    """
    out: list[float | None] = []
    if head == "classes":
        predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
        for p, y in zip(predicted, data.y, strict=True):
            out.append(None if y < 0 else float(model_labels[int(p)] == data_labels[int(y)]))
        return out
    names_out = ["", *model_labels]
    names_data = ["", *data_labels]
    predicted = probs.argmax(axis=-1) if len(probs) else np.zeros((0, 0), np.int64)
    frame_y = data.frame_y if data.frame_y is not None else np.full(data.mask.shape, -1)
    for p, y in zip(predicted, frame_y, strict=True):
        counted = y >= 0
        if not counted.any():
            out.append(None)
            continue
        pairs = zip(p[counted], y[counted], strict=True)
        right = [names_out[int(a)] == names_data[int(b)] for a, b in pairs]
        out.append(float(np.mean(right)))
    return out


def quality_gate(
    candidate: dict[str, np.ndarray],
    test: ClipArrays,
    labels: Sequence[str],
    sampling: SamplingConfig,
    current: VersionInfo | None,
    *,
    tolerance: float = 0.0,
    threads: int = 2,
    cache: ClipCache | None = None,
    timeline_labels: Sequence[str] = (),
) -> dict:
    """Score a candidate and the current version on the same held-out clips.

    The clips are ``test`` less those the current version trained or early-stopped on (its
    ``split.json``; versions without one are assumed to have seen none of them), and less
    those without a target for the judged head (:func:`gate_head`). The current model
    predicts with its own sampling (clips are decoded again when it differs) and its own
    labels: a label it does not know counts as a miss.

    Args:
        candidate: the candidate's outputs for every clip of ``test`` (a dict by head, or
            the class probabilities of a plain classifier).
        test: this run's test clips, with their keys.
        labels, timeline_labels: the candidate's labels (what ``test.y`` and
            ``test.frame_y`` index).
        sampling: how ``test`` was sampled.
        current: the version to beat; None when the project has none.
        tolerance: how much lower (0-1) the candidate may score and still pass.

    Returns:
        ``{"metric", "candidate", "current", "current_version", "tolerance", "passed",
        "clips", "reason"}``; ``passed`` is True whenever there is nothing to compare with
        (no current version, no held-out clip or none it has not seen, a current model that
        cannot be read or has no such head).
    """
    outputs = candidate
    head = gate_head(labels, timeline_labels)
    names = labels if head == "classes" else timeline_labels
    scores = clip_scores(outputs[head], test, head, names, names)
    scored = [s for s in scores if s is not None]
    overall = float(np.mean(scored)) if scored else None
    gate: dict = {
        "metric": GATE_METRICS[head],
        "candidate": round(overall, 4) if overall is not None else None,
        "current": None,
        "current_version": current.version if current is not None else None,
        "tolerance": float(tolerance),
        "passed": True,
        "clips": 0,
        "reason": "",
    }
    if current is None:
        return {**gate, "reason": "no current version to compare with"}
    if not len(test):
        return {**gate, "reason": NOTHING_HELD_OUT}
    held_out = _HeldOut(test, head, names, sampling, threads, cache)
    return {**gate, **_against_current(held_out, scores, current, tolerance)}


@dataclass(frozen=True)
class _HeldOut:
    """The candidate's held-out clips, the head they are judged on with its labels, and what
    decoding them again takes (for a current version that samples otherwise)."""

    test: ClipArrays
    head: str
    names: Sequence[str]
    sampling: SamplingConfig
    threads: int
    cache: ClipCache | None


def _against_current(
    held_out: _HeldOut, scores: list[float | None], current: VersionInfo, tolerance: float
) -> dict:
    """The gate's figures against the current version, on the clips it has not seen."""
    seen = _trained_keys(current)
    test = held_out.test
    idx = [i for i, key in enumerate(test.keys) if key not in seen and scores[i] is not None]
    out: dict = {"excluded_seen_by_current": sum(1 for key in test.keys if key in seen)}
    if not idx:
        return {**out, "reason": "no held-out clip that the current version has not seen"}
    try:
        current_scores = _current_scores(current, test.subset(idx), held_out)
    except Exception as exc:  # a broken current model must not stop a new one from replacing it
        log.warning("gate: current version %s cannot be scored", current.version, exc_info=True)
        return {**out, "reason": f"the current version cannot be scored: {exc}"}
    if current_scores is None:
        return {**out, "reason": f"the current version has no comparable {held_out.head} output"}
    keep = [(i, c) for i, c in zip(idx, current_scores, strict=True) if c is not None]
    if not keep:
        return {**out, "reason": "no held-out clip the current version can read"}
    candidate_score = float(np.mean([scores[i] for i, _ in keep]))
    current_score = float(np.mean([c for _, c in keep]))
    passed = candidate_score + _GATE_EPSILON >= current_score - tolerance
    verdict = "not worse than" if passed else "worse than"
    metric = GATE_METRICS[held_out.head]
    return {
        **out,
        "candidate": round(candidate_score, 4),
        "current": round(current_score, 4),
        "passed": bool(passed),
        "clips": len(keep),
        "reason": (
            f"{metric} {candidate_score:.3f} on {len(keep)} held-out clips is {verdict} the "
            f"current version's {current_score:.3f} (tolerance {tolerance:g})"
        ),
    }


def gate_allows(gate: dict | None, *, force: bool = False) -> bool:
    """Whether a version with this gate result may become current (``force``: anyway)."""
    return force or gate is None or bool(gate.get("passed", True))


def _trained_keys(info: VersionInfo) -> set[str]:
    """Keys of the clips a version trained or early-stopped on (empty without split.json)."""
    try:
        split = json.loads((info.path / SPLIT_FILE).read_text())
    except (OSError, ValueError):
        return set()
    return {str(k) for part in ("train", "val") for k in split.get(part) or ()}


def _current_scores(
    current: VersionInfo, clips: ClipArrays, held_out: _HeldOut
) -> list[float | None] | None:
    """Per clip of ``clips``, the current version's :func:`clip_scores` on the judged head
    (None: it could not read the clip); None when the current version has no such head, or
    (timeline) samples other frames than the candidate, so the per-frame targets do not
    apply to it."""
    from training.model.kept_versions import KEPT_VERSIONS

    head, sampling = held_out.head, held_out.sampling
    current_names = (
        list(current.meta["labels"])
        if head == "classes"
        else list(current.meta.get("timeline_labels") or [])
    )
    if not current_names:
        return None
    current_sampling = SamplingConfig.from_dict(current.meta["sampling"])
    if current_sampling == sampling:
        arrays, readable = clips, list(range(len(clips)))
    elif head == "timeline":
        return None
    else:
        decoded = decode_many(
            clips.sources, current_sampling, threads=held_out.threads, cache=held_out.cache
        )
        readable = [i for i, c in enumerate(decoded) if not isinstance(c, Exception)]
        if not readable:
            return [None] * len(clips)
        frames, mask = stack_clips([decoded[i] for i in readable])
        arrays = ClipArrays(frames, mask, clips.y[readable], [clips.sources[i] for i in readable])
    model = KEPT_VERSIONS.load(current.model_path)
    outputs = predict_outputs(model, arrays)
    if head not in outputs:
        return None
    per_clip = clip_scores(outputs[head], arrays, head, current_names, held_out.names)
    scores: list[float | None] = [None] * len(clips)
    for i, score in zip(readable, per_clip, strict=True):
        scores[i] = score
    return scores
