"""A first model from 2 labels a class, with and without the project's unlabelled clips.

Why: a project's first model learns from MIN_PER_LABEL (2) clips a label while hundreds of
clips wait unlabelled. This trains that first model with the product's own fitting
(``training.learn.fit.fit``, as the RQ job: TRAIN_EPOCHS 30, the product's split of 2 clips a
label, which keeps all of them for training) on the ``motion4`` set (60 clips a class from data
seed 1; 2 a class labelled, the other 232 unlabelled), tests it on 30 clips a class from data
seed 2, and compares the methods of ``METHODS`` side by side over several label draws:
accuracy, and training time as a ratio to today's default (``spatial``). Each method runs in a
spawned process of its own, one at a time. Draws a png beside bench/RESULTS.md. Run from the
repository root (not imported by the packages):

    .venv/bin/python bench/unlabelled.py [--seeds 0 1 2] [--methods ...]

Results: bench/RESULTS.md "Unlabelled videos".
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "spatial"
"""Today's default (spatial augmentation, no pre-training): the ratios' denominator."""
METHODS: dict[str, dict] = {
    "none": {"augment": False},
    "spatial": {},
    "spatial+temporal": {"augment_temporal": True},
    "order": {"pretrain": "order"},
    "order+temporal": {"pretrain": "order", "augment_temporal": True},
    "arrow": {"pretrain": "arrow"},
    "spatial x8": {"min_batches": 8},
    "order x8": {"pretrain": "order", "min_batches": 8},
    "order+temporal x8": {"pretrain": "order", "augment_temporal": True, "min_batches": 8},
    "order 12 epochs x8": {"pretrain": "order", "pretrain_epochs": 12, "min_batches": 8},
    "spatial pseudo": {"pseudo_rounds": 1},
    "spatial pseudo3 p40": {"pseudo_rounds": 3, "pseudo_per_class": 40},
    "spatial pseudo3 p60 t0.6": {
        "pseudo_rounds": 3,
        "pseudo_per_class": 60,
        "pseudo_threshold": 0.6,
    },
    "x8 pseudo3 p40": {"min_batches": 8, "pseudo_rounds": 3, "pseudo_per_class": 40},
    "x8 pseudo5 p40": {"min_batches": 8, "pseudo_rounds": 5, "pseudo_per_class": 40},
    "x8 pseudo3 p60": {"min_batches": 8, "pseudo_rounds": 3, "pseudo_per_class": 60},
    "order x8 pseudo3 p40": {
        "pretrain": "order",
        "min_batches": 8,
        "pseudo_rounds": 3,
        "pseudo_per_class": 40,
    },
    "all48": {"train_all_below": 48},
    "x8 pseudo3 p40 all48": {
        "min_batches": 8,
        "pseudo_rounds": 3,
        "pseudo_per_class": 40,
        "train_all_below": 48,
    },
    "spatial x8 pseudo": {"min_batches": 8, "pseudo_rounds": 1},
    "order x8 pseudo": {"pretrain": "order", "min_batches": 8, "pseudo_rounds": 1},
    "order 12 epochs x8 pseudo": {
        "pretrain": "order",
        "pretrain_epochs": 12,
        "min_batches": 8,
        "pseudo_rounds": 1,
    },
}
"""TrainConfig fields of each method, over the product's defaults."""


def _run_method(job: dict) -> list[dict]:
    """In a spawned process: one method over every seed; accuracy and seconds per seed."""
    sys.path.insert(0, str(ROOT))
    import keras

    from training.learn.config import TrainConfig
    from training.learn.dataset import ClipArrays, held_out_split
    from training.learn.evaluate import predict_outputs
    from training.learn.fit import fit
    from training.video.clip import SamplingConfig

    pool, test_npz = np.load(job["pool"]), np.load(job["test"])
    n = len(pool["y"])
    data = ClipArrays(pool["frames"], pool["mask"], pool["y"], [f"c{i}" for i in range(n)])
    test = ClipArrays(
        test_npz["frames"], test_npz["mask"], test_npz["y"], [""] * len(test_npz["y"])
    )
    labels = job["labels"]
    sampling = SamplingConfig(*data.frames.shape[1:4])
    out = []
    for seed in job["seeds"]:
        rng = np.random.default_rng([seed, 7])
        picked = np.concatenate(
            [
                rng.permutation(np.flatnonzero(data.y == c))[: job["per_label"]]
                for c in range(len(labels))
            ]
        )
        labelled = data.subset(picked)
        keys = [f"task:{seed}:{i}" for i in picked]
        config = TrainConfig(epochs=job["epochs"], seed=seed, **METHODS[job["method"]])
        train_idx, _, val_idx = held_out_split(keys, labelled.y, config)  # the product's
        unlabelled = data.subset(np.setdiff1d(np.arange(n), picked))
        started = time.perf_counter()
        model, history, init = fit(
            labelled.subset(train_idx),
            labelled.subset(val_idx),
            labels,
            sampling,
            _model_config(),
            config,
            unlabelled=unlabelled,
        )
        seconds = time.perf_counter() - started
        accuracy = float((predict_outputs(model, test, 16)["classes"].argmax(1) == test.y).mean())
        out.append({"seed": seed, "accuracy": accuracy, "seconds": seconds, "init": init})
        taken = history.get("pseudo_labels")  # clips each pseudo-label round took
        print(
            f"  {job['method']} seed {seed}: acc {accuracy:.3f}, {seconds:.1f} s, {init}"
            + (f", pseudo-labels {[int(n) for n in taken]}" if taken else ""),
            flush=True,
        )
        keras.backend.clear_session(free_memory=False)
    return out


