"""backend/app.py through Flask's test client, and the real server's start-up as a process."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from backend.app import create_app
from training.settings import Settings
from training.versions.store import NO_MODEL_VERSION

CONFIG = """<View>
  <Video name="video" value="$video"/>
  <Choices name="label" toName="video"><Choice value="A"/><Choice value="B"/></Choices>
</View>"""


def make_app(tmp_path, **settings):
    settings.setdefault("model_dir", tmp_path / "models")
    app = create_app(Settings(cache_dir=tmp_path / "cache", **settings))
    app.testing = True  # exceptions would otherwise surface only as a 500
    return app


@pytest.fixture
def client(tmp_path):
    app = make_app(tmp_path)
    yield app.test_client()
    app.extensions["videoloop"].close()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize("path", ["/health", "/"])
def test_health(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_json() == {"status": "UP", "model_class": "VideoClassifier"}


def test_setup_without_a_model_reports_untrained(client):
    response = client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG})
    assert response.status_code == 200
    assert response.get_json() == {"model_version": NO_MODEL_VERSION}


def test_setup_reports_the_current_version(tmp_path, trained_model):
    app = make_app(tmp_path, model_dir=trained_model.store_root)
    response = app.test_client().post(
        "/setup",
        json={"project": f"{trained_model.project}.1700000000", "schema": CONFIG},
    )
    assert response.get_json() == {"model_version": trained_model.info.version}
    app.extensions["videoloop"].close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"project": "3.1", "schema": "<View><Text name='t' value='$t'/></View>"}, "no <Video>"),
        (
            {
                "project": "3.1",
                "schema": '<View><Video name="video" value="$video"/></View>',
            },
            'no <Choices> or <TimelineLabels> with toName="video"',
        ),
        ({"project": "3.1"}, "empty"),
        ({"schema": CONFIG}, "project"),
        ({"project": "../etc", "schema": CONFIG}, "project"),
    ],
)
def test_setup_rejects_bad_requests_with_a_message(client, body, message):
    response = client.post("/setup", json=body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_bad_json_is_a_400_json_error(client):
    for path in ("/setup", "/predict", "/webhook"):
        response = client.post(path, data="{not json", content_type="application/json")
        assert response.status_code == 400
        assert "JSON object" in response.get_json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"project": "3.1", "label_config": CONFIG}, "'tasks'"),
        ({"project": "3.1", "label_config": CONFIG, "tasks": {"id": 1}}, "'tasks'"),
        ({"project": "3.1", "tasks": []}, "empty"),
        ({"label_config": CONFIG, "tasks": []}, "project"),
    ],
)
def test_predict_rejects_bad_requests_with_a_message(client, body, message):
    response = client.post("/predict", json=body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_predict_without_a_model_answers_no_prediction_per_task(client):
    tasks = [{"id": i, "data": {"video": f"/data/upload/3/{i}.mp4"}} for i in range(5)]
    response = client.post(
        "/predict", json={"project": "3.1700000000", "label_config": CONFIG, "tasks": tasks}
    )
    assert response.status_code == 200
    # [] per task: Label Studio stores nothing (no empty pre-annotation) and asks again later
    assert response.get_json() == {"results": [[]] * 5}


def test_unknown_routes_and_methods_answer_json_errors(client):
    assert client.get("/nope").status_code == 404
    assert "error" in client.get("/nope").get_json()
    response = client.get("/predict")
    assert response.status_code == 405
    assert "error" in response.get_json()


def test_webhook_queues_training_and_ignores_other_events(client):
    # Embedded mode (no REDIS_URL): the in-process queue takes the request.
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert response.status_code == 200
    assert response.get_json() == {"status": "queued", "action": "START_TRAINING", "project": "3"}

    response = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 3}})
    assert response.get_json() == {"status": "ignored", "action": "PROJECT_UPDATED"}

    response = client.post("/webhook", json={"action": "ANNOTATION_CREATED"})
    assert response.status_code == 400
    assert "project" in response.get_json()["error"]

    status = client.get("/training/3").get_json()
    assert status["project"] == "3"
    assert status["queued"] or status["running"] or status["last"]


def test_annotations_created_in_bulk_ask_for_training(client):
    """Label Studio 1.23's "Create Annotations From Predictions" sends only this event."""
    event = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [{"id": 7, "task": 1}, {"id": 8, "task": 2}],
        "project": {"id": 3, "title": "videos"},
    }
    response = client.post("/webhook", json=event)
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "queued",
        "action": "ANNOTATIONS_CREATED",
        "project": "3",
    }


