"""Run the app under gunicorn, programmatically: ``python -m backend.server``.

gthread workers (``WORKERS`` processes x ``THREADS`` threads). The app, and with it the
ModelServer and its threads, is created in ``load()``, which gunicorn calls in each worker
after the fork; never preload it in the master (docs/design.md: forking after TensorFlow has
initialised breaks the workers). The master only imports ``backend.app`` (Flask and the
label-studio-sdk, no TensorFlow), so a forked worker answers /health almost at once.
"""

from __future__ import annotations

import logging
import os

from gunicorn.app.base import BaseApplication

import backend.app  # noqa: F401  (imported before the fork, so each worker starts fast)
from training.settings import Settings

TIMEOUT_S = 120
"""Seconds a worker may stay silent before gunicorn restarts it; Label Studio gives up on a
/predict after 100 s, so this only catches stuck workers."""

GRACEFUL_TIMEOUT_S = 30
"""Seconds workers get to finish in-flight requests on shutdown or reload."""

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Root logging for our modules (gunicorn keeps its own handlers)."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def gunicorn_options(settings: Settings) -> dict[str, object]:
    """The gunicorn configuration for these settings."""
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
    configure_logging(settings.log_level)
    # keras writes to ~/.keras unless told otherwise (docs/design.md).
    os.environ.setdefault("KERAS_HOME", str(settings.cache_dir.resolve() / "keras"))
    logging.getLogger(__name__).info(
        "serving %s on %s:%d with %d worker(s) x %d thread(s)",
        settings.model_dir,
        settings.host,
        settings.port,
        settings.workers,
        settings.threads,
    )
    VideoloopApplication(settings).run()


def main() -> None:
    run_server()


if __name__ == "__main__":
    main()
