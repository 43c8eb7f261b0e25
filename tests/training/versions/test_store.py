"""The model store: immutable versions, an atomic current pointer, concurrent publishers,
and the append-only history behind each version's status and the rollback target.

Tests taking ``make_store`` run twice: on a local folder (MODEL_DIR) and on a bucket of a real
S3-compatible server process on loopback (moto's server mode, tests/support/s3_server.py:
no MinIO can be installed here), as MODEL_STORE_URL configures it."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest

from training.settings import Settings
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


@pytest.fixture(params=["local", "s3"])
def make_store(request, tmp_path):
    """``make_store(keep_rejected=5)``: the store under test; each call opens the same one."""
    if request.param == "local":
        return lambda keep_rejected=5: ModelStore(tmp_path, keep_rejected=keep_rejected)
    env = request.getfixturevalue("s3_env")
    settings = Settings(
        model_dir=tmp_path / "cache",
        model_store_url=env["MODEL_STORE_URL"],
        s3_endpoint_url=env["S3_ENDPOINT_URL"],
    )
    return lambda keep_rejected=5: ModelStore.from_settings(
        dataclasses.replace(settings, keep_rejected_versions=keep_rejected)
    )


def writer(labels=("a", "b"), fail: bool = False):
    def write(folder: Path) -> dict:
        (folder / MODEL_FILE).write_bytes(b"weights")
        if fail:
            raise RuntimeError("disk full")
        return {"labels": list(labels), "sampling": {"frames": 8, "height": 64, "width": 64}}

    return write


def test_publish_makes_an_immutable_version_and_points_current_at_it(make_store):
    store = make_store()
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


def test_a_failed_write_publishes_nothing_and_leaves_no_staging(make_store):
    store = make_store()
    with pytest.raises(RuntimeError, match="disk full"):
        store.publish("3", writer(fail=True))
    assert store.list_versions("3") == []
    assert store.get_current("3") is None
    assert not list((store.root / "3").glob(".staging-*"))


def test_a_write_without_a_model_file_is_refused(make_store):
    with pytest.raises(StoreError, match=MODEL_FILE):
        make_store().publish("3", lambda folder: {"labels": ["a"]})


def test_concurrent_publishers_get_distinct_versions(make_store):
    store = make_store()
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


def test_unknown_versions_and_unsafe_project_ids_are_refused(make_store):
    store = make_store()
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


def test_history_records_each_change_and_statuses_follow_it(make_store):
    store = make_store()
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


def test_rollback_walks_back_through_the_versions_that_were_current(make_store):
    store = make_store()
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


def test_a_project_without_history_still_lists_its_versions(make_store):
    store = make_store()
    v1 = store.publish("3", writer(), make_current=False).version
    assert statuses(store, "3") == {v1: VersionStatus.AVAILABLE}
    assert store.get_history("3") == [] and store.get_rollback_target("3") is None
    with pytest.raises(StoreError):
        store.record_rejection("3", "v7-20260101-000000", "no such version")


def test_history_lines_from_concurrent_writers_never_interleave(make_store):
    store = make_store()
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
    history = store.get_history("3")
    assert len(history) == 100
    assert all(entry["reason"] == long_reason for entry in history)
    assert store.get_current("3") in versions


def test_a_torn_last_line_is_ignored(tmp_path):
    store = ModelStore(tmp_path)
    v1 = store.publish("3", writer()).version
    with open(tmp_path / "3" / HISTORY_FILE, "a") as fh:
        fh.write('{"version": "v2-2026')  # a writer died mid-line
    assert [e["version"] for e in store.get_history("3")] == [v1]
    assert statuses(store, "3") == {v1: VersionStatus.CURRENT}


# pruning rejected versions (KEEP_REJECTED_VERSIONS)


def reject(store: ModelStore, project: str = "3") -> str:
    """Publish a version and record it as the gate's rejection, as a failed training run does."""
    version = store.publish(project, writer(), make_current=False).version
    store.record_rejection(project, version, "worse than the current one")
    return version


def on_disk(store: ModelStore, project: str = "3") -> list[str]:
    """The versions the storage holds (a folder's entries; a bucket's meta.json objects)."""
    return sorted(store.storage.version_names(project))


