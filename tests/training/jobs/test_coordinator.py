"""The coalescing state machine on a real Redis (an empty database, flushed per test)."""

from __future__ import annotations

import time

import pytest
from rq import Queue

from training.jobs.coordinator import QUEUE_NAME, RequestOutcome, StartedRun, TrainingCoordinator

LEASE_S = 2.0
"""Short, so that a dead run's lease runs out within a test; long enough that no step of a test
(a few Redis calls) outlasts it on a loaded machine (they take milliseconds)."""


@pytest.fixture
def coordinator(redis_conn) -> TrainingCoordinator:
    return TrainingCoordinator(redis_conn, lease_s=LEASE_S)


def queued_jobs(coordinator: TrainingCoordinator) -> list[str]:
    return Queue(QUEUE_NAME, connection=coordinator.connection).get_job_ids()


def test_first_request_queues_a_job_and_later_ones_join_it(coordinator):
    assert coordinator.request("7") is RequestOutcome.QUEUED
    for _ in range(5):
        assert coordinator.request("7") is RequestOutcome.JOINED
    jobs = queued_jobs(coordinator)
    assert len(jobs) == 1
    state = coordinator.get_state("7")
    assert state["pending_events"] == 6
    assert state["queued"]["id"] == jobs[0]
    assert state["queued"]["status"] == "queued"


def test_projects_are_coalesced_separately(coordinator):
    assert coordinator.request("1") is RequestOutcome.QUEUED
    assert coordinator.request("2") is RequestOutcome.QUEUED
    assert len(queued_jobs(coordinator)) == 2


def test_a_burst_during_a_run_makes_exactly_one_follow_up(coordinator):
    coordinator.request("7")
    [job_id] = queued_jobs(coordinator)
    Queue(QUEUE_NAME, connection=coordinator.connection).remove(job_id)  # a worker took it
    assert coordinator.start("7", job_id) == StartedRun(events=1, force=False)

    outcomes = {coordinator.request("7") for _ in range(20)}
    assert outcomes == {RequestOutcome.FOLLOW_UP}
    assert queued_jobs(coordinator) == []  # nothing may start beside the running job

    follow_up = coordinator.finish("7", job_id, result={"status": "trained"})
    assert follow_up is not None
    assert queued_jobs(coordinator) == [follow_up]
    assert coordinator.get_state("7")["pending_events"] == 20
    assert coordinator.get_state("7")["last"]["status"] == "trained"


def test_a_run_with_no_requests_meanwhile_queues_nothing_after_it(coordinator):
    coordinator.request("7")
    [job_id] = queued_jobs(coordinator)
    coordinator.start("7", job_id)
    assert coordinator.finish("7", job_id, result={"status": "trained"}) is None
    state = coordinator.get_state("7")
    assert state["queued"] is None and state["running"] is None


def test_train_every_counts_annotation_events_but_start_training_forces(coordinator):
    assert coordinator.request("7", train_every=3) is RequestOutcome.RECORDED
    assert coordinator.request("7", train_every=3) is RequestOutcome.RECORDED
    assert coordinator.request("7", train_every=3) is RequestOutcome.QUEUED

    assert coordinator.request("8", train_every=3) is RequestOutcome.RECORDED
    assert coordinator.request("8", train_every=3, force=True) is RequestOutcome.QUEUED
    job_id = coordinator.get_state("8")["queued"]["id"]
    assert coordinator.start("8", job_id) == StartedRun(events=2, force=True)


def test_a_second_job_of_a_running_project_defers_and_asks_for_a_follow_up(coordinator):
    coordinator.request("7")
    [first] = queued_jobs(coordinator)
    coordinator.start("7", first)
    assert coordinator.start("7", "train-7-intruder") is None
    assert coordinator.get_state("7")["follow_up_requested"] is True
    assert coordinator.finish("7", first, result={"status": "trained"}) is not None