def run_in_process(job: dict) -> list[dict]:
    """``_run_method(job)`` in a spawned process of its own, so each method starts from a fresh
    TensorFlow and gives its memory back when done."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_run_method, (job,))


def _model_config():
    from training.model.config import ModelConfig

    return ModelConfig()


def _make_data(tmp: Path, args) -> tuple[Path, Path, list[str]]:
    """motion4 pool (data seed 1) and test set (data seed 2), decoded and saved."""
    from training.learn.dataset import decode_labelled
    from training.learn.labelled_files import read_manifest
    from training.video.clip import SamplingConfig
    from training.video.synth import generate_dataset, select_classes

    labels = select_classes("motion4")
    sampling = SamplingConfig(frames=args.frames, height=args.size, width=args.size)
    paths = []
    for name, per_class, seed in (("pool", args.per_class, 1), ("test", args.test_per_class, 2)):
        manifest = generate_dataset(
            tmp / name, classes=labels, per_class=per_class, seed=seed, width=160, height=120
        )
        data, skipped = decode_labelled(read_manifest(manifest), labels, sampling)
        assert not skipped, skipped
        np.savez(tmp / f"{name}.npz", frames=data.frames, mask=data.mask, y=data.y)
        paths.append(tmp / f"{name}.npz")
    return paths[0], paths[1], labels


def _report(results: dict[str, list[dict]], seeds: list[int]) -> list[str]:
    base = float(np.mean([r["seconds"] for r in results[BASELINE]]))
    base_acc = float(np.mean([r["accuracy"] for r in results[BASELINE]]))
    head = " ".join(f"seed {s}" for s in seeds)
    lines = [
        f"{'method':<25} {head}  mean acc  min acc  x {BASELINE} acc  train s  x {BASELINE} time"
    ]
    for method, rows in results.items():
        accs = [r["accuracy"] for r in rows]
        secs = float(np.mean([r["seconds"] for r in rows]))
        per_seed = " ".join(f"{a:6.3f}" for a in accs)
        lines.append(
            f"{method:<25} {per_seed}  {np.mean(accs):8.3f} {min(accs):8.3f} "
            f"{np.mean(accs) / base_acc:11.2f} {secs:8.1f} {secs / base:14.2f}"
        )
    return lines


def _plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    accs = [[r["accuracy"] for r in results[m]] for m in names]
    secs = [np.mean([r["seconds"] for r in results[m]]) for m in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.boxplot(accs, tick_labels=names, orientation="horizontal")
    left.axvline(0.25, color="grey", linestyle=":", label="chance")
    left.axvline(0.6, color="red", linestyle="--", label="target 0.6")
    left.set_xlabel("test accuracy, motion4, 2 labels a class")
    left.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=2)  # above: hides no box
    right.barh(names, secs)
    right.set_xlabel("training seconds (mean)")
    right.invert_yaxis()
    left.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="label draws")
    parser.add_argument("--per-label", type=int, default=2, help="labelled clips a class")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=30, help="TRAIN_EPOCHS's default")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "unlabelled.png")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    from support import machine_header

    print(machine_header())
    methods = [BASELINE, *[m for m in args.methods if m != BASELINE]]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pool, test, labels = _make_data(Path(tmp), args)
        print(
            f"data: motion4 {labels}, {args.per_class} a class (data seed 1), {args.per_label} a class "
            f"labelled, the rest unlabelled; test {args.test_per_class} a class (data seed 2); "
            f"T={args.frames} at {args.size}x{args.size}; {time.perf_counter() - started:.0f} s"
        )
        results = {}
        for method in methods:
            job = {
                "pool": str(pool), "test": str(test), "labels": labels, "method": method,
                "seeds": args.seeds, "per_label": args.per_label, "epochs": args.epochs,
            }  # fmt: skip
            results[method] = run_in_process(job)
    print()
    print("\n".join(_report(results, args.seeds)))
    _plot(results, args.plot)
    print(f"plot: {args.plot}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
