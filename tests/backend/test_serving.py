"""backend/serving.py and backend/predictor.py: background loads, the swap, batched prediction.

The loader here builds a stand-in model (numpy, no TensorFlow) whose probabilities follow
each clip's brightness, and can be held back with an Event, so the tests control when a load
ends. Videos are real files decoded with PyAV; test_predict_http.py runs the real model.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import DATA_DIR

from backend import serving
from backend.predictor import TaskPredictor
from backend.serving import ModelServer
from backend.version_watch import VersionWatch
from training.jobs.prediction_claims import PREDICT_OWNER, REFRESH_OWNER, PredictionClaims
from training.labelstudio.labelconfig import VideoControls
from training.labelstudio.results import choices_result
from training.settings import Settings
from training.versions.current import VersionPointer
from training.versions.store import MODEL_FILE, NO_MODEL_VERSION, ModelStore, VersionInfo
from training.video.clip import SamplingConfig
from training.video.decoder import sample_clip
from training.video.media import MediaResolver

SAMPLING = SamplingConfig(frames=4, height=32, width=32)
LABELS = ["bright", "dark"]
CONTROLS = VideoControls("video", "video", "label", ("bright", "dark", "unknown"))


@dataclass(frozen=True)
class BrightnessModel:
    """Stand-in for LoadedModel: P(bright) = mean pixel value / 255 over real frames."""

    version: str
    labels: list[str]
    sampling: SamplingConfig
    batch_size: int = 2
    batches: list[int] = field(default_factory=list)
    timeline_labels: list[str] = field(default_factory=list)

    def predict(self, frames: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(len(frames))
        return {"classes": np.stack([bright(f, m) for f, m in zip(frames, mask, strict=True)])}


def bright(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    p = frames[mask].mean() / 255.0
    return np.array([p, 1.0 - p])


class Loader:
    """Records where it ran; ``release`` must be set before a load completes."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.release = threading.Event()
        self.threads: list[str] = []
        self.versions: list[str] = []
        self.projects: list[str] = []
        self.fail = fail or set()

    def __call__(self, info: VersionInfo, batch_size: int) -> BrightnessModel:
        self.threads.append(threading.current_thread().name)
        self.versions.append(info.version)
        self.projects.append(info.project)
        assert self.release.wait(10)
        if info.version in self.fail:
            raise OSError(f"cannot read {info.model_path}")
        sampling = SamplingConfig.from_dict(info.meta["sampling"])
        return BrightnessModel(info.version, info.labels, sampling, batch_size)


def publish(store: ModelStore, project: str) -> VersionInfo:
    def write(folder: Path) -> dict:
        (folder / MODEL_FILE).write_bytes(b"stand-in")
        return {"labels": LABELS, "sampling": SAMPLING.to_dict()}

    return store.publish(project, write)


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def make_server(tmp_path):
    """Builds servers swapping as soon as a load ends (unless a test is about the agreed swap
    time); every one is closed when the test ends, passed or failed."""
    servers: list[ModelServer] = []

    def make(store, loader, *, swap_delay_s: float = 0.0, **settings) -> ModelServer:
        settings.setdefault("predict_batch_size", 2)
        config = Settings(model_dir=store.root, cache_dir=tmp_path / "cache", **settings)
        server = ModelServer(config, store=store, loader=loader, swap_delay_s=swap_delay_s)
        servers.append(server)
        return server

    yield make


@pytest.fixture
def watch_of():
    """A VersionWatch over a server, stopped at the end of the test."""
    watches: list[VersionWatch] = []

    def make(server: ModelServer) -> VersionWatch:
        watches.append(VersionWatch(server))
        return watches[-1]

    yield make
    for watch in watches:
        watch.stop()


