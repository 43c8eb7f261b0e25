"""``videoloop predict``: local video files through the one prediction path, a JSON row each."""

from __future__ import annotations

import argparse
import json
import sys

from backend.cli.common import quiet_tensorflow
from training.settings import Settings


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    quiet_tensorflow()
    import functools
    from concurrent.futures import ThreadPoolExecutor

    from backend.serving import default_loader
    from training.model.inference import Failure, predict_clips
    from training.versions.store import ModelStore
    from training.video.decoder import DecodeLimits
    from training.video.windows import open_video

    info = ModelStore.from_settings(settings).get_current_info(args.project)
    if info is None:
        print(
            f"project {args.project} has no trained model in {settings.model_dir}", file=sys.stderr
        )
        return 2
    model = default_loader(settings)(info, settings.predict_batch_size)  # SERVING_RUNTIME
    limits = DecodeLimits.from_settings(settings)
    sources = [
        functools.partial(open_video, video, model.sampling, limits=limits) for video in args.videos
    ]
    failed = 0
    rows: dict[int, dict] = {}
    printed = 0  # rows go out in the order the videos were named
    with ThreadPoolExecutor(max(1, settings.decode_threads)) as pool:
        for i, outcome in predict_clips(model, sources, pool):
            if isinstance(outcome, Failure):
                failed += 1
                rows[i] = {"video": args.videos[i], "error": outcome.reason}
            else:
                row = prediction_row(outcome, settings.uncertainty_measure)
                rows[i] = {"video": args.videos[i], **row}
            while printed in rows:
                print(json.dumps(rows.pop(printed)))
                printed += 1
    return 1 if failed else 0


def prediction_row(prediction, measure: str) -> dict:
    """One line of ``videoloop predict``: the class with its probabilities and/or the
    segments (frame numbers 1-based, inclusive, at the video's own frame rate); the score is
    the lowest confidence of the parts, as on a Label Studio prediction."""
    row: dict = {"model_version": prediction.version}
    scores = []
    best = prediction.best_label()
    if best is not None:
        row["label"] = best[0]
        scores.append(prediction.class_confidence(measure))
        row["probabilities"] = {
            label: round(float(p), 4)
            for label, p in zip(prediction.labels, prediction.classes, strict=True)
        }
    segments = prediction.segments(prediction.clip.fps)
    if segments is not None:
        row["segments"] = [
            {
                "start": s.segment.start,
                "end": s.segment.end,
                "label": s.segment.label,
                "score": round(s.score, 4),
            }
            for s in segments
        ]
        scores.append(prediction.timeline_confidence(measure))
    row["score"] = round(min(scores), 4) if scores else 0.0
    return row
