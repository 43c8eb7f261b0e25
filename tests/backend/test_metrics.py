"""backend/metrics.py and /metrics in one process (Flask's test client): basic auth covers the
route, label values stay bounded whatever requests and webhooks name, the served-version
gauge lists only what is served, and the queue families come from Redis at scrape time (and
say so when Redis is down). Counts are compared before and after, since the families are the
process's. Under gunicorn with several workers: tests/backend/test_metrics_export.py."""

from __future__ import annotations

import base64

import pytest
import redis
from metrics_text import label_values, parse_samples, value
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue

from backend import metrics
from backend.app import create_app
from backend.metrics_export import render
from training.jobs.coordinator import QUEUE_NAME
from training.jobs.job_metrics import record_job, record_version
from training.settings import Settings

CONFIG = """<View>
  <Video name="video" value="$video"/>
  <Choices name="label" toName="video"><Choice value="A"/><Choice value="B"/></Choices>
</View>"""
RULES = {"/", "/health", "/setup", "/predict", "/webhook", "/training/<project>", "/metrics"}


def make_app(tmp_path, **settings):
    app = create_app(
        Settings(model_dir=tmp_path / "models", cache_dir=tmp_path / "cache", **settings)
    )
    app.testing = True
    return app


@pytest.fixture
def app(tmp_path):
    app = make_app(tmp_path, webhook_secret="hook-secret")
    yield app
    app.extensions["videoloop"].close()


def scrape(client, **headers) -> dict:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.content_type.startswith("text/plain")
    return parse_samples(response.text)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_metrics_needs_basic_auth_when_it_is_on(tmp_path):
    app = make_app(tmp_path, basic_auth_user="ops", basic_auth_pass="s3cret")
    client = app.test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="videoloop"'
    assert client.get("/metrics", headers=basic("ops", "wrong")).status_code == 401
    samples = scrape(client, **basic("ops", "s3cret"))
    # the refused scrapes were counted, under the route, as 401
    assert value(samples, "videoloop_http_requests_total", route="/metrics", status="401") >= 2
    assert client.get("/health").status_code == 200  # still open
    app.extensions["videoloop"].close()


def test_routes_are_labelled_by_rule_never_by_path(app):
    client = app.test_client()
    before = scrape(client)
    for project in ("5", "6", "7"):
        assert client.get(f"/training/{project}").status_code == 200
    assert client.get("/training/a%20b").status_code == 400
    assert client.get("/wp-login.php").status_code == 404
    assert client.post("/health").status_code == 405
    after = scrape(client)

    name = "videoloop_http_requests_total"
    grew = value(after, name, route="/training/<project>", status="200") - value(
        before, name, route="/training/<project>", status="200"
    )
    assert grew == 3
    assert value(after, name, route="unmatched", status="404") >= 1
    assert label_values(after, name, "route") <= RULES | {"unmatched"}
    assert label_values(after, "videoloop_http_request_duration_seconds_count", "route") <= (
        RULES | {"unmatched"}
    )


def test_webhook_events_are_counted_by_action_and_outcome_with_bounded_labels(app):
    client = app.test_client()
    secret = {"X-Webhook-Secret": "hook-secret"}
    before = scrape(client)
    for i in range(30):  # anyone can make up actions and projects
        event = {"action": f"MADE_UP_{i}", "project": {"id": 1000 + i}}
        assert client.post("/webhook", json=event, headers=secret).get_json()["status"] == "ignored"
    event = {"action": "TASKS_CREATED", "project": {"id": 3}}
    assert client.post("/webhook", json=event, headers=secret).status_code == 200
    assert (
        client.post("/webhook", json={"action": "ANNOTATION_CREATED"}, headers=secret).status_code
        == 400
    )
    assert client.post("/webhook", data="{", headers=secret).status_code == 400
    assert client.post("/webhook", json=event).status_code == 401
    after = scrape(client)

    def grew(action: str, outcome: str) -> float:
        name = "videoloop_webhook_events_total"
        return value(after, name, action=action, outcome=outcome) - value(
            before, name, action=action, outcome=outcome
        )

    assert grew("other", "ignored") == 30
    assert grew("TASKS_CREATED", "refresh_no_label_studio") == 1
    assert grew("ANNOTATION_CREATED", "bad_request") == 1
    assert grew("other", "bad_request") == 1
    assert grew("other", "unauthorized") == 1
    actions = label_values(after, "videoloop_webhook_events_total", "action")
    assert actions <= metrics.WEBHOOK_ACTIONS | {"other"}
    assert not any("1000" in str(key) for key in after)  # no project id became a label
    assert not any("a b" in str(key) for key in after)  # nor a path


