"""Run the app under gunicorn, programmatically: ``python -m backend.server``.

gthread workers (``WORKERS`` processes x ``THREADS`` threads). The app, and with it the
ModelServer and its threads, is created in ``load()``, which gunicorn calls in each worker
after the fork; never preload it in the master (docs/design.md: forking after TensorFlow has
initialised breaks the workers). The master only imports ``backend.app`` (Flask and the
label-studio-sdk, no TensorFlow), so a forked worker answers /health almost at once.

The master also makes the folder of the workers' metrics before the fork and drops a dead
worker's served versions from it (backend/metrics_export.py), and gives gunicorn's own lines
the LOG_FORMAT of the rest (training/logs.py), so that a log shipper reads every line.
"""

from __future__ import annotations

import logging
import os

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

import backend.app  # noqa: F401  (imported before the fork, so each worker starts fast)
from backend import metrics_export
from training.logs import configure_logging, make_formatter
from training.settings import Settings

TIMEOUT_S = 120
"""Seconds a worker may stay silent before gunicorn restarts it; Label Studio gives up on a
/predict after 100 s, so this only catches stuck workers."""

GRACEFUL_TIMEOUT_S = 30
"""Seconds workers get to finish in-flight requests on shutdown or reload."""


class JsonGunicornLogger(Logger):
    """gunicorn's logger with its error log ("Booting worker", timeouts) in JSON lines, for
    LOG_FORMAT=json (its own format otherwise)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(make_formatter("json"))


def gunicorn_options(settings: Settings) -> dict[str, object]:
    """The gunicorn configuration for these settings."""
    logger_class = JsonGunicornLogger if settings.log_format == "json" else Logger
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "threads": settings.threads,
        "worker_class": "gthread",
        "timeout": TIMEOUT_S,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "preload_app": False,
        "loglevel": settings.log_level.lower(),
        "errorlog": "-",
        "accesslog": None,  # Label Studio polls /health; requests are logged by the app
        "logger_class": logger_class,
        "child_exit": metrics_export.child_exit,
        "proc_name": "videoloop",
        # gunicorn >= 27 opens a control socket at a fixed path under ~/.gunicorn, which
        # two servers on one machine (or a read-only home) would fight over.
        "control_socket_disable": True,
    }


class VideoloopApplication(BaseApplication):
    """gunicorn application whose workers each build their own app and ModelServer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            if key in self.cfg.settings:  # older gunicorn lacks some (control_socket_*)
                self.cfg.set(key, value)

    def load(self):
        """Runs in each worker after the fork (no preload)."""
        from backend.app import create_app

        return create_app(self.settings)


def run_server(settings: Settings | None = None) -> None:
    """Serve until stopped (SIGTERM / SIGINT); blocks."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    metrics_folder = metrics_export.prepare_multiprocess_dir(settings)  # before the fork
    # keras writes to ~/.keras unless told otherwise (docs/design.md).
    os.environ.setdefault("KERAS_HOME", str(settings.cache_dir.resolve() / "keras"))
    logging.getLogger(__name__).info(
        "serving %s on %s:%d with %d worker(s) x %d thread(s); metrics samples in %s",
        settings.model_dir,
        settings.host,
        settings.port,
        settings.workers,
        settings.threads,
        metrics_folder,
    )
    VideoloopApplication(settings).run()


def main() -> None:
    run_server()


if __name__ == "__main__":
    main()
