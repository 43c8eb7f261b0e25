"""The model store: immutable versions, an atomic current pointer, concurrent publishers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from training.store import META_FILE, MODEL_FILE, ModelStore, StoreError, validate_project


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