@pytest.fixture
def predictor_of():
    """A TaskPredictor over a server, reading local files."""
    predictors: list[TaskPredictor] = []

    def make(server: ModelServer, claims: PredictionClaims | None = None) -> TaskPredictor:
        # The videos here are local files: only a resolver built for that reads them.
        media = MediaResolver(
            server.settings.cache_dir / "media", max_bytes=1 << 30, allow_local_files=True
        )
        predictors.append(TaskPredictor(server, server.settings, media, claims=claims))
        return predictors[-1]

    return make


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_start_loads_every_project_in_the_background(tmp_path, store, make_server):
    v1, v2 = publish(store, "1"), publish(store, "2")
    loader = Loader()
    server = make_server(store, loader)
    started = time.monotonic()
    server.start()
    assert time.monotonic() - started < 1.0  # returns without waiting for loads
    assert server.get_loaded("1") is None
    # While the first load runs, /setup already reports the version it will serve.
    assert server.get_version("1") == v1.version
    loader.release.set()
    wait_for(lambda: server.get_loaded("1") and server.get_loaded("2"))
    assert server.get_loaded("1").version == v1.version
    assert server.get_loaded("2").version == v2.version
    assert all(name.startswith("model-load") for name in loader.threads)


def test_a_request_waits_for_the_first_load_without_loading_itself(tmp_path, store, make_server):
    info = publish(store, "1")
    loader = Loader()
    server = make_server(store, loader)
    server.start()
    got: list = []
    request = threading.Thread(target=lambda: got.append(server.get_model("1")), name="request")
    request.start()
    time.sleep(0.3)
    assert got == []  # still waiting
    loader.release.set()
    request.join(10)
    assert got[0].version == info.version
    assert loader.threads == ["model-load_0"]  # one load, on the load pool


def test_a_request_gives_up_after_its_wait(tmp_path, store, make_server):
    publish(store, "1")
    server = make_server(store, Loader())
    started = time.monotonic()
    assert server.get_model("1", wait_s=0.2) is None
    assert time.monotonic() - started < 2.0
    server._loader.release.set()  # type: ignore[attr-defined]


def test_a_new_current_version_is_swapped_in_after_it_loads(tmp_path, store, make_server):
    v1 = publish(store, "1")
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader)
    assert server.get_model("1").version == v1.version

    loader.release.clear()
    v2 = publish(store, "1")
    # (No assertion that a check within CHECK_INTERVAL_S skips the pointer read: on a loaded
    # machine the second had passed before the check, and it failed CI once.)
    time.sleep(serving.CHECK_INTERVAL_S)
    server.check("1")
    wait_for(lambda: loader.versions == [v1.version, v2.version])
    # Loading: requests and /setup keep the old version until the swap.
    old = server.get_model("1")
    assert old.version == v1.version
    assert server.get_version("1") == v1.version
    loader.release.set()
    wait_for(lambda: server.get_loaded("1").version == v2.version)
    assert server.get_version("1") == v2.version
    assert old.version == v1.version  # the bundle a request held never changed


def test_failed_load_means_no_model_logged_once(tmp_path, store, make_server, predictor_of, caplog):
    info = publish(store, "1")
    loader = Loader(fail={info.version})
    loader.release.set()
    server = make_server(store, loader)
    task = {"id": 1, "data": {"video": str(DATA_DIR / "b.mp4")}}
    predictor = predictor_of(server)
    with caplog.at_level(logging.WARNING, logger="backend"):
        for _ in range(3):
            assert predictor.predict("1", [task], CONTROLS) == [[]]
    assert server.get_version("1") == NO_MODEL_VERSION
    assert loader.versions == [info.version]  # not retried on every request
    failures = [r for r in caplog.records if "loading version" in r.getMessage()]
    no_model = [r for r in caplog.records if "no model" in r.getMessage()]
    assert len(failures) == 1 and len(no_model) == 1


def test_project_without_versions_answers_no_predictions(
    tmp_path, store, make_server, predictor_of, caplog
):
    server = make_server(store, Loader())
    tasks = [{"id": i, "data": {"video": "x.mp4"}} for i in range(3)]
    predictor = predictor_of(server)
    with caplog.at_level(logging.WARNING, logger="backend"):
        results = predictor.predict("9", tasks, CONTROLS)
        predictor.predict("9", tasks, CONTROLS)
    assert results == [[]] * 3  # Label Studio stores nothing and asks again later
    assert server.get_version("9") == NO_MODEL_VERSION
    assert len([r for r in caplog.records if "no model" in r.getMessage()]) == 1


