"""training/jobs/progress.py LeaseKeeper on a real Redis: a job keeps its lease while it works,
and a job whose lease expired (recovery may have started another run) learns it before it
publishes or promotes."""

from __future__ import annotations

import time

import pytest
from rq import Queue

from training.jobs.coordinator import QUEUE_NAME, TrainingCoordinator
from training.jobs.progress import LeaseKeeper, LeaseLost

LEASE_S = 4.0
"""Renewed every second: only a stall of 3 s or more in the renewing thread loses it."""


@pytest.fixture
def coordinator(redis_conn) -> TrainingCoordinator:
    return TrainingCoordinator(redis_conn, lease_s=LEASE_S)


def started_run(coordinator: TrainingCoordinator, project: str = "7") -> str:
    coordinator.request(project)
    [job_id] = Queue(QUEUE_NAME, connection=coordinator.connection).get_job_ids()
    assert coordinator.start(project, job_id) is not None
    return job_id


def test_a_job_keeps_its_lease_while_it_works(coordinator):
    job_id = started_run(coordinator)
    with LeaseKeeper(coordinator, "7", job_id) as lease:
        time.sleep(LEASE_S * 2)  # two leases long: only the renewals keep it
        lease.ensure_held()
    assert coordinator.get_state("7")["running"]["id"] == job_id


def test_a_job_whose_lease_expired_may_not_publish(coordinator):
    job_id = started_run(coordinator)
    lease = LeaseKeeper(coordinator, "7", job_id)  # never started: nobody renews it
    time.sleep(LEASE_S * 1.5)
    coordinator.recover()  # the run is taken for dead and queued again

    with pytest.raises(LeaseLost, match="lost its lease"):
        lease.ensure_held()
    with pytest.raises(LeaseLost):  # and it stays lost
        lease.ensure_held()


def test_another_jobs_run_is_not_this_jobs(coordinator):
    started_run(coordinator)
    with pytest.raises(LeaseLost):
        LeaseKeeper(coordinator, "7", "someone-else").ensure_held()
