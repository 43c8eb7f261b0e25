"""The ``videoloop`` command: serve, synth, train, predict, worker, status, models, connect.

Each subcommand with more than a few lines has a module here (train, predict, models,
connect).

Each subcommand imports what it needs when it runs, so ``videoloop --help``, ``synth`` and
``models`` never pay for importing TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from backend.cli.common import command_redis, quiet_tensorflow
from backend.cli.connect import add_connect_parser, cmd_connect
from backend.cli.export import add_export_parser, cmd_export
from backend.cli.models import cmd_models
from backend.cli.predict import cmd_predict
from backend.cli.train import add_train_parser, cmd_train
from training.logs import configure_logging
from training.settings import Settings

WORKER_RESTART_AFTER_S = 2.0
"""Pause before a worker whose RQ loop quit on an error starts afresh, in seconds; it doubles
with each restart in a row (counted in WORKER_RESTARTS_ENV across the re-execs), up to
WORKER_RESTART_MAX_S."""
WORKER_RESTART_MAX_S = 60.0
WORKER_RESTARTS_ENV = "VIDEOLOOP_WORKER_RESTARTS"


def _configure_logging(settings: Settings) -> None:
    """LOG_LEVEL and LOG_FORMAT, the one way every process logs (training/logs.py)."""
    configure_logging(settings.log_level, settings.log_format)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from backend.server import run_server

    run_server(settings)
    return 0


def _cmd_synth(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from training.video.synth import generate_dataset, select_classes

    if args.long:
        return _synth_long(args)

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
            fps=args.fps or 25,
            progress=lambda done, _total: bar.update(done - bar.n),
        )
    print(json.dumps({"manifest": str(manifest), "classes": classes, "clips": total}))
    return 0


def _synth_long(args: argparse.Namespace) -> int:
    """``synth --long N``: long videos with timeline segments (training/video/synth_long.py)."""
    from training.video.synth import select_classes
    from training.video.synth_long import generate_long_set

    labels = select_classes(args.classes)  # the default, 2, is LONG_LABELS
    tasks = generate_long_set(
        args.out,
        videos=args.long,
        seed=args.seed,
        seconds=_range(args.seconds, float),
        segments=_range(args.segments, int),
        width=args.width,
        height=args.height,
        fps=args.fps or 10,
        labels=labels,
    )
    print(json.dumps({"tasks": str(tasks), "labels": labels, "videos": args.long}))
    return 0


def _add_long_synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--long",
        type=int,
        default=0,
        metavar="N",
        help="write N long videos with timeline segments and their Label Studio tasks "
        "(tasks.json) instead; --classes then names the timeline labels (comma-separated)",
    )
    p.add_argument("--seconds", default="120-300", help="with --long: length range in seconds")
    p.add_argument("--segments", default="10-30", help="with --long: segments per video")


def _range(text: str, parse: type) -> tuple:
    low, _, high = text.partition("-")
    return parse(low), parse(high or low)


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run jobs until stopped; a worker that has run WORKER_MAX_JOBS jobs re-execs itself (same
    process id, same command line), so supervisors and tests see one long-lived process. So
    does one whose RQ loop quit on an error (Redis restarting as a job ended), after a pause."""
    quiet_tensorflow()
    from training.jobs.worker import WorkerExit, run_worker

    outcome = run_worker(settings, burst=args.burst, name=args.name)
    if outcome is WorkerExit.STOPPED:
        return 0
    restarts = int(os.environ.get(WORKER_RESTARTS_ENV, "0"))
    os.environ[WORKER_RESTARTS_ENV] = str(restarts + 1 if outcome is WorkerExit.RESTART else 0)
    if outcome is WorkerExit.RESTART:  # Redis is likely restarting: give it a moment, longer
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # each time. RQ's handlers, still
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # installed, would raise out of the sleep
        time.sleep(min(WORKER_RESTART_AFTER_S * 2**restarts, WORKER_RESTART_MAX_S))
    if outcome in (WorkerExit.RECYCLE, WorkerExit.RESTART):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    return 0


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Read the training state from Redis, or from a running backend in embedded mode."""
    from backend.protocol import normalize_project

    project = normalize_project(args.project)
    if settings.redis_url and not args.url:
        from training.jobs.coordinator import make_coordinator
        from training.jobs.status import project_state

        state = project_state(make_coordinator(command_redis(settings), settings), project)
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
        "--classes",
        default="2",
        help="a number (first N classes), names (comma-separated), or motion4 (left/right, "
        "approaching/receding, each pair time-reversed)",
    )
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--fps", type=int, default=None, help="frames per second (25; 10 with --long)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_long_synth_args(p)

    add_train_parser(sub)

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

    add_connect_parser(sub)
    add_export_parser(sub)
    return parser


COMMANDS = {
    "serve": _cmd_serve,
    "synth": _cmd_synth,
    "train": cmd_train,
    "predict": cmd_predict,
    "worker": _cmd_worker,
    "status": _cmd_status,
    "models": cmd_models,
    "connect": cmd_connect,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"videoloop: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    os.environ.setdefault("KERAS_HOME", str(settings.cache_dir / "keras"))
    try:
        return COMMANDS[args.command](args, settings)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        logging.getLogger("videoloop").debug("command failed", exc_info=True)
        print(f"videoloop {args.command}: {exc}", file=sys.stderr)
        return 2
