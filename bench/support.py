"""What the bench scripts share: a small trained model, the backend as a subprocess, a folder of
videos over HTTP, ports, Redis and process memory.

The server refuses task media from loopback addresses and local paths unless their host is in
``MEDIA_ALLOWED_HOSTS`` (docs/security.md), so a bench serves its clips with ``serve_folder``
and allows that host, as a deployment allows its own file server. Imported by the scripts as
``from support import ...`` (bench/ is on sys.path when a script in it runs); never imported
by the packages.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import redis
import requests

from training.versions.store import ModelStore, VersionInfo

REPO = Path(__file__).resolve().parents[1]

CONFIG = """<View>
  <Video name="video" value="$video"/>
  <Choices name="label" toName="video" choice="single">
    <Choice value="left_to_right"/>
    <Choice value="right_to_left"/>
  </Choices>
</View>"""
"""A classification config whose choices are the synthetic classes of ``train_small_model``."""

INHERITED_NOT = ("LABEL_STUDIO_", "BASIC_AUTH_", "REDIS_URL", "MEDIA_ALLOWED_HOSTS")
"""Settings of the calling shell the bench's server must not pick up (a real Label Studio key,
basic auth the clients don't send, someone's Redis)."""


def child_env(work: Path, **extra: str) -> dict[str, str]:
    """The environment of a process a bench starts beside the backend (a worker, a training
    run): this shell's without INHERITED_NOT, the store, caches and Keras files under
    ``work``, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_NOT)}
    env.update(
        MODEL_DIR=str(work / "models"),
        CACHE_DIR=str(work / "cache"),
        KERAS_HOME=str(work / "keras"),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_redis(url: str) -> tuple[str | None, bool]:
    """(REDIS_URL to use, whether this run owns the database). ``auto``: the first empty
    database of 127.0.0.1:6379 counting up (the tests' fixture counts down from 15)."""
    if url != "auto":
        return (url or None), False
    try:
        for db in range(1, 16):
            if redis.Redis(port=6379, db=db, socket_connect_timeout=0.5).dbsize() == 0:
                return f"redis://127.0.0.1:6379/{db}", True
    except redis.RedisError:
        pass
    return None, False


def train_small_model(
    root: Path, frames: int = 16, size: int = 112, litert: str = "off"
) -> tuple[ModelStore, VersionInfo]:
    """Synthetic clips (``root/synth``), default ModelConfig, one epoch, published as project
    "1" of ``root/models``: a model of realistic size, fast; ``litert``: LITERT_EXPORT."""
    from training.learn.config import TrainConfig, TrainingData, TrainingRun
    from training.learn.labelled_files import read_manifest
    from training.learn.publish import train_and_publish
    from training.video.clip import SamplingConfig
    from training.video.synth import generate_dataset

    manifest = generate_dataset(
        root / "synth", classes=["left_to_right", "right_to_left"], per_class=4, seed=0
    )
    store = ModelStore(root / "models")
    info = train_and_publish(
        store,
        "1",
        TrainingData(read_manifest(manifest)),
        TrainingRun(
            sampling=SamplingConfig(frames=frames, height=size, width=size),
            train_config=TrainConfig(epochs=1, batch_size=4, patience=1, augment=False),
            litert=litert,
        ),
    )
    return store, info


def machine_header() -> str:
    """One line: the machine and the versions that set the figures."""
    import gunicorn
    import keras
    import tensorflow as tf

    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}, tensorflow {tf.__version__}, keras "
        f"{keras.__version__}, gunicorn {gunicorn.__version__}"
    )


def worker_pids(master: int) -> set[int]:
    """The processes whose parent is ``master`` (gunicorn's workers), from /proc."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.add(int(stat.parent.name))
    return pids


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of ``pid`` (default: this process) now, in MiB (Linux)."""
    status = Path(f"/proc/{'self' if pid is None else pid}/status")
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1-99) of ``values``; NaN for none."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def host_port(url: str) -> str:
    """``host:port`` of ``url``, as MEDIA_ALLOWED_HOSTS takes it."""
    return urlsplit(url).netloc


@contextmanager
def start_backend(
    work: Path,
    env_extra: dict[str, str],
    workers: int = 1,
    threads: int = 4,
    *,
    startup_s: float = 120.0,
) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """``python -m backend.server`` on a free loopback port, MODEL_DIR ``work/models``, its
    output in ``work/server-<port>.log``; ``env_extra`` goes over the defaults (REDIS_URL,
    MEDIA_ALLOWED_HOSTS, limits). Waits for /health and for its ``workers`` processes, yields
    (url, process, log path) and stops the server at exit: SIGTERM, then SIGKILL after 40 s.

    Exits the script with the log's tail if the server does not answer within ``startup_s``.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_NOT)}
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        WORKERS=str(workers),
        THREADS=str(threads),
        MODEL_DIR=str(work / "models"),
        CACHE_DIR=str(work / "cache"),
        KERAS_HOME=str(work / "keras"),
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(env_extra)
    log_path = work / f"server-{port}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "backend.server"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        while len(worker_pids(server.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        yield url, server, log_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A thread per request, daemon threads (a request still being answered never holds up
    the end of the script), a deep listen backlog."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections on a busy machine


@contextmanager
def serve_folder(root: Path) -> Iterator[str]:
    """The files under ``root`` over HTTP on 127.0.0.1 (a free port, a thread per request);
    yields the base URL (``http://127.0.0.1:<port>``). Query strings are ignored, so
    ``<url>/a.mp4?n=2`` is the same file under a URL the server has not cached."""
    handler = functools.partial(_QuietFiles, directory=str(root))
    httpd = LoopbackHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