def test_rejected_versions_past_the_newest_are_pruned(make_store):
    store = make_store(keep_rejected=3)
    v1 = store.publish("3", writer()).version
    v2 = store.publish("3", writer()).version
    rejected = [reject(store) for _ in range(8)]
    kept, pruned = rejected[-3:], rejected[:-3]

    assert on_disk(store) == sorted([v1, v2, *kept])
    assert not list((store.root / "3").glob(".pruned-*"))
    assert statuses(store, "3") == {
        v1: VersionStatus.PREVIOUS,
        v2: VersionStatus.CURRENT,
        **dict.fromkeys(kept, VersionStatus.REJECTED),
    }
    assert store.get_statuses("3") == statuses(store, "3")  # nothing for the pruned ones
    assert store.get_current("3") == v2 and store.get_rollback_target("3") == v1
    history = store.get_history("3")
    assert [e["version"] for e in history if e["action"] == "pruned"] == pruned
    assert all("KEEP_REJECTED_VERSIONS" in e["reason"] for e in history if e["action"] == "pruned")
    for version in pruned:
        with pytest.raises(StoreError):
            store.set_current("3", version, action="promote")
    assert store.get_current("3") == v2

    # Rollback still works, and numbers are never reused.
    assert store.set_current("3", v1, action="rollback", reason="test") == v2
    assert store.publish("3", writer(), make_current=False).version.startswith("v11-")


def test_pruning_spares_what_is_or_was_current_and_what_is_available(make_store):
    store = make_store(keep_rejected=1)
    v1 = store.publish("3", writer()).version
    r2 = reject(store)
    available = store.publish("3", writer(), make_current=False).version  # never gated
    r4 = reject(store)
    assert on_disk(store) == sorted([v1, available, r4])  # r2 pruned: r4 is the newest

    store.set_current("3", r4, action="promote", reason="by hand")  # no longer "rejected"
    r5, r6 = reject(store), reject(store)
    assert on_disk(store) == sorted([v1, available, r4, r6])
    assert [e["version"] for e in store.get_history("3") if e["action"] == "pruned"] == [r2, r5]
    assert statuses(store, "3") == {
        v1: VersionStatus.PREVIOUS,
        available: VersionStatus.AVAILABLE,
        r4: VersionStatus.CURRENT,
        r6: VersionStatus.REJECTED,
    }
    assert store.get_rollback_target("3") == v1


def test_the_default_keeps_five_and_publishing_alone_prunes_too(make_store):
    store = make_store()
    assert store.keep_rejected == 5
    store.publish("3", writer())
    rejected = [reject(store) for _ in range(7)]
    assert [v for v in on_disk(store) if v in rejected] == sorted(rejected[2:])

    # A store written before pruning existed (or with a larger KEEP_REJECTED_VERSIONS) is
    # brought down to size by the next publish, even one the gate passes.
    smaller = make_store(keep_rejected=2)
    smaller.publish("3", writer())
    assert [v for v in on_disk(store) if v in rejected] == sorted(rejected[-2:])


def test_a_version_moved_aside_by_a_dead_pruner_is_deleted(tmp_path):
    store = ModelStore(tmp_path)
    store.publish("3", writer())
    leftover = tmp_path / "3" / ".pruned-v9-20260101-000000"
    (leftover / "sub").mkdir(parents=True)
    (leftover / MODEL_FILE).write_bytes(b"weights")
    store.publish("3", writer())
    assert not leftover.exists()


def test_keep_rejected_versions_is_at_least_one(tmp_path):
    with pytest.raises(ValueError, match="KEEP_REJECTED_VERSIONS"):
        ModelStore(tmp_path, keep_rejected=0)
    with pytest.raises(ValueError, match="KEEP_REJECTED_VERSIONS"):
        Settings(keep_rejected_versions=0)


def test_models_list_and_rollback_after_pruning(tmp_path, capsys):
    """What ``videoloop models list`` and ``rollback`` do, in-process, on a pruned store."""
    import argparse

    from backend.cli.models import cmd_models

    store = ModelStore(tmp_path, keep_rejected=1)
    v1, v2 = (store.publish("3", writer()).version for _ in range(2))
    r3, r4 = reject(store), reject(store)
    settings = Settings(model_dir=tmp_path, redis_url="")
    listing = argparse.Namespace(project="3", models_command="list", json=True)
    assert cmd_models(listing, settings) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["status"]) for r in rows] == [
        (v1, "previous"),
        (v2, "current"),
        (r4, "rejected"),
    ]
    assert r3 not in {r["version"] for r in rows}
    assert cmd_models(argparse.Namespace(project="3", models_command="rollback"), settings) == 0
    assert store.get_current("3") == v1


def test_making_a_version_current_waits_for_a_prune_in_progress(tmp_path):
    """Both take the project's lock: a prune cannot delete a version between set_current's
    check that it exists and its write of the pointer."""
    from training.versions.retention import project_lock

    store = ModelStore(tmp_path)
    v1 = store.publish("3", writer()).version
    v2 = store.publish("3", writer(), make_current=False).version
    done = threading.Event()
    with project_lock(tmp_path / "3"):
        thread = threading.Thread(target=lambda: (store.set_current("3", v2), done.set()))
        thread.start()
        assert not done.wait(0.5)  # blocked on the lock
        assert store.get_current("3") == v1
    thread.join(10)
    assert done.is_set() and store.get_current("3") == v2
