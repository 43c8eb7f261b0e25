"""The label-studio-sdk calls under :class:`~training.labelstudio.client.LabelStudioSession`:
the client built with the right authentication, the reads that page, and every failure turned
into a LabelStudioError that names the URL (never the key). Also the checks every caller makes
before a request: Label Studio's address and key, a project id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from training.labelstudio.errors import LabelStudioError, call_error

log = logging.getLogger(__name__)


class SdkReader:
    """The sdk calls, with every failure turned into a LabelStudioError that names the URL."""

    def __init__(self, base: str, api_key: str, *, timeout_s: float, max_retries: int) -> None:
        self.base = base
        self._key = api_key
        self._timeout_s = timeout_s
        self._max_retries = max_retries

    def connect(self, http: httpx.Client) -> LabelStudio:
        try:
            # The trailing slash keeps a path prefix (https://host/ls/) when the sdk joins
            # "api/token/refresh/" to it with urljoin.
            return LabelStudio(
                base_url=self.base + "/",
                api_key=self._key,
                httpx_client=http,
                timeout=self._timeout_s,
                max_retries=self._max_retries,
            )
        except ApiError as exc:  # an expired personal access token, or a JWT without expiry
            raise self.error("the API key", exc) from None

    def label_config(self, client: LabelStudio, project_id: int) -> str:
        where = f"/api/projects/{project_id}/"
        try:
            project = client.projects.get(project_id)
        except Exception as exc:
            raise self.error(where, exc) from None
        config = getattr(project, "label_config", None)
        if not isinstance(config, str) or not config.strip():
            raise LabelStudioError(f"{self.base}{where} has no label config")
        return config

    def tasks(self, client: LabelStudio, project_id: int, page_size: int) -> Iterator[dict]:
        """Every task of the project, all pages, as plain dicts (the sdk's models keep the
        fields they do not declare, so nothing Label Studio sends is lost)."""
        page_no = 1
        where = f"/api/tasks/?project={project_id}&page={page_no}"
        seen = 0
        try:
            pager = client.tasks.list(
                project=project_id, fields="all", page_size=page_size, resolve_uri=False
            )
            expected = getattr(pager.response, "total", None)
            pages = pager.iter_pages()
            while True:
                try:
                    page = next(pages)
                except StopIteration:
                    break
                except ApiError as exc:
                    if exc.status_code == 404 and page_no > 1:
                        break  # past the last page: Label Studio says "Invalid page."
                    raise
                for item in page.items or ():
                    seen += 1
                    yield as_dict(item)
                page_no += 1
                where = f"/api/tasks/?project={project_id}&page={page_no}"
        except LabelStudioError:
            raise
        except Exception as exc:
            raise self.error(where, exc) from None
        if isinstance(expected, int) and seen < expected:
            log.warning(
                "project %s: Label Studio reported %d tasks but %d were read (tasks deleted "
                "while reading?)",
                project_id,
                expected,
                seen,
            )

    def error(self, where: str, exc: Exception, *, verb: str = "read") -> LabelStudioError:
        """The error for a failed call (errors.call_error: never quotes the key)."""
        return call_error(self.base, self._key, where, exc, timeout_s=self._timeout_s, verb=verb)


def check_target(url: str, api_key: str) -> str:
    """Label Studio's base URL without a trailing slash, once url and key are usable."""
    base = (url or "").strip().rstrip("/")
    if not base:
        raise LabelStudioError("cannot reach Label Studio: LABEL_STUDIO_URL is not set")
    if not base.startswith(("http://", "https://")):
        raise LabelStudioError(f"cannot reach Label Studio at {base}: the URL must be http(s)://")
    if not api_key:
        raise LabelStudioError(
            f"cannot reach Label Studio at {base}: LABEL_STUDIO_API_KEY is not set"
        )
    return base


def parse_project_id(project: str | int) -> int:
    text = str(project).strip()
    head = text.split(".", 1)[0]
    if not head.isdigit() or (head != text and not text.split(".", 1)[1].isdigit()):
        raise ValueError(f"invalid Label Studio project id {project!r}")
    return int(head)


def as_dict(item: object) -> dict:
    if isinstance(item, Mapping):
        return dict(item)
    dump = getattr(item, "model_dump", None) or getattr(item, "dict", None)
    if dump is None:
        raise TypeError(f"unexpected task item {type(item).__name__}")
    return dump()
