"""One media download, streamed to disk under the media policy, with a size cap and a deadline.

Why not label-studio-sdk's ``get_local_path`` (which the design first used): it reads whole
bodies into memory, follows up to 30 redirects to any host, and has no size cap nor total
deadline. Here:

* **DNS rebinding.** The connection classes under the requests session resolve the host
  once, check every address with :class:`AddressPolicy` and connect to those very addresses,
  so nothing resolves the name again between the check and the connect. TLS still verifies
  the certificate against the host name (SNI and the Host header are the URL's).
* **Redirects** are followed here, at most MEDIA_MAX_REDIRECTS, each hop going through the
  same check. ``Authorization`` goes only while every hop so far stayed on Label Studio's
  exact origin (scheme, host and port).
* **Limits.** Content-Length or the bytes read over MAX_VIDEO_MB abort the download; the
  body is read with ``read1`` (whatever one receive brings) so DOWNLOAD_DEADLINE_S is checked
  between chunks even when a server trickles bytes, and a watchdog shuts the sockets down at
  the deadline, which ends a read blocked in the headers too.
* The session ignores the environment (``trust_env=False``: no proxy, no ``.netrc``
  credentials) but for a CA bundle (REQUESTS_CA_BUNDLE), and keeps no cookies. urllib3's
  DEBUG log lines lose their query strings (presigned signatures).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import connection as urllib3_connection

from training.video.media_policy import (
    AddressPolicy,
    MediaError,
    MediaRefused,
    Origin,
    origin_of,
    redact_url,
)

CONNECT_TIMEOUT_S = 10.0
"""Seconds to wait for a media server to accept a connection."""

READ_TIMEOUT_S = 30.0
"""Seconds to wait for each chunk of a media download (the whole download also has
DOWNLOAD_DEADLINE_S)."""

CHUNK_BYTES = 1024 * 1024
"""Most bytes read from the socket at a time."""

REASON_CHARS = 60
"""How much of a server's HTTP reason phrase an error message quotes, in characters."""

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

USER_AGENT = "videoloop"

MB = 1024 * 1024


