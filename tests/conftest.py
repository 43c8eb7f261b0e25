"""Shared fixtures: free ports, local hosts (a fake Label Studio serving media and its API,
and a plain file host), the real server as a subprocess, and a tiny model trained once per
session."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

# tests/ is not a package: put it on sys.path so fixtures and tests can import helper
# modules (fake_label_studio) whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_label_studio import FakeLabelStudio, MediaHost, Seen

from training.versions.store import MODEL_FILE, ModelStore, VersionInfo

__all__ = ["FakeLabelStudio", "MediaHost", "Seen"]

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


def run_videoloop(
    *args: str, env: dict[str, str], timeout_s: float = 300
) -> subprocess.CompletedProcess:
    """Run ``videoloop`` (``python -m backend.cli``) in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- media hosts ------------------------------------------------------------------------------


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
def label_studio(media_root, bucket) -> Iterator[FakeLabelStudio]:
    """A fake Label Studio (tests/fake_label_studio.py) accepting ``LS_TOKEN``: media from
    ``media_root`` (presigned URLs lead to ``bucket``) and the API; tests add projects, tasks
    and annotations with ``add_project``, ``add_task``, ``annotate``."""
    host = FakeLabelStudio(media_root, token=LS_TOKEN, presign_to=bucket.url)
    yield host
    host.close()


@pytest.fixture(scope="session")
def make_media_host() -> Iterator:
    """``make_media_host(root, token=None, presign_to=None)`` for wider-scoped fixtures: with
    a token a FakeLabelStudio, else a plain file host; all are closed at the end of the
    session."""
    hosts: list[MediaHost] = []

    def make(root: Path, token: str | None = None, presign_to: str | None = None) -> MediaHost:
        if token is None:
            hosts.append(MediaHost(root))
        else:
            hosts.append(FakeLabelStudio(root, token=token, presign_to=presign_to))
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


@contextmanager
def worker_process(workdir: Path, env: dict[str, str], name: str) -> Iterator[subprocess.Popen]:
    """``videoloop worker`` in its own process group (so a kill takes its work horse too);
    its output goes to ``workdir/<name>.log``."""
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "worker", "--name", name],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


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
    from training.learn.labelled_files import read_manifest
    from training.learn.train import TrainConfig, train_and_publish
    from training.model.build import ModelConfig
    from training.video.clip import SamplingConfig
    from training.video.synth import generate_dataset

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


@pytest.fixture
def redis_conn():
    """An empty database of the real Redis on 127.0.0.1:6379, flushed before and after."""
    import redis

    for db in range(15, 0, -1):
        connection = redis.Redis(host="127.0.0.1", port=6379, db=db)
        if connection.dbsize() == 0:
            break
    else:
        pytest.fail("no empty Redis database on 127.0.0.1:6379 (run scripts/ensure-redis)")
    connection.flushdb()
    yield connection
    connection.flushdb()


@pytest.fixture
def redis_url(redis_conn) -> str:
    """REDIS_URL of the redis_conn database, for worker and server subprocesses."""
    kwargs = redis_conn.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"
