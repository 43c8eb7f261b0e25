"""Turn a task's video reference into a local file, with a bounded download cache.

Shared by serving, the training worker and the refresh job, so one media policy holds for
all three (training/video/media_policy.py): which URL shapes are fetched from where is
media_refs.py's; the streamed download, with its address checks, redirects, size cap and
deadline, is download.py's. ``file://`` URLs and local paths are refused unless a caller
passes ``allow_local_files=True`` (tests; the CLI reads its files with ``sample_clip``
directly and never comes here).

Credentials (docs/design.md, "/setup"): LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are one
pair. The host and token /setup sends are used, as a pair, only when the environment sets
neither; a /setup host is not trusted at a non-public address (anyone who can reach /setup
could name an internal one). The key goes only to Label Studio's exact origin.

The cache: each download goes into a fresh temporary folder renamed into
``<cache_dir>/<sha256(host + url)>/`` once complete, so a crash or a concurrent reader never
sees a truncated file as cached; a hit is that folder existing, and makes no request at all.
Entries are touched on hit and the least recently used are deleted once the cache exceeds
its bound.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from training.settings import Settings
from training.video.diskcache import TMP_PREFIX, evict_lru
from training.video.download import Credential, DownloadLimits, HttpStatusError, download
from training.video.media_policy import (
    AddressPolicy,
    MediaError,
    MediaRefused,
    origin_of,
    parse_allowed_hosts,
    redact_url,
)
from training.video.media_refs import (
    FetchPlan,
    is_cloud_uri,
    is_http_url,
    is_label_studio_relative,
    plan_fetch,
)
from training.warn_once import WarnOnce

__all__ = [
    "MEDIA_SUBDIR",
    "MediaError",
    "MediaRefused",
    "MediaResolver",
    "get_video_url",
    "is_cloud_uri",
    "is_label_studio_relative",
    "redact_url",
    "resolve_media",
]

log = logging.getLogger(__name__)
_warn_once = WarnOnce(log)

MEDIA_SUBDIR = "media"
"""The media cache's folder under CACHE_DIR."""

MB = 1024 * 1024


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


def authorization_for(api_key: str) -> str:
    """``Bearer <key>`` for a JWT (a personal access token), else ``Token <key>``, as
    label-studio-sdk's media downloads send it."""
    head = api_key.split(".")[0] if api_key.count(".") == 2 else ""
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error):
        header = None
    is_jwt = isinstance(header, dict) and "alg" in header
    return f"{'Bearer' if is_jwt else 'Token'} {api_key}"


