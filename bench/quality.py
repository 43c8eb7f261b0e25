"""Quality against the origin: videoloop's CNN-LSTM, frame averaging and the origin's model.

Trains and scores, side by side on the same clips and splits:

1. ``videoloop``: the default ``ModelConfig()`` CNN-LSTM (``training.model.build_model``);
2. ``frame average``: the same model up to its per-frame features (the ``unfold_time``
   output, 224 features a frame), then a masked mean over time, dropout and the softmax:
   built here from the default model's graph (training/model.py has no option for it);
3. ``origin``: the origin guide's architecture, TimeDistributed(Conv2D(32,3,relu)) ->
   TimeDistributed(MaxPool2D) -> TimeDistributed(Conv2D(64,3,relu)) ->
   TimeDistributed(MaxPool2D) -> TimeDistributed(Flatten) -> LSTM(128) -> Dense(softmax),
   input scaled to [0,1] inside the model. Its LSTM gets the padding mask (no parameters;
   identical for full-length clips, which all clips here are). Input size: ``--origin-frames``
   x ``--origin-size``; the guide's 32x224x224 (95.6 M parameters, 10 GB peak to train,
   DESIGN.md) does not fit the default 15-minute run on 2 cores.

All three compile with videoloop's ``compile_model`` (Adam lr 1e-3, clipnorm 1, label
smoothing 0.1) and train with the same loop as ``training.train.fit`` (its tf.data pipeline
and augmentation, class weights, batch 8, early stopping on validation loss with best
weights restored, learning rate halved on plateaus), capped at ``--epochs``.

Data sets: (a) ``synth``: ``training.synth.generate_dataset`` (classes that differ only in
temporal order); (b) ``real``: 16-frame segments cut from the clips in tests/data, each
written once (``training.synth.write_video``) in original or reversed frame order and
labelled ``forward`` / ``reversed``: a temporal-order task on real footage. Segments of one
video overlap a little when it is short (922 frames for 60 segments).

Each (model, data set) trains in its own spawned process, so peak memory (ru_maxrss of that
process: TensorFlow, the data and training) is per model. Split per seed with
``stratified_split(y, (0.2, 0.15), seed)``; accuracy is on the held-out 20 %. ms/clip:
``predict_on_batch`` on batches of 8, after a warm-up, best of 5. Run from the repository
root (not imported by the packages):

    .venv/bin/python bench/quality.py

Measured here (2 cores, no GPU; one split seed, 12 held-out clips per data set, so each
clip is 8 points of accuracy; ms/clip is noisy while other work shares the cores):

    $ .venv/bin/python bench/quality.py
    machine: x86_64, 2 cores, 24 GB RAM, python 3.11.7, tensorflow 2.21.0, keras 3.15.1, numpy 2.2.6, av 18.1.0
    data synth: ['left_to_right', 'right_to_left'], 30 clips each (data seed 0)
    data real: ['forward', 'reversed'], 30 16-frame segments of tests/data/*.mp4 each

    seeds [0], epochs <= 15 (patience 5); held-out 20 % per seed
    data   model                input acc mean acc min     params  MB file ms/clip peak MB train s params x   ms x
    synth  videoloop       16x112x112    1.000   1.000     308402     3.87     4.3    1168      26   0.0139  0.223
    synth  frame average   16x112x112    0.500   0.500     127858     1.70     3.9    1137      11   0.0057  0.206
    synth  origin          16x112x112    0.750   0.750   22236866   266.91    19.1    5754     164   1.0000  1.000
    real   videoloop       16x112x112    0.500   0.500     308402     3.87     4.5    1139      12   0.0139  0.238
    real   frame average   16x112x112    0.500   0.500     127858     1.70     4.0    1101      11   0.0057  0.215
    real   origin          16x112x112    0.500   0.500   22236866   266.91    18.8    5564      68   1.0000  1.000
    total 326 s

Epochs run (videoloop / frame average / origin): synth 15 / 6 / 15, real 6 / 6 / 6 (early
stopping; on the real set validation loss was best after the first epoch). On the real
forward/reversed set no model beat chance with 48 training segments, nor with
``--datasets real --epochs 25 --patience 10`` (all three stopped after 11 epochs, all at
0.500, 198 s). The origin ran at 16x112x112 (22.2 M parameters), not the guide's 32x224x224
(95.6 M, ~0.9 s/clip, 10 GB peak per DESIGN.md): at 16x112 it already took 164 s of this
run's 326 s, and 32x224 is 8x the pixels per clip, far beyond the 15-minute run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("videoloop", "frame average", "origin")
SEGMENT = 16


def _build(name: str, num_classes: int, frames: int, size: int):
    import keras
    from keras import layers, ops

    from training.model import BoolMask, ModelConfig, build_model, compile_model
    from training.sampling import SamplingConfig

    config = ModelConfig()
    sampling = SamplingConfig(frames=frames, height=size, width=size)
    if name == "videoloop":
        return build_model(num_classes, sampling, config)
    if name == "frame average":
        base = build_model(num_classes, sampling, config)
        per_frame = base.get_layer("unfold_time").output  # (B, T, 224)

        @keras.saving.register_keras_serializable(package="bench")
        class MaskedMean(layers.Layer):
            """Mean over time of the real (unpadded) frames."""

            def call(self, x, valid):
                m = ops.expand_dims(ops.cast(valid, x.dtype), -1)
                return ops.sum(x * m, axis=1) / ops.maximum(ops.sum(m, axis=1), 1.0)

        inputs = {"frames": base.get_layer("frames").output, "mask": base.get_layer("mask").output}
        x = MaskedMean(name="masked_mean")(per_frame, inputs["mask"])
        x = layers.Dropout(config.dropout, name="head_dropout_avg")(x)
        out = layers.Dense(num_classes, activation="softmax", name="classes_avg")(x)
        model = keras.Model(inputs, out, name="frame_average")
        compile_model(model, config)
        return model
    if name == "origin":
        inp = keras.Input((frames, size, size, 3), dtype="uint8", name="frames")
        mask = keras.Input((frames,), dtype="bool", name="mask")
        x = layers.Rescaling(1.0 / 255.0)(inp)
        x = layers.TimeDistributed(layers.Conv2D(32, 3, activation="relu"))(x)
        x = layers.TimeDistributed(layers.MaxPooling2D())(x)
        x = layers.TimeDistributed(layers.Conv2D(64, 3, activation="relu"))(x)
        x = layers.TimeDistributed(layers.MaxPooling2D())(x)
        x = layers.TimeDistributed(layers.Flatten())(x)
        x = layers.LSTM(128)(x, mask=BoolMask()(mask))
        out = layers.Dense(num_classes, activation="softmax")(x)
        model = keras.Model({"frames": inp, "mask": mask}, out, name="origin")
        compile_model(model, config)
        return model
    raise ValueError(name)


def _train_one(job: dict) -> dict:
    """In a spawned process: train ``job['model']`` on every seed, measure, return figures."""
    sys.path.insert(0, str(ROOT))
    import keras

    from training.dataset import ClipArrays, class_weights, stratified_split
    from training.train import make_dataset, predict_arrays

    arrays = np.load(job["data"])
    data = ClipArrays(arrays["frames"], arrays["mask"], arrays["y"], [""] * len(arrays["y"]))
    k = int(arrays["y"].max()) + 1
    accuracies, train_s, epochs_run = [], [], []
    model = None
    for seed in job["seeds"]:
        keras.utils.set_random_seed(seed)
        train_idx, test_idx, val_idx = stratified_split(data.y, (0.2, 0.15), seed=seed)
        train, val, test = data.subset(train_idx), data.subset(val_idx), data.subset(test_idx)
        model = _build(job["model"], k, *data.frames.shape[1:3])
        train_ds = make_dataset(
            train, k, 8, shuffle=True, augment=True, seed=seed, weights=class_weights(train.y, k)
        )
        val_ds = make_dataset(val, k, 8, shuffle=False, augment=False, seed=0)
        started = time.perf_counter()
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=job["epochs"],
            verbose=0,
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=job["patience"], restore_best_weights=True
                ),
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss", factor=0.5, patience=max(2, job["patience"] // 3)
                ),
            ],
        )
        train_s.append(time.perf_counter() - started)
        epochs_run.append(len(history.history["loss"]))
        accuracies.append(float((predict_arrays(model, test, 8).argmax(1) == test.y).mean()))
    batch = {"frames": data.frames[:8], "mask": data.mask[:8]}
    model.predict_on_batch(batch)
    model.predict_on_batch(batch)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        model.predict_on_batch(batch)
        times.append(time.perf_counter() - started)
    path = Path(job["data"]).with_suffix(f".{job['model'].replace(' ', '_')}.keras")
    model.save(path)
    return {
        "accuracies": accuracies,
        "params": model.count_params(),
        "bytes": path.stat().st_size,
        "ms": min(times) / 8 * 1000,
        "train_s": float(np.mean(train_s)),
        "epochs": epochs_run,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _real_segments(out_dir: Path, per_class: int, seed: int) -> list[tuple[Path, str]]:
    """Cut the tests/data clips into 16-frame segments; write each forward or reversed."""
    import av

    from training.synth import write_video

    videos = []
    for path in sorted((ROOT / "tests" / "data").glob("*.mp4")):
        with av.open(str(path)) as container:
            if not container.streams.video:
                continue
            fps = float(container.streams.video[0].average_rate or 25)
            frames = [
                f.to_ndarray(width=160, height=120, format="rgb24")
                for f in container.decode(video=0)
            ]
        if len(frames) >= SEGMENT:
            videos.append((path.stem, np.stack(frames), fps))
    total = 2 * per_class
    lengths = np.array([len(f) for _, f, _ in videos], float)
    counts = np.maximum(1, np.round(total * lengths / lengths.sum()).astype(int))
    counts[np.argmax(counts)] += total - counts.sum()
    labels = np.array(["forward", "reversed"] * per_class)
    np.random.default_rng(seed).shuffle(labels)
    rows, n = [], 0
    for (stem, frames, fps), count in zip(videos, counts, strict=True):
        starts = np.linspace(0, len(frames) - SEGMENT, count).round().astype(int)
        for s in starts:
            clip = frames[s : s + SEGMENT]
            label = labels[n]
            if label == "reversed":
                clip = clip[::-1]
            target = out_dir / f"{stem}_{s:04d}_{label}.mp4"
            write_video(target, np.ascontiguousarray(clip), int(round(fps)))
            rows.append((target, str(label)))
            n += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="2", help="synthetic classes: 2, 4 or names")
    parser.add_argument("--per-class", type=int, default=30, help="synthetic clips per class")
    parser.add_argument("--real-per-class", type=int, default=30, help="real segments per class")
    parser.add_argument("--seed", type=int, default=0, help="data seed (synthetic and real)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="split/init seeds")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--origin-frames", type=int, default=16, help="the guide used 32")
    parser.add_argument("--origin-size", type=int, default=112, help="the guide used 224")
    parser.add_argument("--datasets", nargs="+", default=["synth", "real"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args()
    started = time.perf_counter()

    sys.path.insert(0, str(ROOT))
    import av
    import keras
    import tensorflow as tf

    from training.dataset import decode_labelled
    from training.labelled_files import read_manifest
    from training.sampling import SamplingConfig
    from training.synth import generate_dataset, select_classes

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB RAM, "
        f"python {platform.python_version()}, tensorflow {tf.__version__}, "
        f"keras {keras.__version__}, numpy {np.__version__}, av {av.__version__}"
    )
    ours = SamplingConfig(frames=args.frames, height=args.size, width=args.size)
    origin = SamplingConfig(
        frames=args.origin_frames, height=args.origin_size, width=args.origin_size
    )
    ctx = mp.get_context("spawn")
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            folder = Path(tmp) / dataset
            folder.mkdir()
            if dataset == "synth":
                labels = select_classes(args.classes)
                videos = read_manifest(
                    generate_dataset(
                        folder, classes=labels, per_class=args.per_class, seed=args.seed
                    )
                )
                what = f"{args.per_class} clips each (data seed {args.seed})"
            elif dataset == "real":
                labels = ["forward", "reversed"]
                videos = _real_segments(folder, args.real_per_class, args.seed)
                what = f"{args.real_per_class} {SEGMENT}-frame segments of tests/data/*.mp4 each"
            else:
                raise SystemExit(f"unknown data set {dataset!r}: synth or real")
            print(f"data {dataset}: {labels}, {what}", flush=True)
            files = {}
            for sampling in {ours, origin}:
                data, skipped = decode_labelled(videos, labels, sampling)
                if skipped:
                    print(f"  skipped {skipped}")
                files[sampling] = folder / f"{sampling.key()}.npz"
                np.savez(files[sampling], frames=data.frames, mask=data.mask, y=data.y)
            for name in args.models:
                sampling = origin if name == "origin" else ours
                job = {
                    "model": name,
                    "data": str(files[sampling]),
                    "seeds": args.seeds,
                    "epochs": args.epochs,
                    "patience": args.patience,
                }
                with ctx.Pool(1, maxtasksperchild=1) as pool:
                    result = pool.apply(_train_one, (job,))
                result["input"] = f"{sampling.frames}x{sampling.height}x{sampling.width}"
                results[(dataset, name)] = result
                print(
                    f"  {name}: acc {[round(a, 3) for a in result['accuracies']]}, "
                    f"epochs {result['epochs']}, train {result['train_s']:.0f} s, "
                    f"{time.perf_counter() - started:.0f} s so far",
                    flush=True,
                )

    print(
        f"\nseeds {args.seeds}, epochs <= {args.epochs} (patience {args.patience}); "
        f"held-out 20 % per seed\n"
        f"{'data':6} {'model':14} {'input':>11} {'acc mean':>8} {'acc min':>7} {'params':>10} "
        f"{'MB file':>8} {'ms/clip':>7} {'peak MB':>7} {'train s':>7} {'params x':>8} "
        f"{'ms x':>6}"
    )
    for (dataset, name), r in results.items():
        ref = results.get((dataset, "origin"))
        params_x = f"{r['params'] / ref['params']:8.4f}" if ref else f"{'-':>8}"
        ms_x = f"{r['ms'] / ref['ms']:6.3f}" if ref else f"{'-':>6}"
        print(
            f"{dataset:6} {name:14} {r['input']:>11} {np.mean(r['accuracies']):8.3f} "
            f"{min(r['accuracies']):7.3f} {r['params']:10d} {r['bytes'] / 1e6:8.2f} "
            f"{r['ms']:7.1f} {r['peak_mb']:7.0f} {r['train_s']:7.0f} {params_x} {ms_x}"
        )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
