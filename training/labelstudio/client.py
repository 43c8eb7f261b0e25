"""Read a project's video tasks from Label Studio and write predictions to it: the I/O.

What the tasks say (labels, segments, which versions predicted them) is read from their JSON
in tasks.py, which does no I/O. Goes through label-studio-sdk 2.x (``LabelStudio``), which
makes these requests:

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

import logging
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx
from label_studio_sdk import LabelStudio

from training.labelstudio.errors import LabelStudioError
from training.labelstudio.labelconfig import LabelConfigError, VideoControls, parse_label_config
from training.labelstudio.sdk_reader import SdkReader, check_target, parse_project_id
from training.labelstudio.tasks import (
    ProjectData,
    TaskRefreshState,
    read_project_data,
    task_refresh_state,
)
from training.video.media_policy import task_id_int

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
"""Tasks per page (Label Studio's own default page size)."""

DEFAULT_TIMEOUT_S = 30.0
"""Seconds to wait for each Label Studio answer."""

DEFAULT_MAX_RETRIES = 2
"""Retries of a failed request (connection error, 408/409/429/5xx), as the sdk counts them."""


def fetch_project_data(
    project: str,
    *,
    url: str,
    api_key: str,
    page_size: int = DEFAULT_PAGE_SIZE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> ProjectData:
    """Read a project's label config and every task, and pick each task's label (the rules
    are in tasks.py: the latest submitted annotation counts; unusable tasks are skipped with
    the reason).

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
    project_id = parse_project_id(project)
    started = time.perf_counter()
    with LabelStudioSession(url, api_key, timeout_s=timeout_s, max_retries=max_retries) as ls:
        base = ls.base
        label_config = ls.get_label_config(project_id)
        try:
            controls = parse_label_config(label_config)
        except LabelConfigError as exc:
            raise LabelStudioError(
                f"project {project_id} at {base} cannot be trained: {exc}"
            ) from exc
        tasks = ls.iter_tasks(project_id, page_size)
        data = read_project_data(str(project_id), label_config, controls, tasks)
    for task_id, reason in data.skipped:
        log.debug("project %s: skipping task %s: %s", project_id, task_id, reason)
    log.info(
        "read project %s from %s in %.2f s: %d tasks, %d labelled, %d skipped",
        project_id,
        base,
        time.perf_counter() - started,
        len(data.tasks) + len(data.skipped),
        len(data.tasks),
        len(data.skipped),
    )
    return data


class LabelStudioSession:
    """One connection to Label Studio for a run of many calls (one HTTP client, one token
    refresh): the project's tasks with their predictions, and writing predictions.

    Use as a context manager::

        with LabelStudioSession(url, api_key) as ls:
            config = ls.get_label_config("3")
            for task in ls.iter_task_refresh_states("3", controls): ...
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
        self.base = check_target(url, api_key)
        self._reader = SdkReader(self.base, api_key, timeout_s=timeout_s, max_retries=max_retries)
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

    def error(self, where: str, exc: Exception, *, verb: str = "read") -> LabelStudioError:
        """The LabelStudioError for a failed sdk call to ``where`` (errors.call_error: names
        the URL and the status, never the key), for callers that make their own calls."""
        return self._reader.error(where, exc, verb=verb)

    def get_label_config(self, project: str | int) -> str:
        """The project's label config (XML)."""
        return self._reader.label_config(self.client, parse_project_id(project))

    def iter_tasks(self, project: str | int, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[dict]:
        """Every task of the project, all pages, as ``GET /api/tasks/?fields=all`` returns it
        (annotations and predictions included); tasks.py reads them."""
        return self._reader.tasks(self.client, parse_project_id(project), page_size)

    def iter_task_refresh_states(
        self, project: str | int, controls: VideoControls, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[TaskRefreshState]:
        """Every task of the project, all pages, with the versions of its predictions."""
        for task in self.iter_tasks(project, page_size):
            yield task_refresh_state(task, controls)

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
        project_id = parse_project_id(project)
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
        tid = task_id_int(task_id)  # raises ValueError: never "1/../.." into a URL
        where = f"/api/predictions/?task={tid}"
        try:
            predictions = self.client.predictions.list(task=tid)
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
        tid = task_id_int(task_id)  # raises ValueError: a bool or "12abc" is no task id
        try:
            created = self.client.predictions.create(
                task=tid,
                result=list(prediction.get("result") or []),
                score=float(prediction.get("score") or 0.0),
                model_version=str(prediction["model_version"]),
            )
        except Exception as exc:
            raise self._reader.error(where, exc, verb="write to") from None
        return getattr(created, "id", None)

    def update_task_data(self, task_id: int, data: Mapping[str, Any]) -> None:
        """Replace a task's data (``PATCH /api/tasks/<id>/`` with ``{"data": ...}``): Label
        Studio 1.23 stores the dict whole, so pass every field, the video URL included.

        Raises:
            LabelStudioError: the write failed; ``status`` says how (404: task deleted).
        """
        tid = task_id_int(task_id)  # raises ValueError: never "1/../.." into a URL
        try:
            self.client.tasks.update(str(tid), data=dict(data))
        except Exception as exc:
            raise self._reader.error(f"/api/tasks/{tid}/", exc, verb="write to") from None

    def delete_duplicate_predictions(self, project: str | int, version: str) -> int:
        """Delete all but the oldest prediction of ``version`` on each of the project's tasks
        (``GET /api/predictions/?project=``, ``DELETE /api/predictions/<id>/``): the refresh's
        safety net behind the claims of training/jobs/prediction_claims.py. Returns how many
        were deleted."""
        pid = parse_project_id(project)
        where = f"/api/predictions/?project={pid}"
        try:
            predictions = self.client.predictions.list(project=pid)
        except Exception as exc:
            raise self._reader.error(where, exc) from None
        kept: set[int] = set()
        extra = []
        for p in sorted(predictions or (), key=lambda p: p.id or 0):
            if str(p.model_version) != version or p.task is None:
                continue
            if p.task in kept:
                extra.append(p.id)
            else:
                kept.add(p.task)
        for prediction_id in extra:
            try:
                self.client.predictions.delete(prediction_id)
            except Exception as exc:
                raise self._reader.error(
                    f"/api/predictions/{prediction_id}/", exc, verb="write to"
                ) from None
        if extra:
            log.warning(
                "project %s: deleted %d duplicate predictions of %s", pid, len(extra), version
            )
        return len(extra)
