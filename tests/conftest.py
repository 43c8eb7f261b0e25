"""Shared fixtures: free ports, local hosts (a fake Label Studio serving media and its API,
and a plain file host), the real server as a subprocess, a Redis database per test process,
and a tiny model trained once per run.

Markers and parallel runs (``scripts/test``; ``--fast`` is ``-m "not slow and not
label_studio"``):

- ``slow``: the test trains a real model. Modules whose tests run training jobs say so with
  ``pytestmark``; any test that uses a fixture in ``SLOW_FIXTURES`` (the session's trained
  model) is marked here, wherever it lives. ``label_studio``: the suite against a real Label
  Studio (``pytestmark`` in its module).
- pytest-xdist (``--dist loadgroup``): tests that use a module-scoped fixture (a server shared
  by a module, say) are kept on one worker (an ``xdist_group`` named after the module), unless
  they already name a group; the rest spread one by one. Under xdist the longest work goes
  first (``label_studio``, then tests marked ``slow`` in their module, then the other slow
  ones), so that no long test starts last.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

# tests/ and tests/support/ are on sys.path (``pythonpath`` in pyproject.toml): the stand-ins
# and helpers import by their plain names, and tests import this module as ``conftest``.
from fake_label_studio import FakeLabelStudio, MediaHost, Seen
from processes import stop_process
from redis_database import NoEmptyDatabase, RedisDatabase, claim_empty_database
from s3_server import S3Server, run_s3_server

from training.versions.copies import publish_copy
from training.versions.store import ModelStore, VersionInfo

__all__ = ["FakeLabelStudio", "MediaHost", "Seen", "publish_copy"]

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
# The LiteRT export adds seconds to every publish; the tests that serve LiteRT ask for it
# (the session's trained_model), the training jobs of the other tests skip it.
os.environ.setdefault("LITERT_EXPORT", "off")


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
    """A fake Label Studio (tests/support/fake_label_studio.py) accepting ``LS_TOKEN``: media from
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
    log_at_health: str = ""
    """The server's log as it was when the first /health answer came back."""

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
        log_then = log_path.read_text(errors="replace")
        assert response.status_code == 200, log_then
        yield ServerProcess(url, port, proc, log_path, answered - opened, log_then)
    finally:
        stop_process(proc, timeout_s=40)


