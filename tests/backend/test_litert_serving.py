"""SERVING_RUNTIME=litert in the real server (python -m backend.server, gunicorn) over real
HTTP: predictions from the version's LiteRT file with TensorFlow never loaded in the worker
process, and a version without a usable LiteRT file refused with its reason, never a 5xx."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
from conftest import SYNTH_CLASSES

from training.model.litert import META_KEY
from training.versions.copies import publish_copy
from training.versions.store import ModelStore

CONFIG = (
    '<View><Video name="video" value="$video"/><Choices name="label" toName="video">'
    + "".join(f'<Choice value="{label}"/>' for label in SYNTH_CLASSES)
    + "</Choices></View>"
)


def predict(url: str, project: str, videos: list[str]) -> list:
    body = {
        "tasks": [{"id": i + 1, "data": {"video": v}} for i, v in enumerate(videos)],
        "project": f"{project}.1700000000",
        "label_config": CONFIG,
        "params": {"login": None, "password": None, "context": None},
    }
    response = requests.post(f"{url}/predict", json=body, timeout=100)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


def a_project_without_litert(store: ModelStore, trained_model) -> None:
    """Project 2: the trained version again, its meta saying the export failed."""
    failed = {META_KEY: {"file": None, "reason": "export failed: no converter here"}}
    publish_copy(store, "2", trained_model.info, extra_meta=failed)


def test_litert_serving_predicts_without_tensorflow(tmp_path, trained_model, start_server, bucket):
    shutil.copytree(trained_model.store_root, tmp_path / "models")
    a_project_without_litert(ModelStore(tmp_path / "models"), trained_model)
    env = {"SERVING_RUNTIME": "litert", "MEDIA_ALLOWED_HOSTS": urlsplit(bucket.url).netloc}
    with start_server(tmp_path, **env) as server:
        videos = [f"{bucket.url}/b.mp4", f"{bucket.url}/corrupt.mp4"]
        deadline = time.monotonic() + 60
        while not (results := predict(server.url, "1", videos))[0]:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        assert results[0]["model_version"] == trained_model.info.version
        assert results[0]["result"][0]["value"]["choices"][0] in trained_model.labels
        assert results[1] == []  # an unreadable video: no prediction, the others go on

        assert predict(server.url, "2", videos[:1]) == [[]]
        log = server.log_text()
        assert "export failed: no converter here" in log, log
        (worker,) = children(server.proc.pid)
        maps = Path(f"/proc/{worker}/maps").read_text()
        assert "_pywrap_tensorflow" not in maps and "libtensorflow" not in maps
