"""A worker's retrain with its last model kept warm, against one that builds it again.

What ``WORKER_KEEP_WARM`` saves on the annotator's path: a worker has trained a project's
first version; more annotations come in; the retrain fine-tunes that version. Both retrains
run in one process, one after the other, through the product's own ``train_and_publish``
(decoding from the clip cache, fit, gate, publish), the first with nothing kept (what a
worker did before: Keras cleared after every job), the second with the first run's model
built and traced and the parent version loaded. Each round trains a fresh first version in a
fresh store, so the two retrains start from the same state. Prints the overhead of the fit
stage, a steady epoch and the whole run, with the ratios warm/cold. The overhead is the time
from the start of the fit stage (model, input pipeline, tracing) to the end of the first
epoch, less a steady epoch: the part a warm model skips (on a loaded machine the epochs
themselves stretch).

    .venv/bin/python bench/warm_worker.py [--per-class 12] [--epochs 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from support import machine_header  # noqa: E402

from training.learn.config import TrainConfig, TrainingData, TrainingRun  # noqa: E402
from training.learn.labelled_files import read_manifest  # noqa: E402
from training.learn.publish import train_and_publish  # noqa: E402
from training.learn.warm_model import WARM_MODEL  # noqa: E402
from training.model.kept_versions import KEPT_VERSIONS  # noqa: E402
from training.versions.store import ModelStore  # noqa: E402
from training.video.clipcache import ClipCache  # noqa: E402
from training.video.synth import generate_dataset  # noqa: E402


def retrain(base: Path, videos: list, epochs: int, warm: bool) -> dict[str, float]:
    """Train a first version, then time the retrain that fine-tunes it."""
    import keras

    keras.backend.clear_session()
    WARM_MODEL.clear()
    KEPT_VERSIONS.clear()
    WARM_MODEL.enabled = KEPT_VERSIONS.enabled = warm
    WARM_MODEL.hits = 0
    store = ModelStore(base / "models")
    cache = ClipCache(base / "clips", max_bytes=2 << 30)
    config = TrainConfig(epochs=epochs, min_epochs=epochs)
    first = train_and_publish(
        store, "1", TrainingData(videos[::2]), TrainingRun(train_config=config, cache=cache)
    )
    if not warm:
        keras.backend.clear_session()  # what the worker did after every job
    marks: dict[str, float] = {}
    epochs_at: list[float] = []

    def progress(event: dict) -> None:
        now = time.perf_counter()
        marks.setdefault(event["stage"], now)
        if event["stage"] == "train":
            epochs_at.append(now)

    started = time.perf_counter()
    run = TrainingRun(train_config=config, cache=cache, parent=first)
    train_and_publish(store, "1", TrainingData(videos), run, progress=progress)
    ended = time.perf_counter()
    steady = statistics.median(b - a for a, b in itertools.pairwise(epochs_at))
    return {
        "overhead_s": epochs_at[0] - marks["build"] - steady,
        "epoch_s": steady,
        "run_s": ended - started,
        "hit": WARM_MODEL.hits == 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(machine_header())
    results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        classes = ["left_to_right", "right_to_left"]
        manifest = generate_dataset(
            Path(tmp) / "synth", classes=classes, per_class=args.per_class, seed=0
        )
        videos = read_manifest(manifest)
        for r in range(args.rounds):
            for mode in ("cold", "warm"):
                figures = retrain(Path(tmp) / f"{mode}-{r}", videos, args.epochs, mode == "warm")
                results[mode].append(figures)
                print(f"round {r + 1} {mode}: {figures}", flush=True)
    print(f"\nretrain of a first version, {len(videos)} clips, {args.epochs} epochs, medians:")
    keys = ("overhead_s", "epoch_s", "run_s")
    print(f"{'':9} {'overhead s':>10} {'epoch s':>8} {'run s':>8}")
    median = {
        mode: {k: statistics.median(f[k] for f in runs) for k in keys}
        for mode, runs in results.items()
    }
    for mode, m in median.items():
        print(f"{mode:9} {m['overhead_s']:10.2f} {m['epoch_s']:8.2f} {m['run_s']:8.2f}")
    ratio = [median["warm"][k] / median["cold"][k] for k in keys]
    print(f"{'warm/cold':9} {ratio[0]:9.2f}x {ratio[1]:7.2f}x {ratio[2]:7.2f}x")


if __name__ == "__main__":
    main()
