"""Read a project's labelled video tasks from Label Studio, for retraining.

Goes through label-studio-sdk 2.x (``LabelStudio``), which makes these requests:

* ``GET /api/projects/<id>/`` for the label config;
* ``GET /api/tasks/?fields=all&page=N&page_size=S&project=<id>&resolve_uri=false``, for
  N = 1, 2, ... until a page comes back empty or 404 ("Invalid page.", Label Studio's answer
  past the last page). ``fields=all`` is what brings the annotations along.
  ``resolve_uri=false`` keeps cloud URIs as imported (``s3://...``): by default Label Studio
  rewrites them to ``/tasks/<id>/presign/?fileuri=...``, which training.video.media cannot fetch.
  The same answer carries each task's ``predictions`` (Label Studio's task serializer adds
  them, like annotations and drafts, only with ``fields=all``);
* ``GET /api/predictions/?task=<id>`` and ``POST /api/predictions/`` with ``{task, result,
  score, model_version}`` (the refresh job, through :class:`LabelStudioSession`).

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
from types import TracebackType
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.parse_error import ParsingError

from training.labelstudio.labelconfig import LabelConfigError, VideoControls, parse_label_config
from training.labelstudio.timeline import DEFAULT_FRAME_RATE, Segment, segments_from_result

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

    The message names the URL and the HTTP status, never the API key; ``status`` is the
    HTTP status when Label Studio answered (None when it did not, or for a local problem).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LabelledTask:
    """One task with what its latest submitted annotation says: the class (<Choices>), the
    segments (<TimelineLabels>), or both.

    ``label`` None: no usable choice. ``segments`` None: no timeline region (the task is not
    annotated on the timeline; its frames do not count for the timeline head).
    ``frame_rate`` is what the segments' frame numbers count at. ``result`` is the
    annotation's whole result list as Label Studio stores it.
    """

    task_id: int
    video_url: str
    label: str | None
    annotation_id: int
    result: tuple[dict, ...] = field(default=(), hash=False)
    segments: tuple[Segment, ...] | None = None
    frame_rate: float = DEFAULT_FRAME_RATE


@dataclass(frozen=True)
class ProjectData:
    """A project's label config and its tasks: those usable for training and the others.

    ``labels`` are the config's choice values in order (the model's classes),
    ``timeline_labels`` its <TimelineLabels> labels; ``skipped`` holds ``(task id, reason)``
    for every task not in ``tasks``.
    """

    project: str
    label_config: str
    choices: VideoControls
    labels: list[str]
    tasks: list[LabelledTask]
    skipped: list[tuple[int, str]]
    timeline_labels: list[str] = field(default_factory=list)


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
    ``choices`` result for the config's <Choices> on the <Video> gives the label, its
    ``timelinelabels`` regions for the config's <TimelineLabels> the segments. A choice does
    not count when the annotation has several (a multi-choice config: the model is
    single-label, and picking one of them would teach it a label the annotator did not single
    out) or a label the config does not offer (renamed or removed since). Tasks are skipped,
    with the reason, when they have no such annotation, when it gives neither a choice nor a
    region, or when the task has no video URL under the <Video>'s data key.

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
    base = _check_target(url, api_key)
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
        timeline_labels=list(choices.timeline.labels) if choices.timeline else [],
    )


@dataclass(frozen=True)
class TaskPredictions:
    """What the refresh job needs of a task: its video, whether it is labelled, and the
    model versions it already has predictions of (``video_url`` None: none in the data)."""

    task_id: int
    video_url: str | None
    labelled: bool
    model_versions: frozenset[str]
    frame_rate: float | None = None
    """The frame rate Label Studio numbers this task's frames at (timeline regions)."""


