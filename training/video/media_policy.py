"""Which media addresses the backend may fetch from, and how URLs are shown in logs.

Why a policy at all: task data is written by anyone who can import tasks into Label Studio,
and /setup by anyone who can reach the backend, yet the backend fetches what they name from
inside the network it runs in. So (docs/design.md, "Media and authentication"):

* a URL is fetched only over http(s); every address its host RESOLVES to must be public
  (``ipaddress``: global, not loopback, private, link-local, multicast, reserved or
  unspecified, IPv4-mapped and embedded IPv4 included), unless the URL is Label Studio's own
  origin from LABEL_STUDIO_URL or its host is on MEDIA_ALLOWED_HOSTS;
* the check runs on the addresses the connection then uses (training/video/download.py), so
  a name cannot resolve to a public address for the check and a private one for the connect;
* query strings carry presigned signatures: :func:`redact_url` strips them (and any
  ``user:password@``) from everything logged, raised or stored.

Only the standard library here: training/settings.py validates MEDIA_ALLOWED_HOSTS with it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
"""The port a URL without one uses, per scheme."""

TASK_ID_SHOWN_CHARS = 40
"""How much of a bad task id an error message quotes, in characters."""

_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
"""Well-known NAT64 prefix: its addresses reach the IPv4 address in their last 32 bits."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class MediaError(RuntimeError):
    """A video reference cannot be turned into a local file (never carries the API key nor a
    query string)."""


class MediaRefused(MediaError):
    """The media policy refuses a URL or the address its host resolves to."""


@dataclass(frozen=True)
class Origin:
    """A URL's scheme, host and port: where a credential may go, compared exactly."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def normalize_host(host: str) -> str:
    """Lower case, without IPv6 brackets or a trailing dot (an FQDN names the same host)."""
    return host.strip().strip("[]").lower().rstrip(".")


def origin_of(url: str) -> Origin | None:
    """The origin of an absolute http(s) URL; None for anything else (or a bad port)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return Origin(scheme, normalize_host(parts.hostname), port or DEFAULT_PORTS[scheme])


def redact_url(url: str) -> str:
    """``url`` fit to log, raise or store: no query string, fragment or ``user:pass@``.

    Presigned bucket URLs carry their signature in the query, and a signature is as good as a
    credential until it expires. A removed query shows as ``?...``.
    """
    text = str(url).strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return text.split("?", 1)[0].split("#", 1)[0]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    tail = "?..." if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) + tail


def task_id_int(task_id: object) -> int:
    """A task id fit to put into a URL: a positive int, or a string of ASCII digits.

    Why strict: the id goes into Label Studio paths (``/tasks/<id>/presign/``) sent with the
    API key, and ``1/../../api/...`` would reach other endpoints.

    Raises:
        ValueError: anything else, quoted (shortened) in the message.
    """
    if isinstance(task_id, int) and not isinstance(task_id, bool) and task_id > 0:
        return task_id
    if isinstance(task_id, str) and task_id.isascii() and task_id.isdigit() and int(task_id) > 0:
        return int(task_id)
    shown = repr(task_id)[:TASK_ID_SHOWN_CHARS]
    raise ValueError(f"task id {shown} is not a positive integer")


def address_problem(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one (e.g. "a loopback address"); None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.teredo:
            return "a Teredo tunnel address"
        embedded = address.ipv4_mapped or address.sixtofour
        if address in _NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            problem = address_problem(embedded)
            return f"{problem} (embedded in {address})" if problem else None
    for flag, what in (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(address, flag):
            return what
    if not address.is_global:
        return "a non-public address"
    return None


@dataclass(frozen=True)
class AllowedHost:
    """One MEDIA_ALLOWED_HOSTS entry: a host, on any port or on one port."""

    host: str
    port: int | None = None

    def matches(self, host: str, port: int) -> bool:
        return self.host == normalize_host(host) and self.port in (None, port)


def parse_allowed_hosts(text: str) -> tuple[AllowedHost, ...]:
    """MEDIA_ALLOWED_HOSTS: comma-separated ``host`` or ``host:port`` (``[v6]:port`` for IPv6).

    Raises:
        ValueError: an entry with a scheme, a path or a bad port, naming it.
    """
    entries = []
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            parts = urlsplit("//" + entry)
            port = parts.port
        except ValueError:
            raise ValueError(f"bad host:port {entry!r}") from None
        if not parts.hostname or parts.path or parts.query or "@" in entry:
            raise ValueError(f"{entry!r} is not a host or host:port (no scheme, no path)")
        entries.append(AllowedHost(normalize_host(parts.hostname), port))
    return tuple(entries)


@dataclass(frozen=True)
class AddressPolicy:
    """Where media may be fetched from; consulted for every connection and redirect hop.

    Args:
        label_studio: Label Studio's origin from LABEL_STUDIO_URL (trusted at any address);
            None when the environment names none (a /setup host earns no such trust).
        allowed_hosts: MEDIA_ALLOWED_HOSTS, trusted at any address.
    """

    label_studio: Origin | None = None
    allowed_hosts: tuple[AllowedHost, ...] = ()

    def trusts(self, scheme: str, host: str, port: int) -> bool:
        """True when this host may be at a non-public address."""
        if Origin(scheme, normalize_host(host), port) == self.label_studio:
            return True
        return any(entry.matches(host, port) for entry in self.allowed_hosts)

    def checked_addresses(self, scheme: str, host: str, port: int) -> list[str]:
        """The addresses ``host`` resolves to, in resolver order, each one allowed.

        Every address must pass, not just the first: the connection may try them all.

        Raises:
            MediaRefused: one of them is not public and the host is not trusted.
            socket.gaierror: the name does not resolve.
        """
        infos = socket.getaddrinfo(normalize_host(host), port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if self.trusts(scheme, host, port):
            return addresses
        for text in addresses:
            problem = address_problem(ipaddress.ip_address(text))
            if problem is not None:
                raise MediaRefused(
                    f"{host} resolves to {text}, {problem}; media is fetched only from "
                    "public addresses, Label Studio's own (LABEL_STUDIO_URL) and "
                    "MEDIA_ALLOWED_HOSTS"
                )
        return addresses