@contextmanager
def worker_process(workdir: Path, env: dict[str, str], name: str) -> Iterator[subprocess.Popen]:
    """``videoloop worker`` in its own process group (so a kill takes anything it started);
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
        # SIGTERM: RQ's warm shutdown (after the job in progress); a second one, cold (the
        # job stops now, its lease expires for recovery); SIGKILL if even that hangs.
        for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGTERM, 30), (signal.SIGKILL, None)):
            if proc.poll() is not None:
                break
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
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


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder that ``build(folder)`` filled once for the whole run, shared read only by every
    pytest-xdist worker (xdist's recipe for session fixtures that must run once: the first
    worker builds under an exclusive lock, the others wait for it and find it built). Without
    xdist, a session folder built here."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent  # one per run, above each worker's own
    folder, done = root / name, root / f"{name}.built"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # left by a worker that failed half way
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> TrainedModel:
    """Train once per run (one xdist worker trains, the others wait for it): 2 classes x 4
    clips, 8 frames of 64x64, one epoch (~10 s). Each process gets its own copy of the store
    (tests hand it to servers as MODEL_DIR); the clips are shared, read only."""
    shared = built_once(tmp_path_factory, "trained", _train_tiny_model)
    built = json.loads((shared / "trained.json").read_text())
    mine = tmp_path_factory.mktemp("trained-model") / "models"
    shutil.copytree(shared / "models", mine)
    info = ModelStore(mine).get_version("1", built["version"])
    return TrainedModel(mine, "1", info, tuple(Path(c) for c in built["clips"]))


def _train_tiny_model(base: Path) -> None:
    from training.learn.config import TrainConfig, TrainingData, TrainingRun
    from training.learn.labelled_files import read_manifest
    from training.learn.publish import train_and_publish
    from training.model.config import ModelConfig
    from training.video.clip import SamplingConfig
    from training.video.synth import generate_dataset

    manifest = generate_dataset(
        base / "synth", classes=SYNTH_CLASSES, per_class=4, seed=0, width=96, height=64
    )
    videos = read_manifest(manifest)
    store = ModelStore(base / "models")
    info = train_and_publish(
        store,
        "1",
        TrainingData(videos),
        TrainingRun(
            sampling=SamplingConfig(frames=8, height=64, width=64),
            model_config=ModelConfig(
                conv_filters=(8, 16, 16, 16), frame_features=16, lstm_units=16
            ),
            train_config=TrainConfig(epochs=1, batch_size=4, patience=1, augment=False),
            litert="float16",  # SERVING_RUNTIME=litert tests serve this version
        ),
    )
    clips = [str(p) for p, _ in videos]
    (base / "trained.json").write_text(json.dumps({"version": info.version, "clips": clips}))


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


@pytest.fixture(scope="session")
def redis_database() -> Iterator[RedisDatabase]:
    """The Redis database this test process holds for its session (tests/support/redis_database.py:
    claimed, so that parallel workers and other runs never share one)."""
    try:
        database = claim_empty_database()
    except NoEmptyDatabase as exc:
        pytest.fail(str(exc))
    yield database
    database.release()


@pytest.fixture
def redis_conn(redis_database):
    """This process's database of the real Redis on 127.0.0.1:6379, flushed before and after
    (only the claim key stays)."""
    redis_database.flush()
    yield redis_database.connect()  # not closed: a test's threads may still hold it
    redis_database.flush()


@pytest.fixture
def redis_url(redis_conn, redis_database) -> str:
    """REDIS_URL of the redis_conn database, for worker and server subprocesses."""
    return redis_database.url


# -- an S3-compatible server (moto's server mode: tests/support/s3_server.py) ------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """One moto server process per test process, on a free loopback port."""
    with run_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """The environment of a videoloop process using a fresh bucket of ``s3_server`` as its
    model store (MODEL_STORE_URL, S3_ENDPOINT_URL and the AWS credentials); also set in
    this process's environment, for in-process stores."""
    env = {"MODEL_STORE_URL": f"s3://{s3_server.new_bucket()}/models", **s3_server.credentials()}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


# -- markers and xdist groups -----------------------------------------------------------------

SLOW_FIXTURES = ("trained_model",)
"""Fixtures that train a real model: a test using one (even through another fixture) is slow."""

_SHARED_SCOPES = ("module", "class", "package")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Whether a test is slow because its module says so is read before the fixture rule adds
    # the marker: those tests run training jobs, and go first under xdist.
    declared_slow = {item.nodeid for item in items if item.get_closest_marker("slow")}
    grouping = config.pluginmanager.hasplugin("xdist")
    for item in items:
        if any(name in item.fixturenames for name in SLOW_FIXTURES):
            item.add_marker(pytest.mark.slow)
        if grouping and not item.get_closest_marker("xdist_group") and _uses_shared_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))

    if "PYTEST_XDIST_WORKER" in os.environ:  # every worker sorts alike: collections match

        def rank(item: pytest.Item) -> int:
            if item.get_closest_marker("label_studio"):
                return 0
            if item.nodeid in declared_slow:
                return 1
            return 2 if item.get_closest_marker("slow") else 3

        items.sort(key=rank)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under ``--dist loadgroup`` xdist marks a grouped test by a suffix on its nodeid; a
    pytest that drops it (9.2: pytest-dev/pytest-xdist#1386) would scatter the groups
    silently (one Label Studio per worker, module servers started again). Stop instead."""
    if "PYTEST_XDIST_WORKER" not in os.environ or not session.config.getvalue("loadgroup"):
        return
    lost = [
        item.nodeid
        for item in session.items
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
    ]
    if lost:
        raise pytest.UsageError(
            f"pytest {pytest.__version__} lost the xdist_group of {len(lost)} tests "
            f"({lost[0]}, ...): install the pytest that pyproject.toml's test extra names"
        )


def _uses_shared_fixture(item: pytest.Item) -> bool:
    """True when the test uses a fixture shared by its module or class (a server, say)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        definition.scope in _SHARED_SCOPES
        for definitions in info.name2fixturedefs.values()
        for definition in definitions
    )
