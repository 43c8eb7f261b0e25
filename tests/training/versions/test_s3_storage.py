"""The S3 storage's own guarantees, against a real S3-compatible server process on loopback
(moto's server mode, tests/support/s3_server.py; no MinIO can be installed here): conditional
writes with two writers, a half-uploaded version never visible, the read-through cache of a
second machine, and credentials that never reach a log or a message."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from pathlib import Path

import boto3
import pytest
from s3_server import SECRET_KEY

from training.settings import Settings
from training.versions.s3_storage import S3Storage
from training.versions.storage import StorageUnavailable, WriteConflict
from training.versions.store import MODEL_FILE, ModelStore, StoreError


def open_store(env: dict[str, str], cache: Path) -> ModelStore:
    """A store as a process with this environment opens it; ``cache`` is its MODEL_DIR."""
    settings = Settings(
        model_dir=cache,
        model_store_url=env["MODEL_STORE_URL"],
        s3_endpoint_url=env["S3_ENDPOINT_URL"],
    )
    return ModelStore.from_settings(settings)


def write_model(folder: Path) -> dict:
    (folder / MODEL_FILE).write_bytes(b"weights")
    (folder / "model.tflite").write_bytes(b"flatbuffer")  # any other file travels with it
    (folder / "plots").mkdir()
    (folder / "plots" / "loss.png").write_bytes(b"png")
    return {"labels": ["a", "b"]}


def bucket_of(env: dict[str, str]) -> tuple[str, str]:
    url = env["MODEL_STORE_URL"].removeprefix("s3://")
    return url.split("/", 1)[0], url.split("/", 1)[1]


def client(env: dict[str, str]):
    return boto3.client("s3", endpoint_url=env["S3_ENDPOINT_URL"], region_name="us-east-1")


def test_a_second_machine_reads_versions_through_its_own_cache(s3_env, tmp_path):
    publisher = open_store(s3_env, tmp_path / "machine-a")
    info = publisher.publish("7", write_model)
    reader = open_store(s3_env, tmp_path / "machine-b")  # shares nothing on disk with a

    current = reader.get_current_info("7")
    assert current.version == info.version
    assert current.path == tmp_path / "machine-b" / "7" / "versions" / info.version
    assert current.model_path.read_bytes() == b"weights"
    assert (current.path / "model.tflite").read_bytes() == b"flatbuffer"
    assert (current.path / "plots" / "loss.png").read_bytes() == b"png"
    assert not list((tmp_path / "machine-b" / "7").glob(".download-*"))

    # Cached: the copy is read even once the bucket lost it (versions never change).
    bucket, prefix = bucket_of(s3_env)
    key = f"{prefix}/7/versions/{info.version}/{MODEL_FILE}"
    client(s3_env).delete_object(Bucket=bucket, Key=key)
    assert reader.get_version("7", info.version).model_path.read_bytes() == b"weights"


def test_a_half_uploaded_version_is_never_a_version(s3_env, tmp_path):
    """A publisher that died after uploading its files but before meta.json left no version:
    not listed, not readable, not current-able, and its number is not reused."""
    store = open_store(s3_env, tmp_path / "cache")
    v1 = store.publish("7", write_model).version
    bucket, prefix = bucket_of(s3_env)
    s3 = client(s3_env)
    dead = "v2-20260101-000000"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/7/numbers/2", Body=b"")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/7/versions/{dead}/{MODEL_FILE}", Body=b"half")

    assert [v.version for v in store.list_versions("7")] == [v1]
    # Listing reads each version's meta.json, never its files (`videoloop models list` on a
    # machine that has none of them cached): another machine's cache stays empty.
    other = open_store(s3_env, tmp_path / "other-cache")
    (listed,) = other.list_versions("7")
    assert listed.meta["labels"] and not listed.path.exists()
    assert other.get_version("7", v1).model_path.is_file()  # fetched when asked for
    with pytest.raises(StoreError):
        store.get_version("7", dead)
    with pytest.raises(StoreError):
        store.set_current("7", dead, action="promote")
    assert store.publish("7", write_model).version.startswith("v3-")


def test_two_pointer_writers_one_wins_and_the_other_retries_on_the_new_one(s3_env, tmp_path):
    """S3's conditional write: a writer whose read is stale loses (412) and reads again, so
    the previous version each records in the history is the one it really replaced."""
    machine_a = open_store(s3_env, tmp_path / "a")
    machine_b = open_store(s3_env, tmp_path / "b")
    versions = [machine_a.publish("7", write_model).version for _ in range(3)]
    storage: S3Storage = machine_b.storage  # type: ignore[assignment]
    key = storage._key("7", "current")
    stale = storage._get(key)
    machine_a.set_current("7", versions[0], action="rollback", reason="a moved it")
    assert storage._put_if(key, b'{"version": "x", "set_at": 0}', stale[1]) is False  # loser
    assert machine_a.get_current("7") == versions[0]  # untouched by the loser

    def churn(store: ModelStore, version: str) -> None:
        for _ in range(8):
            store.set_current("7", version, action="promote", reason="race")

    threads = [
        threading.Thread(target=churn, args=(machine_a, versions[1])),
        threading.Thread(target=churn, args=(machine_b, versions[2])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    promotions = [e for e in machine_b.get_history("7") if e["reason"] == "race"]
    assert len(promotions) == 16  # no append lost
    # Each change's previous is the change before it: no two writers read the same pointer.
    # A writer appends its history line after its pointer write, so two machines' lines may
    # land in either order: the changes must chain in some order, from versions[0] to the
    # pointer as it is now.
    changes = Counter((e["previous"], e["version"]) for e in promotions)
    assert _chain_end(changes, versions[0]) == machine_a.get_current("7")


def _chain_end(changes: Counter, start: str) -> str | None:
    """Where a path that takes every (previous, version) change once, each from the version the
    one before it set, ends; None when no order chains them all."""
    if not sum(changes.values()):
        return start
    for (previous, version), left in list(changes.items()):
        if previous == start and left:
            changes[previous, version] -= 1
            end = _chain_end(changes, version)
            changes[previous, version] += 1
            if end is not None:
                return end
    return None


def test_a_writer_that_always_loses_gives_up_with_a_clear_error(s3_env, tmp_path, monkeypatch):
    store = open_store(s3_env, tmp_path / "cache")
    version = store.publish("7", write_model, make_current=False).version
    storage: S3Storage = store.storage  # type: ignore[assignment]
    # Stand-in for a storm of other writers, which one test process cannot produce in order:
    # every conditional write is answered as lost.
    monkeypatch.setattr(storage, "_put_if", lambda key, body, etag: False)
    monkeypatch.setattr("training.versions.s3_storage.WRITE_ATTEMPTS", 3)
    with pytest.raises(WriteConflict, match="project 7's pointer: other writers won 3 times"):
        store.set_current("7", version)


def test_credentials_never_reach_logs_or_messages(s3_env, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # botocore's own debug logging included
    store = open_store(s3_env, tmp_path / "cache")
    store.publish("7", write_model)
    store.list_versions("7")
    missing = dict(s3_env, MODEL_STORE_URL="s3://no-such-bucket-videoloop/models")
    with pytest.raises(StorageUnavailable) as failed:
        open_store(missing, tmp_path / "other").get_current("7")
    assert "NoSuchBucket" in str(failed.value)
    assert SECRET_KEY not in caplog.text and SECRET_KEY not in str(failed.value)
    assert SECRET_KEY not in repr(Settings.from_env())


def test_an_unreachable_store_is_an_oserror_naming_the_operation(s3_env, tmp_path, unused_port):
    down = dict(s3_env, S3_ENDPOINT_URL=f"http://127.0.0.1:{unused_port}")
    with pytest.raises(OSError, match="S3 get_object on"):
        open_store(down, tmp_path / "cache").get_current("7")


@pytest.mark.parametrize(
    "url",
    [
        "http://bucket/models",
        "s3://",
        "s3://user:secret@bucket/x",
        "https://user:secret@minio:9000/bucket",  # wrong scheme and credentials: never echoed
        "s3://user:secret@bucket/x?region=eu",
        "s3://bucket:9000/x",
        "/data",
    ],
)
def test_a_malformed_store_url_is_refused_at_start(url, monkeypatch):
    monkeypatch.setenv("MODEL_STORE_URL", url)
    with pytest.raises(ValueError, match="MODEL_STORE_URL") as refused:
        Settings.from_env()
    assert "secret" not in str(refused.value)


def test_a_key_that_names_an_absolute_path_never_leaves_the_cache(s3_env, tmp_path):
    """Someone with write access to the bucket adds ``.../versions/<v>//<absolute path>``: the
    version's download skips it, and nothing is written outside the machine's cache."""
    publisher = open_store(s3_env, tmp_path / "machine-a")
    info = publisher.publish("7", write_model)
    outside = tmp_path / "outside" / "planted.txt"
    bucket, prefix = bucket_of(s3_env)
    key = f"{prefix}/7/versions/{info.version}/{outside}"  # the key holds "//" + absolute path
    assert f"/{info.version}//" in key
    client(s3_env).put_object(Bucket=bucket, Key=key, Body=b"planted")
    reader = open_store(s3_env, tmp_path / "machine-b")
    assert reader.get_current_info("7").model_path.read_bytes() == b"weights"
    assert not outside.exists()
    assert not [p for p in (tmp_path / "machine-b").rglob("planted.txt")]


def test_the_pointer_holds_the_instant_every_reader_swaps_at(s3_env, tmp_path):
    store = open_store(s3_env, tmp_path / "a")
    info = store.publish("7", write_model)
    bucket, prefix = bucket_of(s3_env)
    body = client(s3_env).get_object(Bucket=bucket, Key=f"{prefix}/7/current")["Body"].read()
    pointer = json.loads(body)
    assert pointer["version"] == info.version
    assert open_store(s3_env, tmp_path / "b").get_pointer("7").set_at == pointer["set_at"]
