"""backend/serving.py: background loads, the swap, and batched prediction.

The loader here builds a stand-in model (numpy, no TensorFlow) whose probabilities follow
each clip's brightness, and can be held back with an Event, so the tests control when a load
ends. Videos are real files decoded with PyAV; test_predict_http.py runs the real model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from backend import serving
from backend.protocol import choices_result
from backend.serving import ModelServer
from training.labelconfig import VideoChoices
from training.sampler import sample_clip
from training.sampling import SamplingConfig
from training.settings import Settings
from training.store import MODEL_FILE, NO_MODEL_VERSION, ModelStore, VersionInfo

DATA_DIR = Path(__file__).resolve().parent / "data"
SAMPLING = SamplingConfig(frames=4, height=32, width=32)
LABELS = ["bright", "dark"]
CHOICES = VideoChoices("video", "video", "label", ("bright", "dark", "unknown"))


@dataclass(frozen=True)
class BrightnessModel:
    """Stand-in for LoadedModel: P(bright) = mean pixel value / 255 over real frames."""

    version: str
    labels: list[str]
    sampling: SamplingConfig
    batches: list[int] = field(default_factory=list)

    def predict_proba(self, frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.batches.append(len(frames))
        return np.stack([bright(f, m) for f, m in zip(frames, mask, strict=True)])


def bright(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    p = frames[mask].mean() / 255.0
    return np.array([p, 1.0 - p])


class Loader:
    """Records where it ran; ``release`` must be set before a load completes."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.release = threading.Event()
        self.threads: list[str] = []
        self.versions: list[str] = []
        self.fail = fail or set()

    def __call__(self, info: VersionInfo, batch_size: int) -> BrightnessModel:
        self.threads.append(threading.current_thread().name)
        self.versions.append(info.version)
        assert self.release.wait(10)
        if info.version in self.fail:
            raise OSError(f"cannot read {info.model_path}")
        return BrightnessModel(
            info.version, info.labels, SamplingConfig.from_dict(info.meta["sampling"])
        )


def publish(store: ModelStore, project: str) -> VersionInfo:
    def write(folder: Path) -> dict:
        (folder / MODEL_FILE).write_bytes(b"stand-in")
        return {"labels": LABELS, "sampling": SAMPLING.to_dict()}

    return store.publish(project, write)


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def make_server(tmp_path, store, loader, **settings) -> ModelServer:
    settings.setdefault("predict_batch_size", 2)
    config = Settings(model_dir=store.root, cache_dir=tmp_path / "cache", **settings)
    return ModelServer(config, store=store, loader=loader)


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_start_loads_every_project_in_the_background(tmp_path, store):
    v1, v2 = publish(store, "1"), publish(store, "2")
    loader = Loader()
    server = make_server(tmp_path, store, loader)
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
    server.close()


def test_a_request_waits_for_the_first_load_without_loading_itself(tmp_path, store):
    info = publish(store, "1")
    loader = Loader()
    server = make_server(tmp_path, store, loader)
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
    server.close()


def test_a_request_gives_up_after_its_wait(tmp_path, store):
    publish(store, "1")
    server = make_server(tmp_path, store, Loader())
    started = time.monotonic()
    assert server.get_model("1", wait_s=0.2) is None
    assert time.monotonic() - started < 2.0
    server._loader.release.set()  # type: ignore[attr-defined]
    server.close()


def test_a_new_current_version_is_swapped_in_after_it_loads(tmp_path, store):
    v1 = publish(store, "1")
    loader = Loader()
    loader.release.set()
    server = make_server(tmp_path, store, loader)
    assert server.get_model("1").version == v1.version

    loader.release.clear()
    v2 = publish(store, "1")
    server.check("1")  # within a second of the last check: no pointer read
    time.sleep(0.2)
    assert loader.versions == [v1.version]
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
    server.close()


def test_failed_load_means_no_model_logged_once(tmp_path, store, caplog):
    info = publish(store, "1")
    loader = Loader(fail={info.version})
    loader.release.set()
    server = make_server(tmp_path, store, loader)
    task = {"id": 1, "data": {"video": str(DATA_DIR / "b.mp4")}}
    with caplog.at_level(logging.WARNING, logger="backend.serving"):
        for _ in range(3):
            assert server.predict("1", [task], CHOICES) == [
                {"result": [], "score": 0.0, "model_version": NO_MODEL_VERSION}
            ]
    assert server.get_version("1") == NO_MODEL_VERSION
    assert loader.versions == [info.version]  # not retried on every request
    failures = [r for r in caplog.records if "loading version" in r.getMessage()]
    no_model = [r for r in caplog.records if "no model" in r.getMessage()]
    assert len(failures) == 1 and len(no_model) == 1
    server.close()


def test_project_without_versions_answers_empty_predictions(tmp_path, store, caplog):
    server = make_server(tmp_path, store, Loader())
    tasks = [{"id": i, "data": {"video": "x.mp4"}} for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="backend.serving"):
        results = server.predict("9", tasks, CHOICES)
        server.predict("9", tasks, CHOICES)
    assert results == [{"result": [], "score": 0.0, "model_version": NO_MODEL_VERSION}] * 3
    assert server.get_version("9") == NO_MODEL_VERSION
    assert len([r for r in caplog.records if "no model" in r.getMessage()]) == 1
    server.close()


def test_predict_batches_clips_and_isolates_failing_tasks(tmp_path, store, caplog):
    info = publish(store, "1")
    loader = Loader()
    loader.release.set()
    server = make_server(tmp_path, store, loader, predict_batch_size=2, decode_threads=2)
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

    with caplog.at_level(logging.WARNING, logger="backend.serving"):
        results = server.predict("1", tasks, CHOICES)

    assert len(results) == len(tasks)
    good = 0
    for task, name, result in zip(tasks, [*videos, "missing"], results, strict=True):
        assert result["model_version"] == info.version
        if name in (None, "corrupt", "missing"):
            assert result == {"result": [], "score": 0.0, "model_version": info.version}
            assert any(str(task["id"]) in r.getMessage() for r in caplog.records)
            continue
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
    server.close()


def test_labels_missing_from_the_config_give_empty_results_logged_once(tmp_path, store, caplog):
    info = publish(store, "1")
    loader = Loader()
    loader.release.set()
    server = make_server(tmp_path, store, loader)
    other = VideoChoices("video", "video", "label", ("cat", "dog"))
    task = {"id": 1, "data": {"video": str(DATA_DIR / "b.mp4")}}
    with caplog.at_level(logging.WARNING, logger="backend.serving"):
        for _ in range(2):
            assert server.predict("1", [task], other) == [
                {"result": [], "score": 0.0, "model_version": info.version}
            ]
    assert len([r for r in caplog.records if "labels" in r.getMessage()]) == 1
    assert server.get_loaded("1").batches == []  # nothing decoded or predicted
    server.close()