class MediaResolver:
    """Resolves video references to local files; thread-safe, one per process is enough.

    Several processes may share one cache folder: entries appear by atomic rename, and
    eviction tolerates entries that vanish under it.

    Args:
        cache_dir: the media cache's folder.
        max_bytes: the cache's bound (CACHE_MAX_MB).
        label_studio_url, api_key: LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY.
        allowed_hosts: MEDIA_ALLOWED_HOSTS (text or parsed entries).
        max_video_mb, download_deadline_s, max_redirects: MAX_VIDEO_MB,
            DOWNLOAD_DEADLINE_S and MEDIA_MAX_REDIRECTS.
        allow_local_files: read ``file://`` URLs and local paths in place (tests only;
            never on the serving and worker paths).
    """

    def __init__(
        self,
        cache_dir: Path | str,
        *,
        max_bytes: int,
        label_studio_url: str = "",
        api_key: str = "",
        allowed_hosts: str = "",
        max_video_mb: int = Settings.max_video_mb,
        download_deadline_s: float = Settings.download_deadline_s,
        max_redirects: int = Settings.media_max_redirects,
        allow_local_files: bool = False,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.max_bytes = int(max_bytes)
        self.allow_local_files = allow_local_files
        self._url = label_studio_url.strip().rstrip("/")
        self._key = api_key.strip()
        self._fallback: tuple[str, str] = ("", "")
        self._policy = AddressPolicy(origin_of(self._url), parse_allowed_hosts(allowed_hosts))
        self._limits = DownloadLimits(max_video_mb * MB, download_deadline_s, max_redirects)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        if bool(self._url) != bool(self._key):
            _warn_once(
                "half of the Label Studio credentials",
                "%s is set but %s is not: they are used only as a pair, so Label Studio media "
                "cannot be fetched, and the host and token /setup sends are ignored",
                *(
                    ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")
                    if self._url
                    else ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_URL")
                ),
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaResolver:
        """The resolver of the serving and worker paths: local files always refused."""
        return cls(
            Path(settings.cache_dir) / MEDIA_SUBDIR,
            max_bytes=settings.cache_max_mb * MB,
            label_studio_url=settings.label_studio_url,
            api_key=settings.label_studio_api_key,
            allowed_hosts=settings.media_allowed_hosts,
            max_video_mb=settings.max_video_mb,
            download_deadline_s=settings.download_deadline_s,
            max_redirects=settings.media_max_redirects,
        )

    def set_fallback_credentials(self, hostname: str, access_token: str) -> None:
        """Label Studio's host and token as /setup sends them: used, as a pair, only when the
        environment sets neither LABEL_STUDIO_URL nor LABEL_STUDIO_API_KEY (docs/design.md).
        A host that is not an http(s) URL, or a missing half, is ignored."""
        if self._url or self._key:
            return
        host = (hostname or "").strip().rstrip("/")
        token = (access_token or "").strip()
        if host and token and origin_of(host) is not None:
            self._fallback = (host, token)

    def _credentials(self) -> tuple[str, str]:
        if self._url or self._key:
            return self._url, self._key
        return self._fallback

    def resolve(self, url: str, task_id: int | str | None = None) -> Path:
        """A local path holding the video ``url`` refers to.

        Args:
            url: a task's video reference (any shape in training/video/media_refs.py).
            task_id: the task's id; required for cloud URIs (the presign endpoint is per task).

        Raises:
            MediaRefused: the media policy refuses the reference (a local file, an address
                that is not public, a redirect to one, a bad Label Studio path).
            MediaError: Label Studio URL or key missing for a reference that needs them, a
                bad task id, or the download failed (HTTP error, connection refused, too
                large, too slow). Messages name the URL without its query string.
        """
        url = url.strip()
        if not url:
            raise MediaError("empty video URL")
        remote = is_label_studio_relative(url) or is_cloud_uri(url) or is_http_url(url)
        if not remote:
            return self._local(url)
        base, key = self._credentials()
        try:
            if is_label_studio_relative(url) or is_cloud_uri(url):
                self._check_label_studio(base, key)
            plan = plan_fetch(url, base, task_id)
        except MediaError as exc:
            raise _with_context(exc, f"cannot fetch {redact_url(url)}: {exc}") from None
        return self._cached_or_fetched(url, plan, base, key)

    def _local(self, url: str) -> Path:
        if not self.allow_local_files:
            raise MediaRefused(
                f"cannot fetch {redact_url(url)}: local files (file:// URLs and paths) are not "
                "read for tasks; serve the video through Label Studio or over http(s)"
            )
        if url.startswith("file://"):
            path_text = unquote(urlsplit(url).path)
        elif "://" in url:
            raise MediaRefused(f"cannot fetch {redact_url(url)}: unsupported URL scheme")
        else:
            path_text = url
        path = Path(path_text).expanduser()
        if not path.is_file():
            raise MediaError(f"cannot read {redact_url(url)}: no such file")
        return path

    @staticmethod
    def _check_label_studio(base: str, key: str) -> None:
        if not base:
            raise MediaError("LABEL_STUDIO_URL is not set")
        if origin_of(base) is None:
            raise MediaError("LABEL_STUDIO_URL must start with http(s)://")
        if not key:
            raise MediaError("LABEL_STUDIO_API_KEY is not set")

    def _cached_or_fetched(self, url: str, plan: FetchPlan, base: str, key: str) -> Path:
        """The cache entry of ``plan``, downloaded once even when threads ask at once."""
        # The same relative URL on another Label Studio is another file.
        entry_key = hashlib.sha256(plan.cache_text.encode()).hexdigest()[:32]
        entry = self.cache_dir / entry_key
        hit = self._cached_file(entry)
        if hit is not None:
            return hit
        try:
            with self._lock_for(entry_key):
                hit = self._cached_file(entry)  # another thread may have fetched it meanwhile
                if hit is not None:
                    return hit
                path = self._download(url, plan, entry, base, key)
        finally:
            with self._locks_guard:  # a late waiter still holds the lock object; that's fine
                self._locks.pop(entry_key, None)
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

    def _download(self, url: str, plan: FetchPlan, entry: Path, base: str, key: str) -> Path:
        """Fetch ``plan`` into a temporary folder and rename it into place as ``entry``."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.cache_dir))
        started = time.perf_counter()
        origin = origin_of(base) if base and key else None
        credential = Credential(origin, authorization_for(key)) if origin else None
        try:
            size = self._fetch_first(plan, tmp / plan.filename, credential)
        except MediaError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = str(exc).replace(key, "***") if key else str(exc)
            raise _with_context(exc, f"cannot fetch {redact_url(url)}: {reason}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.rename(tmp, entry)
        except OSError:
            # Another process completed the same entry first: use theirs.
            shutil.rmtree(tmp, ignore_errors=True)
            hit = self._cached_file(entry)
            if hit is None:
                raise MediaError(f"cannot cache {redact_url(url)}: {entry} is in the way") from None
            return hit
        log.info(
            "downloaded %s (%.1f MB) in %.2f s",
            redact_url(url),
            size / 1e6,
            time.perf_counter() - started,
        )
        return entry / plan.filename

    def _fetch_first(self, plan: FetchPlan, dest: Path, credential: Credential | None) -> int:
        """Download the plan's first URL that answers; the last error if none does."""
        for i, candidate in enumerate(plan.urls):
            try:
                return download(
                    candidate, dest, policy=self._policy, limits=self._limits, credential=credential
                )
            except HttpStatusError:
                if i == len(plan.urls) - 1:
                    raise
                log.debug("%s failed; trying the next form", redact_url(candidate))
        raise MediaError("nothing to fetch")

    def _evict(self, keep: Path) -> None:
        """Delete least recently used entries until the cache is under its bound.

        ``keep`` (the entry just fetched) stays even if it alone exceeds the bound: the
        caller is about to read it.
        """
        evict_lru(self.cache_dir, self.max_bytes, keep=keep, what="media cache")


def _with_context(exc: MediaError, message: str) -> MediaError:
    """``exc`` again, of the same kind (status included), with a fuller message."""
    if isinstance(exc, HttpStatusError):
        return HttpStatusError(message, exc.status)
    return type(exc)(message)


def resolve_media(url: str, settings: Settings, task_id: int | str | None = None) -> Path:
    """One-off resolution under the settings' policy; serving keeps one MediaResolver."""
    return MediaResolver.from_settings(settings).resolve(url, task_id)
