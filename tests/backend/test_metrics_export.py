"""/metrics of the real server under gunicorn with 2 worker processes, on real parts.

The server (``python -m backend.server``, WORKERS=2, a real Redis, LOG_FORMAT=json) predicts
real videos from a Label Studio stand-in with the session's tiny trained model, takes webhook
events, and is scraped before and after a real training run (RQ's SimpleWorker in this
process, as a worker would run it, on the server's Redis and model store) and a new version
of the served project. Each family of docs/operations.md must be there, with counts that match
what the test did whichever process each request reached: the multiprocess folder adds the
processes up, and the job families come from Redis. Its log must be JSON lines, with the project
and task on the line that says why a task got no prediction. A last test forks a worker as
gunicorn's master does, to see the folder emptied at start and a dead worker's versions go.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import REPO
from fake_label_studio import FakeLabelStudio
from metrics_text import Samples, parse_samples, value
from rq import SimpleWorker

from training.jobs.coordinator import QUEUE_NAME, make_coordinator
from training.settings import Settings
from training.versions.copies import publish_copy
from training.versions.current import VersionPointer
from training.versions.store import ModelStore

CONFIG = """<View>
  <Video name="video" value="$video"/>
  <Choices name="direction" toName="video" choice="single">
    <Choice value="left_to_right"/>
    <Choice value="right_to_left"/>
  </Choices>
</View>"""
SERVED = "1"
"""The project the server predicts for: the session's trained model, copied into its store."""
TRAINED = 5
"""The Label Studio project the training run trains (its first model)."""
CALLS = 3
"""/predict calls, each with 2 good videos, 1 corrupt file and 1 URL the policy refuses."""
HUMAN_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|\[\d{4}-\d\d-\d\d )")
"""The start of a line of the text format, ours or gunicorn's: none may be in a JSON log."""


def scrape(url: str) -> Samples:
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return parse_samples(response.text)


def served_versions(samples: Samples, project: str) -> dict[str, str]:
    """pid -> the version that process serves for ``project``."""
    return {
        dict(labels)["pid"]: dict(labels)["version"]
        for (name, labels), v in samples.items()
        if name == "videoloop_model_version_info" and dict(labels)["project"] == project and v
    }


def wait_for_served(url: str, project: str, version: str, timeout_s: float = 90) -> Samples:
    """Scrape until both processes serve ``version`` of ``project``."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url)
        served = served_versions(samples, project)
        if len(served) == 2 and set(served.values()) == {version}:
            return samples
        assert time.monotonic() < deadline, f"project {project}: {served}, want 2 x {version}"
        time.sleep(0.5)


def predict(url: str, project: str, tasks: list[dict]) -> list:
    body = {"tasks": tasks, "project": f"{project}.1700000000", "label_config": CONFIG}
    response = requests.post(f"{url}/predict", json=body, timeout=100)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def webhook(url: str, event: dict) -> requests.Response:
    return requests.post(f"{url}/webhook", json=event, timeout=10)


@pytest.fixture
def label_studio_with_media(tmp_path, trained_model, ls_token):
    """A Label Studio stand-in serving the synthetic clips and a corrupt file; project TRAINED
    has 2 annotated videos per label."""
    media = tmp_path / "media"
    media.mkdir()
    for clip in trained_model.synth_clips:
        shutil.copy(clip, media / clip.name)
    (media / "corrupt.mp4").write_bytes(np.random.default_rng(3).bytes(30_000))
    ls = FakeLabelStudio(media, token=ls_token)
    ls.add_project(CONFIG, project_id=TRAINED)
    for label in ("left_to_right", "right_to_left"):
        for clip in [c for c in trained_model.synth_clips if c.name.startswith(label)][:2]:
            task = ls.add_task(TRAINED, {"video": f"/data/upload/{TRAINED}/{clip.name}"})
            ls.annotate(task, label)
    yield ls
    ls.close()


def run_training(redis_conn, work: Path, ls: FakeLabelStudio, token: str, monkeypatch) -> dict:
    """What a ``videoloop worker`` does with the queued jobs, in this process: the training run,
    then the refresh it queues. Returns the run's result."""
    for name, value_ in {
        "MODEL_DIR": str(work / "models"),  # the server's store
        "CACHE_DIR": str(work / "worker-cache"),
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": token,
        "TRAIN_FRAMES": "8",
        "TRAIN_FRAME_SIZE": "64",
        "TRAIN_EPOCHS": "1",
        "MIN_PER_LABEL": "1",
    }.items():
        monkeypatch.setenv(name, value_)
    coordinator = make_coordinator(redis_conn, Settings.from_env())
    SimpleWorker([coordinator.queue], connection=redis_conn).work(burst=True)
    last = coordinator.get_state(str(TRAINED))["last"]
    assert last is not None and last["status"] in ("trained", "rejected"), last
    return last


