"""The Flask app speaking Label Studio's ML backend protocol; routes stay thin.

Importing this module must not import TensorFlow: /health answers within Label Studio's 1 s
timeout and /setup within 3 s even while a model loads (models load on background threads).
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import time

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from backend import metrics, metrics_export, protocol
from backend.predictor import TaskPredictor
from backend.serving import ModelServer
from backend.training_queue import open_training
from backend.training_requests import TrainingRequests, TrainingUnavailable
from backend.version_watch import VersionWatch
from training.jobs.prediction_claims import PredictionClaims
from training.jobs.refresh_queue import request_refresh
from training.jobs.status import project_state
from training.labelstudio.labelconfig import LabelConfigError, parse_label_config
from training.settings import Settings

log = logging.getLogger(__name__)

MODEL_CLASS = "VideoClassifier"
"""What /health reports as ``model_class`` (Label Studio shows it in the model's card)."""

EXTENSION_KEY = "videoloop"
"""``app.extensions`` key of the process's ModelServer."""

PREDICTOR_KEY = "videoloop.predictor"
"""``app.extensions`` key of the process's TaskPredictor."""

WATCH_KEY = "videoloop.version_watch"
"""``app.extensions`` key of the process's VersionWatch (only when create_app built the server)."""

TRAINING_KEY = "videoloop.training"
"""``app.extensions`` key of the process's TrainingRequests."""

SETTINGS_KEY = "VIDEOLOOP_SETTINGS"
"""``app.config`` key of the Settings."""

PID_HEADER = "X-Videoloop-Pid"
"""Response header naming the process that answered."""

WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
"""The header carrying WEBHOOK_SECRET, set on the project's webhook in Label Studio."""

UNAUTHENTICATED_PATHS = frozenset({"/health", "/webhook"})
"""Paths open without basic auth.

/health: liveness probes (Docker, load balancers) carry no credentials. /webhook: Label
Studio's auto-created project webhook sends no credentials even when basic auth is set on the
ML backend (docs/design.md), so demanding them there would lose every annotation event: set
WEBHOOK_SECRET and put the header on that webhook instead.
"""

bp = Blueprint("videoloop", __name__)


class RequestError(ValueError):
    """A request Label Studio (or a person) got wrong; answered 400 with its message."""


def create_app(
    settings: Settings | None = None,
    server: ModelServer | None = None,
    training: TrainingRequests | None = None,
) -> Flask:
    """Build the app; one per process, after any fork (it owns background threads).

    Args:
        settings: default Settings.from_env().
        server: the model owner; default a new ModelServer that starts loading every project
            in the store in the background.
        training: where webhook events go; default the Redis queue of REDIS_URL, or the
            embedded in-process queue and worker when it is unset.
    """
    settings = settings or Settings.from_env()
    if settings.webhook_secret and not settings.basic_auth_user:
        log.warning(
            "WEBHOOK_SECRET is set without BASIC_AUTH_USER/BASIC_AUTH_PASS: Label Studio sends "
            '"Start training" (and training on submit) to /webhook through the model '
            "connection, which cannot carry the secret header, so those requests get 401; "
            "set basic auth here and on the connection (docs/security.md)"
        )
    app = Flask(__name__)
    app.config[SETTINGS_KEY] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_mb * 1024 * 1024  # else 413
    app.json.sort_keys = False  # type: ignore[attr-defined]
    metrics.instrument(app)  # first: requests refused by basic auth are counted too
    own_server = server is None
    if server is None:
        server = ModelServer(settings)
        server.start()
    app.extensions[EXTENSION_KEY] = server
    app.extensions[TRAINING_KEY] = training = training or open_training(settings)
    # Tasks a /predict could not finish in time are predicted by the refresh job.
    connection = training.coordinator.connection
    refresh = functools.partial(request_refresh, connection, settings=settings)
    app.extensions[PREDICTOR_KEY] = TaskPredictor(
        server, settings, on_unfinished=refresh, claims=PredictionClaims(connection)
    )
    if own_server:  # swap on pub/sub notices, over the training queue's Redis (or fakeredis)
        watch = VersionWatch(server).start(training.coordinator.connection)
        app.extensions[WATCH_KEY] = watch
    app.register_blueprint(bp)
    return app


def get_server() -> ModelServer:
    return current_app.extensions[EXTENSION_KEY]


def get_predictor() -> TaskPredictor:
    return current_app.extensions[PREDICTOR_KEY]


def _settings() -> Settings:
    return current_app.config[SETTINGS_KEY]


def _error(message: str, status: int):
    return jsonify({"error": message}), status


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    response = exc.get_response()
    response.data = current_app.json.dumps({"error": exc.description or exc.name})
    response.content_type = "application/json"
    return response


@bp.app_errorhandler(RequestError)
def _bad_request(exc: RequestError):
    return _error(str(exc), 400)


@bp.app_errorhandler(LabelConfigError)
def _bad_config(exc: LabelConfigError):
    return _error(str(exc), 400)


@bp.app_errorhandler(Exception)
def _internal_error(exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _error(f"internal error: {type(exc).__name__}", 500)


@bp.after_app_request
def _name_the_process(response):
    """``X-Videoloop-Pid`` on every answer: which gunicorn worker answered (and so which
    process's model version a /predict or /setup reports)."""
    response.headers[PID_HEADER] = str(os.getpid())
    return response


def _has_basic_auth(settings: Settings) -> bool:
    """Whether the request carries BASIC_AUTH_USER and BASIC_AUTH_PASS (both set)."""
    auth = request.authorization
    if not settings.basic_auth_user or auth is None or auth.type != "basic":
        return False
    # Compare both, always: timing must not tell which one was wrong.
    user_ok = hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
    pass_ok = hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode())
    return user_ok and pass_ok


@bp.before_app_request
def _basic_auth():
    settings = _settings()
    if not settings.basic_auth_user:
        return None
    if request.path in UNAUTHENTICATED_PATHS or _has_basic_auth(settings):
        return None
    response, status = _error("unauthorized", 401)
    response.headers["WWW-Authenticate"] = 'Basic realm="videoloop"'
    return response, status


def _json_body() -> dict:
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # a body nested thousands deep: Python's parser gives up
        raise RequestError("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    return body


def _project(body: dict) -> str:
    try:
        return protocol.normalize_project(body.get("project"))
    except ValueError as exc:
        raise RequestError(f"bad or missing 'project': {exc}") from None


@bp.get("/health")
@bp.get("/")
def health():
    """Liveness for Label Studio (1 s timeout): no model, no store, no TensorFlow."""
    return jsonify({"status": "UP", "model_class": MODEL_CLASS})


@bp.post("/setup")
def setup():
    """Validate the label config and say which version predictions will carry (3 s timeout).

    Reads the project's pointer only; a newer version is loaded in the background.
    """
    body = _json_body()
    project = _project(body)
    parse_label_config(body.get("schema") or "")
    server = get_server()
    hostname, token = body.get("hostname"), body.get("access_token")
    if isinstance(hostname, str) and isinstance(token, str):
        get_predictor().media.set_fallback_credentials(hostname, token)
    return jsonify({"model_version": server.get_version(project)})


@bp.post("/predict")
def predict():
    """One prediction per task, in order: Label Studio stores nothing if the counts differ."""
    started = time.perf_counter()
    body = _json_body()
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise RequestError("'tasks' must be a list of tasks")
    project = _project(body)
    controls = parse_label_config(body.get("label_config") or "")
    results = get_predictor().predict(project, tasks, controls)
    if len(results) != len(tasks):  # a bug, but never send Label Studio a mismatched list
        raise RuntimeError(f"{len(results)} results for {len(tasks)} tasks")
    log.info(
        "predict project %s: %d tasks in %.2f s", project, len(tasks), time.perf_counter() - started
    )
    return jsonify({"results": results})


@bp.post("/webhook")
def webhook():
    """Annotation events, "Start training" and new tasks: record and enqueue only (Label
    Studio waits 1 s).

    Answers 200 with what happened (queued, joined, follow_up, recorded for training;
    refresh_queued, refresh_pending, refresh_no_model, refresh_no_label_studio for
    TASKS_CREATED; ignored), 400 for an event without a project, 503 when Redis is down (a
    training request is kept and queued later), 401 when WEBHOOK_SECRET is set and the
    request carries neither the secret (the project webhook) nor the basic auth credentials
    ("Start training", which Label Studio sends through the model connection, with its
    credentials but no custom header).
    """
    settings = _settings()
    if settings.webhook_secret:
        given = request.headers.get(WEBHOOK_SECRET_HEADER, "")
        secret_ok = hmac.compare_digest(given.encode(), settings.webhook_secret.encode())
        if not secret_ok and not _has_basic_auth(settings):
            metrics.count_webhook(None, "unauthorized")
            return _error(f"missing or wrong {WEBHOOK_SECRET_HEADER} header", 401)
    try:
        body = _json_body()
    except RequestError:
        metrics.count_webhook(None, "bad_request")
        raise
    action = body.get("action")
    try:
        answer = get_training().handle(body)
    except TrainingUnavailable as exc:
        metrics.count_webhook(action, "redis_down")
        return _error(str(exc), 503)
    except ValueError as exc:
        metrics.count_webhook(action, "bad_request")
        raise RequestError(f"bad webhook event: {exc}") from None
    metrics.count_webhook(action, answer["status"])
    return jsonify(answer)


@bp.get("/training/<project>")
def training_status(project: str):
    """The project's training state: pending events, queued/running job with progress, last run."""
    try:
        project = protocol.normalize_project(project)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    training = get_training()
    try:
        state = project_state(training.coordinator, project)
    except redis.RedisError as exc:
        return _error(f"Redis is unreachable ({type(exc).__name__})", 503)
    state["kept_while_redis_down"] = training.get_kept().get(project, 0)
    return jsonify(state)


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus' text format: every serving process's families, and the training queue and
    the jobs' counters read from Redis (docs/operations.md). Behind basic auth when it is on."""
    body = metrics_export.render(get_training().coordinator.queue)
    return Response(body, content_type=metrics_export.CONTENT_TYPE)


def get_training() -> TrainingRequests:
    return current_app.extensions[TRAINING_KEY]
