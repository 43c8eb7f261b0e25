"""The Prometheus families a serving process records into, and the calls that record.

Why the families are made on first use rather than at import: under ``videoloop serve`` each
gunicorn worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR, which the server sets
up in the master before the fork (backend/metrics_export.py); a family made before that would
keep its samples in memory where no other process sees them. Nothing here imports TensorFlow.

Label values come from fixed sets, since much of what reaches the backend is untrusted: the
route is the Flask rule (``/training/<project>``), never the path; a webhook action Label
Studio does not send is ``other``; a task's failure is one word of a fixed list
(training/model/inference.py ``Failure.kind`` and :data:`TASK_FAILURES`). Projects appear only
on the served-version gauge, which lists the versions a process has loaded: a project needs a
published version to get there, and a process holds at most MAX_MODELS_IN_MEMORY projects.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from backend.training_requests import REFRESH_ACTIONS, TRAINING_ACTIONS

PREFIX = "videoloop_"

SERVED_VERSION = f"{PREFIX}model_version_info"
"""The gauge of served versions: 1 per (project, version) a process serves now, else 0; the
exposition leaves the zeros out (prometheus_client cannot remove a multiprocess series)."""

REQUEST_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 100.0)
"""Request latency bounds, in seconds: /health in milliseconds up to /predict's 100 s."""

MEDIA_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Fetch and decode time bounds for one video, in seconds (both deadlines default to 60 s)."""

MODEL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Forward pass time bounds for one batch, in seconds (about 5 ms a clip on 2 cores)."""

TASK_FAILURES = ("no_model", "no_matching_control", "no_result", "refresh_claimed", "handed_over")
"""Why a task got ``[]`` besides its video failing (backend/predictor.py): the project has no
model, the model fills none of the config's controls, it filled nothing for this task, the
refresh job writes this task's prediction, or the request was larger than a refresh chunk and
the refresh predicts all of it. The video's own failures are Failure.kind's words."""

WEBHOOK_ACTIONS = TRAINING_ACTIONS | REFRESH_ACTIONS
"""Webhook actions counted by name; any other is counted as ``other``."""

REGISTRY = CollectorRegistry(auto_describe=True)
"""Where the families register: exposed as is when the process is alone (no multiprocess
folder: tests' in-process apps, an external gunicorn without PROMETHEUS_MULTIPROC_DIR)."""


@dataclass(frozen=True)
class Families:
    """Every family a serving process records into (see docs/operations.md)."""

    requests: Counter
    request_seconds: Histogram
    tasks_predicted: Counter
    tasks_failed: Counter
    fetch_seconds: Histogram
    decode_seconds: Histogram
    clip_cache: Counter
    model_seconds: Histogram
    served: Gauge
    swaps: Counter
    load_failures: Counter
    webhook_events: Counter


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
    return Counter(PREFIX + name, doc, labels, registry=REGISTRY)


def _histogram(
    name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
) -> Histogram:
    return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=REGISTRY)


def _make_families() -> Families:
    route = ("route", "status")
    return Families(
        requests=_counter("http_requests", "HTTP requests answered", route),
        request_seconds=_histogram(
            "http_request_duration_seconds", "Seconds to answer", REQUEST_BUCKETS_S, route
        ),
        tasks_predicted=_counter("tasks_predicted", "Tasks /predict answered with a prediction"),
        tasks_failed=_counter(
            "tasks_failed", "Tasks /predict answered with [], by why", ("reason",)
        ),
        fetch_seconds=_histogram(
            "media_fetch_seconds", "Seconds to fetch one task's video", MEDIA_BUCKETS_S
        ),
        decode_seconds=_histogram(
            "decode_seconds", "Seconds to decode and sample one video", MEDIA_BUCKETS_S
        ),
        clip_cache=_counter(
            "clip_cache_lookups", "Decoded-clip cache lookups of /predict, by result", ("result",)
        ),
        model_seconds=_histogram(
            "model_seconds", "Seconds of one batch's forward pass", MODEL_BUCKETS_S
        ),
        served=Gauge(
            SERVED_VERSION,
            "1 for each project's version this process serves",
            ["project", "version"],
            multiprocess_mode="liveall",
            registry=REGISTRY,
        ),
        swaps=_counter("model_swaps", "Loaded versions replaced by a newer current one"),
        load_failures=_counter("model_load_failures", "Versions that failed to load"),
        webhook_events=_counter(
            "webhook_events", "Webhook events by action and outcome", ("action", "outcome")
        ),
    )


_families: Families | None = None
_families_lock = threading.Lock()


def get_families() -> Families:
    """The process's families, made on the first call (after gunicorn's fork)."""
    global _families
    with _families_lock:
        if _families is None:
            _families = _make_families()
        return _families


def have_families() -> bool:
    """Whether any family was made in this process yet (the server checks it before the fork)."""
    return _families is not None


# -- requests -------------------------------------------------------------------------------


def instrument(app: Flask) -> None:
    """Time every request of ``app``; call before any other before_request hook (basic auth)
    is registered, so that refused requests are timed and counted too."""
    app.before_request(_start_timer)
    app.after_request(_count_request)


def _start_timer() -> None:
    g.videoloop_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    started = g.pop("videoloop_started", None)
    if started is not None:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        labels = (route, str(response.status_code))
        families = get_families()
        families.requests.labels(*labels).inc()
        families.request_seconds.labels(*labels).observe(time.perf_counter() - started)
    return response


# -- predictions ----------------------------------------------------------------------------


def count_predicted(tasks: int) -> None:
    if tasks:
        get_families().tasks_predicted.inc(tasks)


def count_failed(reason: str, tasks: int = 1) -> None:
    """``reason``: a word of TASK_FAILURES or a Failure.kind."""
    if tasks:
        get_families().tasks_failed.labels(reason).inc(tasks)


def observe_fetch(seconds: float) -> None:
    get_families().fetch_seconds.observe(seconds)


def observe_decode(seconds: float) -> None:
    get_families().decode_seconds.observe(seconds)


def count_clip_cache(hit: bool) -> None:
    """One lookup in the decoded-clip cache (SERVING_CLIP_CACHE): ``hit`` or ``miss`` (a
    decode)."""
    get_families().clip_cache.labels("hit" if hit else "miss").inc()


def observe_model(clips: int, seconds: float) -> None:
    """One batch of ``clips`` through the model (training.model.inference.BatchObserver)."""
    get_families().model_seconds.observe(seconds)


# -- serving --------------------------------------------------------------------------------


def record_served(project: str, old: str | None, new: str | None) -> None:
    """The process now serves ``new`` for ``project`` (None: nothing) instead of ``old``."""
    families = get_families()
    if old is not None and old != new:
        families.served.labels(project, old).set(0)
    if new is not None:
        families.served.labels(project, new).set(1)
        if old is not None and old != new:
            families.swaps.inc()


def count_load_failure() -> None:
    get_families().load_failures.inc()


# -- webhooks -------------------------------------------------------------------------------


def count_webhook(action: object, outcome: str) -> None:
    """One webhook event; ``outcome`` is the answer's status, or why it was refused."""
    name = action if isinstance(action, str) and action in WEBHOOK_ACTIONS else "other"
    get_families().webhook_events.labels(name, outcome).inc()
