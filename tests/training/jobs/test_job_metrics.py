"""training/jobs/job_metrics.py on a real Redis: job durations as cumulative histograms per kind
and outcome, the gate's verdicts, bounded outcomes, and never failing a job over Redis."""

from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from training.jobs.job_metrics import (
    DURATION_BUCKETS_S,
    read_job_metrics,
    record_job,
    record_version,
    timed_job,
)


def test_durations_are_cumulative_histograms_per_kind_and_outcome(redis_conn):
    record_job(redis_conn, "training", "trained", 3.0)
    record_job(redis_conn, "training", "trained", 100.0)
    record_job(redis_conn, "refresh", "done", 0.5)

    metrics = read_job_metrics(redis_conn)

    trained = metrics.durations[("training", "trained")]
    assert trained.count == 2 and trained.sum_s == pytest.approx(103.0)
    by_bound = dict(zip(DURATION_BUCKETS_S, trained.buckets, strict=True))
    assert by_bound[1.0] == 0 and by_bound[5.0] == 1 and by_bound[60.0] == 1
    assert by_bound[120.0] == 2 and by_bound[3600.0] == 2
    assert metrics.durations[("refresh", "done")].buckets == (1,) * len(DURATION_BUCKETS_S)
    assert set(metrics.durations) == {("training", "trained"), ("refresh", "done")}


def test_an_unknown_outcome_is_counted_as_other(redis_conn):
    record_job(redis_conn, "training", "something the code never returns", 1.0)
    assert set(read_job_metrics(redis_conn).durations) == {("training", "other")}


def test_a_block_that_raises_is_a_failed_job_and_one_that_sets_its_outcome_keeps_it(redis_conn):
    with pytest.raises(RuntimeError), timed_job(redis_conn, "training"):
        raise RuntimeError("Label Studio answered 500")
    with timed_job(redis_conn, "refresh") as timer:
        timer.outcome = "superseded"
    durations = read_job_metrics(redis_conn).durations
    assert durations[("training", "failed")].count == 1
    assert durations[("refresh", "superseded")].count == 1


def test_versions_are_counted_by_the_gates_verdict(redis_conn):
    assert read_job_metrics(redis_conn).versions == {"published": 0, "rejected": 0}
    record_version(redis_conn, published=True)
    record_version(redis_conn, published=False)
    record_version(redis_conn, published=False)
    assert read_job_metrics(redis_conn).versions == {"published": 1, "rejected": 2}


def test_redis_down_never_fails_the_job():
    gone = redis.Redis(port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    record_job(gone, "training", "trained", 1.0)
    record_version(gone, published=True)
    with timed_job(gone, "refresh") as timer:
        timer.outcome = "done"
    record_job(None, "training", "trained", 1.0)  # no connection (outside RQ): nothing to do
    with pytest.raises(redis.ConnectionError):
        read_job_metrics(gone)  # the scrape says so (videoloop_redis_up 0)
