"""Keyframe-nearest sampling (SAMPLE_MODE=keyframe) against uniform: its speed-up, then its
accuracy cost.

Why: on long videos with sparse keyframes uniform sampling decodes from the keyframe before each
target up to the target; keyframe sampling decodes one frame per target (issue 14). This
measures both side by side in one run, to say when the opt-in pays:

1. speed: 16 frames at 112x112 from 640x360 H.264 clips of 60 and 80 s (bench/sampling.py's
   moving pattern, 25 fps) with a keyframe every 2, 5 or 10 s; best of REPEATS, interleaved,
   wall-clock and CPU time per clip and their ratios (uniform / keyframe).
2. accuracy: the product's ``fit`` (as the RQ job trains a first model; bench/unlabelled.py's
   ``run_in_process``, TRAIN_EPOCHS 30, the product's split) on long ``motion4`` videos (each
   clip of training/video/synth.py slowed to 60-80 s at 10 fps, 128x96, keyframes every 5 or
   10 s), sampled uniform or keyframe, T=8 at 64x64; accuracy per seed on a test set from
   another data seed. Uniform picks the same frames whatever the keyframe interval, so it is
   trained once, on the 5 s encode.

Run from the repository root (not imported by the packages); about 15 minutes on 2 loaded cores:

    .venv/bin/python bench/keyframe_sampling.py [--seeds 0 1 2 3 4] [--skip-accuracy]

Results: bench/RESULTS.md "Keyframe sampling", plot bench/keyframe_sampling.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

from sampling import FPS, describe, make_video  # noqa: E402
from unlabelled import run_in_process  # noqa: E402

from training.video.clip import SamplingConfig  # noqa: E402
from training.video.decoder import sample_clip  # noqa: E402

SPEED = SamplingConfig(frames=16, height=112, width=112)
GOPS_S = (2, 5, 10)
"""Keyframe intervals of the speed clips, in seconds."""
SPEED_SECONDS = (60, 80)
REPEATS = 3
LONG_FPS = 10
"""Frame rate of the accuracy set's long videos, in frames per second."""
LONG_SECONDS = (60.0, 80.0)
"""Range of the accuracy set's video lengths, in seconds (uniform)."""
ACCURACY_GOPS_S = (5, 10)


def time_ms(path: Path, modes: dict[str, SamplingConfig]) -> dict[str, tuple[float, float]]:
    """Best of REPEATS (interleaved) wall-clock and CPU milliseconds per clip, per mode."""
    best = {name: (float("inf"), float("inf")) for name in modes}
    for _ in range(REPEATS):
        for name, config in modes.items():
            wall, cpu = time.perf_counter(), time.process_time()
            sample_clip(path, config)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall * 1000), min(best[name][1], cpu * 1000))
    return best


def speed(tmp: Path) -> list[dict]:
    """Print and return the speed table: one row per clip."""
    modes = {"uniform": SPEED, "keyframe": replace(SPEED, sample_mode="keyframe")}
    print(f"speed: {SPEED.frames} frames at {SPEED.width}x{SPEED.height}, best of {REPEATS}")
    print(
        f"{'video':24} {'len s':>6} {'keys':>5} {'uniform ms':>10} {'kf ms':>7} {'x wall':>7}"
        f" {'x cpu':>6} {'distinct':>8} {'shift s':>7}"
    )
    rows = []
    for gop_s in GOPS_S:
        for seconds in SPEED_SECONDS:
            path = tmp / f"synth_{seconds}s_gop{gop_s}s.mp4"
            make_video(path, seconds, gop_s * FPS)
            _, length_s, keys = describe(path)
            (uni, uni_cpu), (kf, kf_cpu) = time_ms(path, modes).values()
            picked = sample_clip(path, modes["keyframe"]).indices
            targets = sample_clip(path, SPEED).indices
            shift_s = float(np.mean(np.abs(np.subtract(picked, targets)))) / FPS
            row = {"gop_s": gop_s, "seconds": seconds, "wall": uni / kf, "cpu": uni_cpu / kf_cpu}
            rows.append(row)
            print(
                f"{path.name:24} {length_s:6.1f} {keys:5d} {uni:10.0f} {kf:7.0f} {row['wall']:7.2f}"
                f" {row['cpu']:6.2f} {len(set(picked)):8d} {shift_s:7.2f}"
            )
    return rows


