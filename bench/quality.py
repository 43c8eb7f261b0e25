"""Quality against the origin: videoloop's CNN-LSTM heads, frame averaging and the origin's model.

Why: the model must beat both the baseline that cannot see temporal order and the Keras guide
it comes from. Trains side by side, on the same clips and splits and with the product's own
``training.learn`` fitting: ``lstm`` (the default model), ``bilstm`` and ``attention`` (the
other temporal heads), ``frame average`` (no temporal model) and ``origin`` (the guide's
TimeDistributed Conv2D/MaxPool + Flatten + LSTM(128), trained at ``--origin-frames`` x
``--origin-size``; at the guide's own input, row ``guide``, it is only built, saved and
timed). Data sets: ``synth`` (direction of motion), ``real`` (panned stretches of the clips
in tests/data), ``timeline`` (labelled per frame: frame accuracy, segmental F1) and ``motion``
(the ``motion4`` set: left/right, approaching/receding, each pair time-reversed copies of
each other; trained from scratch on 60 clips a class from data seed 1, tested on 30 a class
from seed 2; the rows of ``VARIANTS`` compare per-frame networks side by side). Prints
accuracy, size, time per clip and peak memory, with ratios; each (model, data set) trains in
a spawned process of its own. Run from the repository root (not imported by the packages):

    .venv/bin/python bench/quality.py [--datasets ...] [--models ...]
    .venv/bin/python bench/quality.py --datasets motion --models compact "v1 grid" \
        "separable no t-conv" --seeds 0 --epochs 40 --patience 10 --min-epochs 12

(the last three: the product's TrainConfig defaults, what the RQ job trains with).

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from extensions import EXTENSIONS, extension_built

ROOT = Path(__file__).resolve().parents[1]
HEADS = {"lstm": "lstm", "bilstm": "bilstm", "attention": "attention", "frame average": "average"}
V1_GRID = {
    "frame_net": "grid",
    "temporal_kernel": 0,
    "conv_filters": (16, 32, 64, 64),
    "lstm_units": 128,
}
"""The grid network (0.31 M parameters), ModelConfig's defaults spelled out: a timeline
project's first model under TRAIN_NETWORK=auto."""
COMPACT = {"frame_net": "separable", "temporal_kernel": 3, "lstm_units": 64}
"""The compact network (0.16 M parameters; training/model/config.py NETWORKS): a
classification project's first model under TRAIN_NETWORK=auto; not a timeline project's, it
labels timeline frames worse."""
VARIANTS: dict[str, dict] = {
    "v1 grid": V1_GRID,
    "compact": COMPACT,
    "compact bilstm": {**COMPACT, "temporal": "bilstm"},
    "separable no t-conv": {"frame_net": "separable", "temporal_kernel": 0, "lstm_units": 64},
    "v1 grid bilstm": {**V1_GRID, "temporal": "bilstm"},
}
"""Per-frame networks compared on the ``motion`` set (``compact``: depthwise-separable convs,
a temporal conv over 3 frames, LSTM(64); ``v1 grid``: the default, spelled out), and with the
``bilstm`` head on ``timeline``: ModelConfig fields."""
MODELS = (*HEADS, *VARIANTS, *EXTENSIONS, "origin")
MOTION_CLASSES = "motion4"
SEGMENT = 16
MOTIONS = ("left_to_right", "right_to_left")


def _origin(num_classes: int, frames: int, size: int):
    """The origin guide's CNN-LSTM, compiled like videoloop's models."""
    import keras
    from keras import layers

    from training.model.build import BoolMask, compile_model
    from training.model.config import ModelConfig

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
    model = keras.Model({"frames": inp, "mask": mask}, {"classes": out}, name="origin")
    compile_model(model, ModelConfig())
    return model


def _fit_origin(train, val, k: int, frames: int, size: int, config, batch_size: int):
    """The origin trained with videoloop's pipeline and callbacks (see training.learn.fit.fit):
    ``config`` is the TrainConfig videoloop's models get."""
    import keras

    from training.learn.dataset import class_weights
    from training.learn.fit import training_callbacks
    from training.learn.pipeline import make_dataset

    keras.utils.set_random_seed(config.seed)
    model = _origin(k, frames, size)
    weights = class_weights(train.y, k)
    train_ds = make_dataset(
        train, k, batch_size, shuffle=True, augment=True, seed=config.seed, weights=weights
    )
    val_ds = make_dataset(val, k, batch_size, shuffle=False, augment=False, seed=0)
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        verbose=0,
        callbacks=training_callbacks(config, has_val=True),
    )
    return model, len(history.history["loss"])