class LabelStudioSession:
    """One connection to Label Studio for a run of many calls (one HTTP client, one token
    refresh): the project's tasks with their predictions, and writing predictions.

    Use as a context manager::

        with LabelStudioSession(url, api_key) as ls:
            config = ls.get_label_config("3")
            for task in ls.iter_task_predictions("3", choices): ...
            ls.create_prediction(task.task_id, prediction)

    Raises (every method, and entering):
        LabelStudioError: url or key missing, Label Studio unreachable, an HTTP error.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self.base = _check_target(url, api_key)
        self._reader = _Reader(self.base, api_key, timeout_s=timeout_s, max_retries=max_retries)
        self._timeout_s = timeout_s
        self._http: httpx.Client | None = None
        self._client: LabelStudio | None = None

    def __enter__(self) -> LabelStudioSession:
        self._http = httpx.Client(timeout=self._timeout_s, follow_redirects=True)
        try:
            self._client = self._reader.connect(self._http)
        except BaseException:
            self._http.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            self._http.close()
        self._http = self._client = None

    @property
    def client(self) -> LabelStudio:
        if self._client is None:
            raise RuntimeError("use LabelStudioSession as a context manager")
        return self._client

    def get_label_config(self, project: str | int) -> str:
        """The project's label config (XML)."""
        return self._reader.label_config(self.client, _project_id(project))

    def iter_task_predictions(
        self, project: str | int, choices: VideoControls, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[TaskPredictions]:
        """Every task of the project, all pages, with the versions of its predictions.

        A task counts as labelled when it has an annotation that was not cancelled.
        """
        for task in self._reader.tasks(self.client, _project_id(project), page_size):
            yield task_predictions(task, choices)

    def select_version(self, project: str | int, version: str, is_ours) -> str | None:
        """Make ``version`` the project's selected predictions version (Settings ->
        Annotation -> Prelabeling, the project's ``model_version``) unless someone chose
        another model's predictions there.

        Why: Label Studio 1.23's Data Manager averages a task's prediction score over the
        predictions of the selected version only; connecting a backend selects the backend's
        title, under which the score column stays empty and "sort by prediction score" does
        nothing. Selected when it is empty, the title of one of the project's ML backends
        (the default after connecting), or a version ``is_ours(version)`` recognises (an
        earlier version of ours).

        Returns:
            The version now selected (``version``), or None when left alone.
        """
        project_id = _project_id(project)
        where = f"/api/projects/{project_id}/"
        try:
            selected = getattr(self.client.projects.get(project_id), "model_version", None) or ""
            if selected == version:
                return version
            titles = {ml.title for ml in self.client.ml.list(project=project_id) if ml.title}
            if selected and selected not in titles and not is_ours(selected):
                log.info(
                    "project %s: predictions of %r are selected in Label Studio; left alone",
                    project_id,
                    selected,
                )
                return None
            self.client.projects.update(project_id, model_version=version)
        except Exception as exc:
            raise self._reader.error(where, exc, verb="update") from None
        log.info("project %s: selected %s in Label Studio (was %r)", project_id, version, selected)
        return version

    def get_prediction_versions(self, task_id: int) -> set[str]:
        """The model versions of a task's predictions as they are now
        (``GET /api/predictions/?task=<id>``): a last look before writing one."""
        where = f"/api/predictions/?task={int(task_id)}"
        try:
            predictions = self.client.predictions.list(task=int(task_id))
        except Exception as exc:
            raise self._reader.error(where, exc) from None
        return {str(p.model_version) for p in predictions or () if p.model_version}

    def create_prediction(self, task_id: int, prediction: Mapping[str, Any]) -> int | None:
        """Store a prediction (``{"result", "score", "model_version"}``) on a task.

        Returns:
            The new prediction's id (None if Label Studio did not say).

        Raises:
            LabelStudioError: the write failed; ``status`` says how (404: task deleted).
        """
        where = "/api/predictions/"
        try:
            created = self.client.predictions.create(
                task=int(task_id),
                result=list(prediction.get("result") or []),
                score=float(prediction.get("score") or 0.0),
                model_version=str(prediction["model_version"]),
            )
        except Exception as exc:
            raise self._reader.error(where, exc, verb="write to") from None
        return getattr(created, "id", None)


def task_predictions(task: Mapping[str, Any], choices: VideoControls) -> TaskPredictions:
    """The TaskPredictions of one task as ``GET /api/tasks/?fields=all`` returns it."""
    annotations = [a for a in task.get("annotations") or () if isinstance(a, Mapping)]
    if "annotations" in task:
        labelled = any(not a.get("was_cancelled") for a in annotations)
    else:
        labelled = bool(task.get("is_labeled"))
    versions = frozenset(
        str(p["model_version"])
        for p in task.get("predictions") or ()
        if isinstance(p, Mapping) and p.get("model_version")
    )
    data = task.get("data")
    video = data.get(choices.video_value_key) if isinstance(data, Mapping) else None
    return TaskPredictions(
        task_id=_as_int(task.get("id")),
        video_url=video.strip() if isinstance(video, str) and video.strip() else None,
        labelled=labelled,
        model_versions=versions,
        frame_rate=choices.task_frame_rate(data if isinstance(data, Mapping) else None),
    )


def count_per_label(data: ProjectData) -> dict[str, int]:
    """Labelled tasks per class, every class of the config included (zero when unused)."""
    counts = dict.fromkeys(data.labels, 0)
    for task in data.tasks:
        if task.label is not None:
            counts[task.label] = counts.get(task.label, 0) + 1
    return counts


def count_per_timeline_label(data: ProjectData) -> dict[str, int]:
    """Tasks with at least one segment of each timeline label (zero when unused)."""
    counts = dict.fromkeys(data.timeline_labels, 0)
    for task in data.tasks:
        for label in {s.label for s in task.segments or ()}:
            counts[label] = counts.get(label, 0) + 1
    return counts


def pick_label(task: Mapping[str, Any], choices: VideoControls) -> LabelledTask | tuple[int, str]:
    """The LabelledTask for one task as ``GET /api/tasks/?fields=all`` returns it, or
    ``(task id, reason)`` when it cannot be used (see fetch_project_data for the rules).

    Per control: the <Choices> result gives the class unless it has several choices or a
    label the config does not offer; the <TimelineLabels> regions give the segments. A task
    counts when either is there.
    """
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
    label, why_no_label = _choice(result, choices, annotation_id)
    segments = None
    if choices.timeline is not None:
        found = segments_from_result(
            result, choices.timeline.name, choices.video_name, choices.timeline.labels
        )
        segments = tuple(found) if found else None
    if label is None and segments is None:
        if choices.timeline is not None:
            timeline = f'no region for <TimelineLabels name="{choices.timeline.name}">'
            why_no_label = (
                f"{why_no_label}; {timeline}"
                if why_no_label
                else (f"annotation {annotation_id} has {timeline}")
            )
        return task_id, why_no_label
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
        segments=segments,
        frame_rate=choices.task_frame_rate(data if isinstance(data, Mapping) else None),
    )


def _choice(
    result: list[Mapping], choices: VideoControls, annotation_id: int
) -> tuple[str | None, str]:
    """The class an annotation's result gives, or None and why (empty: no <Choices>)."""
    if choices.choices_name is None:
        return None, ""
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
            None,
            f'annotation {annotation_id} has no choice for <Choices name="{choices.choices_name}">',
        )
    if len(values) > 1:
        return (
            None,
            f"annotation {annotation_id} has several choices {values}; training is single-label",
        )
    if values[0] not in choices.choice_values:
        return None, (
            f"annotation {annotation_id} has label {values[0]!r}, not among the config's "
            f"choices {list(choices.choice_values)}"
        )
    return values[0], ""


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
                    yield _as_dict(item)
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
        status = exc.status_code if isinstance(exc, ApiError) else None
        return LabelStudioError(f"cannot {verb} Label Studio: " + text, status=status)

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


def _check_target(url: str, api_key: str) -> str:
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
