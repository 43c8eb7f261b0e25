"""Turn a task's video reference into a local file, with a bounded download cache.

Shared by serving and the training worker. Fetching goes through label-studio-sdk's
``get_local_path``, which knows every URL shape Label Studio produces:

* ``/data/upload/<project>/<file>``: it first asks ``/storage-data/uploaded/?filepath=...``
  and on an HTTP error falls back to ``/data/upload/...`` (the form Label Studio 1.23 serves);
* ``/data/local-files/?d=<path>``: read from disk when ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``
  (or ``LOCAL_FILES_DOCUMENT_ROOT``) is set in the environment, else downloaded;
* ``s3://``, ``gs://``, ``azure-blob://``: ``<LS>/tasks/<task_id>/presign/?fileuri=<b64>``,
  which redirects to the bucket (requests drops the token on that cross-host redirect);
* ``http(s)://...``: downloaded, with the token only when the host is Label Studio's.

Plain local paths and ``file://`` URLs are answered here without the sdk (the CLI uses them).

Why our own cache layer around the sdk's: the sdk caches as ``<cache_dir>/<md5(url)[:8]>__
<basename>`` and skips the download when that file exists, but (1) it writes the body straight
to that path, so a crash or a concurrent reader sees a truncated file that is then "cached"
forever; (2) for ``/data/upload`` URLs served through the legacy fallback it re-requests the
failing ``/storage-data`` URL on every hit before finding the cached fallback file; (3) it
never evicts; (4) with no ``image_dir`` it creates ``~/.local/share/label-studio``; (5) it
sends requests without a timeout. So each download goes into a fresh temporary folder that
is renamed into ``<cache_dir>/<sha256(host + url)>/`` once complete; a hit is that folder
existing, and makes no request at all. Entries are touched on hit and the least recently
used are deleted once the cache exceeds its bound. The sdk reads the whole body into memory
(``r.content``) before writing it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils import io as ls_io

from training.settings import Settings
from training.video.diskcache import TMP_PREFIX, evict_lru

log = logging.getLogger(__name__)

MEDIA_SUBDIR = "media"
"""The media cache's folder under CACHE_DIR."""

CONNECT_TIMEOUT_S = 10.0
"""Seconds to wait for a media server to accept a connection."""

READ_TIMEOUT_S = 120.0
"""Seconds to wait between bytes of a media download."""

_LS_RELATIVE_PREFIXES = ("/data/", "data/", "/upload/", "upload/", "/storage-data/")
_CLOUD_PREFIXES = ("s3:", "gs:", "azure-blob:")


class MediaError(RuntimeError):
    """A video reference cannot be turned into a local file (never carries the API key)."""


def get_video_url(data: Mapping, value: str) -> str:
    """The video reference in a task's ``data`` for ``<Video value="$video">``.

    Args:
        data: the task's ``data`` dict.
        value: the <Video> ``value`` attribute ("$video") or the bare key ("video").

    Raises:
        MediaError: the key is missing or not a non-empty string.
    """
    key = value[1:] if value.startswith("$") else value
    url = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(url, str) or not url.strip():
        raise MediaError(f"task data has no video URL under {key!r}")
    return url.strip()


def is_label_studio_relative(url: str) -> bool:
    """True for references that only mean something on a Label Studio host (/data/...)."""
    return url.startswith(_LS_RELATIVE_PREFIXES)


def is_cloud_uri(url: str) -> bool:
    return url.startswith(_CLOUD_PREFIXES)


