"""``videoloop models list|show|promote|rollback`` as a user runs them: subprocesses on a store
with a few published versions, real Redis (the mirror key, the notice, the refresh job)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import run_videoloop

from training.versions.copies import publish_copy
from training.versions.current import CURRENT_CHANNEL, CURRENT_KEY
from training.versions.store import ModelStore, VersionStatus

PROJECT = "7"


videoloop = run_videoloop


@pytest.fixture
def store(tmp_path, trained_model) -> ModelStore:
    """v1, v2, v3 published in turn (v3 current), v4 rejected by the gate."""
    store = ModelStore(tmp_path / "models")
    for _ in range(3):
        publish_copy(store, PROJECT, trained_model.info)
    gate = {
        "metric": "accuracy",
        "candidate": 0.25,
        "current": 0.75,
        "current_version": store.get_current(PROJECT),
        "tolerance": 0.0,
        "passed": False,
        "clips": 8,
        "reason": "accuracy 0.250 on 8 held-out clips is worse than 0.750",
    }
    rejected = publish_copy(
        store,
        PROJECT,
        trained_model.info,
        make_current=False,
        extra_meta={"gate": gate},
        with_pictures=True,
    )
    store.record_rejection(PROJECT, rejected.version, gate["reason"], gate=gate)
    return store


@pytest.fixture
def env(store, tmp_path, redis_url) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "LABEL_"))}
    return {
        **clean,
        "MODEL_DIR": str(store.root),
        "CACHE_DIR": str(tmp_path / "cache"),
        "REDIS_URL": redis_url,
    }


def names(store: ModelStore) -> list[str]:
    return [v.version for v in store.list_versions(PROJECT)]


def test_list_shows_status_accuracy_gate_and_lineage(store, env):
    v1, v2, v3, v4 = names(store)
    result = videoloop("models", "list", "--project", PROJECT, env=env)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.split()[:2] == ["version", "status"]
    assert "gate" in header and "parent" in header and "created" in header
    by_version = {row.split()[0]: row for row in rows}
    assert list(by_version) == [v1, v2, v3, v4]
    assert by_version[v1].split()[1] == "previous"
    assert by_version[v3].split()[1] == "current"
    assert by_version[v4].split()[1] == "rejected"
    assert "0.250 vs 0.750 FAIL" in by_version[v4]
    accuracy = store.get_version(PROJECT, v1).meta["metrics"]["test"]["accuracy"]
    assert f"{accuracy:.3f}" in by_version[v1]

    as_json = videoloop("models", "list", "--project", PROJECT, "--json", env=env)
    assert [r["status"] for r in json.loads(as_json.stdout)] == [
        "previous",
        "previous",
        "current",
        "rejected",
    ]


def test_show_prints_the_meta_and_the_pictures(store, env):
    v4 = names(store)[-1]
    result = videoloop("models", "show", v4, "--project", PROJECT, env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["status"] == "rejected"
    assert shown["meta"]["gate"]["candidate"] == 0.25
    assert shown["meta"]["version"] == v4
    pictures = [Path(p) for p in shown["pictures"]]
    assert {p.name for p in pictures} == {"learning_curve.png", "confusion_matrix.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pictures)


def test_promote_and_rollback_change_the_file_and_the_redis_mirror(store, env, redis_conn):
    v1, v2, v3, v4 = names(store)
    notices = redis_conn.pubsub(ignore_subscribe_messages=True)
    notices.subscribe(CURRENT_CHANNEL)
    key = CURRENT_KEY.format(PROJECT)

    promoted = videoloop("models", "promote", v4, "--project", PROJECT, env=env)
    assert promoted.returncode == 0, promoted.stderr
    change = json.loads(promoted.stdout)
    assert change["previous"] == v3 and change["current"] == v4 and change["changed"]
    assert store.get_current(PROJECT) == v4
    assert redis_conn.get(key) == v4.encode()
    notice = {"project": PROJECT, "version": v4}
    assert notice in received(notices, notice)
    assert change["refresh_job"] == f"refresh-{PROJECT}-{v4}"
    assert change["refresh_job"].encode() in redis_conn.lrange("rq:queue:videoloop-training", 0, -1)
    statuses = {v.version: v.status for v in store.list_versions(PROJECT)}
    assert statuses[v4] == VersionStatus.CURRENT  # promoted by hand past the gate

    rolled = videoloop("models", "rollback", "--project", PROJECT, env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["current"] == v3
    assert store.get_current(PROJECT) == v3 and redis_conn.get(key) == v3.encode()
    for expected in (v2, v1):  # on back through what was current, not forth again
        rolled = videoloop("models", "rollback", "--project", PROJECT, env=env)
        assert json.loads(rolled.stdout)["previous"] != expected
        assert store.get_current(PROJECT) == expected and redis_conn.get(key) == expected.encode()
    actions = [e["action"] for e in store.get_history(PROJECT)]
    assert actions[-4:] == ["promote", "rollback", "rollback", "rollback"]

    nothing_left = videoloop("models", "rollback", "--project", PROJECT, env=env)
    assert nothing_left.returncode == 2
    assert "no earlier current version" in nothing_left.stderr
    assert store.get_current(PROJECT) == v1


def test_promote_refuses_an_unknown_version_and_changes_nothing(store, env, redis_conn):
    before = store.get_current(PROJECT)
    result = videoloop("models", "promote", "v99-20260101-000000", "--project", PROJECT, env=env)
    assert result.returncode == 2
    assert "has no version v99-20260101-000000" in result.stderr
    assert store.get_current(PROJECT) == before
    assert redis_conn.get(CURRENT_KEY.format(PROJECT)) is None

    again = videoloop("models", "promote", before, "--project", PROJECT, env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False


def test_without_redis_only_the_file_changes(store, env):
    del env["REDIS_URL"]
    v1 = names(store)[0]
    result = videoloop("models", "promote", v1, "--project", PROJECT, env=env)
    assert result.returncode == 0, result.stderr
    change = json.loads(result.stdout)
    assert change["redis"] is False and change["refresh_job"] is None
    assert store.get_current(PROJECT) == v1


def received(pubsub, expected: dict, timeout_s: float = 10.0) -> list[dict]:
    """The notices that arrived on a subscription until ``expected`` did (or ``timeout_s``
    passed). Redis' channels are server-wide, not per database: tests in other processes
    publish notices of their own projects on the same channel meanwhile."""
    messages, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline and expected not in messages:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            messages.append(json.loads(message["data"]))
    return messages