def _train_one(job: dict) -> dict:
    """In a spawned process: train ``job['model']`` on every seed, measure, return figures."""
    sys.path.insert(0, str(ROOT))
    import keras

    from training.labelstudio.timeline import timeline_metrics
    from training.learn.config import TrainConfig
    from training.learn.dataset import NO_CLASS, ClipArrays, stratified_split
    from training.learn.evaluate import predict_outputs
    from training.learn.fit import fit
    from training.video.clip import SamplingConfig

    arrays = np.load(job["data"])
    held_out = np.load(job["test"]) if job.get("test") else None
    frame_y = arrays.get("frame_y", None)
    timeline = frame_y is not None
    y = np.full(len(arrays["strata"]), NO_CLASS, np.int32) if timeline else arrays["y"]
    data = ClipArrays(arrays["frames"], arrays["mask"], y, [""] * len(y), frame_y=frame_y)
    labels = list(arrays["labels"])
    t, size = data.frames.shape[1:3]
    scores, f1s, train_s, epochs_run = [], [], [], []
    model = None
    for seed in job["seeds"]:
        if held_out is None:
            split = stratified_split(arrays["strata"], (0.2, 0.15), seed=seed)
            train, test, val = (data.subset(part) for part in split)
        else:  # a test set of its own: all of it is tested; 15 % of the rest validates
            train_idx, val_idx = stratified_split(arrays["strata"], (0.15,), seed=seed)
            train, val = data.subset(train_idx), data.subset(val_idx)
            test_y = held_out["y"]
            test = ClipArrays(held_out["frames"], held_out["mask"], test_y, [""] * len(test_y))
        started = time.perf_counter()
        config = TrainConfig(
            epochs=job["epochs"], patience=job["patience"], min_epochs=job["min_epochs"], seed=seed
        )
        if job["model"] == "origin":
            model, epochs = _fit_origin(
                train, val, len(labels), t, size, config, job["origin_batch"]
            )
        else:
            with _built_as(job["model"], t):
                model, history, _ = fit(
                    train,
                    val,
                    [] if timeline else labels,
                    SamplingConfig(frames=t, height=size, width=size),
                    _model_config(job["model"]),
                    config,
                    timeline_labels=labels if timeline else (),
                )
            epochs = len(history["loss"])
        train_s.append(time.perf_counter() - started)
        epochs_run.append(epochs)
        outputs = predict_outputs(model, test, 8)
        if timeline:
            metrics = timeline_metrics(test.frame_y, outputs["timeline"], labels)
            scores.append(metrics["frame_accuracy"])
            f1s.append(metrics["segment_f1@0.5"])
        else:
            scores.append(float((outputs["classes"].argmax(1) == test.y).mean()))
        keras.backend.clear_session(free_memory=False)
    ms = _ms_per_clip(model, {"frames": data.frames[:8], "mask": data.mask[:8]}, warmups=2, runs=5)
    path = Path(job["data"]).with_suffix(f".{job['model'].replace(' ', '_')}.keras")
    model.save(path)
    sampling = SamplingConfig(frames=t, height=size, width=size)
    litert = _litert_figures(model, sampling, test, path) if job.get("litert") else {}
    return {
        "litert": litert,
        "scores": scores,
        "f1": f1s,
        "params": model.count_params(),
        "bytes": path.stat().st_size,
        "ms": ms,
        "train_s": float(np.mean(train_s)),
        "epochs": epochs_run,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _litert_figures(model, sampling, test, path: Path) -> dict:
    """Post-training quantisation of the last seed's model, as publishing does it
    (training/model/litert_export.py), checked on the test clips: per mode, the file's bytes
    and its top-label agreement with Keras. What videoloop relies on instead of
    quantisation-aware training (none supports Keras 3: bench/RESULTS.md#extensions-issue-17)."""
    from training.model.litert_export import export_litert

    figures = {}
    for mode in ("float16", "dynamic"):
        folder = path.with_suffix(f".{mode}")
        folder.mkdir()
        record = export_litert(model, sampling, folder, mode, test)
        figures[mode] = {k: record[mode][k] for k in ("bytes", "top_label_agreement")}
        figures["float"] = {k: record["float"][k] for k in ("bytes", "top_label_agreement")}
        figures[f"{mode} s"] = record["seconds"]
    return figures


def _built_as(name: str, frames: int):
    """Where ``name`` is one of EXTENSIONS (bench/extensions.py), the build swapped for it."""
    return extension_built(name, frames) if name in EXTENSIONS else contextlib.nullcontext()


def _model_config(name: str):
    """The ModelConfig of a row: a temporal head of the default model, a VARIANTS entry, or
    an EXTENSIONS entry's fields."""
    from training.model.config import ModelConfig

    if name in HEADS:
        return ModelConfig(temporal=HEADS[name])
    fields = dict(EXTENSIONS[name]["fields"] if name in EXTENSIONS else VARIANTS[name])
    fields["conv_filters"] = tuple(fields.get("conv_filters", ModelConfig.conv_filters))
    return ModelConfig(**fields)


def _ms_per_clip(model, batch: dict, *, warmups: int, runs: int) -> float:
    """Milliseconds per clip of ``predict_on_batch`` on ``batch``: best of ``runs`` after
    ``warmups`` calls."""
    for _ in range(warmups):
        model.predict_on_batch(batch)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.predict_on_batch(batch)
        times.append(time.perf_counter() - started)
    return min(times) / len(batch["mask"]) * 1000


def _measure_guide_input(job: dict) -> dict:
    """In a spawned process: the origin at the guide's own input (32x224x224 by default),
    built and timed but not trained (training it takes hours here): parameters, file size,
    ms per clip (``predict_on_batch``, best of 3 after a warm-up) and peak memory."""
    sys.path.insert(0, str(ROOT))
    frames, size, batch = job["frames"], job["size"], job["batch"]
    model = _origin(job["classes"], frames, size)
    rng = np.random.default_rng(0)
    inputs = {
        "frames": rng.integers(0, 256, (batch, frames, size, size, 3), dtype=np.uint8),
        "mask": np.ones((batch, frames), bool),
    }
    ms = _ms_per_clip(model, inputs, warmups=1, runs=3)
    path = Path(job["dir"]) / "origin_guide_input.keras"
    model.save(path)
    return {
        "scores": [],
        "f1": [],
        "params": model.count_params(),
        "bytes": path.stat().st_size,
        "ms": ms,
        "train_s": float("nan"),
        "epochs": [],
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "input": f"{frames}x{size}x{size}",
    }


def _real_frames(width: int, height: int) -> list[tuple[str, np.ndarray, float]]:
    """Every frame of each real clip in tests/data, resized, with its fps."""
    import av

    videos = []
    for path in sorted((ROOT / "tests" / "data").glob("*.mp4")):
        with av.open(str(path)) as container:
            if not container.streams.video:
                continue
            fps = float(container.streams.video[0].average_rate or 25)
            frames = [
                f.to_ndarray(width=width, height=height, format="rgb24")
                for f in container.decode(video=0)
            ]
        if len(frames) >= SEGMENT:
            videos.append((path.stem, np.stack(frames), fps))
    return videos


def _real_pans(out_dir: Path, per_class: int, seed: int) -> list[tuple[Path, str]]:
    """16-frame stretches of the real clips seen through a window panning left or right.

    The window (5/8 of the frame wide) slides across the frame over the 16 frames, one way
    or the other; the scene keeps its own motion. Stretches are spread over each clip in
    proportion to its length; the two classes draw from the same stretches.
    """
    from training.video.synth import write_video

    rng = np.random.default_rng(seed)
    width, height = 256, 192
    crop_w, crop_h = 160, 120
    videos = _real_frames(width, height)
    total = 2 * per_class
    lengths = np.array([len(f) for _, f, _ in videos], float)
    counts = np.maximum(1, np.round(total * lengths / lengths.sum()).astype(int))
    counts[np.argmax(counts)] += total - counts.sum()
    labels = np.array(["pan_left", "pan_right"] * per_class)
    rng.shuffle(labels)
    rows, n = [], 0
    for (stem, frames, fps), count in zip(videos, counts, strict=True):
        for s in np.linspace(0, len(frames) - SEGMENT, count).round().astype(int):
            label = labels[n]
            xs = np.linspace(0, width - crop_w, SEGMENT).round().astype(int)
            if label == "pan_left":
                xs = xs[::-1]
            y0 = int(rng.integers(0, height - crop_h + 1))
            clip = np.stack(
                [frames[s + i, y0 : y0 + crop_h, x : x + crop_w] for i, x in enumerate(xs)]
            )
            target = out_dir / f"{stem}_{s:04d}_{label}.mp4"
            write_video(target, np.ascontiguousarray(clip), int(round(fps)))
            rows.append((target, str(label)))
            n += 1
    return rows


def _timeline_clips(out_dir: Path, per_pair: int, seed: int):
    """Clips whose motion may change inside: LabelledVideo items with their segments, and the
    index of each clip's (first, second) motion pair (for a stratified split)."""
    from training.labelstudio.timeline import segments_from_labels
    from training.learn.dataset import LabelledVideo
    from training.video.synth import clip_rng, render_segmented_clip, write_video

    fps = 25
    items, strata = [], []
    pairs = [(a, b) for a in MOTIONS for b in MOTIONS]
    for p, pair in enumerate(pairs):
        for i in range(per_pair):
            frames, per_frame = render_segmented_clip(pair, clip_rng(seed, 10 + p, i), fps=fps)
            path = out_dir / f"pair{p}_{i:03d}.mp4"
            write_video(path, frames, fps)
            segments = tuple(segments_from_labels(per_frame))
            items.append(LabelledVideo(path, None, segments, fps))
            strata.append(p)
    return items, np.asarray(strata, np.int32)


def _save_arrays(videos, labels, sampling, path: Path) -> Path:
    """Decode ``videos`` and save them as the .npz a training process reads."""
    from training.learn.dataset import decode_labelled

    data, skipped = decode_labelled(videos, labels, sampling)
    if skipped:
        print(f"  skipped {skipped}")
    np.savez(path, frames=data.frames, mask=data.mask, y=data.y, strata=data.y)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="2", help="synthetic classes: 2, 4 or names")
    parser.add_argument("--per-class", type=int, default=30, help="synthetic clips per class")
    parser.add_argument("--real-per-class", type=int, default=30, help="real pans per class")
    parser.add_argument("--timeline-per-pair", type=int, default=15, help="per motion pair")
    parser.add_argument("--motion-per-class", type=int, default=60, help="motion4 training clips")
    parser.add_argument("--motion-test-per-class", type=int, default=30, help="motion4 test clips")
    parser.add_argument("--seed", type=int, default=0, help="data seed (every data set)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--min-epochs", type=int, default=8, help="before early stopping acts")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument(
        "--origin-frames", type=int, default=16, help="trained origin's frames (the guide's 32)"
    )
    parser.add_argument(
        "--origin-size",
        type=int,
        default=112,
        help="trained origin's frame size: the guide's 224 takes 3.5 s a clip and epoch here",
    )
    parser.add_argument(
        "--origin-batch", type=int, default=4, help="the origin's batch (8 runs out of memory)"
    )
    parser.add_argument(
        "--guide-frames", type=int, default=32, help="the guide's input, measured untrained"
    )
    parser.add_argument("--guide-size", type=int, default=224, help="0: skip that measurement")
    parser.add_argument(
        "--datasets", nargs="+", default=["synth", "real", "timeline"], help="or motion"
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--reference", default="v1 grid", choices=MODELS, help="the motion table's ratios to"
    )
    parser.add_argument(
        "--litert",
        nargs="*",
        default=[],
        choices=MODELS,
        help="models whose last seed is exported to LiteRT, float16 and dynamic range",
    )
    args = parser.parse_args()
    started = time.perf_counter()

    sys.path.insert(0, str(ROOT))
    import av
    import keras
    import tensorflow as tf

    from training.learn.dataset import decode_labelled
    from training.learn.labelled_files import read_manifest
    from training.video.clip import SamplingConfig
    from training.video.synth import generate_dataset, select_classes

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
            timeline_labels: tuple[str, ...] = ()
            strata = None
            if dataset == "synth":
                labels = select_classes(args.classes)
                videos = read_manifest(
                    generate_dataset(
                        folder, classes=labels, per_class=args.per_class, seed=args.seed
                    )
                )
                what = f"{args.per_class} clips each (data seed {args.seed})"
            elif dataset == "motion":
                labels = select_classes(MOTION_CLASSES)
                videos = read_manifest(
                    generate_dataset(
                        folder, classes=labels, per_class=args.motion_per_class, seed=1
                    )
                )
                test_folder = Path(tmp) / "motion_test"
                test_videos = read_manifest(
                    generate_dataset(
                        test_folder, classes=labels, per_class=args.motion_test_per_class, seed=2
                    )
                )
                what = (
                    f"{args.motion_per_class} clips each (data seed 1), tested on "
                    f"{args.motion_test_per_class} each (data seed 2)"
                )
            elif dataset == "real":
                labels = ["pan_left", "pan_right"]
                videos = _real_pans(folder, args.real_per_class, args.seed)
                what = f"{args.real_per_class} panned {SEGMENT}-frame stretches of tests/data each"
            elif dataset == "timeline":
                labels, timeline_labels = [], MOTIONS
                videos, strata = _timeline_clips(folder, args.timeline_per_pair, args.seed)
                what = (
                    f"{len(videos)} clips, {args.timeline_per_pair} per (first, second) motion "
                    "pair, labelled per frame"
                )
            else:
                raise SystemExit(f"unknown data set {dataset!r}: synth, real, timeline or motion")
            print(f"data {dataset}: {list(labels or timeline_labels)}, {what}", flush=True)
            wanted = [m for m in args.models if not (timeline_labels and m == "origin")]
            files, test_files = {}, {}
            for sampling in {ours, origin} if "origin" in wanted else {ours}:
                data, skipped = decode_labelled(
                    videos, labels, sampling, timeline_labels=timeline_labels
                )
                if skipped:
                    print(f"  skipped {skipped}")
                files[sampling] = folder / f"{sampling.key()}.npz"
                extra = {"frame_y": data.frame_y} if timeline_labels else {}
                np.savez(
                    files[sampling],
                    frames=data.frames,
                    mask=data.mask,
                    y=data.y,
                    strata=strata if strata is not None else data.y,
                    labels=np.asarray(list(labels or timeline_labels)),
                    **extra,
                )
                del data
                if dataset == "motion":
                    target = test_folder / f"{sampling.key()}.npz"
                    test_files[sampling] = str(_save_arrays(test_videos, labels, sampling, target))
            for name in wanted:
                sampling = origin if name == "origin" else ours
                job = {
                    "model": name,
                    "data": str(files[sampling]),
                    "seeds": args.seeds,
                    "epochs": args.epochs,
                    "patience": args.patience,
                    "min_epochs": args.min_epochs,
                    "origin_batch": args.origin_batch,
                    "test": test_files.get(sampling),
                    "litert": name in args.litert,
                }
                try:  # a process of its own; killed (out of memory, say), the executor says so
                    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                        result = pool.submit(_train_one, job).result()
                except Exception as exc:
                    print(f"  {name}: FAILED ({type(exc).__name__}: {exc})", flush=True)
                    continue
                result["input"] = f"{sampling.frames}x{sampling.height}x{sampling.width}"
                results[(dataset, name)] = result
                print(
                    f"  {name}: {[round(a, 3) for a in result['scores']]}, "
                    f"epochs {result['epochs']}, train {result['train_s']:.0f} s/seed, "
                    f"{time.perf_counter() - started:.0f} s so far",
                    flush=True,
                )
                if result.get("litert"):
                    print(f"  {name} LiteRT on the test clips: {result['litert']}", flush=True)
        if "origin" in args.models and args.guide_size:
            job = {
                "frames": args.guide_frames,
                "size": args.guide_size,
                "batch": 2,
                "classes": 2,
                "dir": tmp,
            }
            try:
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    results[("guide", "origin")] = pool.submit(_measure_guide_input, job).result()
            except Exception as exc:
                print(f"  origin at the guide's input: FAILED ({type(exc).__name__}: {exc})")
    print_table(results, args)
    print_variants(results, args.reference)
    print(f"total {time.perf_counter() - started:.0f} s")