def test_tasks_of_a_project_without_a_model_are_counted_as_no_model(app):
    client = app.test_client()
    before = scrape(client)
    tasks = [{"id": i, "data": {"video": f"/data/upload/9/{i}.mp4"}} for i in range(3)]
    body = {"project": "9.1700000000", "tasks": tasks, "label_config": CONFIG}
    assert client.post("/predict", json=body).get_json() == {"results": [[], [], []]}
    after = scrape(client)
    name = "videoloop_tasks_failed_total"
    assert value(after, name, reason="no_model") - value(before, name, reason="no_model") == 3


def test_the_served_version_gauge_lists_only_what_is_served():
    project = "served-test"
    swaps = value(parse_samples(render(None).decode()), "videoloop_model_swaps_total")
    metrics.record_served(project, None, "v1")  # a first load: not a swap
    metrics.record_served(project, "v1", "v2")
    samples = parse_samples(render(None).decode())
    served = {
        dict(labels)["version"]: v
        for (name, labels), v in samples.items()
        if name == metrics.SERVED_VERSION and dict(labels)["project"] == project
    }
    assert served == {"v2": 1.0}
    assert value(samples, "videoloop_model_swaps_total") == swaps + 1
    metrics.record_served(project, "v2", None)  # evicted
    samples = parse_samples(render(None).decode())
    assert project not in label_values(samples, metrics.SERVED_VERSION, "project")


def test_the_queue_and_the_jobs_are_read_from_redis_at_scrape_time(redis_conn):
    queue = Queue(QUEUE_NAME, connection=redis_conn)
    queue.enqueue("training.jobs.training.train_project", "4")
    record_job(redis_conn, "training", "trained", 12.0)
    record_version(redis_conn, published=True)

    samples = parse_samples(render(queue).decode())

    assert value(samples, "videoloop_redis_up") == 1
    assert value(samples, "videoloop_queue_jobs", queue=QUEUE_NAME, state="queued") == 1
    assert value(samples, "videoloop_queue_jobs", state="started") == 0
    assert value(samples, "videoloop_queue_workers", queue=QUEUE_NAME) == 0
    count = "videoloop_job_duration_seconds_count"
    assert value(samples, count, kind="training", outcome="trained") == 1
    assert value(samples, "videoloop_job_duration_seconds_sum", kind="training") == 12.0
    assert value(samples, "videoloop_job_duration_seconds_bucket", kind="training", le="15") == 1
    assert value(samples, "videoloop_job_duration_seconds_bucket", kind="training", le="5") == 0
    assert value(samples, "videoloop_versions_total", outcome="published") == 1
    assert value(samples, "videoloop_versions_total", outcome="rejected") == 0


def test_a_scrape_while_redis_is_down_says_so_and_answers_the_rest():
    gone = redis.Redis(port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    samples = parse_samples(render(Queue(QUEUE_NAME, connection=gone)).decode())
    assert value(samples, "videoloop_redis_up") == 0
    assert ("videoloop_model_swaps_total", frozenset()) in samples
    assert not label_values(samples, "videoloop_queue_jobs", "state")
