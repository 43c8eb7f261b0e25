"""training/versions/current.py: the current-version pointer (file + Redis mirror + notice) and the
pub/sub listener, against the real Redis (an empty database, flushed)."""

from __future__ import annotations

import json
import logging
import os
import queue
import time
from pathlib import Path

import pytest
import redis
from conftest import free_port

from training.versions.current import (
    CURRENT_CHANNEL,
    CURRENT_KEY,
    PointerListener,
    VersionPointer,
)
from training.versions.store import MODEL_FILE, ModelStore, StoreError, VersionInfo


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def publish(store: ModelStore, project: str = "1") -> VersionInfo:
    def write(folder: Path) -> dict:
        (folder / MODEL_FILE).write_bytes(b"stand-in")
        return {"labels": ["a", "b"]}

    return store.publish(project, write, make_current=False)


def subscribe(connection: redis.Redis):
    pubsub = connection.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CURRENT_CHANNEL)
    return pubsub


def next_message(pubsub, version: str, timeout_s: float = 10.0) -> dict:
    """The first notice of ``version``: Redis' channels are server-wide, so tests in other
    processes announce versions of their own on the same channel meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "message":
            notice = json.loads(message["data"])
            if notice.get("version") == version:
                return notice
    pytest.fail("no notice arrived")


def test_set_writes_the_file_then_mirrors_and_announces(store, redis_conn):
    v1, v2 = publish(store), publish(store)
    pointer = VersionPointer(store, redis_conn)
    pubsub = subscribe(redis_conn)
    assert pointer.get("1") is None

    pointer.set("1", v1.version)
    assert store.get_current("1") == pointer.get("1") == v1.version
    assert redis_conn.get(CURRENT_KEY.format("1")) == v1.version.encode()
    assert pointer.get_mirror("1") == v1.version
    assert next_message(pubsub, v1.version) == {"project": "1", "version": v1.version}

    first = pointer.get_current("1")
    pointer.set("1", v2.version)
    second = pointer.get_current("1")
    assert second.version == v2.version
    assert second.set_at == os.stat(store.root / "1" / "current").st_mtime
    assert second.set_at >= first.set_at
    assert next_message(pubsub, v2.version) == {"project": "1", "version": v2.version}
    pubsub.close()


def test_an_unknown_version_changes_nothing(store, redis_conn):
    v1 = publish(store)
    pointer = VersionPointer(store, redis_conn)
    pointer.set("1", v1.version)
    with pytest.raises(StoreError):
        pointer.set("1", "v9-20260101-000000")
    assert pointer.get("1") == pointer.get_mirror("1") == v1.version


def test_redis_down_does_not_fail_the_change(store, caplog):
    v1 = publish(store)
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="training.versions.current"):
        VersionPointer(store, down).set("1", v1.version)
    assert store.get_current("1") == v1.version  # the file, the truth, moved
    assert any("polling the store" in r.getMessage() for r in caplog.records)


def test_without_redis_only_the_file_changes(store):
    v1 = publish(store)
    pointer = VersionPointer(store, None)
    pointer.set("1", v1.version)
    assert pointer.get("1") == v1.version
    assert pointer.get_mirror("1") is None


def test_listener_calls_back_per_notice_and_skips_malformed_ones(store, redis_conn):
    seen: queue.Queue[str] = queue.Queue()

    def callback(project: str) -> None:
        if project == "boom":
            raise RuntimeError("a handler bug must not end the listener")
        seen.put(project)

    listener = PointerListener(redis_conn, callback).start()
    assert listener.connected.wait(10)
    for junk in (b"not json", b"[]", json.dumps({"project": "../etc"}), b'{"version": "v1"}'):
        redis_conn.publish(CURRENT_CHANNEL, junk)
    redis_conn.publish(CURRENT_CHANNEL, json.dumps({"project": "boom"}))
    v1 = publish(store, "7")
    VersionPointer(store, redis_conn).set("7", v1.version)
    assert seen.get(timeout=5) == "7"
    assert seen.empty()
    listener.stop()
    assert not listener.connected.is_set()


def test_listener_resubscribes_after_its_connection_is_killed(store, redis_conn):
    seen: queue.Queue[str] = queue.Queue()
    connects: list[float] = []
    listener = PointerListener(
        redis_conn, seen.put, on_connect=lambda: connects.append(time.monotonic())
    ).start()
    assert listener.connected.wait(10)
    db = redis_conn.connection_pool.connection_kwargs["db"]
    ours = [c for c in redis_conn.client_list(_type="pubsub") if int(c["db"]) == db]
    assert ours
    for client in ours:  # only this test's subscriber, not other databases' users
        redis_conn.client_kill_filter(_id=client["id"])

    # Publish until a notice gets through: ones sent before the resubscription are lost.
    v1 = publish(store)
    pointer = VersionPointer(store, redis_conn)
    deadline = time.monotonic() + 15
    while True:
        pointer.set("1", v1.version)
        try:
            assert seen.get(timeout=0.5) == "1"
            break
        except queue.Empty:
            assert time.monotonic() < deadline, "the listener never came back"
    assert connects  # the catch-up hook ran on subscribing
    current = [c for c in redis_conn.client_list(_type="pubsub") if int(c["db"]) == db]
    assert current and {c["id"] for c in current}.isdisjoint(c["id"] for c in ours)
    listener.stop()