def print_table(results: dict[tuple[str, str], dict], args: argparse.Namespace) -> None:
    """The side-by-side table: accuracy (timeline: frame accuracy, segmental F1), size,
    speed, memory, and ratios to the origin (as trained here, and at the guide's own input,
    built and timed untrained: row ``guide``) and to frame averaging."""
    guide = results.get(("guide", "origin"))
    width = max([13, *(len(name) for _, name in results)])
    print(
        f"\nseeds {args.seeds}, epochs {args.min_epochs}-{args.epochs} (patience "
        f"{args.patience}); held-out "
        "20 % per seed; acc = clip accuracy (timeline: frame accuracy), seg F1 = segmental "
        "F1@0.5; vs avg = acc minus frame average's, in points; x origin: ratio to the origin "
        "as trained on the same data; x guide: to the origin at the guide's input (untrained)\n"
        f"{'data':8} {'model':{width}} {'input':>11} {'acc mean':>8} {'acc min':>7} {'seg F1':>6} "
        f"{'vs avg':>6} {'params':>10} {'MB file':>8} {'ms/clip':>7} {'peak MB':>7} "
        f"{'train s':>7} {'params x origin':>15} {'ms x origin':>11} {'params x guide':>14} "
        f"{'ms x guide':>10}"
    )

    def ratio(r: dict, ref: dict | None, key: str, width: int) -> str:
        return f"{r[key] / ref[key]:{width}.4f}" if ref else f"{'-':>{width}}"

    for (dataset, name), r in results.items():
        ref = results.get((dataset, "origin")) if dataset != "guide" else None
        avg = results.get((dataset, "frame average"))
        scores = r["scores"]
        acc = f"{np.mean(scores):8.3f} {min(scores):7.3f}" if scores else f"{'-':>8} {'-':>7}"
        vs_avg = (
            f"{100 * (np.mean(scores) - np.mean(avg['scores'])):+6.1f}"
            if avg and scores
            else f"{'-':>6}"
        )
        f1 = [f for f in r["f1"] if f is not None]
        f1_text = f"{np.mean(f1):6.3f}" if f1 else f"{'-':>6}"
        on_guide = guide if dataset != "guide" else None
        print(
            f"{dataset:8} {name:{width}} {r['input']:>11} {acc} {f1_text} {vs_avg} "
            f"{r['params']:10d} {r['bytes'] / 1e6:8.2f} {r['ms']:7.1f} {r['peak_mb']:7.0f} "
            f"{r['train_s']:7.0f} {ratio(r, ref, 'params', 15)} {ratio(r, ref, 'ms', 11)} "
            f"{ratio(r, on_guide, 'params', 14)} {ratio(r, on_guide, 'ms', 10)}"
        )


