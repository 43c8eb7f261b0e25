"""Which per-frame features tell temporal classes apart from few clips: measured side by side.

Why: the model's per-frame features (frame differences, a position-keeping grid, pooled
motion, an appearance stream) each cost parameters or time; this shows what each buys. Trains
every variant on the same synthetic set (``videoloop synth``, classes that differ only in
temporal order) over several split/initialisation seeds and prints held-out accuracy (mean,
min), parameters and time per clip, with ratios to the default. Run from the repository root
(not imported by the packages; the header prints the machine):

    .venv/bin/python bench/layout.py --classes 2 --per-class 40 --seeds 0 1 2

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

VARIANTS = {
    "default (motion grid + pooled, appearance pooled)": {},
    "appearance stacked into one stream": {"appearance": "full"},
    "differences only (no appearance)": {"appearance": "none"},
    "grid only (no pooled features, stacked)": {"appearance": "full", "pooled_features": False},
    "no frame differences (RGB only)": {"frame_differences": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="2")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from training.learn.config import TrainConfig
    from training.learn.dataset import decode_labelled, stratified_split
    from training.learn.evaluate import predict_arrays
    from training.learn.fit import fit
    from training.model.config import ModelConfig
    from training.video.clip import SamplingConfig
    from training.video.synth import generate_dataset, select_classes

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()},"
        f" tensorflow {tf.__version__}, keras {keras.__version__}"
    )
    classes = select_classes(args.classes)
    sampling = SamplingConfig(frames=args.frames, height=args.size, width=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_dataset(
            Path(tmp), classes=classes, per_class=args.per_class, seed=args.data_seed
        )
        from training.learn.labelled_files import read_manifest

        data, _ = decode_labelled(read_manifest(manifest), classes, sampling)
    print(
        f"data: {classes}, {args.per_class} clips each (seed {args.data_seed}), "
        f"T={args.frames} at {args.size}x{args.size}; seeds {args.seeds}\n"
    )

    rows = []
    for name, overrides in VARIANTS.items():
        config = ModelConfig(**overrides)
        accuracies, seconds = [], []
        for seed in args.seeds:
            train_idx, test_idx, val_idx = stratified_split(data.y, (0.2, 0.15), seed=seed)
            started = time.perf_counter()
            model, _, _ = fit(
                data.subset(train_idx),
                data.subset(val_idx),
                classes,
                sampling,
                config,
                TrainConfig(seed=seed),
            )
            seconds.append(time.perf_counter() - started)
            test = data.subset(test_idx)
            accuracies.append(float((predict_arrays(model, test).argmax(1) == test.y).mean()))
        batch = {"frames": data.frames[:8], "mask": data.mask[:8]}
        model.predict_on_batch(batch)
        started = time.perf_counter()
        for _ in range(5):
            model.predict_on_batch(batch)
        ms_per_clip = (time.perf_counter() - started) / 40 * 1000
        rows.append(
            (
                name,
                np.mean(accuracies),
                min(accuracies),
                model.count_params(),
                ms_per_clip,
                np.mean(seconds),
            )
        )
        print(f"  {name}: {[round(a, 3) for a in accuracies]}", flush=True)

    base = rows[0]
    print(
        f"\n{'variant':52} {'acc mean':>8} {'acc min':>7} {'params':>8} {'ms/clip':>7} "
        f"{'train s':>7} {'params x':>8}"
    )
    for name, mean, low, params, ms, secs in rows:
        print(
            f"{name:52} {mean:8.3f} {low:7.3f} {params:8d} {ms:7.1f} {secs:7.0f} "
            f"{params / base[3]:8.2f}"
        )


if __name__ == "__main__":
    main()
