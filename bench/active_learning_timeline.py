"""Does labelling the least certain videos first save labels on the timeline? A simulation.

Why: bench/active_learning.py measures the least-certain-first order on a classification set
only; a project with ``<TimelineLabels>`` is ordered by another score, the mean over the
sampled frames of each frame's confidence (``ClipPrediction.timeline_confidence``), and a
timeline-only model has no classifier head, so the refresh orders its tasks by that score
whatever ACQUISITION says. This measures whether that order reaches a per-frame accuracy with
fewer labelled videos than random.

A simulated annotator labels short synthetic videos with motion segments
(``training.video.synth_long``, what ``videoloop synth --long`` writes, here 10-16 s with 1-3
segments so that a round is cheap) from a pool, round by round; each strategy starts from the
same ``--seed-clips`` videos, trains as the product's training job does (``fit`` with the
timeline labels, the product's split, the first round from scratch and later ones
fine-tuning the last round's model; bench/active_learning.py's loop, ``_annotate``), and
labels ``--k`` more: ``random`` ones, or the first ``--k`` of the order the refresh writes
(``uncertainty[:<measure>]``: each video's ``ClipPrediction.timeline_confidence``,
``acquisition_rank.signal_of`` and ``order_of``). The
held-out test videos are scored with the product's own ``evaluate``: per-frame accuracy and
segmental F1@0.5 on the sampled frames. It prints bench/active_learning.py's tables (per-frame
accuracy by labelled videos and at 8, 16 and 32 labels, labels to reach ``--target`` with
ratios to random, time per round; "labels per class" there is labelled frames per output, no
label first), then segment F1 at those counts, and plots the curves
(``bench/active_learning_timeline.png``). Each (strategy, seed) runs in a spawned process of
its own (bench/active_learning.py's ``_run_jobs``). Run from the repository root (not
imported by the packages):

    .venv/bin/python bench/active_learning_timeline.py [--json FIGURES.json]

Results: bench/RESULTS.md#timeline-set.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from active_learning import (
    Learner,
    _accuracy_at,
    _add_run_arguments,
    _annotate,
    _collect,
    _load_clips,
    _loop_fields,
    _plot,
    _report,
    _trainer,
)

ROOT = Path(__file__).resolve().parents[1]

COUNTS = (8, 16, 32)
"""Label counts the issue asks figures at."""


def _parse_strategy(spec: str, default_measure: str) -> tuple[str, str | None]:
    """``random`` | ``uncertainty`` | ``uncertainty:<measure>`` -> (kind, measure). The
    acquisition strategies of bench/active_learning.py need a classifier head, which a
    timeline-only model has not (the refresh falls back to the score order)."""
    from training.model.uncertainty import parse_measure

    kind, _, measure = spec.partition(":")
    if kind == "random" and not measure:
        return kind, None
    if kind == "uncertainty":
        try:
            return kind, parse_measure(measure or default_measure).value
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    raise SystemExit(f"unknown strategy {spec!r}: random, uncertainty[:<measure>]")


def _least_certain(
    outputs: dict[str, np.ndarray], mask: np.ndarray, labels: list[str], measure: str, seed: int
) -> list[int]:
    """Indices of the clips in the order a timeline-only project is labelled in: each clip's
    ClipPrediction.timeline_confidence (its real frames only; the task's score), then
    acquisition_rank.signal_of and order_of as training/jobs/refresh.py does. Without a
    classifier head every ACQUISITION falls back to the score, lowest first: the Data
    Manager's ascending sort (ACQUISITION=score) gives the same order."""
    from training.jobs.acquisition_rank import order_of, signal_of
    from training.model.inference import ClipPrediction
    from training.video.clip import Clip

    signals = {}
    for i, (frame_probs, real) in enumerate(zip(outputs["timeline"], mask, strict=True)):
        n = int(real.sum())
        # only segments() reads the clip; the score needs its real frames' probabilities
        clip = Clip(np.zeros(0, np.uint8), real, list(range(n)), 1.0, n, float(n))
        prediction = ClipPrediction("bench", clip, (), tuple(labels), None, frame_probs[:n])
        score = prediction.timeline_confidence(measure)
        signals[i] = signal_of(prediction, 1.0 if score is None else score, None, 0)
    return order_of("score", signals, batch=len(signals), seed=str(seed))


def _run_one(job: dict) -> dict:
    """In a spawned process: one strategy, one seed, every round; returns the curve."""
    data, test, pool = _load_clips(job)
    from training.labelstudio.timeline import IGNORE
    from training.learn.config import TrainConfig
    from training.learn.evaluate import evaluate, predict_outputs

    labels = job["labels"]
    train_config = TrainConfig(epochs=job["epochs"], patience=job["patience"], seed=job["seed"])
    seed = job["seed"]
    labelled = np.random.default_rng([seed, 0]).permutation(pool)[: job["seed_clips"]].tolist()

    def score(model) -> dict:
        metrics = evaluate(predict_outputs(model, test), test, [], labels)["timeline"]
        f1 = metrics["segment_f1@0.5"]
        return {
            "accuracy": metrics["frame_accuracy"],
            "segment_f1": float("nan") if f1 is None else f1,
        }

    def choose(model, unlabelled, more: int) -> list[int]:
        rest = data.subset(unlabelled)
        outputs = predict_outputs(model, rest)
        order = _least_certain(outputs, rest.mask, labels, job["measure"], seed)
        return [int(unlabelled[i]) for i in order[:more]]

    def per_class(chosen) -> list[int]:  # labelled frames per output, no label first
        frame_y = chosen.frame_y[chosen.frame_y != IGNORE]
        return np.bincount(frame_y, minlength=len(labels) + 1).tolist()

    train = _trainer(data, train_config, [], timeline_labels=labels)  # timeline only
    meta = {"labels": [], "timeline_labels": list(labels)}
    learner = Learner(train, score, choose, per_class, meta)
    return {"rounds": _annotate(job, data, pool, labelled, train_config, learner)}


def _make_set(folder: Path, args: argparse.Namespace, labels: list[str]):
    """The synthetic timeline videos, decoded with their per-frame targets, and the pool and
    test indices (a random split by the data seed)."""
    from training.learn.dataset import LabelledVideo, decode_labelled
    from training.video.clip import SamplingConfig
    from training.video.synth_long import generate_long_set, read_long_set

    low, _, high = args.seconds.partition("-")
    low_n, _, high_n = args.segments.partition("-")
    generate_long_set(
        folder,
        videos=args.pool + args.test,
        seed=args.seed,
        seconds=(float(low), float(high or low)),
        segments=(int(low_n), int(high_n or low_n)),
        fps=args.fps,
        labels=labels,
    )
    items = [
        LabelledVideo(v.path, segments=tuple(v.segments), frame_rate=v.fps)
        for v in read_long_set(folder)
    ]
    sampling = SamplingConfig(frames=args.frames, height=args.size, width=args.size)
    data, skipped = decode_labelled(items, [], sampling, timeline_labels=labels)
    if skipped:
        raise SystemExit(f"unreadable synthetic videos: {skipped}")
    order = np.random.default_rng(args.seed).permutation(len(data))
    return data, np.sort(order[args.test :]), np.sort(order[: args.test])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=120, help="unlabelled pool videos")
    parser.add_argument("--test", type=int, default=40, help="held-out test videos")
    parser.add_argument("--seconds", default="10-16", help="video length range, in seconds")
    parser.add_argument("--segments", default="1-3", help="motion segments per video")
    parser.add_argument("--fps", type=int, default=10, help="the videos' frame rate")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (videos, pool/test)")
    _add_run_arguments(parser)
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=["random", "uncertainty"],
        help="random | uncertainty | uncertainty:<measure>",
    )
    parser.add_argument(
        "--measure", default="least_confidence", help="the measure of a plain 'uncertainty'"
    )
    parser.add_argument("--seed-clips", type=int, default=8, help="labelled videos to start")
    parser.add_argument("--k", type=int, default=8, help="videos labelled per round")
    parser.add_argument("--budget", type=int, default=40, help="most labelled videos")
    parser.add_argument("--target", type=float, default=0.7, help="per-frame accuracy to reach")
    parser.add_argument("--frames", type=int, default=16, help="T")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "bench" / "active_learning_timeline.png"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    from support import machine_header

    from training.video.synth_long import LONG_LABELS

    print(machine_header(), flush=True)
    labels = list(LONG_LABELS)
    runs = [_parse_strategy(s, args.measure) for s in args.strategies]
    names = [kind if measure is None else f"{kind}:{measure}" for kind, measure in runs]
    with tempfile.TemporaryDirectory() as tmp:
        data, pool, test = _make_set(Path(tmp) / "videos", args, labels)
        path = Path(tmp) / "clips.npz"
        np.savez(
            path, frames=data.frames, mask=data.mask, frame_y=data.frame_y, pool=pool, test=test
        )
        print(
            f"data: timeline labels {labels}, {args.seconds} s videos at {args.fps} fps with "
            f"{args.segments} segments (data seed {args.seed}): pool {len(pool)}, test "
            f"{len(test)}; T={args.frames} at {args.size}x{args.size}; "
            f"{time.perf_counter() - started:.0f} s to generate and decode"
        )
        print(
            f"loop: seed set {args.seed_clips} videos, +{args.k} a round up to {args.budget}; "
            f"seeds {args.seeds}; epochs <= {args.epochs} (patience {args.patience}); holdout "
            f"{args.holdout}; target per-frame accuracy {args.target:g}\n",
            flush=True,
        )
        jobs = [
            {
                "data": str(path),
                "labels": labels,
                "kind": kind,
                "measure": measure,
                "name": name,
                "seed": seed,
                "seed_clips": args.seed_clips,
                **_loop_fields(args),
            }
            for seed in args.seeds
            for (kind, measure), name in zip(runs, names, strict=True)
        ]
        ctx = mp.get_context("spawn")
        done = _collect(jobs, ctx, args.processes, started, _run_one, "frame acc")
    curves = {name: [done[name, seed] for seed in args.seeds] for name in names}
    _report(curves, args)
    width = max(14, *(len(n) for n in names))
    _accuracy_at(curves, names, width, (*COUNTS, args.budget), "segment_f1", "segment F1@0.5")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "curves": curves}, default=str))
        print(f"figures: {args.json}")
    title = (
        f"timeline set: {args.seconds} s videos, {args.segments} segments, pool {len(pool)}, "
        f"test {len(test)}, T={args.frames} at {args.size}px; +{args.k}/round; "
        f"seeds {args.seeds}"
    )
    _plot(
        args.plot,
        curves,
        args.target,
        title,
        xlabel="labelled videos",
        ylabel="held-out per-frame accuracy",
    )
    print(f"plot: {args.plot}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