def test_predict_batches_clips_and_isolates_failing_tasks(
    tmp_path, store, make_server, predictor_of, caplog
):
    info = publish(store, "1")
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader, predict_batch_size=2, decode_threads=2)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(20_000))
    videos = ["b.mp4", "bikes.mp4", None, "muted_b.mp4", "corrupt", "carphone_distorted.mp4"]
    tasks = []
    for i, name in enumerate(videos):
        if name is None:
            tasks.append({"id": 100 + i, "data": {"image": "x.png"}})  # no video key
        elif name == "corrupt":
            tasks.append({"id": 100 + i, "data": {"video": str(corrupt)}})
        else:
            tasks.append({"id": 100 + i, "data": {"video": str(DATA_DIR / name)}})
    tasks.append({"id": 200, "data": {"video": str(tmp_path / "missing.mp4")}})

    with caplog.at_level(logging.WARNING, logger="backend"):
        results = predictor_of(server).predict("1", tasks, CONTROLS)

    assert len(results) == len(tasks)
    good = 0
    for task, name, result in zip(tasks, [*videos, "missing"], results, strict=True):
        if name in (None, "corrupt", "missing"):
            assert result == []  # no prediction stored; the log says which task and why
            assert any(str(task["id"]) in r.getMessage() for r in caplog.records)
            continue
        assert result["model_version"] == info.version
        good += 1
        clip = sample_clip(DATA_DIR / name, SAMPLING)
        probs = bright(clip.frames, clip.mask)
        best = int(np.argmax(probs))
        assert result["result"] == [choices_result("label", "video", LABELS[best])]
        assert result["score"] == pytest.approx(probs[best], abs=1e-6)
    model = server.get_loaded("1")
    assert sum(model.batches) == good
    assert max(model.batches) <= 2 and len(model.batches) == -(-good // 2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3


def test_labels_missing_from_the_config_give_no_predictions_logged_once(
    tmp_path, store, make_server, predictor_of, caplog
):
    publish(store, "1")
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader)
    other = VideoControls("video", "video", "label", ("cat", "dog"))
    task = {"id": 1, "data": {"video": str(DATA_DIR / "b.mp4")}}
    predictor = predictor_of(server)
    with caplog.at_level(logging.WARNING, logger="backend"):
        for _ in range(2):
            assert predictor.predict("1", [task], other) == [[]]
    assert len([r for r in caplog.records if "labels" in r.getMessage()]) == 1
    assert server.get_loaded("1").batches == []  # nothing decoded or predicted


# -- hot swap: one model per project, LRU, background poll, pub/sub, agreed swap time -------


def test_the_old_model_is_released_once_the_last_request_holding_it_ends(
    tmp_path, store, make_server
):
    publish(store, "1")
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader)
    held = server.get_model("1")  # a request in flight keeps its bundle
    old = weakref.ref(held)
    v2 = publish(store, "1")
    server.notify("1")
    wait_for(lambda: server.get_loaded("1").version == v2.version)
    gc.collect()
    assert old() is held  # still serving the request that started on it
    del held
    gc.collect()
    assert old() is None  # nothing else kept it: one model per project


def test_least_recently_used_projects_are_dropped_and_reloaded_on_request(
    tmp_path, store, make_server
):
    infos = {p: publish(store, p) for p in ("1", "2", "3")}
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader, max_models_in_memory=2)
    for project in ("1", "2", "1"):  # project 2 is now the least recently used
        assert server.get_model(project).version == infos[project].version
    dropped = weakref.ref(server.get_loaded("2"))

    assert server.get_model("3").version == infos["3"].version
    assert set(server.describe()) == {"1", "3"}
    assert server.get_loaded("2") is None
    # Freed once the load thread that installed it ends its re-check of the pointer (its
    # frame holds the model until then; seen once here on a loaded machine).
    wait_for(lambda: gc.collect() >= 0 and dropped() is None)

    # The next request for project 2 waits for its reload, like a first load; 1 goes now.
    assert server.get_model("2").version == infos["2"].version
    assert set(server.describe()) == {"2", "3"}
    assert loader.projects == ["1", "2", "3", "2"]