class _RedactQueries(logging.Filter):
    """urllib3 logs every request's path, query string included, at DEBUG: a presigned URL's
    signature would reach the logs whenever LOG_LEVEL=DEBUG. This strips the queries."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(arg) if isinstance(arg, str) and "?" in arg else arg
                for arg in record.args
            )
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_RedactQueries())


@dataclass(frozen=True)
class DownloadLimits:
    """MAX_VIDEO_MB, DOWNLOAD_DEADLINE_S and MEDIA_MAX_REDIRECTS, plus the socket timeouts."""

    max_bytes: int
    deadline_s: float
    max_redirects: int
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S


@dataclass(frozen=True)
class Credential:
    """The ``Authorization`` value for Label Studio and the one origin it may go to."""

    origin: Origin
    authorization: str = field(repr=False)


class HttpStatusError(MediaError):
    """The server answered with an error status (``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Guard:
    """One download's deadline and address checks: opens (and at the deadline shuts down)
    every socket the download uses."""

    def __init__(self, policy: AddressPolicy, deadline_s: float) -> None:
        self.policy = policy
        self.deadline_s = deadline_s
        self.expired = False
        self._until = time.monotonic() + deadline_s
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(deadline_s, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Guard:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def deadline_error(self) -> MediaError:
        return MediaError(f"took longer than DOWNLOAD_DEADLINE_S ({self.deadline_s:g} s)")

    def check(self) -> None:
        if self.expired or time.monotonic() >= self._until:
            raise self.deadline_error()

    def timeouts(self, limits: DownloadLimits) -> tuple[float, float]:
        left_s = max(0.001, self._until - time.monotonic())
        return min(limits.connect_timeout_s, left_s), min(limits.read_timeout_s, left_s)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def open_socket(self, scheme: str, conn: HTTPConnection) -> socket.socket:
        """Resolve, check every address, connect to one of those addresses (never the name)."""
        port = int(conn.port or 0)
        try:
            addresses = self.policy.checked_addresses(scheme, conn.host, port)
        except socket.gaierror as exc:
            raise urllib3.exceptions.NameResolutionError(conn.host, conn, exc) from exc
        error: OSError | None = None
        for address in addresses:
            try:
                sock = urllib3_connection.create_connection(
                    (address, port),
                    conn.timeout,  # type: ignore[arg-type]
                    source_address=conn.source_address,
                    socket_options=conn.socket_options,
                )
            except TimeoutError as exc:
                raise urllib3.exceptions.ConnectTimeoutError(
                    conn, f"connecting to {conn.host} timed out"
                ) from exc
            except OSError as exc:
                error = exc
                continue
            with self._lock:
                if self.expired:
                    sock.close()
                    raise self.deadline_error()
                self._sockets.append(sock)
            return sock
        raise urllib3.exceptions.NewConnectionError(conn, f"cannot connect: {error}") from error


def _pinned_pools(guard: _Guard) -> dict[str, type]:
    """urllib3 pool classes whose connections open their socket through ``guard``."""

    class PinnedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return guard.open_socket("http", self)

    class PinnedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return guard.open_socket("https", self)

    class PinnedHTTPPool(HTTPConnectionPool):
        ConnectionCls = PinnedHTTPConnection

    class PinnedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = PinnedHTTPSConnection

    return {"http": PinnedHTTPPool, "https": PinnedHTTPSPool}


class _PinnedAdapter(HTTPAdapter):
    """A transport adapter whose every connection goes through a :class:`_Guard`."""

    def __init__(self, guard: _Guard) -> None:
        self._guard = guard  # before super().__init__, which builds the pool manager
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pinned_pools(self._guard)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise MediaRefused("media is never fetched through a proxy")


def _session(guard: _Guard) -> requests.Session:
    """A session that takes nothing from the environment but a CA bundle (a private CA for
    an internal bucket): no proxy, no ``.netrc`` credentials, no cookies kept."""
    session = requests.Session()
    session.trust_env = False
    session.verify = (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    )
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    adapter = _PinnedAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def download(
    url: str,
    dest: Path,
    *,
    policy: AddressPolicy,
    limits: DownloadLimits,
    credential: Credential | None = None,
) -> int:
    """Stream ``url`` into the file ``dest``; returns the bytes written.

    Raises:
        HttpStatusError: the (last) server answered an error status.
        MediaRefused: the policy refused the URL or a redirect hop (the reason names the
            address).
        MediaError: too large, too slow, too many redirects, or a connection failure. No
            message carries a query string or the credential.
    """
    with _Guard(policy, limits.deadline_s) as guard, _session(guard) as session:
        try:
            response = _follow(session, url, guard, limits, credential)
            with response:
                return _save(response, dest, guard, limits)
        except MediaError:
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if guard.expired:
                raise guard.deadline_error() from None
            raise MediaError(_describe(exc)) from None


def _follow(
    session: requests.Session,
    url: str,
    guard: _Guard,
    limits: DownloadLimits,
    credential: Credential | None,
) -> requests.Response:
    """GET ``url``, following at most ``limits.max_redirects`` redirects, each one checked."""
    current = url
    on_origin = credential is not None
    for hop in range(limits.max_redirects + 1):
        where = f"redirected to {redact_url(current)}: " if hop else ""
        target = origin_of(current)
        if target is None:
            raise MediaRefused(f"{where}only http(s) URLs are fetched")
        on_origin = on_origin and credential is not None and target == credential.origin
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if on_origin and credential is not None:
            headers["Authorization"] = credential.authorization
        guard.check()
        try:
            response = session.get(
                current,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=guard.timeouts(limits),
            )
        except MediaRefused as exc:
            raise MediaRefused(f"{where}{exc}") from None
        location = session.get_redirect_target(response)
        if response.status_code in REDIRECT_STATUSES and location:
            response.close()
            current = urljoin(current, location)
            continue
        if not 200 <= response.status_code < 300:
            status, reason = response.status_code, (response.reason or "")[:REASON_CHARS]
            response.close()
            raise HttpStatusError(f"HTTP {status} {reason} from {redact_url(current)}", status)
        return response
    raise MediaError(
        f"more than MEDIA_MAX_REDIRECTS ({limits.max_redirects}) redirects, the last to "
        f"{redact_url(current)}"
    )


def _save(response: requests.Response, dest: Path, guard: _Guard, limits: DownloadLimits) -> int:
    """Write the body chunk by chunk, checking the size cap and the deadline between chunks."""
    too_large = f"larger than MAX_VIDEO_MB ({limits.max_bytes / MB:g} MB)"
    declared = (response.headers.get("Content-Length") or "").strip()
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise MediaError(f"{too_large}: Content-Length is {declared} bytes")
    written = 0
    with open(dest, "wb") as out:
        while True:
            guard.check()
            chunk = response.raw.read1(CHUNK_BYTES, decode_content=True)
            if not chunk:
                break
            written += len(chunk)
            if written > limits.max_bytes:
                raise MediaError(f"{too_large}: more than {limits.max_bytes} bytes sent")
            out.write(chunk)
    if guard.expired:  # the watchdog's shutdown reads as the end of the body
        raise guard.deadline_error()
    if written == 0:
        raise MediaError("the answer was empty")
    return written


def _describe(exc: BaseException) -> str:
    """A reason for a failed request that quotes no URL (requests' messages carry the query
    string): the kind of failure and the operating system's words for it."""
    root = _root_cause(exc)
    detail = f" ({root.strerror})" if isinstance(root, OSError) and root.strerror else ""
    if isinstance(exc, requests.Timeout) or isinstance(root, TimeoutError):
        return "timed out"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error (certificate or handshake)"
    if isinstance(exc, requests.ConnectionError):
        request = getattr(exc, "request", None)
        origin = origin_of(request.url) if request is not None and request.url else None
        return f"connection to {origin or 'the server'} failed{detail}"
    if isinstance(exc, requests.RequestException | urllib3.exceptions.HTTPError):
        return f"the answer broke off ({type(exc).__name__})"
    return f"{type(exc).__name__}{detail}"


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error under requests' and urllib3's wrappers (bounded walk)."""
    current = exc
    for _ in range(10):
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            inner = current.__cause__ or current.__context__
        if inner is None and current.args and isinstance(current.args[0], BaseException):
            inner = current.args[0]
        if not isinstance(inner, BaseException):
            return current
        current = inner
    return current
