"""What the jobs did, counted in Redis, so that any backend's ``/metrics`` reports every worker.

Why Redis rather than a metrics port per worker: workers run on other machines, re-exec
themselves every WORKER_MAX_JOBS jobs and, without REDIS_URL, are a thread of ``videoloop
serve``; Redis is the one thing they all already share, counters kept there survive worker
restarts, and Prometheus needs no target per worker. The backend reads these hashes at scrape
time (backend/metrics_export.py) and exposes them as ``videoloop_job_duration_seconds`` and
``videoloop_versions_total``. The numbers are the deployment's, not the scraped process's:
aggregate them across backends with ``max``, never ``sum``.

Written with a few commands per job, never in a way that could fail the job: a Redis error is
logged once and the sample dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from training.warn_once import WarnOnce

log = logging.getLogger(__name__)

JOB_KINDS = ("training", "refresh")
"""The RQ jobs timed: training runs (training.jobs.training.train_project) and prediction
refreshes (refresh_predictions)."""

JOB_OUTCOMES = frozenset(
    {
        "trained",
        "rejected",
        "skipped",
        "deferred",
        "failed",
        "lease_lost",
        "done",
        "superseded",
        "fanned_out",
    }
)
"""How a job ended: a training run's or a refresh's ``status``, ``failed`` (it raised) or
``lease_lost``. Anything else is counted as ``other``, so the label stays bounded."""

VERSION_OUTCOMES = ("published", "rejected")
"""What the quality gate made of a trained version: became current, or kept aside."""

DURATION_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
"""Upper bounds of the job duration histogram, in seconds (TRAIN_TIMEOUT_S defaults to 3600)."""

JOB_SECONDS_KEY = "videoloop:metrics:job_seconds:{kind}"
"""Hash per job kind: ``<outcome>|count``, ``<outcome>|sum`` and ``<outcome>|le=<bound>``."""

VERSIONS_KEY = "videoloop:metrics:versions"
"""Hash: versions trained per VERSION_OUTCOMES."""

_warn_once = WarnOnce(log)


@dataclass
class JobTimer:
    """Set ``outcome`` before the block ends; a block that raises with none set is ``failed``."""

    outcome: str | None = None


@dataclass(frozen=True)
class DurationHistogram:
    """One (kind, outcome)'s durations: cumulative counts per DURATION_BUCKETS_S bound."""

    count: int
    sum_s: float
    buckets: tuple[int, ...]


@dataclass(frozen=True)
class JobMetrics:
    """Everything :func:`read_job_metrics` found."""

    durations: dict[tuple[str, str], DurationHistogram] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)


def _bucket_field(outcome: str, bound: float) -> str:
    return f"{outcome}|le={bound:g}"


def record_job(connection: redis.Redis | None, kind: str, outcome: str, seconds: float) -> None:
    """Count one job of ``kind`` that ended with ``outcome`` after ``seconds``."""
    if connection is None:
        return
    outcome = outcome if outcome in JOB_OUTCOMES else "other"
    key = JOB_SECONDS_KEY.format(kind=kind)
    try:
        with connection.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, f"{outcome}|count", 1)
            pipe.hincrbyfloat(key, f"{outcome}|sum", float(seconds))
            for bound in DURATION_BUCKETS_S:
                if seconds <= bound:
                    pipe.hincrby(key, _bucket_field(outcome, bound), 1)
            pipe.execute()
    except redis.RedisError as exc:
        _warn_once(("job", kind), "cannot count a %s job in Redis: %s", kind, exc)


def record_version(connection: redis.Redis | None, *, published: bool) -> None:
    """Count one trained version: ``published`` (current) or rejected by the gate."""
    if connection is None:
        return
    try:
        connection.hincrby(VERSIONS_KEY, "published" if published else "rejected", 1)
    except redis.RedisError as exc:
        _warn_once("versions", "cannot count a version in Redis: %s", exc)


@contextmanager
def timed_job(connection: redis.Redis | None, kind: str) -> Iterator[JobTimer]:
    """Time the block as one job of ``kind`` and count it when it ends, however it ends."""
    timer = JobTimer()
    started = time.monotonic()
    try:
        yield timer
    finally:
        record_job(connection, kind, timer.outcome or "failed", time.monotonic() - started)


def read_job_metrics(connection: redis.Redis) -> JobMetrics:
    """Every kind's duration histograms and the version counts, in one round trip.

    Raises:
        redis.RedisError: Redis did not answer.
    """
    with connection.pipeline(transaction=False) as pipe:
        for kind in JOB_KINDS:
            pipe.hgetall(JOB_SECONDS_KEY.format(kind=kind))
        pipe.hgetall(VERSIONS_KEY)
        *per_kind, versions = pipe.execute()
    durations: dict[tuple[str, str], DurationHistogram] = {}
    for kind, raw in zip(JOB_KINDS, per_kind, strict=True):
        fields = {_text(k): _text(v) for k, v in raw.items()}
        outcomes = {name.split("|", 1)[0] for name in fields if name.endswith("|count")}
        for outcome in sorted(outcomes):
            durations[(kind, outcome)] = DurationHistogram(
                count=int(fields[f"{outcome}|count"]),
                sum_s=float(fields.get(f"{outcome}|sum", 0.0)),
                buckets=tuple(
                    int(fields.get(_bucket_field(outcome, bound), 0))
                    for bound in DURATION_BUCKETS_S
                ),
            )
    counts = {_text(k): int(v) for k, v in versions.items()}
    return JobMetrics(durations, {o: counts.get(o, 0) for o in VERSION_OUTCOMES})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
