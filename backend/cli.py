"""The ``videoloop`` command: serve, synth, train, predict, worker, status, models.

Each subcommand imports what it needs when it runs, so ``videoloop --help``, ``synth`` and
``models`` never pay for importing TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from training.model.config import TEMPORAL_HEADS
from training.settings import Settings


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from backend.server import run_server

    run_server(settings)
    return 0


def _cmd_synth(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from training.video.synth import generate_dataset, select_classes

    classes = select_classes(args.classes)
    total = len(classes) * args.per_class
    with tqdm(total=total, unit="clip", desc="synth", disable=args.quiet) as bar:
        manifest = generate_dataset(
            args.out,
            classes=classes,
            per_class=args.per_class,
            seed=args.seed,
            width=args.width,
            height=args.height,
            fps=args.fps,
            progress=lambda done, _total: bar.update(done - bar.n),
        )
    print(json.dumps({"manifest": str(manifest), "classes": classes, "clips": total}))
    return 0


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
            if stage in ("decode", "train"):
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


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    _quiet_tensorflow()
    from training.jobs.training import promote
    from training.learn.labelled_files import load_labelled_videos
    from training.learn.train import TrainConfig, train_and_publish
    from training.model.build import ModelConfig
    from training.versions.store import ModelStore
    from training.video.clip import SamplingConfig

    videos = load_labelled_videos(args.data)
    sampling = SamplingConfig(frames=args.frames, height=args.size, width=args.size)
    model_config = ModelConfig(
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        temporal=args.temporal,
        lstm_units=args.lstm_units,
        dropout=args.dropout,
    )
    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, patience=args.patience, seed=args.seed
    )
    bar = _TrainingBar(args.quiet)
    started = time.perf_counter()
    store = ModelStore(settings.model_dir)
    try:
        info = train_and_publish(
            store,
            args.project,
            videos,
            sampling=sampling,
            model_config=model_config,
            train_config=train_config,
            threads=settings.decode_threads,
            gate_tolerance=settings.gate_tolerance,
            make_current=False,
            progress=bar,
        )
    finally:
        bar.close()
    connection = _redis(settings)
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
    }
    print(json.dumps(summary))
    return 0


def _cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    _quiet_tensorflow()
    from training.model.loaded import load_version
    from training.versions.store import ModelStore
    from training.video.clip import stack_clips
    from training.video.decoder import VideoDecodeError, decode_many

    info = ModelStore(settings.model_dir).get_current_info(args.project)
    if info is None:
        print(
            f"project {args.project} has no trained model in {settings.model_dir}", file=sys.stderr
        )
        return 2
    model = load_version(info, batch_size=settings.predict_batch_size)
    results = decode_many(args.videos, model.sampling, threads=settings.decode_threads)
    clips = [r for r in results if not isinstance(r, VideoDecodeError)]
    outputs = model.predict(*stack_clips(clips)) if clips else {}
    failed = 0
    row_of_clip = 0
    for video, result in zip(args.videos, results, strict=True):
        if isinstance(result, VideoDecodeError):
            failed += 1
            print(json.dumps({"video": video, "error": str(result)}))
            continue
        clip_outputs = {head: value[row_of_clip] for head, value in outputs.items()}
        row_of_clip += 1
        print(json.dumps(_prediction_row(video, result, clip_outputs, model, settings)))
    return 1 if failed else 0


def _prediction_row(video: str, clip, outputs: dict, model, settings: Settings) -> dict:
    """One line of ``videoloop predict``: the class with its probabilities and/or the
    segments (frame numbers 1-based, inclusive, at the video's own frame rate)."""
    from training.labelstudio.timeline import predict_segments
    from training.model.uncertainty import confidence

    row: dict = {"video": video, "model_version": model.version}
    scores = []
    if "classes" in outputs:
        p = outputs["classes"]
        best = int(p.argmax())
        row["label"] = model.labels[best]
        scores.append(float(confidence(p, settings.uncertainty_measure)))
        row["probabilities"] = {
            lbl: round(float(x), 4) for lbl, x in zip(model.labels, p, strict=True)
        }
    if "timeline" in outputs:
        frame_probs = outputs["timeline"]
        n = len(clip.indices)
        segments = predict_segments(
            frame_probs, clip.indices, clip.fps, clip.frame_count, clip.fps, model.timeline_labels
        )
        row["segments"] = [
            {
                "start": s.segment.start,
                "end": s.segment.end,
                "label": s.segment.label,
                "score": round(s.score, 4),
            }
            for s in segments
        ]
        scores.append(float(confidence(frame_probs[:n], settings.uncertainty_measure).mean()))
    row["score"] = round(min(scores), 4) if scores else 0.0
    return row


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    _quiet_tensorflow()
    from training.jobs.worker import run_worker

    run_worker(settings, burst=args.burst, name=args.name)
    return 0


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Read the training state from Redis, or from a running backend in embedded mode."""
    from backend.protocol import normalize_project

    project = normalize_project(args.project)
    if settings.redis_url and not args.url:
        import redis

        from training.jobs.training import make_coordinator

        connection = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
        state = make_coordinator(connection, settings).get_state(project)
    else:
        import requests

        url = (args.url or f"http://127.0.0.1:{settings.port}").rstrip("/")
        auth = (
            (settings.basic_auth_user, settings.basic_auth_pass)
            if settings.basic_auth_user
            else None
        )
        try:
            response = requests.get(f"{url}/training/{project}", auth=auth, timeout=10)
        except requests.RequestException as exc:
            raise RuntimeError(f"no backend answering at {url}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
        state = response.json()
    print(json.dumps(state, indent=2, default=str))
    return 0


def _redis(settings: Settings):
    """A Redis connection when REDIS_URL is set (to mirror and announce version changes)."""
    if not settings.redis_url:
        return None
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)


def _gate_text(gate: dict | None) -> str:
    if not gate:
        return "-"
    verdict = "pass" if gate.get("passed") else "FAIL"
    if gate.get("current") is None or gate.get("candidate") is None:
        return f"{verdict} (nothing to compare)"
    return f"{gate['candidate']:.3f} vs {gate['current']:.3f} {verdict}"


def _version_row(info) -> dict[str, str]:
    meta = info.meta
    test = (meta.get("metrics") or {}).get("test") or {}
    accuracy = test.get("accuracy")
    frame_accuracy = (test.get("timeline") or {}).get("frame_accuracy")
    dataset = meta.get("dataset") or {}
    created = meta.get("created_at")
    return {
        "version": info.version,
        "status": str(info.status or ""),
        "test acc": f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "-",
        "frame acc": f"{frame_accuracy:.3f}" if isinstance(frame_accuracy, int | float) else "-",
        "gate (new vs current)": _gate_text(meta.get("gate")),
        "parent": meta.get("parent") or "-",
        "created (UTC)": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created))
        if isinstance(created, int | float)
        else "-",
        "videos (train/val/test)": (
            f"{dataset.get('videos', '-')} ({dataset.get('train', '-')}/"
            f"{dataset.get('val', '-')}/{dataset.get('test', '-')})"
        ),
    }


def _cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    """List, show, promote and roll back a project's versions (no TensorFlow needed)."""
    from backend.protocol import normalize_project
    from training.versions.store import ModelStore

    project = normalize_project(args.project)
    store = ModelStore(settings.model_dir)
    if args.models_command == "list":
        versions = store.list_versions(project)
        if args.json:
            print(json.dumps([_version_row(v) for v in versions], indent=2))
            return 0
        if not versions:
            print(f"project {project} has no versions in {settings.model_dir}", file=sys.stderr)
            return 1
        rows = [_version_row(v) for v in versions]
        widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
        print("  ".join(k.ljust(w) for k, w in widths.items()).rstrip())
        for row in rows:
            print("  ".join(row[k].ljust(w) for k, w in widths.items()).rstrip())
        return 0
    if args.models_command == "show":
        statuses = store.get_statuses(project)
        info = store.get_version(project, args.version)
        shown = {
            "version": info.version,
            "status": str(statuses.get(info.version, "")),
            "path": str(info.path),
            "pictures": sorted(str(p) for p in info.path.glob("*.png")),
            "meta": info.meta,
        }
        print(json.dumps(shown, indent=2, default=str))
        return 0
    if args.models_command == "promote":
        return _change_current(store, project, args.version, "promote", settings)
    target = store.get_rollback_target(project)
    if target is None:
        raise RuntimeError(f"project {project} has no earlier current version to roll back to")
    return _change_current(store, project, target, "rollback", settings)


def _change_current(store, project: str, version: str, action: str, settings: Settings) -> int:
    """Point the project at ``version`` through VersionPointer (with Redis, so every serving
    process swaps within seconds), queue the refresh of predictions, print what changed."""
    import redis

    from training.jobs.training import enqueue_refresh
    from training.versions.current import VersionPointer

    store.get_version(project, version)  # raises StoreError (exit 2) if absent
    before = store.get_current(project)
    change: dict = {"project": project, "action": action, "previous": before, "current": version}
    if before == version:
        print(json.dumps({**change, "changed": False, "note": f"{version} is already current"}))
        return 0
    connection = _redis(settings)
    VersionPointer(store, connection).set(
        project, version, action=action, reason=f"videoloop models {action}"
    )
    change.update(changed=True, redis=connection is not None, refresh_job=None)
    if connection is not None:
        try:
            change["refresh_job"] = enqueue_refresh(connection, project, version, settings)
        except redis.RedisError as exc:
            print(f"videoloop models: no refresh queued (Redis: {exc})", file=sys.stderr)
    print(json.dumps(change))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videoloop",
        description="Label Studio ML backend for video classification (CNN-LSTM).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the Label Studio ML backend (HOST, PORT, WORKERS, THREADS)")

    p = sub.add_parser("synth", help="write a synthetic labelled video set (temporal classes)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--classes", default="2", help="a number (first N classes) or names, comma-separated"
    )
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "train", help="train a model offline and publish it as the project's current version"
    )
    p.add_argument("--data", required=True, help="manifest CSV (path,label), or a folder per class")
    p.add_argument("--project", required=True, help="Label Studio project id")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--frames", type=int, default=16, help="frames sampled per clip")
    p.add_argument("--size", type=int, default=112, help="frame height and width")
    p.add_argument("--backbone", default="small", choices=["small", "mobilenet_v3_small"])
    p.add_argument(
        "--temporal",
        default="lstm",
        choices=list(TEMPORAL_HEADS),
        help="temporal head: lstm (default), bilstm, attention (pooling over the LSTM's "
        "outputs) or average (frame averaging, no temporal model: the baseline)",
    )
    p.add_argument(
        "--backbone-weights", default=None, help="mobilenet only: 'imagenet' or a .weights.h5 file"
    )
    p.add_argument("--lstm-units", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--promote-anyway",
        action="store_true",
        help="make the new version current even if the quality gate finds it worse",
    )

    p = sub.add_parser("worker", help="run a training worker on REDIS_URL's queue")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--name", default=None, help="worker name (default: RQ's)")

    p = sub.add_parser("status", help="a project's training state: queued, running, last run")
    p.add_argument("--project", required=True)
    p.add_argument("--url", default=None, help="ask this backend instead of Redis (embedded mode)")

    p = sub.add_parser("predict", help="predict videos with the project's current model")
    p.add_argument("--project", required=True)
    p.add_argument("videos", nargs="+", help="video files")

    p = sub.add_parser("models", help="a project's versions: list, show, promote, rollback")
    models = p.add_subparsers(dest="models_command", required=True)
    m = models.add_parser("list", help="every version with its status, accuracy and gate")
    m.add_argument("--project", required=True)
    m.add_argument("--json", action="store_true", help="rows as JSON instead of a table")
    m = models.add_parser("show", help="a version's meta.json and the paths of its pictures")
    m.add_argument("version")
    m.add_argument("--project", required=True)
    m = models.add_parser("promote", help="make a version current (every serving process)")
    m.add_argument("version")
    m.add_argument("--project", required=True)
    m = models.add_parser("rollback", help="make the version current before this one current")
    m.add_argument("--project", required=True)
    return parser


COMMANDS = {
    "serve": _cmd_serve,
    "synth": _cmd_synth,
    "train": _cmd_train,
    "predict": _cmd_predict,
    "worker": _cmd_worker,
    "status": _cmd_status,
    "models": _cmd_models,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"videoloop: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    os.environ.setdefault("KERAS_HOME", str(settings.cache_dir / "keras"))
    try:
        return COMMANDS[args.command](args, settings)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        logging.getLogger("videoloop").debug("command failed", exc_info=True)
        print(f"videoloop {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
