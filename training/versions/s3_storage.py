"""Versions in an S3-compatible object store (``MODEL_STORE_URL=s3://bucket/prefix``).

Several backends and workers on different machines share versions without a shared
filesystem (docs/kubernetes.md). S3 has no rename, no append and no lock, so:

- **A version is visible only once complete.** Its number is claimed first (``numbers/<N>``,
  written with ``If-None-Match: *``: one writer wins each number), every file is uploaded,
  and ``meta.json`` goes last: a version is listed, read or made current only through its
  ``meta.json``, so a half-upload is never a version.
- **The pointer moves by a conditional write.** ``current`` is JSON ``{version, set_at}``,
  replaced with ``If-Match: <etag read>`` (``If-None-Match: *`` when there is none): of two
  writers one wins, the other reads again and retries, so the ``previous`` each records is
  exact. ``set_at`` makes every write's content, hence its ETag, unique.
- **History appends** are the same read-modify-write with ``If-Match``, retried on conflict.
- **A local read-through cache**: a version's files are fetched once into the store's root
  (``MODEL_DIR``, the same layout as a local store), into a temporary folder renamed into
  place, so ``VersionInfo.model_path`` is a local file and loaders need no change. Versions
  never change, so the cache never goes stale.

Credentials come from boto3's usual sources (``AWS_ACCESS_KEY_ID``...); they are never logged,
and errors name the operation and S3's error code only.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath

import boto3
import botocore.exceptions
from botocore.config import Config

from training.versions import retention
from training.versions.names import VERSION_RE, new_version_name
from training.versions.storage import (
    META_FILE,
    CurrentVersion,
    StorageUnavailable,
    WriteConflict,
    stamp_meta,
)

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 50
"""Conditional writes tried before giving up (WriteConflict); each loss means another writer
succeeded, so this bounds only a storm of concurrent writers."""

RETRY_WAIT_MAX_S = 0.05
"""Upper bound, in seconds, of the random wait before retrying a lost conditional write."""

STALE_UPLOAD_S = 3600.0
"""Seconds after which a version's files without a ``meta.json`` are a dead publisher's
leftovers (or a dead pruner's) and are deleted."""

_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


@functools.lru_cache(maxsize=8)
def _client(endpoint_url: str):
    """One client per endpoint and process (thread-safe, and slow to build)."""
    config = Config(retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Storage:
    """The :class:`~training.versions.storage.VersionStorage` of a bucket and prefix.

    Args:
        bucket: the bucket, which must exist.
        prefix: the keys' prefix inside it ('' for the whole bucket).
        cache_root: this machine's folder for cached versions (the store's root).
        endpoint_url: an S3-compatible server's address ('' for AWS).
    """

    def __init__(self, bucket: str, prefix: str, cache_root: Path, endpoint_url: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cache_root = Path(cache_root)
        self.client = _client(endpoint_url)

    def _key(self, project: str, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, project, *parts) if p)

    def _call(self, operation: str, **kwargs):
        """One S3 call; errors become StorageUnavailable (an OSError) naming the operation."""
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _CONFLICT_CODES or _code(exc) in _MISSING_CODES:
                raise
            raise StorageUnavailable(f"S3 {operation} on {self.bucket}: {_code(exc)}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageUnavailable(f"S3 {operation} on {self.bucket}: {exc}") from None

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when there is none."""
        try:
            answer = self._call("get_object", Key=key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return None
            raise StorageUnavailable(f"S3 get_object on {self.bucket}: {_code(exc)}") from None
        return answer["Body"].read(), answer["ETag"]

    def _put_if(self, key: str, body: bytes, etag: str | None) -> bool:
        """Write only if the object is still ``etag`` (absent when None); False if not."""
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self._call("put_object", Key=key, Body=body, **condition)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _CONFLICT_CODES:
                return False
            raise StorageUnavailable(f"S3 put_object on {self.bucket}: {_code(exc)}") from None
        return True

    def _update(self, key: str, change, what: str):
        """Read-modify-write ``key`` with a conditional write, retried while others win.
        ``change(old bytes or None)`` returns (new bytes, result)."""
        for _ in range(WRITE_ATTEMPTS):
            got = self._get(key)
            body, result = change(got[0] if got else None)
            if self._put_if(key, body, got[1] if got else None):
                return result
            time.sleep(random.uniform(0, RETRY_WAIT_MAX_S))
        raise WriteConflict(f"{what}: other writers won {WRITE_ATTEMPTS} times in a row")

    def _list(self, prefix: str, **kwargs) -> list[dict]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, **kwargs
        )
        try:
            return [page for page in pages]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            code = _code(exc) if isinstance(exc, botocore.exceptions.ClientError) else exc
            raise StorageUnavailable(f"S3 list_objects_v2 on {self.bucket}: {code}") from None

    def _keys(self, prefix: str) -> list[dict]:
        return [obj for page in self._list(prefix) for obj in page.get("Contents", [])]

    def list_projects(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self._list(base, Delimiter="/")
        found = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
        names = [name[len(base) :].rstrip("/") for name in found]
        return sorted(n for n in names if self.version_names(n))

    def read_pointer(self, project: str) -> CurrentVersion | None:
        got = self._get(self._key(project, "current"))
        if got is None:
            return None
        pointer = json.loads(got[0])
        return CurrentVersion(pointer["version"], float(pointer["set_at"]))

    def write_pointer(self, project: str, version: str) -> str | None:
        def change(old: bytes | None) -> tuple[bytes, str | None]:
            previous = json.loads(old)["version"] if old else None
            return json.dumps({"version": version, "set_at": time.time()}).encode(), previous

        return self._update(self._key(project, "current"), change, f"project {project}'s pointer")

    def read_history(self, project: str) -> str:
        got = self._get(self._key(project, "history.jsonl"))
        return got[0].decode() if got else ""

    def append_history(self, project: str, line: bytes) -> None:
        key = self._key(project, "history.jsonl")
        self._update(key, lambda old: ((old or b"") + line, None), f"project {project}'s history")

    def version_names(self, project: str) -> list[str]:
        base = self._key(project, "versions") + "/"
        names = []
        for obj in self._keys(base):
            rel = PurePosixPath(obj["Key"][len(base) :])
            if rel.parts[1:] == (META_FILE,) and VERSION_RE.match(rel.parts[0]):
                names.append(rel.parts[0])
        return names

    def folder_of(self, project: str, version: str) -> Path:
        return self.cache_root / project / "versions" / version

    def read_meta(self, project: str, version: str) -> dict | None:
        """From the bucket, never the cache: whether the version still exists (another pod
        may have pruned it) is what callers ask."""
        got = self._get(self._key(project, "versions", version, META_FILE))
        return json.loads(got[0]) if got else None

    def local_folder(self, project: str, version: str) -> Path:
        """The cached copy, fetched first if this machine has none (into a temporary folder
        renamed into place: a reader never sees half of it)."""
        target = self.folder_of(project, version)
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent.parent))
        try:
            base = self._key(project, "versions", version) + "/"
            for obj in self._keys(base):
                rel = PurePosixPath(obj["Key"][len(base) :])
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    continue  # not a key this store writes: never a path outside the cache
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                self._call("download_file", Key=obj["Key"], Filename=str(tmp / rel))
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # another thread's copy is as good as ours
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _claim_number(self, project: str) -> int:
        """The next number no other publisher has: a claim object written if absent."""
        claimed = self._keys(self._key(project, "numbers") + "/")
        numbers = [int(o["Key"].rsplit("/", 1)[1]) for o in claimed if o["Key"][-1].isdigit()]
        existing = [int(VERSION_RE.match(n).group(1)) for n in self.version_names(project)]
        number = 1 + max(numbers + existing, default=0)
        for _ in range(WRITE_ATTEMPTS):
            if self._put_if(self._key(project, "numbers", str(number)), b"", None):
                return number
            number += 1
        raise WriteConflict(f"project {project}: no free version number after {WRITE_ATTEMPTS}")

    def add_version(self, project: str, staging: Path, meta: dict) -> str:
        version = new_version_name(self._claim_number(project))
        base = self._key(project, "versions", version)
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            key = f"{base}/{path.relative_to(staging).as_posix()}"
            self._call("upload_file", Filename=str(path), Key=key)
        text = stamp_meta(meta, project, version)
        (staging / META_FILE).write_text(text)
        if not self._put_if(f"{base}/{META_FILE}", text.encode(), None):
            raise WriteConflict(f"project {project}: {version} was published by another writer")
        self.folder_of(project, version).parent.mkdir(parents=True, exist_ok=True)
        staging.rename(self.folder_of(project, version))  # this machine has it already
        return version

    def remove_version(self, project: str, version: str) -> None:
        """``meta.json`` first (the version is gone at once), then its other files."""
        base = self._key(project, "versions", version)
        self._call("delete_object", Key=f"{base}/{META_FILE}")
        self._delete_keys([o["Key"] for o in self._keys(base + "/")])
        if self.folder_of(project, version).is_dir():
            pdir = self.cache_root / project
            retention.move_aside(pdir / "versions", pdir, version)

    def finish_removals(self, project: str) -> None:
        """Delete cached copies moved aside, and files of versions that never got (or lost)
        their ``meta.json`` longer than STALE_UPLOAD_S ago."""
        retention.delete_moved_aside(self.cache_root / project)
        base = self._key(project, "versions") + "/"
        groups: dict[str, list[dict]] = {}
        for obj in self._keys(base):
            groups.setdefault(obj["Key"][len(base) :].split("/")[0], []).append(obj)
        now = time.time()
        for objects in groups.values():
            if any(o["Key"].endswith("/" + META_FILE) for o in objects):
                continue
            if all(now - o["LastModified"].timestamp() > STALE_UPLOAD_S for o in objects):
                self._delete_keys([o["Key"] for o in objects])

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            self._call("delete_objects", Delete={"Objects": chunk, "Quiet": True})
