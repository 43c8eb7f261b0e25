"""Long videos: windowed sampling (SAMPLE_FPS) against T frames over the whole video.

Trains two models on the same long synthetic videos (``videoloop synth --long``, seed 1):
today's (T frames spread over each video) and a windowed one (T-sample windows at
--sample-fps); predicts held-out long videos (seed 2) through predict_clips, the path
/predict and the refresh share, and prints segmental F1@0.5 and the median boundary error
(seconds) of each. Then times a full prediction (timeline and class) of a 1-, 5- and
10-minute 360p video with the windowed model, each in a fresh process, with its peak RSS,
and draws predicted against true segments of one held-out video (PNG).

    .venv/bin/python bench/long_videos.py --out .videoloop/bench-long

``--extensions`` (issue 17) also trains the windowed model with each of bench/extensions.py's
variants, on the same videos; ``--skip-whole`` and ``--minutes ""`` leave out the rest.

Figures and the machine: bench/RESULTS.md#long-videos.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from extensions import EXTENSIONS, extension_built

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.labelstudio.timeline import Segment, segment_f1
from training.video.synth_long import (
    LONG_LABELS,
    LongVideo,
    generate_long_set,
    read_long_set,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(".videoloop/bench-long"))
    p.add_argument("--train-videos", type=int, default=16)
    p.add_argument("--test-videos", type=int, default=4)
    p.add_argument("--seconds", default="120-180", help="length range of the held-out videos")
    p.add_argument("--train-seconds", default="60-120", help="length range of training videos")
    p.add_argument("--fps", type=int, default=10, help="the sets' frame rate")
    p.add_argument("--frames", type=int, default=16, help="T")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--sample-fps", type=float, default=4.0)
    p.add_argument("--stride", type=int, default=8, help="WINDOW_STRIDE")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--minutes", default="1,5,10", help="timed video lengths; empty: none")
    p.add_argument("--timing-fps", type=int, default=15, help="the timed 360p videos' rate")
    p.add_argument(
        "--extensions",
        nargs="*",
        default=[],
        choices=EXTENSIONS,
        help="issue 17: also train the windowed model with each (bench/extensions.py)",
    )
    p.add_argument("--skip-whole", action="store_true", help="no whole-video model")
    p.add_argument("--time-one", nargs=2, metavar=("VERSION_DIR", "VIDEO"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_set(folder: Path, videos: int, seed: int, seconds: str, fps: int) -> list[LongVideo]:
    if not (folder / "tasks.json").exists():
        low, _, high = seconds.partition("-")
        generate_long_set(
            folder, videos=videos, seed=seed, seconds=(float(low), float(high or low)), fps=fps
        )
    return read_long_set(folder)


def train(store_dir: Path, name: str, videos: list[LongVideo], sampling, epochs: int):
    """One timeline-only model on ``videos``; returns its VersionInfo and training seconds."""
    from training.learn.config import TrainConfig, TrainingData, TrainingRun
    from training.learn.dataset import LabelledVideo
    from training.learn.publish import train_and_publish
    from training.model.config import ModelConfig
    from training.versions.store import ModelStore

    items = [LabelledVideo(v.path, segments=tuple(v.segments), frame_rate=v.fps) for v in videos]
    data = TrainingData(items, labels=[], timeline_labels=LONG_LABELS)
    model = ModelConfig(
        temporal="bilstm", conv_filters=(16, 32, 32, 32), frame_features=64, lstm_units=64
    )
    run = TrainingRun(
        sampling=sampling,
        model_config=model,
        train_config=TrainConfig(epochs=epochs, batch_size=8, patience=4),
    )
    started = time.perf_counter()
    info = train_and_publish(ModelStore(store_dir), name, data, run)
    return info, time.perf_counter() - started


def predict(info, videos: list[LongVideo]) -> list:
    """Each video's ClipPrediction, through predict_clips and open_video (as /predict)."""
    from training.model.inference import predict_clips
    from training.model.loaded import load_version
    from training.video.windows import open_video

    model = load_version(info, batch_size=16)
    sources = [lambda v=v: open_video(v.path, model.sampling) for v in videos]
    with ThreadPoolExecutor(2) as pool:
        outcomes = dict(predict_clips(model, sources, pool))
    return [outcomes[i] for i in range(len(videos))]


def boundary_errors_s(truth: list[Segment], predicted: list[Segment], fps: float) -> list[float]:
    """|start| and |end| differences, in seconds, of each true segment and the predicted
    segment of its label that overlaps it most (none: not counted; F1 counts misses)."""
    errors = []
    for t in truth:
        best, best_overlap = None, 0
        for p in predicted:
            overlap = min(p.end, t.end) - max(p.start, t.start) + 1
            if p.label == t.label and overlap > best_overlap:
                best, best_overlap = p, overlap
        if best is not None:
            errors += [abs(best.start - t.start) / fps, abs(best.end - t.end) / fps]
    return errors


def score(predictions: list, videos: list[LongVideo]) -> dict:
    f1s, errors = [], []
    for outcome, video in zip(predictions, videos, strict=True):
        predicted = [s.segment for s in outcome.segments(frame_rate=video.fps) or []]
        f1s.append(segment_f1(video.segments, predicted) or 0.0)
        errors += boundary_errors_s(video.segments, predicted, video.fps)
    return {
        "segment_f1": float(np.mean(f1s)),
        "median_boundary_error_s": float(np.median(errors)) if errors else float("nan"),
        "matched_boundaries": len(errors),
    }


