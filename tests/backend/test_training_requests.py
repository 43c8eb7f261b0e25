"""backend/training_requests.py: webhook events kept while Redis is down are replayed, none lost.

Redis is real (the redis_conn fixture). The one thing stood in for is a race: a webhook that
lands while a replay is being sent, which a test cannot time otherwise. The coordinator's
``request`` is wrapped to deliver that webhook at exactly that moment.
"""

from __future__ import annotations

import redis

from backend.training_requests import TrainingRequests
from training.jobs.coordinator import make_coordinator
from training.settings import Settings

UNREACHABLE = "redis://127.0.0.1:1/0"
"""Nothing listens on port 1: every command fails at once with a ConnectionError."""


def test_events_kept_while_redis_is_down_are_replayed_and_one_landing_meanwhile_stays(
    redis_conn, tmp_path
):
    settings = Settings(cache_dir=tmp_path / "cache")
    down = redis.Redis.from_url(UNREACHABLE, socket_connect_timeout=0.2)
    requests = TrainingRequests(make_coordinator(down, settings), settings)
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 7}, "annotation": {"id": 1}}
    for _ in range(2):
        try:
            requests.handle(event)
        except Exception as exc:  # TrainingUnavailable: answered 503 by /webhook
            assert "kept" in str(exc)
    assert requests.get_kept() == {"7": 2}
    assert requests.replay_kept() == 0  # still down: nothing sent, nothing dropped
    assert requests.get_kept() == {"7": 2}

    up = make_coordinator(redis_conn, settings)
    sent_events: list[int] = []

    def request_while_a_webhook_lands(project, *, events=1, **kwargs):
        sent_events.append(events)
        if len(sent_events) == 1:
            requests._keep(project, False)  # the webhook that lands mid-replay
        return type(up).request(up, project, events=events, **kwargs)

    up.request = request_while_a_webhook_lands  # type: ignore[method-assign]
    requests.coordinator = up
    assert requests.replay_kept() == 1
    assert sent_events == [2]
    assert requests.get_kept() == {"7": 1}  # the late one is kept for the next replay
    assert requests.replay_kept() == 1
    assert sent_events == [2, 1] and requests.get_kept() == {}
    assert up.get_state("7")["pending_events"] == 3


def test_events_kept_while_redis_is_down_survive_a_restart_of_the_backend(redis_conn, tmp_path):
    """The kept requests live in a journal under CACHE_DIR, not in the process: a backend
    started after the one that accepted them (a deploy, a crash) queues them."""
    settings = Settings(cache_dir=tmp_path / "cache")
    down = redis.Redis.from_url(UNREACHABLE, socket_connect_timeout=0.2)
    before = TrainingRequests(make_coordinator(down, settings), settings)
    start = {"action": "START_TRAINING", "project": {"id": 8}}
    annotation = {"action": "ANNOTATION_CREATED", "project": {"id": 9}, "annotation": {"id": 1}}
    for event in (start, annotation, annotation):
        try:
            before.handle(event)
        except Exception as exc:  # TrainingUnavailable: answered 503 by /webhook
            assert "kept" in str(exc)
    del before  # the process is gone; only the journal file remains

    after = TrainingRequests(make_coordinator(redis_conn, settings), settings)
    assert after.get_kept() == {"8": 1, "9": 2}
    assert after.replay_kept() == 2
    assert after.get_kept() == {}
    state = after.coordinator.get_state("8")
    assert state["queued"] and state["pending_events"] == 1
    assert after.coordinator.get_state("9")["pending_events"] == 2


def test_a_damaged_journal_is_replaced_not_fatal(tmp_path, caplog):
    from backend.request_journal import RequestJournal

    journal = RequestJournal(tmp_path / "kept.json")
    (tmp_path / "kept.json").write_text("{not json")
    journal.add("3", force=True)
    assert journal.snapshot() == {"3": {"events": 1, "force": True}}
    assert any("cannot read" in r.getMessage() for r in caplog.records)