def test_metrics_add_up_every_process_and_every_job(
    tmp_path, trained_model, label_studio_with_media, ls_token, start_server, redis_conn,
    redis_url, monkeypatch,
):  # fmt: skip
    ls = label_studio_with_media
    store = ModelStore(tmp_path / "models")
    publish_copy(store, SERVED, trained_model.info)
    clips = [c.name for c in trained_model.synth_clips[:2]]
    with start_server(
        tmp_path,
        WORKERS="2",
        REDIS_URL=redis_url,
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY=ls_token,
        PREDICT_BATCH_SIZE="2",
        MIN_PER_LABEL="1",
        LOG_FORMAT="json",
    ) as server:
        # -- predictions: 2 good, 1 corrupt, 1 refused per call; a project without a model --
        for call in range(CALLS):
            tasks = [
                {"id": 100 * call + i, "data": {"video": f"/data/upload/{SERVED}/{name}"}}
                for i, name in enumerate(clips)
            ]
            tasks.append({"id": 100 * call + 7, "data": {"video": "/data/upload/1/corrupt.mp4"}})
            tasks.append({"id": 100 * call + 8, "data": {"video": "http://127.0.0.1:1/a.mp4"}})
            results = predict(server.url, SERVED, tasks)
            assert [bool(r) for r in results] == [True, True, False, False], results
        assert predict(server.url, "77", [{"id": 1, "data": {}}, {"id": 2, "data": {}}]) == [
            [],
            [],
        ]

        # -- webhooks: a run queued, then joined; an unknown action; a malformed event --
        project = {"id": TRAINED}
        assert (
            webhook(server.url, {"action": "ANNOTATION_CREATED", "project": project}).json()[
                "status"
            ]
            == "queued"
        )
        assert (
            webhook(server.url, {"action": "ANNOTATION_UPDATED", "project": project}).json()[
                "status"
            ]
            == "joined"
        )
        assert webhook(server.url, {"action": "PROJECT_UPDATED", "project": project}).ok
        assert webhook(server.url, {"project": project}).status_code == 400
        assert requests.get(f"{server.url}/training/{TRAINED}", timeout=10).ok

        before = scrape(server.url)
        assert value(before, "videoloop_queue_jobs", queue=QUEUE_NAME, state="queued") == 1
        assert value(before, "videoloop_queue_workers") == 0

        # -- a training run and its refresh, as a worker runs them --
        last = run_training(redis_conn, tmp_path, ls, ls_token, monkeypatch)
        if last["status"] == "trained":  # first models pass the gate: both processes load it
            wait_for_served(server.url, str(TRAINED), last["version"])

        # -- a new version of the served project: both processes swap to it --
        new = publish_copy(store, SERVED, trained_model.info, make_current=False).version
        VersionPointer(store, redis_conn).set(SERVED, new)
        after = wait_for_served(server.url, SERVED, new)
        log_lines = server.log_text().splitlines()

    check_requests_and_tasks(after)
    check_webhooks(after)
    check_serving(after, last)
    check_jobs(after, last)
    check_json_log(log_lines)


def check_requests_and_tasks(samples: Samples) -> None:
    requests_total = "videoloop_http_requests_total"
    assert value(samples, requests_total, route="/predict", status="200") == CALLS + 1
    assert value(samples, requests_total, route="/health", status="200") >= 1
    assert value(samples, requests_total, route="/training/<project>", status="200") == 1
    assert value(samples, requests_total, route="/metrics", status="200") >= 2
    duration = "videoloop_http_request_duration_seconds"
    assert value(samples, f"{duration}_count", route="/predict") == CALLS + 1
    assert value(samples, f"{duration}_bucket", route="/predict", le="+Inf") == CALLS + 1
    assert 0 < value(samples, f"{duration}_sum", route="/predict") < 100 * (CALLS + 1)

    assert value(samples, "videoloop_tasks_predicted_total") == 2 * CALLS
    failed = "videoloop_tasks_failed_total"
    assert value(samples, failed, reason="decode_error") == CALLS
    assert value(samples, failed, reason="media_refused") == CALLS
    assert value(samples, failed, reason="no_model") == 2
    assert value(samples, failed) == 2 * CALLS + 2
    # fetched: the good and the corrupt videos; decoded: the good ones; one batch per call
    assert value(samples, "videoloop_media_fetch_seconds_count") == 3 * CALLS
    assert value(samples, "videoloop_decode_seconds_count") == 2 * CALLS
    assert value(samples, "videoloop_decode_seconds_sum") > 0
    assert value(samples, "videoloop_model_seconds_count") == CALLS
    assert value(samples, "videoloop_model_seconds_sum") > 0


