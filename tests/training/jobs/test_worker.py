"""training/jobs/worker.py through ``videoloop worker`` in its own process, on a real Redis:
jobs run in the worker's own process with TensorFlow loaded once, and after WORKER_MAX_JOBS
jobs the process replaces itself with a fresh one (same process id, a new RQ worker)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import worker_process
from rq import Queue
from rq.job import Job

from training.jobs.coordinator import QUEUE_NAME


def wait_finished(jobs: list[Job], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(job.get_status(refresh=True) == "finished" for job in jobs):
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
        wait_finished(jobs)
        maps = Path(f"/proc/{worker.pid}/maps").read_text()
        assert worker.poll() is None  # still running, waiting for the next job

    assert [job.return_value() for job in jobs] == [worker.pid] * 5  # no fork per job
    assert "tensorflow" in maps  # imported by the worker itself, once, before the jobs
    log = (tmp_path / "recycled.log").read_text()
    assert log.count("a fresh process replaces it") == 2  # after jobs 2 and 4
    assert log.count(f"started with PID {worker.pid}") == 3  # the first worker and two fresh
