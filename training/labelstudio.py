"""Read a project's labelled video tasks from Label Studio, for retraining.

Goes through label-studio-sdk 2.x (``LabelStudio``), which makes these requests:

* ``GET /api/projects/<id>/`` for the label config;
* ``GET /api/tasks/?fields=all&page=N&page_size=S&project=<id>&resolve_uri=false``, for
  N = 1, 2, ... until a page comes back empty or 404 ("Invalid page.", Label Studio's answer
  past the last page). ``fields=all`` is what brings the annotations along.
  ``resolve_uri=false`` keeps cloud URIs as imported (``s3://...``): by default Label Studio
  rewrites them to ``/tasks/<id>/presign/?fileuri=...``, which training.media cannot fetch.

Authentication, as the sdk does it: a key that is not a JWT is a legacy token and goes out as
``Authorization: Token <key>``; a JWT (a personal access token, which is a refresh token) is
first exchanged at ``POST /api/token/refresh/`` for a short-lived access token, sent as
``Authorization: Bearer <access>`` and refreshed when it expires. An expired personal access
token fails before any request.

The trap: the sdk retries connection errors and 408/409/429/5xx answers (``max_retries``,
with 1 s, 2 s, ... back-off), so an unreachable Label Studio takes a few seconds to report.
Tasks are read page by page while annotators keep working; a task deleted meanwhile can
shift another one from a later page onto an earlier one, which this run then misses (the
next retrain sees it).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.parse_error import ParsingError

from training.labelconfig import LabelConfigError, VideoChoices, parse_label_config

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
"""Tasks per page (Label Studio's own default page size)."""

DEFAULT_TIMEOUT_S = 30.0
"""Seconds to wait for each Label Studio answer."""

DEFAULT_MAX_RETRIES = 2
"""Retries of a failed request (connection error, 408/409/429/5xx), as the sdk counts them."""

_DETAIL_CHARS = 200
_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


class LabelStudioError(RuntimeError):
    """Label Studio cannot be read: unreachable, 401/403/404, or an answer we cannot use.

    The message names the URL and the HTTP status, never the API key.
    """


@dataclass(frozen=True)
class LabelledTask:
    """One task with the label of its latest submitted annotation.

    ``result`` is that annotation's whole result list as Label Studio stores it (choices,
    timeline regions, ...), kept for frame-level training.
    """

    task_id: int
    video_url: str
    label: str
    annotation_id: int
    result: tuple[dict, ...] = field(default=(), hash=False)


@dataclass(frozen=True)
class ProjectData:
    """A project's label config and its tasks: those usable for training and the others.

    ``labels`` are the config's choice values in order (the model's classes); ``skipped``
    holds ``(task id, reason)`` for every task not in ``tasks``.
    """

    project: str
    label_config: str
    choices: VideoChoices
    labels: list[str]
    tasks: list[LabelledTask]
    skipped: list[tuple[int, str]]


def fetch_project_data(
    project: str,
    *,
    url: str,
    api_key: str,
    page_size: int = DEFAULT_PAGE_SIZE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> ProjectData:
    """Read a project's label config and every task, and pick each task's label.

    Per task, the latest annotation that was not cancelled (skipped) counts, latest by
    ``updated_at`` then id: with several annotators on one task, the last word wins. Its
    ``choices`` result for the config's <Choices> on the <Video> gives the label. Tasks are
    skipped, with the reason, when they have no such annotation, when that annotation has
    no choice for the control, when its label is not in the config (renamed or removed
    since), when it has several choices (a multi-choice config: the model is single-label,
    and picking one of them would teach it a label the annotator did not single out), or
    when the task has no video URL under the <Video>'s data key.

    Args:
        project: the project id, ``"12"`` (``"12.1700000000"`` as /setup sends it works too).
        url: Label Studio's base URL (settings.label_studio_url).
        api_key: a legacy token or a personal access token (settings.label_studio_api_key).
        page_size: tasks per request.
        timeout_s: seconds to wait for each answer.
        max_retries: retries of failed requests, done by the sdk with back-off.

    Raises:
        ValueError: ``project`` is not a project id.
        LabelStudioError: url or key missing, Label Studio unreachable, an HTTP error
            (401 wrong key, 404 no such project, ...), or a label config without a
            <Video> classified by a <Choices>.
    """
    project_id = _project_id(project)
    base = (url or "").strip().rstrip("/")
    if not base:
        raise LabelStudioError("cannot read Label Studio: LABEL_STUDIO_URL is not set")
    if not base.startswith(("http://", "https://")):
        raise LabelStudioError(f"cannot read Label Studio at {base}: the URL must be http(s)://")
    if not api_key:
        raise LabelStudioError(
            f"cannot read Label Studio at {base}: LABEL_STUDIO_API_KEY is not set"
        )
    started = time.perf_counter()
    reader = _Reader(base, api_key, timeout_s=timeout_s, max_retries=max_retries)
    with httpx.Client(timeout=timeout_s, follow_redirects=True) as http:
        client = reader.connect(http)
        label_config = reader.label_config(client, project_id)
        try:
            choices = parse_label_config(label_config)
        except LabelConfigError as exc:
            raise LabelStudioError(
                f"project {project_id} at {base} cannot be trained: {exc}"
            ) from exc
        tasks, skipped = [], []
        total = 0
        for task in reader.tasks(client, project_id, page_size):
            total += 1
            picked = pick_label(task, choices)
            if isinstance(picked, LabelledTask):
                tasks.append(picked)
            else:
                skipped.append(picked)
    for task_id, reason in skipped:
        log.debug("project %s: skipping task %s: %s", project_id, task_id, reason)
    log.info(
        "read project %s from %s in %.2f s: %d tasks, %d labelled, %d skipped",
        project_id,
        base,
        time.perf_counter() - started,
        total,
        len(tasks),
        len(skipped),
    )
    return ProjectData(
        project=str(project_id),
        label_config=label_config,
        choices=choices,
        labels=list(choices.choice_values),
        tasks=tasks,
        skipped=skipped,
    )


def count_per_label(data: ProjectData) -> dict[str, int]:
    """Labelled tasks per label, every label of the config included (zero when unused)."""
    counts = dict.fromkeys(data.labels, 0)
    for task in data.tasks:
        counts[task.label] = counts.get(task.label, 0) + 1
    return counts


def pick_label(task: Mapping[str, Any], choices: VideoChoices) -> LabelledTask | tuple[int, str]:
    """The LabelledTask for one task as ``GET /api/tasks/?fields=all`` returns it, or
    ``(task id, reason)`` when it cannot be used (see fetch_project_data for the rules)."""
    task_id = _as_int(task.get("id"))
    annotations = [a for a in task.get("annotations") or () if isinstance(a, Mapping)]
    submitted = [a for a in annotations if not a.get("was_cancelled")]
    if not submitted:
        if annotations:
            return task_id, "every annotation was cancelled (skipped)"
        return task_id, "no annotation"
    latest = max(submitted, key=lambda a: (_timestamp(a), _as_int(a.get("id"))))
    annotation_id = _as_int(latest.get("id"))
    result = [r for r in latest.get("result") or () if isinstance(r, Mapping)]
    values: list[str] = []
    for region in result:
        if (
            region.get("type") == "choices"
            and region.get("from_name") == choices.choices_name
            and region.get("to_name") == choices.video_name
        ):
            picked = (region.get("value") or {}).get("choices")
            for value in picked if isinstance(picked, list) else ():
                if isinstance(value, str) and value not in values:
                    values.append(value)
    if not values:
        return (
            task_id,
            f'annotation {annotation_id} has no choice for <Choices name="{choices.choices_name}">',
        )
    if len(values) > 1:
        return (
            task_id,
            f"annotation {annotation_id} has several choices {values}; training is single-label",
        )
    label = values[0]
    if label not in choices.choice_values:
        return task_id, (
            f"annotation {annotation_id} has label {label!r}, not among the config's "
            f"choices {list(choices.choice_values)}"
        )
    data = task.get("data")
    video = data.get(choices.video_value_key) if isinstance(data, Mapping) else None
    if not isinstance(video, str) or not video.strip():
        return task_id, f"no video URL under data[{choices.video_value_key!r}]"
    return LabelledTask(
        task_id=task_id,
        video_url=video.strip(),
        label=label,
        annotation_id=annotation_id,
        result=tuple(dict(r) for r in result),
    )


class _Reader:
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
            raise self._error("the API key", exc) from None

    def label_config(self, client: LabelStudio, project_id: int) -> str:
        where = f"/api/projects/{project_id}/"
        try:
            project = client.projects.get(project_id)
        except Exception as exc:
            raise self._error(where, exc) from None
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
                    yield _as_dict(item)
                page_no += 1
                where = f"/api/tasks/?project={project_id}&page={page_no}"
        except LabelStudioError:
            raise
        except Exception as exc:
            raise self._error(where, exc) from None
        if isinstance(expected, int) and seen < expected:
            log.warning(
                "project %s: Label Studio reported %d tasks but %d were read (tasks deleted "
                "while reading?)",
                project_id,
                expected,
                seen,
            )

    def _error(self, where: str, exc: Exception) -> LabelStudioError:
        """The error for a failed call; what came from outside (the answer's detail, an
        exception's text) is cleared of the key before it goes into the message."""
        target = where if not where.startswith("/") else f"{self.base}{where}"
        if isinstance(exc, ApiError):
            status = exc.status_code
            text = f"{target}: HTTP {status}{self._scrub(self._detail(exc.body))}"
            if status in (401, 403):
                text += self._auth_hint()
        elif isinstance(exc, httpx.TimeoutException):
            text = f"{target}: no answer within {self._timeout_s:g} s"
        elif isinstance(exc, httpx.HTTPError):
            text = f"{target}: cannot connect ({type(exc).__name__})"
        elif isinstance(exc, ParsingError | ValueError):
            text = f"{target}: the answer is not what the API returns ({type(exc).__name__})"
        else:
            text = f"{target}: {type(exc).__name__}: {self._scrub(str(exc))}"
        return LabelStudioError("cannot read Label Studio: " + text)

    def _auth_hint(self) -> str:
        if self._key.count(".") == 2:
            return (
                " (LABEL_STUDIO_API_KEY looks like a personal access token: it is exchanged at "
                "/api/token/refresh/; check that it is current and for this Label Studio)"
            )
        return (
            " (check LABEL_STUDIO_API_KEY: a legacy token is refused where legacy tokens are "
            "disabled, use a personal access token there)"
        )

    @staticmethod
    def _detail(body: object) -> str:
        if isinstance(body, Mapping):
            detail = body.get("detail") or body.get("message") or body.get("error")
            text = str(detail) if detail else ""
        elif body is None:
            text = ""
        else:
            text = " ".join(str(body).split())
        text = text[:_DETAIL_CHARS]
        return f": {text}" if text else ""

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def _project_id(project: str | int) -> int:
    text = str(project).strip()
    head = text.split(".", 1)[0]
    if not head.isdigit() or (head != text and not text.split(".", 1)[1].isdigit()):
        raise ValueError(f"invalid Label Studio project id {project!r}")
    return int(head)


def _as_dict(item: object) -> dict:
    if isinstance(item, Mapping):
        return dict(item)
    dump = getattr(item, "model_dump", None) or getattr(item, "dict", None)
    if dump is None:
        raise TypeError(f"unexpected task item {type(item).__name__}")
    return dump()


def _as_int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -1


def _timestamp(annotation: Mapping[str, Any]) -> dt.datetime:
    """``updated_at`` (else ``created_at``) as an aware datetime; missing sorts first."""
    for key in ("updated_at", "created_at"):
        raw = annotation.get(key)
        if isinstance(raw, dt.datetime):
            return raw if raw.tzinfo else raw.replace(tzinfo=dt.UTC)
        if isinstance(raw, str) and raw:
            try:
                stamp = dt.datetime.fromisoformat(raw)
            except ValueError:
                continue
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
    return _NEVER