def check_webhooks(samples: Samples) -> None:
    events = "videoloop_webhook_events_total"
    assert value(samples, events, action="ANNOTATION_CREATED", outcome="queued") == 1
    assert value(samples, events, action="ANNOTATION_UPDATED", outcome="joined") == 1
    assert value(samples, events, action="other", outcome="ignored") == 1
    assert value(samples, events, action="other", outcome="bad_request") == 1
    assert value(samples, events) == 4


def check_serving(samples: Samples, last: dict) -> None:
    # both processes swapped project SERVED once; the trained project's loads were first loads
    assert value(samples, "videoloop_model_swaps_total") == 2
    assert value(samples, "videoloop_model_load_failures_total") == 0
    projects = {
        dict(labels)["project"]
        for (name, labels), v in samples.items()
        if name == "videoloop_model_version_info"
    }
    assert projects == ({SERVED, str(TRAINED)} if last["status"] == "trained" else {SERVED})


def check_jobs(samples: Samples, last: dict) -> None:
    assert value(samples, "videoloop_redis_up") == 1
    assert value(samples, "videoloop_queue_jobs", state="queued") == 0
    assert value(samples, "videoloop_queue_jobs", state="started") == 0
    assert value(samples, "videoloop_queue_jobs", state="failed") == 0
    count = "videoloop_job_duration_seconds_count"
    assert value(samples, count, kind="training", outcome=last["status"]) == 1
    assert value(samples, count, kind="training") == 1
    assert value(samples, "videoloop_job_duration_seconds_sum", kind="training") > 0
    published = last["status"] == "trained"
    assert value(samples, count, kind="refresh", outcome="done") == (1 if published else 0)
    assert value(samples, "videoloop_versions_total", outcome="published") == int(published)
    assert value(samples, "videoloop_versions_total", outcome="rejected") == int(not published)


def check_json_log(lines: list[str]) -> None:
    assert not [line for line in lines if HUMAN_LINE.match(line)]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    loggers = {e["logger"] for e in entries}
    assert {"gunicorn.error", "backend.serving", "backend.predictor"} <= loggers, loggers
    for entry in entries:
        assert {"time", "level", "logger", "message", "process"} <= set(entry)
    corrupt = [e for e in entries if "corrupt.mp4" in e["message"] and e["level"] == "WARNING"]
    assert corrupt and all(e["project"] == SERVED for e in corrupt), corrupt
    assert {e["task"] for e in corrupt} == {100 * call + 7 for call in range(CALLS)}


FORKED_WORKER = """
import os, sys
from pathlib import Path
from backend import metrics, metrics_export
from training.settings import Settings

folder = metrics_export.prepare_multiprocess_dir(Settings(cache_dir=Path(sys.argv[1]), port=9))
pid = os.fork()
if pid == 0:  # a gunicorn worker: serves a version, answers a request, dies
    metrics.record_served("4", None, "v7")
    metrics.count_predicted(3)
    os._exit(0)
os.waitpid(pid, 0)
before = metrics_export.render(None).decode()
metrics_export.child_exit(None, type("Worker", (), {"pid": pid})())
after = metrics_export.render(None).decode()
assert "tensorflow" not in sys.modules  # /metrics never needs it
print(str(folder) + "\\n=====\\n" + before + "=====\\n" + after)
"""


def test_the_samples_folder_starts_empty_and_a_dead_workers_versions_go(tmp_path):
    """What gunicorn's master does, in a process of its own (prometheus_client's mode is per
    process): an earlier run's samples are gone at start; a worker's samples are read by
    the others; once it died (child_exit), its served versions go and its counts stay."""
    stale = tmp_path / "prometheus" / f"{socket.gethostname()}-9"
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"an earlier run")
    done = subprocess.run(
        [sys.executable, "-c", FORKED_WORKER, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )
    assert done.returncode == 0, done.stderr
    folder, before, after = done.stdout.split("=====\n")
    assert Path(folder.strip()) == stale
    assert not (stale / "counter_1.db").exists()
    served = parse_samples(before)
    assert [dict(k[1])["version"] for k in served if k[0] == "videoloop_model_version_info"] == [
        "v7"
    ]
    assert value(served, "videoloop_tasks_predicted_total") == 3
    gone = parse_samples(after)
    assert not [k for k in gone if k[0] == "videoloop_model_version_info"]
    assert value(gone, "videoloop_tasks_predicted_total") == 3
