"""Shared fixtures: free ports, local media hosts (a Label Studio stand-in and a plain file
host), the real server as a subprocess, and a tiny model trained once per session."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import requests

from training.store import MODEL_FILE, ModelStore, VersionInfo

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(__file__).resolve().parent / "data"
REAL_CLIPS = (
    "carphone_pristine.mp4",
    "b.mp4",
    "muted_b.mp4",
    "bikes.mp4",
    "bigbuckbunny.mp4",
    "carphone_distorted.mp4",
)
"""Real clips committed in tests/data."""

LS_TOKEN = "test-token-8f3a1c77d2"
"""The API key the Label Studio stand-in accepts (and that must never appear in messages)."""

SYNTH_CLASSES = ["left_to_right", "right_to_left"]

# keras writes ~/.keras unless told otherwise; subprocesses inherit this.
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="videoloop-keras-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- media hosts ------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request a MediaHost received."""

    path: str
    headers: dict[str, str]


@dataclass
class MediaHost:
    """A local HTTP server serving the files of ``root``.

    With a ``token`` it stands in for Label Studio: it serves ``/data/upload/<p>/<name>``,
    ``/data/local-files/?d=<path>`` and ``/tasks/<id>/presign/?fileuri=<b64>`` (a redirect to
    ``presign_to``) only with ``Authorization: Token <token>``, and answers 404 on
    ``/storage-data/uploaded/`` like a Label Studio without the storage proxy. Without a
    token it is a plain file host (``/<name>``), like a bucket or a CDN.
    """

    root: Path
    token: str | None = None
    presign_to: str | None = None
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                host.seen.append(Seen(self.path, dict(self.headers.items())))
                host._route(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _route(self, req: BaseHTTPRequestHandler) -> None:
        parsed = urlparse(req.path)
        query = parse_qs(parsed.query)
        if self.token is None:
            return self._send_file(req, parsed.path.lstrip("/"))
        if req.headers.get("Authorization") != f"Token {self.token}":
            return self._send(
                req, 401, b'{"detail": "Authentication credentials were not provided."}'
            )
        if parsed.path.startswith("/storage-data/"):
            return self._send(req, 404, b"not found")
        if parsed.path.startswith("/data/upload/"):
            return self._send_file(req, parsed.path.rsplit("/", 1)[-1])
        if parsed.path.rstrip("/") == "/data/local-files":
            return self._send_file(req, os.path.basename(query.get("d", [""])[-1]))
        if parsed.path.startswith("/tasks/") and parsed.path.endswith("/presign/"):
            uri = base64.urlsafe_b64decode(query["fileuri"][0]).decode()
            req.send_response(303)
            req.send_header("Location", f"{self.presign_to}/{os.path.basename(uri)}?X-Sig=abc")
            req.send_header("Content-Length", "0")
            req.end_headers()
            return None
        return self._send(req, 404, b"not found")

    def _send_file(self, req: BaseHTTPRequestHandler, name: str) -> None:
        path = self.root / name
        if not name or not path.is_file():
            return self._send(req, 404, b"not found")
        return self._send(req, 200, path.read_bytes(), "video/mp4")

    @staticmethod
    def _send(req, status: int, body: bytes, ctype: str = "application/json") -> None:
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)


@pytest.fixture(scope="session")
def media_root(tmp_path_factory) -> Path:
    """The real clips plus ``corrupt.mp4`` (random bytes), as one folder to serve."""
    root = tmp_path_factory.mktemp("media")
    for name in REAL_CLIPS:
        shutil.copy(DATA_DIR / name, root / name)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    return root


@pytest.fixture
def bucket(media_root) -> Iterator[MediaHost]:
    """A plain file host serving ``media_root``."""
    host = MediaHost(media_root)
    yield host
    host.close()


@pytest.fixture
def label_studio(media_root, bucket) -> Iterator[MediaHost]:
    """A Label Studio stand-in serving ``media_root``; presigned URLs lead to ``bucket``."""
    host = MediaHost(media_root, token=LS_TOKEN, presign_to=bucket.url)
    yield host
    host.close()


