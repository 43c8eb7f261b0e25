"""training/jobs/promotion.py ``promote``: the quality gate's verdict decides whether a
just-published version becomes current (store file and Redis mirror) or is recorded as rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.jobs.promotion import promote
from training.versions.current import CURRENT_KEY
from training.versions.store import MODEL_FILE, ModelStore, VersionStatus


def publish(store: ModelStore, gate: dict | None, *, make_current: bool = False):
    def write(folder: Path) -> dict:
        (folder / MODEL_FILE).write_bytes(b"weights")
        return {"labels": ["a", "b"], "gate": gate}

    return store.publish("3", write, make_current=make_current)


def gate(passed: bool) -> dict:
    return {
        "metric": "accuracy",
        "candidate": 0.9 if passed else 0.4,
        "current": 0.8,
        "passed": passed,
        "clips": 10,
        "reason": "figures",
    }


@pytest.fixture
def store(tmp_path) -> ModelStore:
    store = ModelStore(tmp_path)
    publish(store, None, make_current=True)
    return store


def test_a_passing_version_becomes_current_everywhere(store, redis_conn):
    info = publish(store, gate(True))
    assert promote(store, "3", info, connection=redis_conn) is True
    assert store.get_current("3") == info.version
    assert redis_conn.get(CURRENT_KEY.format("3")) == info.version.encode()
    entry = store.get_history("3")[-1]
    assert entry["action"] == "current" and entry["gate"]["candidate"] == 0.9


def test_a_failing_version_is_kept_and_marked_rejected(store, redis_conn):
    before = store.get_current("3")
    info = publish(store, gate(False))
    assert promote(store, "3", info, connection=redis_conn) is False
    assert store.get_current("3") == before
    assert redis_conn.get(CURRENT_KEY.format("3")) is None
    statuses = {v.version: v.status for v in store.list_versions("3")}
    assert statuses == {before: VersionStatus.CURRENT, info.version: VersionStatus.REJECTED}
    entry = store.get_history("3")[-1]
    assert entry["action"] == "rejected" and entry["previous"] == before
    assert (entry["gate"]["candidate"], entry["gate"]["current"]) == (0.4, 0.8)


def test_forcing_promotes_a_failing_version_and_says_so(store):
    info = publish(store, gate(False))
    assert promote(store, "3", info, connection=None, force=True) is True
    assert store.get_current("3") == info.version
    entry = store.get_history("3")[-1]
    assert entry["action"] == "promote" and "past the gate" in entry["reason"]


def test_a_version_without_a_gate_becomes_current(store):
    info = publish(store, None)
    assert promote(store, "3", info, connection=None) is True
    assert store.get_current("3") == info.version


def test_training_labels_wait_for_every_label_of_an_annotated_control():
    from training.jobs.run import training_labels

    # nobody marked segments yet: the classes train on their own
    wanted = training_labels({"a": 3, "b": 2}, {"Run": 0, "Walk": 0}, min_per_label=2)
    assert (wanted.labels, wanted.timeline_labels, wanted.short) == (["a", "b"], [], {})
    # segments started: each timeline label needs its videos too
    wanted = training_labels({"a": 3, "b": 2}, {"Run": 1, "Walk": 0}, min_per_label=2)
    assert wanted.short == {"timeline:Run": 1, "timeline:Walk": 0}
    assert wanted.timeline_labels == ["Run"]  # what "Start training" would train on
    # one class is no classifier; the timeline alone still trains
    wanted = training_labels({"a": 4, "b": 0}, {"Run": 5}, min_per_label=1)
    assert wanted.labels == [] and wanted.timeline_labels == ["Run"]
    assert wanted.short == {"b": 0}