def test_a_project_dropped_while_its_load_ends_is_not_loaded_back(tmp_path, store, make_server):
    """The re-check at the end of a load (has the pointer moved?) can run after another load
    dropped that project for room (seen once in CI): it must not load it back."""
    infos = {p: publish(store, p) for p in ("1", "2", "3")}
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader, max_models_in_memory=2)
    reads = {"2": 0}
    held, let_go = threading.Event(), threading.Event()
    read_pointer = server.pointer.get_current

    def slow_second_read(project):  # project 2's re-check after its load waits for the test
        if project == "2":
            reads["2"] += 1
            if reads["2"] == 2:
                held.set()
                assert let_go.wait(10)
        return read_pointer(project)

    server.pointer = SimpleNamespace(get_current=slow_second_read)
    for project in ("1", "2"):
        assert server.get_model(project).version == infos[project].version
    assert held.wait(10)  # project 2's load thread sits in its re-check
    server.get_model("1")  # project 2 is now the least recently used
    assert server.get_model("3").version == infos["3"].version  # on the other load thread
    assert set(server.describe()) == {"1", "3"}  # 2 dropped for room
    let_go.set()
    server._load_pool.shutdown(wait=True)  # the re-check has ended (and could submit nothing)
    assert set(server.describe()) == {"1", "3"}
    assert loader.projects == ["1", "2", "3"]


def test_a_notice_for_a_project_dropped_before_it_is_acted_on_loads_nothing(store, make_server):
    """A pub/sub notice for a held project, with no room for another: if the project is
    dropped for room between the notice's check and its pointer read, it stays dropped."""
    infos = {p: publish(store, p) for p in ("1", "2", "3")}
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader, max_models_in_memory=2)
    for project in ("2", "1"):
        assert server.get_model(project).version == infos[project].version
    notify = server.notify

    def dropped_first(project, **kwargs):  # another request takes project 2's room meanwhile
        if project == "2":
            assert server.get_model("3").version == infos["3"].version
            assert set(server.describe()) == {"1", "3"}
        return notify(project, **kwargs)

    server.notify = dropped_first
    server.on_notice("2")
    server._load_pool.shutdown(wait=True)  # any load the notice started has ended
    assert set(server.describe()) == {"1", "3"}
    assert loader.projects == ["2", "1", "3"]


def test_start_loads_no_more_projects_than_fit(tmp_path, store, make_server):
    for project in ("1", "2", "3"):
        publish(store, project)
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader, max_models_in_memory=2)
    server.start()
    wait_for(lambda: [d["version"] is not None for d in server.describe().values()] == [True] * 2)
    assert sorted(loader.projects) == ["1", "2"]  # project 3 waits for its first request


def test_an_idle_process_swaps_by_polling_in_the_background(tmp_path, store, make_server, watch_of):
    publish(store, "1")
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader)
    server.start()
    watch_of(server).start()
    wait_for(lambda: server.get_loaded("1") is not None)
    v2 = publish(store, "1")
    # No request, no check(), no Redis: only the background poll reads the pointer.
    wait_for(lambda: server.get_loaded("1").version == v2.version)


def test_a_pubsub_notice_swaps_without_polling(
    tmp_path, store, make_server, watch_of, redis_conn, monkeypatch
):
    monkeypatch.setattr(serving, "CHECK_INTERVAL_S", 3600.0)
    v1 = publish(store, "1")
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader, max_models_in_memory=1)
    assert server.get_model("1").version == v1.version  # no VersionWatch.start(): no poll
    watch = watch_of(server)  # listening only: never started, so no poll
    listener = watch.listen(redis_conn)
    assert listener.connected.wait(10)

    pointer = VersionPointer(store, redis_conn)
    other = publish_aside(store, "2")
    pointer.set("2", other.version)  # no room for a second project: not loaded
    v2 = publish_aside(store, "1")
    pointer.set("1", v2.version)
    wait_for(lambda: server.get_loaded("1").version == v2.version)
    # Notices are handled in order: project 2's was handled, and ignored, before this one.
    assert loader.projects == ["1", "1"]
    assert set(server.describe()) == {"1"}
    watch.stop()
    wait_for(lambda: not listener.connected.is_set())  # stop() ends the subscription


