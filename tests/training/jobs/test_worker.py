"""training/jobs/worker.py through ``videoloop worker`` in its own process, on a real Redis:
jobs run in the worker's own process with TensorFlow loaded once, and after WORKER_MAX_JOBS
jobs the process replaces itself with a fresh one (same process id, a new RQ worker), as it
does when RQ's loop quits on a Redis error."""

from __future__ import annotations

import os
import time
from pathlib import Path

import redis
from conftest import free_port, worker_process
from redis_server import redis_server
from rq import Queue
from rq.job import Job

from training.jobs.coordinator import QUEUE_NAME


def wait_status(jobs: list[Job], status: str = "finished", timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(job.get_status(refresh=True) == status for job in jobs):
        assert time.monotonic() < deadline, [job.get_status() for job in jobs]
        time.sleep(0.2)


def test_a_worker_runs_jobs_itself_and_replaces_itself_every_n_jobs(
    tmp_path, redis_url, redis_conn
):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REDIS_URL")},
        "REDIS_URL": redis_url,
        "MODEL_DIR": str(tmp_path / "models"),
        "CACHE_DIR": str(tmp_path / "cache"),
        "WORKER_MAX_JOBS": "2",
        "LOG_LEVEL": "INFO",
    }
    queue = Queue(QUEUE_NAME, connection=redis_conn)
    jobs = [queue.enqueue("os.getpid") for _ in range(5)]

    with worker_process(tmp_path, env, "recycled") as worker:
        wait_status(jobs)
        maps = Path(f"/proc/{worker.pid}/maps").read_text()
        assert worker.poll() is None  # still running, waiting for the next job

    assert [job.return_value() for job in jobs] == [worker.pid] * 5  # no fork per job
    assert "tensorflow" in maps  # imported by the worker itself, once, before the jobs
    log = (tmp_path / "recycled.log").read_text()
    assert log.count("a fresh process replaces it") == 2  # after jobs 2 and 4
    assert log.count(f"started with PID {worker.pid}") == 3  # the first worker and two fresh


def test_a_worker_whose_job_ends_while_redis_restarts_starts_afresh_and_works_on(tmp_path):
    """Redis (the test's own, persisting as docker-compose's does) stops while a job runs and
    is still down when the job ends: RQ's loop quits on the error, and the worker starts a
    fresh loop in the same process once Redis is back, then takes the next job."""
    with redis_server(free_port(), tmp_path / "redis") as server:
        connection = redis.Redis.from_url(server.url)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("REDIS_URL")},
            "REDIS_URL": server.url,
            "MODEL_DIR": str(tmp_path / "models"),
            "CACHE_DIR": str(tmp_path / "cache"),
            "LOG_LEVEL": "INFO",
        }
        queue = Queue(QUEUE_NAME, connection=connection)
        slow = queue.enqueue("time.sleep", 4)
        with worker_process(tmp_path, env, "restarted") as worker:
            wait_status([slow], "started")
            server.stop()  # down until well after the job has ended
            time.sleep(6)
            server.start()
            after = queue.enqueue("os.getpid")
            wait_status([after], "finished")
            assert worker.poll() is None
        assert after.return_value() == worker.pid  # the same process, a fresh loop
    log = (tmp_path / "restarted.log").read_text()
    assert "a fresh process starts" in log
    assert log.count(f"started with PID {worker.pid}") == 2
