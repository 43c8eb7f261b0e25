"""Which URL(s) a task's video reference is fetched from, and what its cache entry is called.

The shapes are those label-studio-sdk's ``get_local_path`` handled (docs/design.md, "Media and
authentication"), kept here without the sdk because it reads whole bodies into memory and
follows redirects anywhere (training/video/download.py):

* ``/data/upload/<project>/<file>`` (also ``upload/...``): first
  ``<LS>/storage-data/uploaded/?filepath=upload/<project>/<file>``, and on an error answer
  ``<LS>/data/upload/<project>/<file>`` (the form Label Studio 1.23 serves);
* ``/data/local-files/?d=<path>``: ``<LS>/data/local-files/?d=<path>``, always over HTTP from
  Label Studio, never from this machine's disk (whatever LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
  says: the backend has no business reading its own files on a task's say-so);
* ``/storage-data/uploaded/?filepath=...``: on Label Studio as it is;
* ``s3://``, ``gs://``, ``azure-blob://``: ``<LS>/tasks/<id>/presign/?fileuri=<base64>``, which
  redirects to the bucket; the task id must be an integer;
* ``http(s)://...``: as it is.

Label Studio references with ``.`` or ``..`` path segments are refused, and so are absolute
URLs on Label Studio's origin outside its media routes: they would reach other endpoints with
the API key.
"""

from __future__ import annotations

import base64
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

from training.video.media_policy import (
    MediaError,
    MediaRefused,
    origin_of,
    redact_url,
    task_id_int,
)

CLOUD_PREFIXES = ("s3:", "gs:", "azure-blob:")
LS_RELATIVE_PREFIXES = ("/data/", "data/", "/upload/", "upload/", "/storage-data/")
"""References that only mean something on a Label Studio host."""

FILENAME_CHARS = 120
"""Longest file name kept in a cache entry, in characters."""

LS_MEDIA_ROUTES = ("/data/upload/", "/data/local-files", "/storage-data/uploaded")
"""Label Studio paths an absolute task URL on its origin may name (the key goes with it)."""

_PRESIGN_ROUTE = re.compile(r"/tasks/[0-9]+/presign/?")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_FILEPATH_SAFE = "/%:@!$'()*,;=-._~"
"""Characters left as they are in ``?filepath=``: what the sdk sent unquoted, less the ones
that would end the query value (``&``, ``#``, ``+``, spaces)."""


@dataclass(frozen=True)
class FetchPlan:
    """Where a reference is fetched from: ``urls`` in order (the next one only after an error
    answer), whether they are Label Studio's (and need its key), the text naming the cache
    entry and the file's name in it."""

    urls: tuple[str, ...]
    on_label_studio: bool
    cache_text: str
    filename: str


def is_cloud_uri(url: str) -> bool:
    return url.startswith(CLOUD_PREFIXES)


def is_label_studio_relative(url: str) -> bool:
    """True for references that only mean something on a Label Studio host (/data/...)."""
    return url.startswith(LS_RELATIVE_PREFIXES)


def is_http_url(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def safe_filename(path_text: str) -> str:
    """A file name for the cache from a URL's path: its last segment, decoded, reduced to
    ``[A-Za-z0-9._-]`` ("video" when nothing is left)."""
    name = posixpath.basename(unquote(path_text).rstrip("/"))
    name = _UNSAFE_NAME_CHARS.sub("_", name).lstrip(".")
    if len(name) > FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:10] if dot else ""
        name = stem[: FILENAME_CHARS - len(ext) - 1] + "." + ext if ext else name[:FILENAME_CHARS]
    return name or "video"


def plan_fetch(url: str, ls_base: str, task_id: object) -> FetchPlan:
    """The FetchPlan for a remote reference (Label Studio's, a cloud URI or http(s)).

    Args:
        url: the reference, stripped.
        ls_base: Label Studio's base URL without a trailing slash ("" when unknown: the
            caller checks it is set before a Label Studio reference gets here).
        task_id: the task's id (cloud URIs only).

    Raises:
        MediaError: a cloud URI without a usable task id; MediaRefused: a Label Studio
            reference this backend does not fetch.
    """
    if is_cloud_uri(url):
        try:
            tid = task_id_int(task_id)
        except ValueError as exc:
            raise MediaError(f"cloud storage URIs need the task id: {exc}") from None
        fileuri = base64.urlsafe_b64encode(url.encode()).decode()
        return FetchPlan(
            (f"{ls_base}/tasks/{tid}/presign/?fileuri={fileuri}",),
            on_label_studio=True,
            cache_text=f"{ls_base}\n{url}",
            filename=safe_filename(urlsplit(url).path),
        )
    if is_label_studio_relative(url):
        return _label_studio_plan(url, ls_base)
    ls_origin = origin_of(ls_base) if ls_base else None
    if ls_origin is not None and origin_of(url) == ls_origin:
        _check_media_route(url, ls_base)
    return FetchPlan((url,), False, f"\n{url}", safe_filename(urlsplit(url).path))


def _check_media_route(url: str, ls_base: str) -> None:
    """An absolute URL on Label Studio's origin goes out with the key: only to its media
    routes, never with dot segments (which would reach its API with the key)."""
    path = urlsplit(url).path
    prefix = urlsplit(ls_base).path.rstrip("/")
    if any(seg in (".", "..") for seg in unquote(path).split("/")):
        raise MediaRefused("'.' and '..' are not allowed in a Label Studio media path")
    route = path[len(prefix) :] if prefix and path.startswith(prefix + "/") else path
    if not route.startswith(LS_MEDIA_ROUTES) and not _PRESIGN_ROUTE.fullmatch(route):
        raise MediaRefused(
            f"{redact_url(url)} is on Label Studio but not one of its media routes "
            "(/data/upload/, /data/local-files/, /storage-data/uploaded/, /tasks/<id>/presign/)"
        )


def _label_studio_plan(url: str, ls_base: str) -> FetchPlan:
    reference = url
    if url.startswith(("upload/", "/upload/")):
        reference = "/data/" + url.lstrip("/")
    elif url.startswith("data/"):
        reference = "/" + url
    parts = urlsplit(reference)
    if any(seg in (".", "..") for seg in unquote(parts.path).split("/")):
        raise MediaRefused("'.' and '..' are not allowed in a Label Studio media path")
    query = parse_qs(parts.query, keep_blank_values=True)
    cache_text = f"{ls_base}\n{url}"
    if parts.path.startswith("/data/upload/"):
        upload_path = parts.path[len("/data/") :]
        urls = (
            f"{ls_base}/storage-data/uploaded/?filepath={quote(upload_path, safe=_FILEPATH_SAFE)}",
            f"{ls_base}/data/{upload_path}",
        )
        return FetchPlan(urls, True, cache_text, safe_filename(upload_path))
    if parts.path in ("/data/local-files", "/data/local-files/") and query.get("d", [""])[-1]:
        name = safe_filename(query["d"][-1])
        return FetchPlan((f"{ls_base}{reference}",), True, cache_text, name)
    if parts.path.startswith("/storage-data/uploaded") and query.get("filepath", [""])[-1]:
        name = safe_filename(query["filepath"][-1])
        return FetchPlan((f"{ls_base}{reference}",), True, cache_text, name)
    raise MediaRefused(
        f"{redact_url(url)} is not a Label Studio media URL this backend fetches "
        "(/data/upload/..., /data/local-files/?d=..., /storage-data/uploaded/?filepath=...)"
    )
