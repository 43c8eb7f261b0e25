"""Training on clips streamed from a file against clips held in memory, side by side.

A training job writes its decoded clips to a file as they are decoded and reads them back a
batch at a time (training/learn/clip_file.py); before, they were one array in memory, so a
run's memory grew with its number of clips. This bench runs the job's own steps
(decode_labelled with the clip cache, then training.learn.fit.fit) in a fresh process per
case: 200 and 2,000 clips, held in memory and streamed. It prints each case's peak resident
memory and the time of its second epoch (the first traces the graph), then the ratios the
issue asks for: streamed peak memory at 2,000 clips over 200 (want <= 1.3) and the streamed
epoch's speed against the in-memory one at 2,000 clips (want >= 0.8).

The 2,000 clips are 200 synthetic videos, each listed ten times under its own key: the clip
cache serves the repeats, so decoding does not dominate, and training sees 2,000 clips.

    .venv/bin/python bench/streaming.py [--clips 200 2000] [--frames 16 --size 112]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support import REPO, machine_header

CLASSES = ["left_to_right", "right_to_left"]
VIDEOS = 200


def child(args: argparse.Namespace) -> None:
    """One case, in this process: decode (or read from the cache), then two epochs."""
    from training.learn.config import TrainConfig
    from training.learn.dataset import decode_labelled
    from training.learn.fit import fit
    from training.learn.labelled_files import read_manifest
    from training.model.config import ModelConfig
    from training.video.clip import SamplingConfig
    from training.video.clipcache import ClipCache

    work = Path(args.work)
    videos = read_manifest(work / "videos" / "manifest.csv")
    repeats = -(-args.n // len(videos))
    listed = (videos * repeats)[: args.n]
    keys = [f"{i}" for i in range(len(listed))]
    sampling = SamplingConfig(frames=args.frames, height=args.size, width=args.size)
    cache = ClipCache(work / "clips", 50_000 * 1024 * 1024)
    clips_file = work / f"clips-{args.n}.u8" if args.mode == "file" else None
    started = time.perf_counter()
    data, _ = decode_labelled(
        listed, CLASSES, sampling, cache=cache, keys=keys, clips_file=clips_file
    )
    decode_s = time.perf_counter() - started
    ends: list[float] = []
    fit(
        data,
        None,
        CLASSES,
        sampling,
        ModelConfig(),
        TrainConfig(epochs=2, batch_size=8, augment=False, min_epochs=2),
        progress=lambda event: ends.append(time.perf_counter()) if "epoch" in event else None,
    )
    print(
        json.dumps(
            {
                "clips": len(data),
                "decode_s": decode_s,
                "epoch_s": ends[-1] - ends[-2],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def run_case(work: Path, n: int, mode: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", "--work", str(work), "--n", str(n)]
    command += ["--mode", mode, "--frames", str(args.frames), "--size", str(args.size)]
    out = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, nargs=2, default=[200, 2000])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["file", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from training.video.synth import generate_dataset

    print(machine_header())
    print(f"T={args.frames} at {args.size}x{args.size}; {VIDEOS} synthetic videos")
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        work = Path(tmp)
        generate_dataset(work / "videos", classes=CLASSES, per_class=VIDEOS // 2, seed=3)
        run_case(work, args.clips[0], "memory", args)  # fills the clip cache for every case
        results = {}
        print(f"{'clips':>6} {'mode':>7} {'peak RSS MB':>12} {'epoch s':>8} {'decode s':>9}")
        for n in args.clips:
            for mode in ("memory", "file"):
                r = results[(n, mode)] = run_case(work, n, mode, args)
                print(
                    f"{r['clips']:>6} {mode:>7} {r['peak_rss_mb']:>12.0f} "
                    f"{r['epoch_s']:>8.1f} {r['decode_s']:>9.1f}"
                )
    small, large = args.clips
    for mode in ("memory", "file"):
        ratio = results[(large, mode)]["peak_rss_mb"] / results[(small, mode)]["peak_rss_mb"]
        print(f"peak RSS {large}/{small} clips, {mode}: {ratio:.2f}x")
    speed = results[(large, "memory")]["epoch_s"] / results[(large, "file")]["epoch_s"]
    print(f"epoch speed streamed/in memory at {large} clips: {speed:.2f}x (want >= 0.8)")


if __name__ == "__main__":
    main()