def print_variants(results: dict[tuple[str, str], dict], reference: str = "v1 grid") -> None:
    """The ``motion`` rows side by side: test accuracy, parameters, ms per clip and training
    time, with ratios to ``reference`` (the first default, ``v1 grid``; ``compact`` for the
    extensions) where it ran."""
    rows = {name: r for (dataset, name), r in results.items() if dataset == "motion"}
    if not rows:
        return
    ref = rows.get(reference)
    short = "v1" if reference == "v1 grid" else "ref"
    print(
        "\nmotion4 (trained from scratch, tested on another data seed): per-frame networks"
        f" against {reference!r}\n"
        f"{'model':20} {'test acc':>8} {'acc min':>7} {'params':>8} {'ms/clip':>7} "
        f"{'train s':>7} {'epochs':>10} {f'params x {short}':>11} {f'train s x {short}':>12} "
        f"{f'acc - {short}':>8}"
    )
    for name, r in rows.items():
        scores = r["scores"]
        ratios = (
            f"{r['params'] / ref['params']:11.2f} {r['train_s'] / ref['train_s']:12.2f} "
            f"{100 * (np.mean(scores) - np.mean(ref['scores'])):+8.1f}"
            if ref
            else f"{'-':>11} {'-':>12} {'-':>8}"
        )
        print(
            f"{name:20} {np.mean(scores):8.3f} {min(scores):7.3f} {r['params']:8d} "
            f"{r['ms']:7.1f} {r['train_s']:7.0f} {r['epochs']!s:>10} {ratios}"
        )


if __name__ == "__main__":
    main()