class RssWatch:
    """The largest resident memory (VmRSS) seen every 20 ms while the block runs, in MiB:
    ru_maxrss alone would be the model's loading peak."""

    def __init__(self) -> None:
        import threading

        self.max_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        from support import rss_mb

        while not self._stop.wait(0.02):
            self.max_mb = max(self.max_mb, rss_mb())

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def time_one(version_dir: str, video: str) -> None:
    """(In a fresh process) predict one video fully; print seconds and peak RSS as JSON."""
    from training.model.inference import predict_clips
    from training.model.loaded import load_version
    from training.versions.store import ModelStore

    path = Path(version_dir)
    info = ModelStore(path.parents[2]).get_version(path.parents[1].name, path.name)
    model = load_version(info, batch_size=16)
    loaded_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from training.video.windows import open_video

    during = RssWatch()
    started = time.perf_counter()
    with during, ThreadPoolExecutor(2) as pool:
        ((_, outcome),) = predict_clips(model, [lambda: open_video(video, model.sampling)], pool)
    seconds = time.perf_counter() - started
    segments = outcome.segments(frame_rate=outcome.clip.fps)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": peak_kb / 1024,
                "after_load_rss_mb": loaded_kb / 1024,
                "max_rss_during_mb": during.max_mb,
                "samples": len(outcome.clip.indices),
                "segments": len(segments or []),
            }
        )
    )


def timing(args: argparse.Namespace, info) -> list[dict]:
    rows = []
    for minutes in [float(m) for m in args.minutes.split(",") if m.strip()]:
        folder = args.out / f"timing-{minutes:g}min"
        if not (folder / "tasks.json").exists():
            generate_long_set(
                folder,
                videos=1,
                seed=9,
                seconds=(60 * minutes, 60 * minutes),
                segments=(10, 30),
                width=640,
                height=360,
                fps=args.timing_fps,
            )
        video = read_long_set(folder)[0].path
        cmd = [sys.executable, __file__, "--time-one", str(info.path), str(video)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append({"minutes": minutes, **json.loads(out.strip().splitlines()[-1])})
    return rows


def draw(path: Path, video: LongVideo, predictions: dict[str, object]) -> None:
    """True segments and each model's, one row each, for one video."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {label: c for label, c in zip(LONG_LABELS, ("tab:blue", "tab:orange"), strict=False)}
    rows = {"true": video.segments}
    for name, outcome in predictions.items():
        rows[name] = [s.segment for s in outcome.segments(frame_rate=video.fps) or []]
    fig, ax = plt.subplots(figsize=(12, 1 + 0.6 * len(rows)))
    for y, segments in enumerate(rows.values()):
        for s in segments:
            ax.broken_barh(
                [((s.start - 1) / video.fps, s.length / video.fps)],
                (y - 0.35, 0.7),
                color=colours.get(s.label, "grey"),
            )
    ax.set_yticks(range(len(rows)), list(rows))
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(f"{video.path.name}: " + ", ".join(f"{k} = {c}" for k, c in colours.items()))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.time_one:
        time_one(*args.time_one)
        return 0
    from training.video.clip import SamplingConfig

    train_set = make_set(args.out / "train", args.train_videos, 1, args.train_seconds, args.fps)
    test_set = make_set(args.out / "test", args.test_videos, 2, args.seconds, args.fps)
    whole = SamplingConfig(frames=args.frames, height=args.size, width=args.size)
    windowed = SamplingConfig(
        frames=args.frames,
        height=args.size,
        width=args.size,
        sample_fps=args.sample_fps,
        window_stride=args.stride,
    )
    results, predictions = {}, {}
    windows = f"windows @{args.sample_fps:g} fps"
    rows = [] if args.skip_whole else [("whole video", whole, None)]
    rows += [(windows, windowed, None)]
    rows += [(f"{windows} + {e}", windowed, e) for e in args.extensions]
    for name, sampling, extension in rows:
        project = name.split()[0] + (f"-{extension.replace(' ', '-')}" if extension else "")
        with extension_built(extension, args.frames) if extension else contextlib.nullcontext():
            info, train_s = train(args.out / "models", project, train_set, sampling, args.epochs)
            predictions[name] = predict(info, test_set)
        results[name] = {**score(predictions[name], test_set), "train_s": train_s, "info": info}
    print(
        "| model | segmental F1@0.5 | median boundary error (s) | matched boundaries | training (s) |"
    )
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['segment_f1']:.2f} | {r['median_boundary_error_s']:.2f} | "
            f"{r['matched_boundaries']} | {r['train_s']:.0f} |"
        )
    draw(args.out / "long_segments.png", test_set[0], {k: v[0] for k, v in predictions.items()})
    print(f"\nsegments of {test_set[0].path.name}: {args.out / 'long_segments.png'}\n")
    rows = timing(args, results[windows]["info"])
    if rows:
        print(
            "| video (360p) | samples | segments | predict (s) | max RSS predicting (MiB) | process peak RSS (MiB) |"
        )
        print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['minutes']:g} min | {r['samples']} | {r['segments']} | {r['seconds']:.1f} | "
            f"{r['max_rss_during_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