def test_a_notice_loads_a_new_project_when_there_is_room(
    tmp_path, store, make_server, watch_of, redis_conn
):
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader)
    assert watch_of(server).listen(redis_conn).connected.wait(10)
    info = publish_aside(store, "4")
    VersionPointer(store, redis_conn).set("4", info.version)
    wait_for(lambda: server.get_loaded("4") is not None)  # ready before its first request


def test_every_process_swaps_at_the_agreed_time_and_first_loads_at_once(
    tmp_path, store, make_server
):
    delay_s = 1.0
    v1 = publish(store, "1")
    fast, slow = Loader(), SlowLoader(0.3)
    fast.release.set()
    slow.release.set()
    servers = [make_server(store, loader, swap_delay_s=delay_s) for loader in (fast, slow)]
    # A first load is swapped in as soon as it is ready: a request is waiting for it.
    pointer = VersionPointer(store)
    assert pointer.get_current("1").version == v1.version
    for server in servers:
        assert server.get_model("1", wait_s=10).version == v1.version

    v2 = publish(store, "1")
    set_at = pointer.get_current("1").set_at
    for server in servers:
        server.notify("1")
    for server in servers:
        wait_for(lambda s=server: s.get_loaded("1").version == v2.version)
        # Not before the agreed instant, however fast this process loaded it (1 ms for the
        # timer's monotonic clock against the wall clock).
        assert server.describe()["1"]["swapped_at"] >= set_at + delay_s - 0.001
    assert fast.versions == slow.versions == [v1.version, v2.version]


def test_first_load_is_not_held_back_by_the_swap_delay(tmp_path, store, make_server):
    info = publish(store, "1")
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader, swap_delay_s=3600.0)
    assert server.get_model("1", wait_s=10).version == info.version


