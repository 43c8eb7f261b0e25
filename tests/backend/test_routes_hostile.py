"""Hostile requests to every route: a clear 4xx, never a 5xx, and nothing added to Redis.

Through Flask's test client over the embedded queue (fakeredis in-process), the routes a
person on the network can reach: /predict, /setup, /webhook. hypothesis generates the bodies
(any JSON, and JSON shaped like each route's own), 1,000 per route.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.app import create_app
from backend.training_requests import FORCED_KEY
from training.settings import Settings

CONFIG = """<View>
  <Video name="video" value="$video"/>
  <Choices name="label" toName="video"><Choice value="A"/><Choice value="B"/></Choices>
</View>"""
NESTED = "[" * 200_000 + "]" * 200_000
EXAMPLES = 1000

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
projects = (
    st.sampled_from([1, "1", "1.17000", 0, -3, "x/../1", {"id": 2}, {"id": "2"}]) | json_values
)
tasks = st.lists(
    st.fixed_dictionaries(
        {"id": json_values, "data": st.dictionaries(st.sampled_from(["video", "x"]), json_values)}
    )
    | json_values,
    max_size=3,
)
bodies = {
    "/predict": st.fixed_dictionaries(
        {"tasks": tasks | json_values, "project": projects},
        optional={"label_config": st.sampled_from([CONFIG, "<View/>", "<"]) | json_values},
    ),
    "/setup": st.fixed_dictionaries(
        {"project": projects},
        optional={
            "schema": st.sampled_from([CONFIG, "<View/>"]) | json_values,
            "hostname": json_values,
            "access_token": json_values,
        },
    ),
    "/webhook": st.fixed_dictionaries(
        {"action": st.sampled_from(["ANNOTATION_UPDATED", "TASKS_CREATED", "X"]) | json_values},
        optional={"project": projects, "annotation": json_values, "task": json_values},
    ),
}


def make_app(tmp_path, **extra):
    app = create_app(Settings(cache_dir=tmp_path / "cache", model_dir=tmp_path / "models", **extra))
    app.testing = True
    return app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("hostile"), max_request_mb=1)
    yield app
    app.extensions["videoloop"].close()
    app.extensions["videoloop.training"].close()


@pytest.mark.parametrize("route", sorted(bodies))
def test_generated_bodies_never_get_a_5xx(app, route):
    client = app.test_client()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same 1,000 bodies every run: a failure reproduces
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies[route] | json_values)
    def post(body):
        response = client.post(route, data=json.dumps(body), content_type="application/json")
        assert response.status_code < 500, (body, response.get_json())
        assert response.is_json

    post()
    assert client.get("/health").status_code == 200  # alive afterwards


@pytest.mark.parametrize("route", sorted(bodies))
def test_deep_nesting_and_huge_bodies_are_4xx(app, route):
    client = app.test_client()
    deep = client.post(route, data=NESTED, content_type="application/json")
    assert deep.status_code == 400 and "nested" in deep.get_json()["error"]
    huge = client.post(route, data=b"[" + b"0," * 600_000 + b"0]", content_type="application/json")
    assert huge.status_code == 413
    for raw in (b"{", b"\xff\xfe", b"null", b"[]", b'"x"'):
        assert client.post(route, data=raw, content_type="application/json").status_code == 400


@pytest.mark.parametrize(
    "project", [0, -1, "abc", "1/../2", "1.5.6", "9" * 30, None, {"id": "x"}, [1]]
)
def test_webhook_takes_only_label_studio_project_ids_and_stores_nothing_else(app, project):
    connection = app.extensions["videoloop.training"].coordinator.connection
    before = set(connection.keys("*"))
    body = {"action": "START_TRAINING", "project": project}
    response = app.test_client().post("/webhook", json=body)
    assert response.status_code == 400, response.get_json()
    assert set(connection.keys("*")) == before


def test_webhook_secret_is_required_when_set(tmp_path):
    app = make_app(tmp_path, webhook_secret="s3cret")
    client = app.test_client()
    event = {"action": "SOMETHING_ELSE", "project": {"id": 3}}
    assert client.post("/webhook", json=event).status_code == 401
    wrong = client.post("/webhook", json=event, headers={"X-Webhook-Secret": "s3cre"})
    assert wrong.status_code == 401 and "s3cret" not in wrong.get_data(as_text=True)
    right = client.post("/webhook", json=event, headers={"X-Webhook-Secret": "s3cret"})
    assert right.status_code == 200 and right.get_json()["status"] == "ignored"
    app.extensions["videoloop"].close()


def test_start_training_through_the_model_connection_needs_its_basic_auth(tmp_path, caplog):
    """Label Studio sends "Start training" to /webhook through the model connection: with its
    basic auth credentials, never the webhook's header. Either one lets a request in."""
    app = make_app(tmp_path, webhook_secret="s3cret", basic_auth_user="ls", basic_auth_pass="pw")
    client = app.test_client()
    event = {"action": "SOMETHING_ELSE", "project": {"id": 3}}
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:nope").decode()}
    assert client.post("/webhook", json=event, headers=good).status_code == 200
    assert client.post("/webhook", json=event, headers=bad).status_code == 401
    assert client.post("/webhook", json=event).status_code == 401
    app.extensions["videoloop"].close()
    app.extensions["videoloop.training"].close()

    with caplog.at_level(logging.WARNING, logger="backend.app"):
        alone = make_app(tmp_path, webhook_secret="s3cret")
    assert any("cannot carry the secret header" in r.getMessage() for r in caplog.records)
    alone.extensions["videoloop"].close()
    alone.extensions["videoloop.training"].close()


def test_forced_runs_of_one_project_are_rate_limited(app):
    training = app.extensions["videoloop.training"]
    connection = training.coordinator.connection
    connection.delete(FORCED_KEY.format("41"))
    assert training._may_force("41") is True
    assert training._may_force("41") is False  # within FORCE_TRAINING_EVERY_S
    assert 0 < connection.ttl(FORCED_KEY.format("41")) <= 60
    assert training._may_force("42") is True  # per project


@pytest.mark.parametrize("fields", [{"basic_auth_user": "u"}, {"basic_auth_pass": "p"}])
def test_half_of_basic_auth_refuses_to_start(tmp_path, fields):
    with pytest.raises(ValueError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        Settings(cache_dir=tmp_path, **fields)
