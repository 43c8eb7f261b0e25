"""What ``GET /metrics`` answers, and the multiprocess folder that makes it whole.

Why a folder: gunicorn's workers are separate processes and a scrape reaches one of them. In
prometheus_client's multiprocess mode each process writes its samples to memory-mapped files in
PROMETHEUS_MULTIPROC_DIR and whichever worker answers adds up every process's files. The server
sets that folder up in gunicorn's master, before the fork (:func:`prepare_multiprocess_dir`):
a fresh one under CACHE_DIR per host and port, emptied at every start so that an earlier run's
counts never leak in; gunicorn's ``child_exit`` hook (:func:`child_exit`) drops a dead worker's
served-version samples, while its counters stay counted.

Read at scrape time from Redis rather than from the process: the training queue's depth and
workers, and what the jobs of every worker did (training/jobs/job_metrics.py), so a scrape of
any backend reports the whole deployment, and a scrape while Redis is down says so
(``videoloop_redis_up 0``) instead of failing.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, values
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from rq import Queue, Worker

from backend import metrics
from training.jobs.job_metrics import DURATION_BUCKETS_S, JobMetrics, read_job_metrics
from training.settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's switch to multiprocess mode: the folder of the samples' files."""

METRICS_SUBDIR = "prometheus"
"""Under CACHE_DIR: one folder per host and port, the multiprocess samples of one server."""

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The text exposition format's content type."""


def prepare_multiprocess_dir(settings: Settings) -> Path:
    """Make an empty samples folder for this server and switch prometheus_client to it.

    Call in gunicorn's master before the workers fork, and before any family is made.

    Raises:
        RuntimeError: a family was made already (its samples would stay in one process).
    """
    if metrics.have_families():
        raise RuntimeError("metrics families were made before the multiprocess folder was set")
    folder = (
        settings.cache_dir.resolve() / METRICS_SUBDIR / f"{socket.gethostname()}-{settings.port}"
    )
    shutil.rmtree(folder, ignore_errors=True)  # an earlier run's samples
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    values.ValueClass = values.get_value_class()  # chosen at import, before this was set
    return folder


def is_multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV)) and getattr(
        values.ValueClass, "_multiprocess", False
    )


def child_exit(server: object, worker: object) -> None:
    """gunicorn's ``child_exit`` hook: forget the served versions of a worker that died."""
    pid = getattr(worker, "pid", None)
    if pid is not None and is_multiprocess():
        mark_process_dead(pid)


def render(queue: Queue | None) -> bytes:
    """The exposition of every family: this process's or every worker's, plus Redis's.

    Args:
        queue: the training queue, read at scrape time (None: leave the Redis families out).
    """
    registry = CollectorRegistry(auto_describe=False)
    source = MultiProcessCollector(None) if is_multiprocess() else metrics.REGISTRY
    metrics.get_families()  # every family shows, at 0, from the first scrape on
    registry.register(_ServedNonZero(source))
    if queue is not None:
        registry.register(RedisCollector(queue))
    return generate_latest(registry)


class _ServedNonZero:
    """Passes ``source``'s families on, without the served-version samples at 0 (versions a
    process no longer serves: their series cannot be removed in multiprocess mode)."""

    def __init__(self, source: object) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        for family in self._source.collect():  # type: ignore[attr-defined]
            if family.name == metrics.SERVED_VERSION:
                family.samples = [s for s in family.samples if s.value != 0]
            yield family


class RedisCollector:
    """The training queue and the jobs' counters, read from Redis when scraped."""

    STATES = ("queued", "started", "deferred", "failed")
    """Queue depth states: waiting, running, waiting for another job, failed (kept a week)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{metrics.PREFIX}redis_up", "1 if Redis answered this scrape")
        try:
            depth, workers = self._read_queue()
            jobs = read_job_metrics(self.queue.connection)
        except redis.RedisError as exc:
            log.warning("/metrics: Redis did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs_family = GaugeMetricFamily(
            f"{metrics.PREFIX}queue_jobs", "RQ jobs by state", labels=["queue", "state"]
        )
        for state, count in depth.items():
            jobs_family.add_metric([self.queue.name, state], count)
        yield jobs_family
        workers_family = GaugeMetricFamily(
            f"{metrics.PREFIX}queue_workers", "RQ workers listening", labels=["queue"]
        )
        workers_family.add_metric([self.queue.name], workers)
        yield workers_family
        yield from _job_families(jobs)

    def _read_queue(self) -> tuple[dict[str, int], int]:
        queue = self.queue
        depth = {
            "queued": queue.count,
            "started": queue.started_job_registry.get_job_count(cleanup=False),
            "deferred": queue.deferred_job_registry.get_job_count(cleanup=False),
            "failed": queue.failed_job_registry.get_job_count(cleanup=False),
        }
        return depth, Worker.count(connection=queue.connection, queue=queue)


def _job_families(jobs: JobMetrics) -> Iterator[Metric]:
    durations = HistogramMetricFamily(
        f"{metrics.PREFIX}job_duration_seconds",
        "Seconds per RQ job, by kind and outcome (every worker's, from Redis)",
        labels=["kind", "outcome"],
    )
    for (kind, outcome), histogram in sorted(jobs.durations.items()):
        buckets = [
            (f"{b:g}", n) for b, n in zip(DURATION_BUCKETS_S, histogram.buckets, strict=True)
        ]
        durations.add_metric(
            [kind, outcome], [*buckets, ("+Inf", histogram.count)], histogram.sum_s
        )
    yield durations
    versions = CounterMetricFamily(
        f"{metrics.PREFIX}versions",
        "Trained versions by the quality gate's verdict: published (current) or rejected",
        labels=["outcome"],
    )
    for outcome, count in jobs.versions.items():
        versions.add_metric([outcome], count)
    yield versions
