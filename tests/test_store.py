"""The model store: immutable versions, an atomic current pointer, concurrent publishers,
and the append-only history behind each version's status and the rollback target."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from training.versions.store import (
    HISTORY_FILE,
    META_FILE,
    MODEL_FILE,
    HistoryAction,
    ModelStore,
    StoreError,
    VersionStatus,
    validate_project,
)


def writer(labels=("a", "b"), fail: bool = False):
    def write(folder: Path) -> dict:
        (folder / MODEL_FILE).write_bytes(b"weights")
        if fail:
            raise RuntimeError("disk full")
        return {"labels": list(labels), "sampling": {"frames": 8, "height": 64, "width": 64}}

    return write


def test_publish_makes_an_immutable_version_and_points_current_at_it(tmp_path):
    store = ModelStore(tmp_path)
    assert store.get_current("3") is None and store.get_current_info("3") is None
    first = store.publish("3", writer())
    assert first.version.startswith("v1-")
    assert store.get_current("3") == first.version
    assert json.loads((first.path / META_FILE).read_text())["labels"] == ["a", "b"]
    assert first.meta["project"] == "3" and first.meta["version"] == first.version

    second = store.publish("3", writer(("a", "b", "c")), make_current=False)
    assert second.version.startswith("v2-")
    assert store.get_current("3") == first.version  # not made current
    store.set_current("3", second.version)
    assert store.get_current_info("3").labels == ["a", "b", "c"]
    assert [v.version for v in store.list_versions("3")] == [first.version, second.version]
    assert store.list_projects() == ["3"]


def test_a_failed_write_publishes_nothing_and_leaves_no_staging(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(RuntimeError, match="disk full"):
        store.publish("3", writer(fail=True))
    assert store.list_versions("3") == []
    assert store.get_current("3") is None
    assert not list((tmp_path / "3").glob(".staging-*"))


def test_a_write_without_a_model_file_is_refused(tmp_path):
    with pytest.raises(StoreError, match=MODEL_FILE):
        ModelStore(tmp_path).publish("3", lambda folder: {"labels": ["a"]})


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    store = ModelStore(tmp_path)
    published: list[str] = []
    threads = [
        threading.Thread(target=lambda: published.append(store.publish("3", writer()).version))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = sorted(int(v.split("-")[0][1:]) for v in published)
    assert numbers == list(range(1, 9))
    assert store.get_current("3") in published


def test_unknown_versions_and_unsafe_project_ids_are_refused(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(StoreError):
        store.set_current("3", "v9-20260101-000000")
    with pytest.raises(StoreError):
        store.get_version("3", "../../etc")
    for bad in ("..", "a/b", "", "x" * 65):
        with pytest.raises(ValueError):
            validate_project(bad)


def test_stale_staging_folders_of_dead_publishers_are_cleaned(tmp_path):
    import os

    store = ModelStore(tmp_path)
    store.publish("3", writer())
    stale = tmp_path / "3" / ".staging-dead"
    stale.mkdir()
    os.utime(stale, (0, 0))
    fresh = tmp_path / "3" / ".staging-alive"
    fresh.mkdir()
    assert store.cleanup_staging("3") == 1
    assert not stale.exists() and fresh.exists()


def statuses(store: ModelStore, project: str) -> dict[str, str]:
    return {v.version: v.status for v in store.list_versions(project)}


def test_history_records_each_change_and_statuses_follow_it(tmp_path):
    store = ModelStore(tmp_path)
    v1 = store.publish("3", writer()).version
    v2 = store.publish("3", writer()).version
    v3 = store.publish("3", writer(), make_current=False).version
    v4 = store.publish("3", writer(), make_current=False).version
    store.record_rejection("3", v3, "accuracy 0.4 < 0.9", candidate=0.4, current=0.9)
    assert statuses(store, "3") == {
        v1: VersionStatus.PREVIOUS,
        v2: VersionStatus.CURRENT,
        v3: VersionStatus.REJECTED,
        v4: VersionStatus.AVAILABLE,
    }
    history = store.get_history("3")
    assert [(e["version"], e["action"]) for e in history] == [
        (v1, "current"),
        (v2, "current"),
        (v3, "rejected"),
    ]
    assert history[1]["previous"] == v1 and history[2]["previous"] == v2
    assert history[2]["candidate"] == 0.4 and history[2]["reason"] == "accuracy 0.4 < 0.9"
    assert all(isinstance(e["time"], float) for e in history)

    # Promoting a rejected version by hand makes it current; it is no longer "rejected".
    assert store.set_current("3", v3, action="promote", reason="by hand") == v2
    assert statuses(store, "3")[v3] == VersionStatus.CURRENT
    assert statuses(store, "3")[v2] == VersionStatus.PREVIOUS
    assert store.get_version("3", v3).status is None  # only list_versions derives it
    with pytest.raises(ValueError):
        store.set_current("3", v1, action=HistoryAction.REJECTED)


def test_rollback_walks_back_through_the_versions_that_were_current(tmp_path):
    store = ModelStore(tmp_path)
    v1, v2, v3 = (store.publish("3", writer()).version for _ in range(3))
    rejected = store.publish("3", writer(), make_current=False).version
    store.record_rejection("3", rejected, "worse")
    assert store.get_rollback_target("3") == v2  # never to a rejected version
    store.set_current("3", v2, action="rollback", reason="test")
    assert store.get_rollback_target("3") == v1  # on back, not forth to v3
    store.set_current("3", v1, action="rollback", reason="test")
    assert store.get_rollback_target("3") is None
    store.set_current("3", v3, action="promote", reason="test")
    assert store.get_rollback_target("3") == v1
    assert [e["action"] for e in store.get_history("3")][-3:] == ["rollback", "rollback", "promote"]


def test_a_project_without_history_still_lists_its_versions(tmp_path):
    store = ModelStore(tmp_path)
    v1 = store.publish("3", writer(), make_current=False).version
    assert statuses(store, "3") == {v1: VersionStatus.AVAILABLE}
    assert store.get_history("3") == [] and store.get_rollback_target("3") is None
    with pytest.raises(StoreError):
        store.record_rejection("3", "v7-20260101-000000", "no such version")


def test_history_lines_from_concurrent_writers_never_interleave(tmp_path):
    store = ModelStore(tmp_path)
    versions = [store.publish("3", writer(), make_current=False).version for _ in range(4)]
    long_reason = "x" * 3000  # a line longer than a small buffer would hold

    def churn(version: str) -> None:
        for _ in range(25):
            store.set_current("3", version, action="promote", reason=long_reason)

    threads = [threading.Thread(target=churn, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "3" / HISTORY_FILE).read_text().splitlines()
    assert len(lines) == 100
    assert all(json.loads(line)["reason"] == long_reason for line in lines)
    assert store.get_current("3") in versions


def test_a_torn_last_line_is_ignored(tmp_path):
    store = ModelStore(tmp_path)
    v1 = store.publish("3", writer()).version
    with open(tmp_path / "3" / HISTORY_FILE, "a") as fh:
        fh.write('{"version": "v2-2026')  # a writer died mid-line
    assert [e["version"] for e in store.get_history("3")] == [v1]
    assert statuses(store, "3") == {v1: VersionStatus.CURRENT}