class _TimeoutSession(requests.Session):
    """A session whose requests time out; the sdk passes none."""

    def request(self, method, url, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", (CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        return super().request(method, url, **kwargs)


class MediaResolver:
    """Resolves video references to local files; thread-safe, one per process is enough.

    Several processes may share one cache folder: entries appear by atomic rename, and
    eviction tolerates entries that vanish under it.
    """

    def __init__(
        self,
        cache_dir: Path | str,
        *,
        max_bytes: int,
        label_studio_url: str = "",
        api_key: str = "",
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.max_bytes = int(max_bytes)
        self._url = label_studio_url.rstrip("/")
        self._key = api_key
        self._fallback: tuple[str, str] = ("", "")
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaResolver:
        return cls(
            Path(settings.cache_dir) / MEDIA_SUBDIR,
            max_bytes=settings.cache_max_mb * 1024 * 1024,
            label_studio_url=settings.label_studio_url,
            api_key=settings.label_studio_api_key,
        )

    def set_fallback_credentials(self, hostname: str, access_token: str) -> None:
        """Label Studio's own host and token (from /setup), used only where the environment
        gave none: LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY win (DESIGN.md)."""
        if hostname or access_token:
            self._fallback = ((hostname or "").rstrip("/"), access_token or "")

    def _credentials(self) -> tuple[str, str]:
        return (self._url or self._fallback[0], self._key or self._fallback[1])

    def resolve(self, url: str, task_id: int | str | None = None) -> Path:
        """A local path holding the video ``url`` refers to.

        Args:
            url: a task's video reference (any form in the module docstring).
            task_id: the task's id; required for cloud URIs (the presign endpoint is per task).

        Raises:
            MediaError: no such local file, Label Studio URL or key missing for a reference
                that needs them, or the download failed (HTTP error, connection refused).
        """
        url = url.strip()
        if not url:
            raise MediaError("empty video URL")
        if url.startswith("file://"):
            return self._local(unquote(urlparse(url).path), url)
        remote = (
            is_label_studio_relative(url)
            or is_cloud_uri(url)
            or url.startswith(("http:", "https:"))
        )
        if not remote:
            return self._local(url, url)
        return self._remote(url, task_id)

    def _local(self, path_text: str, url: str) -> Path:
        path = Path(path_text).expanduser()
        if not path.is_file():
            raise MediaError(f"cannot read {url}: no such file")
        return path

    def _remote(self, url: str, task_id: int | str | None) -> Path:
        hostname, token = self._credentials()
        needs_ls = is_label_studio_relative(url) or is_cloud_uri(url)
        if needs_ls:
            if not hostname:
                raise MediaError(f"cannot fetch {url}: LABEL_STUDIO_URL is not set")
            if not hostname.startswith(("http://", "https://")):
                raise MediaError(f"cannot fetch {url}: LABEL_STUDIO_URL must start with http(s)://")
            if not token:
                raise MediaError(f"cannot fetch {url}: LABEL_STUDIO_API_KEY is not set")
        if is_cloud_uri(url) and task_id is None:
            raise MediaError(f"cannot fetch {url}: cloud storage URIs need the task id")

        # The same relative URL on another Label Studio is another file.
        key_text = (hostname + "\n" if needs_ls else "\n") + url
        key = hashlib.sha256(key_text.encode()).hexdigest()[:32]
        entry = self.cache_dir / key
        hit = self._cached_file(entry)
        if hit is not None:
            return hit
        try:
            with self._lock_for(key):
                hit = self._cached_file(entry)  # another thread may have fetched it meanwhile
                if hit is not None:
                    return hit
                path = self._download(url, entry, hostname, token, task_id)
        finally:
            with self._locks_guard:  # a late waiter still holds the lock object; that's fine
                self._locks.pop(key, None)
        self._evict(keep=entry)
        return path

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _cached_file(self, entry: Path) -> Path | None:
        """The file in a complete cache entry, touched so it counts as recently used."""
        try:
            files = [p for p in entry.iterdir() if p.is_file()]
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not files:
            return None
        try:
            os.utime(files[0])
            os.utime(entry)
        except FileNotFoundError:  # evicted by another process just now
            return None
        return files[0]

    def _download(
        self, url: str, entry: Path, hostname: str, token: str, task_id: int | str | None
    ) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.cache_dir))
        started = time.perf_counter()
        try:
            with _TimeoutSession() as session, ls_io.http_session(session):
                fetched = Path(
                    ls_io.get_local_path(
                        url,
                        cache_dir=str(tmp),
                        # a folder that never exists: no reads from, or creation of,
                        # ~/.local/share/label-studio
                        image_dir=str(tmp / "no-upload-dir"),
                        hostname=hostname or None,
                        access_token=token or None,
                        download_resources=True,
                        task_id=task_id,
                    )
                )
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise MediaError(f"cannot fetch {url}: {self._describe(exc, token)}") from None
        if fetched.parent != tmp:  # the sdk answered with a file outside our folder
            shutil.rmtree(tmp, ignore_errors=True)
            return fetched
        try:
            os.rename(tmp, entry)
        except OSError:
            # Another process completed the same entry first: use theirs.
            shutil.rmtree(tmp, ignore_errors=True)
            hit = self._cached_file(entry)
            if hit is None:
                raise MediaError(f"cannot cache {url}: {entry} is in the way") from None
            return hit
        path = entry / fetched.name
        log.info(
            "downloaded %s (%.1f MB) in %.2f s",
            url,
            path.stat().st_size / 1e6,
            time.perf_counter() - started,
        )
        return path

    @staticmethod
    def _describe(exc: Exception, token: str) -> str:
        """A reason for an error message: status and host, never the token or presigned
        query strings (their signatures are credentials too)."""
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            resp = exc.response
            where = urlparse(resp.url)
            text = f"HTTP {resp.status_code} {resp.reason or ''} from {where.scheme}://"
            text += f"{where.netloc}{where.path}"
        elif isinstance(exc, requests.ConnectionError):
            request = getattr(exc, "request", None)
            host = urlparse(request.url).netloc if request is not None else "the server"
            text = f"connection to {host} failed"
        elif isinstance(exc, requests.Timeout):
            text = "timed out"
        else:
            text = f"{type(exc).__name__}: {exc}"
        if token:
            text = text.replace(token, "***")
        return text.strip()

    def _evict(self, keep: Path) -> None:
        """Delete least recently used entries until the cache is under its bound.

        ``keep`` (the entry just fetched) stays even if it alone exceeds the bound: the
        caller is about to read it.
        """
        evict_lru(self.cache_dir, self.max_bytes, keep=keep, what="media cache")


def resolve_media(url: str, settings: Settings, task_id: int | str | None = None) -> Path:
    """One-off resolution (CLI, training jobs); serving keeps one MediaResolver."""
    return MediaResolver.from_settings(settings).resolve(url, task_id)