def test_failure_worth_retrying_gives_the_events_back(coordinator):
    coordinator.request("7")
    coordinator.request("7")
    [job_id] = queued_jobs(coordinator)
    coordinator.start("7", job_id)
    coordinator.finish("7", job_id, result={"status": "failed"}, give_back=True)
    assert coordinator.get_state("7")["pending_events"] == 2


def test_a_dead_run_is_requeued_with_its_events_once_its_lease_expires(coordinator):
    coordinator.request("7", force=True)
    [job_id] = queued_jobs(coordinator)
    Queue(QUEUE_NAME, connection=coordinator.connection).remove(job_id)
    coordinator.start("7", job_id)
    assert coordinator.recover() == []  # lease still held: nothing to repair
    # The worker "died": nobody renews the lease; the first sweep after it runs out repairs.
    deadline = time.monotonic() + LEASE_S + 30
    while not (repaired := coordinator.recover()):
        assert time.monotonic() < deadline, "the expired lease was never noticed"
        time.sleep(0.05)
    [requeued] = repaired
    assert queued_jobs(coordinator) == [requeued]
    assert coordinator.recover() == []  # repaired once, not on every sweep
    assert coordinator.start("7", requeued) == StartedRun(events=1, force=True)


def test_renewing_the_lease_keeps_a_long_run_alive(coordinator):
    coordinator.request("7")
    [job_id] = queued_jobs(coordinator)
    Queue(QUEUE_NAME, connection=coordinator.connection).remove(job_id)
    coordinator.start("7", job_id)
    for _ in range(int(LEASE_S * 6)):  # 1.5 leases in all, renewed every quarter lease
        time.sleep(LEASE_S / 4)
        assert coordinator.renew_lease("7", job_id)
    assert coordinator.recover() == []
    assert coordinator.get_state("7")["running"]["id"] == job_id


def test_a_queued_id_whose_job_vanished_is_requeued(coordinator, monkeypatch):
    coordinator.request("7")
    [job_id] = queued_jobs(coordinator)
    Queue(QUEUE_NAME, connection=coordinator.connection).remove(job_id)
    coordinator.connection.delete(f"rq:job:{job_id}")
    assert coordinator.recover() == []  # within the grace period an enqueue may be under way
    monkeypatch.setattr("training.jobs.coordinator.STALE_QUEUED_S", 0.0)
    [requeued] = coordinator.recover()
    assert requeued != job_id
    assert queued_jobs(coordinator) == [requeued]


def test_a_run_whose_lease_redis_forgot_is_asked_for_again(coordinator):
    """A Redis that keeps nothing on disk restarted under a run: the job finds its lease gone
    and Redis knowing nothing of the project, and asks for the run again with its events."""
    coordinator.request("7", events=3)
    [job_id] = queued_jobs(coordinator)
    Queue(QUEUE_NAME, connection=coordinator.connection).remove(job_id)
    run = coordinator.start("7", job_id)
    coordinator.connection.flushdb()  # the restart

    assert not coordinator.renew_lease("7", job_id)
    assert coordinator.requeue_if_forgotten("7", run) is RequestOutcome.QUEUED
    [again] = queued_jobs(coordinator)
    assert coordinator.start("7", again) == StartedRun(events=3, force=False)


def test_a_run_whose_lease_expired_is_not_asked_for_twice(coordinator):
    """The lease ran out (a frozen worker) while Redis kept its data: recovery gives the run to
    another job, and the woken job asks for nothing more."""
    coordinator.request("7")
    [job_id] = queued_jobs(coordinator)
    Queue(QUEUE_NAME, connection=coordinator.connection).remove(job_id)
    run = coordinator.start("7", job_id)
    coordinator.connection.delete("videoloop:train:7:running")  # as if the lease ran out
    [recovered] = coordinator.recover()

    assert coordinator.requeue_if_forgotten("7", run) is None
    assert queued_jobs(coordinator) == [recovered]