class SlowLoader(Loader):
    """A loader that takes ``seconds`` per load."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def __call__(self, info: VersionInfo, batch_size: int) -> BrightnessModel:
        time.sleep(self.seconds)
        return super().__call__(info, batch_size)


def publish_aside(store: ModelStore, project: str) -> VersionInfo:
    """Publish a version without making it current (VersionPointer does that)."""

    def write(folder: Path) -> dict:
        (folder / MODEL_FILE).write_bytes(b"stand-in")
        return {"labels": LABELS, "sampling": SAMPLING.to_dict()}

    return store.publish(project, write, make_current=False)


def test_tasks_the_refresh_is_writing_get_no_prediction_from_predict(
    store, make_server, predictor_of, redis_conn
):
    """One prediction per task and version: a task whose prediction the refresh job claimed
    gets [] (Label Studio stores nothing); the others are claimed for /predict and answered,
    again if Label Studio asks again (it asks only when the first answer was not stored)."""
    info = publish(store, "1")
    loader = Loader()
    loader.release.set()
    server = make_server(store, loader, predict_batch_size=2)
    claims = PredictionClaims(redis_conn)
    claims.claim("1", info.version, [2], owner=f"{REFRESH_OWNER}job", ttl_s=60)
    tasks = [{"id": i, "data": {"video": str(DATA_DIR / "b.mp4")}} for i in (1, 2, 3)]
    predictor = predictor_of(server, claims)

    first = predictor.predict("1", tasks, CONTROLS)
    again = predictor.predict("1", tasks, CONTROLS)

    assert first[1] == [] and again[1] == []
    for results in (first, again):
        assert results[0]["model_version"] == results[2]["model_version"] == info.version
    owners = claims.claim("1", info.version, [1, 2, 3], owner=f"{REFRESH_OWNER}other", ttl_s=60)
    assert owners == {1: PREDICT_OWNER, 2: f"{REFRESH_OWNER}job", 3: PREDICT_OWNER}


def test_a_request_larger_than_a_refresh_chunk_goes_to_the_refresh_at_once(
    store, make_server, caplog
):
    """ "Retrieve predictions" on a large project: a request of more tasks than
    REFRESH_CHUNK_TASKS is handed to the refresh before any video is fetched (every task
    gets [], Label Studio stores nothing), so the workers share its chunks from the start.
    One chunk's worth or fewer, no Label Studio for the refresh to write to, or a refresh
    that cannot be queued: predicted here, as before."""
    publish(store, "1")
    loader = Loader()
    loader.release.set()
    answers = ["queued", "pending", "no_model", OSError("Redis down")]
    asked: list[str] = []

    def refresh(project: str) -> str:
        asked.append(project)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def predictor(**settings) -> TaskPredictor:
        server = make_server(store, loader, refresh_chunk_tasks=3, **settings)
        media = MediaResolver(
            server.settings.cache_dir / "media", max_bytes=1 << 30, allow_local_files=True
        )
        return TaskPredictor(server, server.settings, media, on_unfinished=refresh)

    def tasks(n: int) -> list[dict]:
        return [{"id": i, "data": {"video": str(DATA_DIR / "b.mp4")}} for i in range(n)]

    with_ls = predictor(label_studio_url="http://ls.test", label_studio_api_key="key")
    with caplog.at_level(logging.INFO, logger="backend"):
        assert with_ls.predict("1", tasks(4), CONTROLS) == [[]] * 4  # queued
        assert with_ls.predict("1", tasks(5), CONTROLS) == [[]] * 5  # under way: one more pass
    assert asked == ["1", "1"]
    assert with_ls.server.get_loaded("1").batches == []  # nothing was fetched or predicted
    assert sum("the refresh predicts them" in r.getMessage() for r in caplog.records) == 2

    assert all(with_ls.predict("1", tasks(3), CONTROLS))  # one chunk: predicted here
    assert asked == ["1", "1"]
    for _ in range(2):  # the refresh cannot take them: "no_model", then Redis down
        assert all(with_ls.predict("1", tasks(4), CONTROLS))
    assert asked == ["1"] * 4

    without_ls = predictor()  # the refresh could not write: never handed over
    assert all(without_ls.predict("1", tasks(4), CONTROLS))
    assert asked == ["1"] * 4


@dataclass(frozen=True)
class SlowModel(BrightnessModel):
    """A model whose every batch takes ``batch_s``: decoding (cache hits) keeps ahead of it."""

    batch_s: float = 0.3

    def predict(self, frames: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(self.batch_s)
        return super().predict(frames, mask)


def test_the_deadline_holds_when_decoding_keeps_ahead_of_the_model(store, make_server):
    """PREDICT_DEADLINE_S bounds a request whose videos are ready before the model gets to
    them (the same clip for every task: cache hits), not only one waiting on a video: once it
    passes, the clips at hand are predicted and the other tasks get [] for the refresh."""
    info = publish(store, "1")

    def load(version: VersionInfo, batch_size: int) -> SlowModel:
        return SlowModel(version.version, version.labels, SAMPLING, batch_size)

    server = make_server(store, load, predict_deadline_s=1.0, decode_threads=2)
    media = MediaResolver(
        server.settings.cache_dir / "media", max_bytes=1 << 30, allow_local_files=True
    )
    handed: list[str] = []
    predictor = TaskPredictor(server, server.settings, media, on_unfinished=handed.append)
    tasks = [{"id": i, "data": {"video": str(DATA_DIR / "b.mp4")}} for i in range(30)]

    started = time.monotonic()
    results = predictor.predict("1", tasks, CONTROLS)
    seconds = time.monotonic() - started

    predicted = [r for r in results if r]
    assert predicted and all(r["model_version"] == info.version for r in predicted)
    assert len(predicted) < len(tasks), "every task waited for the slow model"
    assert results[len(predicted) :] == [[]] * (len(tasks) - len(predicted))  # in order
    assert handed == ["1"]
    assert seconds < 1.0 + 4 * 0.3 + 1.0, seconds  # the deadline, a batch or two, slack