def test_new_tasks_ask_for_predictions_of_the_current_version(tmp_path, trained_model):
    app = make_app(
        tmp_path,
        model_dir=trained_model.store_root,
        label_studio_url="http://127.0.0.1:9",  # never reached here: the job is only queued
        label_studio_api_key="key",
    )
    client = app.test_client()
    try:
        event = {"action": "TASKS_CREATED", "tasks": [{"id": 5}], "project": {"id": 9}}
        assert client.post("/webhook", json=event).get_json()["status"] == "refresh_no_model"
        event["project"] = {"id": int(trained_model.project)}
        answer = client.post("/webhook", json=event).get_json()
        assert answer["status"] in ("refresh_queued", "refresh_pending"), answer
    finally:
        app.extensions["videoloop"].close()
        app.extensions["videoloop.training"].close()
    # Without Label Studio a refresh could write nothing: none is queued.
    alone = make_app(tmp_path, model_dir=trained_model.store_root)
    try:
        answer = alone.test_client().post("/webhook", json=event).get_json()
        assert answer["status"] == "refresh_no_label_studio", answer
    finally:
        alone.extensions["videoloop"].close()
        alone.extensions["videoloop.training"].close()


def test_basic_auth_protects_all_but_health_and_webhook(tmp_path):
    app = make_app(tmp_path, basic_auth_user="ls", basic_auth_pass="s3cret")
    client = app.test_client()
    setup = {"project": "3.1", "schema": CONFIG}

    for headers in ({}, basic("ls", "wrong"), basic("other", "s3cret")):
        response = client.post("/setup", json=setup, headers=headers)
        assert response.status_code == 401
        assert response.get_json() == {"error": "unauthorized"}
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/").status_code == 401
    assert client.post("/predict", json={}).status_code == 401

    good = basic("ls", "s3cret")
    assert client.post("/setup", json=setup, headers=good).status_code == 200
    assert client.get("/", headers=good).status_code == 200
    # Label Studio's auto-created webhook sends no credentials; health probes neither.
    assert client.get("/health").status_code == 200
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 3}}
    assert client.post("/webhook", json=event).status_code == 200
    app.extensions["videoloop"].close()


def test_importing_the_app_does_not_import_tensorflow(tmp_path):
    code = (
        "import sys, backend.app, backend.server, backend.wsgi; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    env = {"MODEL_DIR": str(tmp_path / "models"), "CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().replace("'", '"')) == []


HEALTH_AFTER_PORT_BOUND_S = 5.0
"""Seconds from the port opening to the first /health answer (gunicorn boots its worker, which
imports the app: no TensorFlow, no model). Measured 0.11-0.15 s on 2 idle cores, 0.5-0.6 s
beside the rest of the suite: the bound is 8x the loaded figure, printed each run. Label
Studio's 1 s applies to /health once the server runs: test_predict_http holds /health to it
while TensorFlow loads."""


def test_server_answers_health_soon_after_opening_its_port(tmp_path, start_server):
    with start_server(tmp_path) as server:
        print(f"/health answered {server.health_after_port_s:.3f} s after the port opened")
        assert server.health_after_port_s < HEALTH_AFTER_PORT_BOUND_S, server.log_text()
        assert server.proc.poll() is None


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
