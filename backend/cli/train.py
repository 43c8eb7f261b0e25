"""``videoloop train``: train offline on labelled files, evaluate, gate and publish."""

from __future__ import annotations

import argparse
import json
import sys
import time

from backend.cli.common import command_redis, quiet_tensorflow
from training.learn.config import PRETEXT_TASKS, TrainConfig, TrainingRun
from training.model.config import (
    BACKBONES,
    NETWORKS,
    TEMPORAL_HEADS,
    ModelConfig,
    default_network,
)
from training.settings import Settings
from training.video.clip import SamplingConfig


class _TrainingBar:
    """Draws training's progress events as tqdm bars: one for decoding, one for epochs."""

    def __init__(self, quiet: bool) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.quiet = quiet
        self.bar = None
        self.stage = None

    def __call__(self, event: dict) -> None:
        stage = event.get("stage")
        if stage != self.stage:
            self.close()
            self.stage = stage
            total = event.get("total") or event.get("epochs")
            if stage in ("decode", "pretrain", "train", "pseudo"):
                unit = "clip" if stage == "decode" else "epoch"
                self.bar = self._tqdm(total=total, desc=stage, unit=unit, disable=self.quiet)
        if self.bar is None:
            return
        done = event.get("done", event.get("epoch", 0))
        self.bar.update(done - self.bar.n)
        metrics = {
            k: event[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in event
        }
        if metrics:
            self.bar.set_postfix(metrics)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    quiet_tensorflow()
    from training.jobs.promotion import promote
    from training.learn.config import TrainingData
    from training.learn.labelled_files import load_labelled_videos, scan_videos
    from training.learn.publish import train_and_publish
    from training.versions.store import ModelStore

    unlabelled = scan_videos(args.unlabelled) if args.unlabelled else ()
    data = TrainingData(load_labelled_videos(args.data), unlabelled=unlabelled)
    bar = _TrainingBar(args.quiet)
    started = time.perf_counter()
    store = ModelStore.from_settings(settings)
    try:
        info = train_and_publish(
            store, args.project, data, _training_run(args, settings), progress=bar
        )
    finally:
        bar.close()
    connection = command_redis(settings)
    current = promote(store, args.project, info, connection=connection, force=args.promote_anyway)
    if not current:
        print(
            f"videoloop train: {info.version} is kept but not made current: "
            f"{info.meta['gate']['reason']} (--promote-anyway makes it current)",
            file=sys.stderr,
        )
    test = info.meta["metrics"]["test"]
    summary = {
        "project": args.project,
        "version": info.version,
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test.get("macro_f1"),
        "test_clips": test["count"],
        "epochs_run": info.meta["training"]["epochs_run"],
        "parameters": info.meta["model"]["parameters"],
        "seconds": round(time.perf_counter() - started, 1),
        "path": str(info.path),
        "current": current,
        "gate": info.meta.get("gate"),
        "init": info.meta.get("init"),
        "unlabelled_clips": info.meta["dataset"].get("unlabelled", 0),
    }
    print(json.dumps(summary))
    return 0


def _training_run(args: argparse.Namespace, settings: Settings) -> TrainingRun:
    """How ``videoloop train`` trains: the options' settings, published without becoming
    current (the quality gate, or --promote-anyway, decides)."""
    return TrainingRun(
        sampling=SamplingConfig(  # SAMPLE_MODE as for a project's first model
            frames=args.frames, height=args.size, width=args.size, sample_mode=settings.sample_mode
        ),
        model_config=ModelConfig(
            backbone=args.backbone,
            backbone_weights=args.backbone_weights,
            temporal=args.temporal,
            dropout=args.dropout,
            **_network(args),
        ),
        train_config=settings.train_config(
            epochs=args.epochs,
            batch_size=args.batch_size,
            patience=args.patience,
            seed=args.seed,
            pretrain=_pretext_task(args, settings),
            pseudo_rounds=(
                settings.pseudo_labels if args.pseudo_labels is None else args.pseudo_labels
            ),
        ),
        threads=settings.decode_threads,
        gate_tolerance=settings.gate_tolerance,
        make_current=False,
        litert=settings.litert_export_mode,
    )


def _network(args: argparse.Namespace) -> dict:
    """--network's ModelConfig fields, with --lstm-units' width where it is given."""
    fields = dict(NETWORKS[args.network])
    if args.lstm_units:
        fields["lstm_units"] = args.lstm_units
    return fields


def _pretext_task(args: argparse.Namespace, settings: Settings) -> str:
    """--pretrain, else PRETRAIN; with --unlabelled and neither, ``order``: a folder of
    unlabelled videos is given to be used."""
    if args.pretrain:
        return args.pretrain
    if args.unlabelled and settings.pretrain == "none":
        return "order"
    return settings.pretrain


def add_train_parser(sub) -> None:
    """``videoloop train``'s options; their defaults are the training dataclasses' own."""
    train, sampling, model = TrainConfig(), SamplingConfig(), ModelConfig()
    p = sub.add_parser(
        "train",
        help="train a model offline, evaluate it and publish a new version; it becomes the "
        "project's current version if it passes the quality gate (or with --promote-anyway)",
    )
    p.add_argument("--data", required=True, help="manifest CSV (path,label), or a folder per class")
    p.add_argument("--project", required=True, help="Label Studio project id")
    p.add_argument("--epochs", type=int, default=train.epochs)
    p.add_argument("--patience", type=int, default=train.patience)
    p.add_argument("--batch-size", type=int, default=train.batch_size)
    p.add_argument(
        "--frames", type=int, default=sampling.frames, help="frames per clip (SAMPLE_MODE: which)"
    )
    p.add_argument("--size", type=int, default=sampling.height, help="frame height and width")
    p.add_argument("--backbone", default=model.backbone, choices=list(BACKBONES))
    p.add_argument(
        "--temporal",
        default=model.temporal,
        choices=list(TEMPORAL_HEADS),
        help="temporal head (default %(default)s): lstm, bilstm, attention (pooling over the "
        "LSTM's outputs) or average (frame averaging, no temporal model: the baseline)",
    )
    p.add_argument(
        "--backbone-weights",
        default=model.backbone_weights,
        help="mobilenet only: 'imagenet' or a .weights.h5 file",
    )
    p.add_argument(
        "--network",
        default=default_network(timeline=False),
        choices=list(NETWORKS),
        help="per-frame network (default %(default)s, as TRAIN_NETWORK=auto for a "
        "classification project): compact (0.16 M parameters) or grid (0.31 M)",
    )
    p.add_argument("--lstm-units", type=int, help="LSTM width (default: the network's)")
    p.add_argument("--dropout", type=float, default=model.dropout)
    p.add_argument("--seed", type=int, default=train.seed)
    _add_unlabelled_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--promote-anyway",
        action="store_true",
        help="make the new version current even if the quality gate finds it worse",
    )


def _rounds(text: str) -> int:
    """--pseudo-labels' value: a whole number of rounds, 0 or more (as PSEUDO_LABELS)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _add_unlabelled_options(p) -> None:
    """``videoloop train``'s options for a first model's unlabelled videos
    (docs/unlabelled-data.md)."""
    p.add_argument(
        "--unlabelled",
        metavar="DIR",
        help="a folder of unlabelled videos (any depth) for a first model's pre-training and "
        "pseudo-labels, as the training job uses a project's unlabelled tasks "
        "(docs/unlabelled-data.md)",
    )
    p.add_argument(
        "--pretrain",
        choices=["none", *PRETEXT_TASKS],
        help="the pre-training's pretext task (default: PRETRAIN, or order with --unlabelled "
        "when PRETRAIN is none); AUGMENT sets the augmentation",
    )
    p.add_argument(
        "--pseudo-labels",
        type=_rounds,
        metavar="ROUNDS",
        help="rounds of fine-tuning on the model's confident predictions of the --unlabelled "
        "videos (default: PSEUDO_LABELS; 0: off); PSEUDO_THRESHOLD, PSEUDO_PER_CLASS and "
        "PSEUDO_EPOCHS set the rest",
    )