def _long_set(tmp: Path, labels: list[str], per_class: int, seed: int) -> dict[int, list]:
    """Each motion4 clip slowed to 60-80 s at LONG_FPS and encoded once per keyframe
    interval: {gop_s: [(path, label), ...]}."""
    from training.video.synth import paired_clip, write_video

    rng = np.random.default_rng([seed, 14])
    videos: dict[int, list] = {gop: [] for gop in ACCURACY_GOPS_S}
    for label in labels:
        for i in range(per_class):
            frames = paired_clip(label, seed, i, width=128, height=96)
            n = round(rng.uniform(*LONG_SECONDS) * LONG_FPS)
            slowed = frames[np.arange(n) * len(frames) // n]
            for gop in ACCURACY_GOPS_S:
                path = tmp / f"s{seed}_{label}_{i}_gop{gop}.mp4"
                write_video(path, slowed, LONG_FPS, gop_frames=gop * LONG_FPS)
                videos[gop].append((path, label))
    return videos


def accuracy(tmp: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """Print and return test accuracy per seed, per mode."""
    from training.learn.dataset import decode_labelled
    from training.video.synth import select_classes

    started = time.perf_counter()
    labels = select_classes("motion4")
    uniform = SamplingConfig(frames=args.frames, height=args.size, width=args.size)
    keyframe = replace(uniform, sample_mode="keyframe")
    modes = {"uniform": (5, uniform), **{f"keyframe {g} s": (g, keyframe) for g in (5, 10)}}
    sets = {
        name: _long_set(tmp, labels, per_class, seed)
        for name, per_class, seed in (("pool", args.per_class, 1), ("test", args.test_per_class, 2))
    }
    files: dict[str, dict[str, str]] = {}
    for mode, (gop, sampling) in modes.items():
        files[mode] = {}
        for name, videos in sets.items():
            data, skipped = decode_labelled(videos[gop], labels, sampling)
            assert not skipped, skipped
            npz = tmp / f"{name}_{mode.replace(' ', '_')}.npz"
            np.savez(npz, frames=data.frames, mask=data.mask, y=data.y)
            files[mode][name] = str(npz)
    print(
        f"accuracy: motion4 {labels} slowed to {LONG_SECONDS[0]:g}-{LONG_SECONDS[1]:g} s at "
        f"{LONG_FPS} fps (128x96), {args.per_class} a class to train (data seed 1), "
        f"{args.test_per_class} a class to test (data seed 2); T={args.frames} at "
        f"{args.size}x{args.size}; data {time.perf_counter() - started:.0f} s"
    )
    results = {}
    for mode in modes:
        job = {
            "pool": files[mode]["pool"], "test": files[mode]["test"], "labels": labels,
            "method": "spatial", "seeds": args.seeds, "per_label": args.per_class,
            "epochs": args.epochs,
        }  # fmt: skip
        results[mode] = [r["accuracy"] for r in run_in_process(job)]
    head = " ".join(f"seed {s}" for s in args.seeds)
    print(f"{'mode':<14} {head}  mean acc  - uniform")
    base = float(np.mean(results["uniform"]))
    for mode, accs in results.items():
        per_seed = " ".join(f"{a:6.3f}" for a in accs)
        print(f"{mode:<14} {per_seed}  {np.mean(accs):8.3f} {np.mean(accs) - base:+9.3f}")
    for mode in list(results)[1:]:
        diffs = np.subtract(results[mode], results["uniform"])
        print(f"{mode} - uniform per seed: {' '.join(f'{d:+.3f}' for d in diffs)}")
    return results


def plot(rows: list[dict], results: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if results else 1, figsize=(10 if results else 5, 4))
    left = axes[0] if results else axes
    width = 0.8 / len(SPEED_SECONDS)
    for k, seconds in enumerate(SPEED_SECONDS):
        ratios = [r["wall"] for r in rows if r["seconds"] == seconds]
        left.bar(np.arange(len(GOPS_S)) + k * width, ratios, width, label=f"{seconds} s clips")
    left.set_xticks(np.arange(len(GOPS_S)) + width / 2, [f"{g} s" for g in GOPS_S])
    left.set_xlabel("keyframe interval")
    left.set_ylabel("speed-up, uniform / keyframe (wall)")
    left.legend()
    if results:
        right = axes[1]
        names = list(results)
        for k, name in enumerate(names):
            right.scatter([k] * len(results[name]), results[name], alpha=0.5)
            right.hlines(np.mean(results[name]), k - 0.3, k + 0.3, color="black")
        right.set_xticks(range(len(names)), names)
        right.set_ylabel("test accuracy per seed (bar: mean)")
        right.axhline(0.25, color="grey", linestyle=":", label="chance")
        right.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="fit seeds")
    parser.add_argument("--per-class", type=int, default=10, help="training videos a class")
    parser.add_argument("--test-per-class", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30, help="TRAIN_EPOCHS's default")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--skip-accuracy", action="store_true", help="speed only")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "keyframe_sampling.png")
    args = parser.parse_args()
    from support import machine_header

    print(machine_header())
    print(f"load average at start: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = speed(Path(tmp))
        print()
        results = {} if args.skip_accuracy else accuracy(Path(tmp), args)
    plot(rows, results, args.plot)
    print(f"plot: {args.plot}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