@pytest.fixture(scope="session")
def make_media_host() -> Iterator:
    """``make_media_host(root, token=None, presign_to=None)`` for wider-scoped fixtures;
    every host is closed at the end of the session."""
    hosts: list[MediaHost] = []

    def make(root: Path, token: str | None = None, presign_to: str | None = None) -> MediaHost:
        hosts.append(MediaHost(root, token=token, presign_to=presign_to))
        return hosts[-1]

    yield make
    for host in hosts:
        host.close()


# -- the server as a subprocess ---------------------------------------------------------------


@dataclass
class ServerProcess:
    url: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    health_after_port_s: float
    """Seconds from the port accepting connections to the first /health answer."""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def run_server_process(workdir: Path, **env: str) -> Iterator[ServerProcess]:
    """Start ``python -m backend.server`` with settings in ``env``; stop it on exit.

    Waits for the port to accept connections, then times the first /health.
    """
    port = free_port()
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LABEL_STUDIO_", "BASIC_AUTH_", "REDIS_URL"))
    }
    clean.update(
        HOST="127.0.0.1",
        PORT=str(port),
        WORKERS="1",
        THREADS="4",
        LOG_LEVEL="INFO",
        MODEL_DIR=str(workdir / "models"),
        CACHE_DIR=str(workdir / "cache"),
        PYTHONUNBUFFERED="1",
    )
    clean.update(env)
    log_path = workdir / f"server-{port}.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend.server"],
            cwd=REPO,
            env=clean,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"server did not open its port in 60 s:\n{log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.005)
        opened = time.monotonic()
        response = requests.get(f"{url}/health", timeout=30)
        answered = time.monotonic()
        assert response.status_code == 200, log_path.read_text()
        yield ServerProcess(url, port, proc, log_path, answered - opened)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- a tiny real model ------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedModel:
    """A real model trained on synthetic clips and published to ``store_root``."""

    store_root: Path
    project: str
    info: VersionInfo
    synth_clips: tuple[Path, ...]

    @property
    def labels(self) -> list[str]:
        return self.info.labels


def publish_copy(store: ModelStore, project: str, info: VersionInfo) -> VersionInfo:
    """Publish ``info``'s model again as a new version (a new name, the same weights)."""

    def write(folder: Path) -> dict:
        shutil.copy(info.model_path, folder / MODEL_FILE)
        return {k: v for k, v in info.meta.items() if k not in ("version", "project")}

    return store.publish(project, write)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> TrainedModel:
    """Train once per session: 2 classes x 4 clips, 8 frames of 64x64, one epoch (~10 s)."""
    from training.labelled_files import read_manifest
    from training.model import ModelConfig
    from training.sampling import SamplingConfig
    from training.synth import generate_dataset
    from training.train import TrainConfig, train_and_publish

    base = tmp_path_factory.mktemp("trained")
    manifest = generate_dataset(
        base / "synth", classes=SYNTH_CLASSES, per_class=4, seed=0, width=96, height=64
    )
    videos = read_manifest(manifest)
    store = ModelStore(base / "models")
    info = train_and_publish(
        store,
        "1",
        videos,
        sampling=SamplingConfig(frames=8, height=64, width=64),
        model_config=ModelConfig(conv_filters=(8, 16, 16, 16), frame_features=16, lstm_units=16),
        train_config=TrainConfig(epochs=1, batch_size=4, patience=1, augment=False),
    )
    return TrainedModel(base / "models", "1", info, tuple(Path(p) for p, _ in videos))


# -- plain values and helpers as fixtures (tests/ is not a package: don't import conftest) ----


@pytest.fixture(scope="session")
def ls_token() -> str:
    return LS_TOKEN


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def start_server():
    """``start_server(workdir, **env)``: a context manager running the real server."""
    return run_server_process


@pytest.fixture(scope="session")
def publish_version():
    """``publish_version(store, project, info)``: republish a model as a new version."""
    return publish_copy
