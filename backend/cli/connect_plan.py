"""What ``videoloop connect`` changes in Label Studio, worked out from what it shows: no I/O.

:func:`plan_connection` compares a project's model connection (``ConnectionView``, read by
``training/labelstudio/connection.py``) with what is wanted and returns the steps, each one
request with the lines it prints (one per change, never a secret). A connection already as
wanted gives no steps, so connecting twice changes nothing the second time.
:func:`plan_selection`, once Label Studio shows the backend connected, picks the version for
the prediction score column.

Which connection is "the" connection: the project's ML backend at the wanted URL (trailing
slashes aside), else the only one titled like ours (the backend moved: its URL and its
webhook follow), else a new one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from training.labelstudio.connection import (
    BASIC_AUTH,
    NO_AUTH,
    ConnectionView,
    MLBackendView,
    ProjectView,
    WebhookView,
)
from training.versions.names import is_version_name
from training.versions.store import NO_MODEL_VERSION

DEFAULT_TITLE = "videoloop"
WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
"""The header /webhook checks against WEBHOOK_SECRET (backend/app.py has the same name)."""


class StepKind(StrEnum):
    CREATE_BACKEND = "create_backend"
    UPDATE_BACKEND = "update_backend"
    UPDATE_PROJECT = "update_project"
    CREATE_WEBHOOK = "create_webhook"
    UPDATE_WEBHOOK = "update_webhook"


@dataclass(frozen=True)
class Step:
    """One request to Label Studio and the changes it makes."""

    kind: StepKind
    target: int | None
    """The backend, project or webhook id. None for UPDATE_WEBHOOK: the webhook Label Studio
    creates with a new backend, looked up by URL when the step runs (created if missing)."""
    fields: Mapping[str, Any] = field(repr=False)
    """The request's fields (label-studio-sdk's arguments); may hold secrets."""
    lines: tuple[str, ...] = ()
    """What it changes, one line each, as printed."""


@dataclass(frozen=True)
class Wanted:
    """The connection asked for (the command line and the settings)."""

    project: int
    backend_url: str
    """As Label Studio reaches the backend, without a trailing slash (:func:`normalize_url`)."""
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    """BASIC_AUTH_USER and BASIC_AUTH_PASS, when the backend demands them."""
    webhook_secret: str = field(default="", repr=False)
    interactive: bool | None = None
    """Interactive pre-annotation; None leaves a connection's as it is (off for a new one)."""
    train_on_submit: bool | None = True
    """Train on every submitted annotation; None leaves the project's setting alone."""
    title: str = DEFAULT_TITLE

    @property
    def webhook_url(self) -> str:
        """The project webhook Label Studio creates for the backend."""
        return self.backend_url + "/webhook"


@dataclass(frozen=True)
class Plan:
    backend: MLBackendView | None
    """The connection the steps change; None when they create it."""
    steps: tuple[Step, ...] = ()

    @property
    def lines(self) -> list[str]:
        return [line for step in self.steps for line in step.lines]


@dataclass(frozen=True)
class Selection:
    """The version for the prediction score: a step selecting it, or None, and what to say."""

    step: Step | None
    note: str
    """What to say when there is no step ("" with a step: its line says it)."""


def normalize_url(url: str) -> str:
    return url.strip().rstrip("/")


def plan_connection(view: ConnectionView, wanted: Wanted) -> Plan:
    """The steps from ``view`` to ``wanted``: the backend connection, the project's settings,
    the webhook, in that order (the webhook exists only once the backend does)."""
    backend = find_backend(view.backends, wanted)
    steps = [
        _backend_step(backend, wanted),
        _project_step(view.project, wanted),
        _webhook_step(view.webhooks, backend, wanted),
    ]
    return Plan(backend, tuple(step for step in steps if step is not None))


def find_backend(backends: tuple[MLBackendView, ...], wanted: Wanted) -> MLBackendView | None:
    same_url = [b for b in backends if normalize_url(b.url) == wanted.backend_url]
    if same_url:
        return same_url[0]
    titled = [b for b in backends if b.title == wanted.title]
    return titled[0] if len(titled) == 1 else None


def _auth_fields(wanted: Wanted) -> dict[str, Any]:
    if wanted.basic_auth is None:
        return {"auth_method": NO_AUTH}
    user, password = wanted.basic_auth
    return {"auth_method": BASIC_AUTH, "basic_auth_user": user, "basic_auth_pass": password}


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _backend_step(backend: MLBackendView | None, wanted: Wanted) -> Step | None:
    required = {"project": wanted.project, "url": wanted.backend_url, **_auth_fields(wanted)}
    if backend is None:
        fields = {
            **required,
            "title": wanted.title,
            "is_interactive": bool(wanted.interactive),
            "auto_update": True,
        }
        lines = [f"project {wanted.project}: connect the model at {wanted.backend_url}"]
        if wanted.basic_auth is not None:
            lines.append(f"ML backend: basic auth as {wanted.basic_auth[0]!r}")
        if wanted.interactive:
            lines.append("ML backend: interactive pre-annotation on")
        return Step(StepKind.CREATE_BACKEND, None, fields, tuple(lines))
    name = f"ML backend {backend.id}"
    changed: dict[str, Any] = {}
    lines = []
    if normalize_url(backend.url) != wanted.backend_url:
        lines.append(f"{name}: URL {backend.url} -> {wanted.backend_url}")
    if wanted.interactive is not None and backend.is_interactive != wanted.interactive:
        changed["is_interactive"] = wanted.interactive
        lines.append(f"{name}: interactive pre-annotation {_on(wanted.interactive)}")
    if not backend.auto_update:
        changed["auto_update"] = True
        lines.append(f"{name}: follow the version the backend reports (auto_update on)")
    lines += _auth_changes(backend, wanted, name)
    if not lines:
        return None
    return Step(StepKind.UPDATE_BACKEND, backend.id, {**required, **changed}, tuple(lines))


def _auth_changes(backend: MLBackendView, wanted: Wanted, name: str) -> list[str]:
    """Label Studio never shows the password, only that one is set: it is sent again when the
    user or the method changes, or when the connection is not working (a wrong password shows
    as a failed /setup). A working connection proves the password it has."""
    if wanted.basic_auth is None:
        if backend.auth_method == BASIC_AUTH:
            return [f"{name}: basic auth off (BASIC_AUTH_USER is not set)"]
        return []
    user = wanted.basic_auth[0]
    if backend.auth_method != BASIC_AUTH or backend.basic_auth_user != user:
        return [f"{name}: basic auth as {user!r}"]
    if not backend.basic_auth_pass_is_set or not backend.connected:
        return [f"{name}: basic auth password sent again (the connection is not working)"]
    return []


def _project_step(project: ProjectView, wanted: Wanted) -> Step | None:
    fields: dict[str, Any] = {}
    lines = []
    train = wanted.train_on_submit
    if train is not None and project.train_on_submit != train:
        fields["min_annotations_to_start_training"] = int(train)
        lines.append(f"project {project.id}: train on every submitted annotation {_on(train)}")
    if not project.show_predictions:
        fields["show_collab_predictions"] = True
        lines.append(f"project {project.id}: use predictions to prelabel tasks on")
    if not fields:
        return None
    return Step(StepKind.UPDATE_PROJECT, project.id, fields, tuple(lines))


def _find_webhook(webhooks: tuple[WebhookView, ...], url: str) -> WebhookView | None:
    return next((h for h in webhooks if normalize_url(h.url) == url), None)


def _webhook_step(
    webhooks: tuple[WebhookView, ...], backend: MLBackendView | None, wanted: Wanted
) -> Step | None:
    """The project webhook carries the annotation events: it must exist, be active, send its
    payload for every action, and carry the secret when WEBHOOK_SECRET is set."""
    hook = _find_webhook(webhooks, wanted.webhook_url)
    name = f"webhook {wanted.webhook_url}"
    if hook is None and backend is None:  # Label Studio creates it with the backend
        if not wanted.webhook_secret:
            return None
        fields = {"headers": {WEBHOOK_SECRET_HEADER: wanted.webhook_secret}}
        return Step(StepKind.UPDATE_WEBHOOK, None, fields, (f"{name}: secret header set",))
    if hook is None and backend is not None:
        old_url = normalize_url(backend.url) + "/webhook"
        hook = _find_webhook(webhooks, old_url) if old_url != wanted.webhook_url else None
    if hook is None:
        fields = {
            "project": wanted.project,
            "url": wanted.webhook_url,
            "send_payload": True,
            "send_for_all_actions": True,
            "is_active": True,
            "headers": _headers({}, wanted.webhook_secret),
        }
        lines = [f"{name}: created (the annotation events reach videoloop through it)"]
        if wanted.webhook_secret:
            lines.append(f"{name}: secret header set")
        return Step(StepKind.CREATE_WEBHOOK, None, fields, tuple(lines))
    fields, lines = _webhook_fixes(hook, wanted, name)
    return Step(StepKind.UPDATE_WEBHOOK, hook.id, fields, tuple(lines)) if fields else None


def _webhook_fixes(hook: WebhookView, wanted: Wanted, name: str) -> tuple[dict, list[str]]:
    fields: dict[str, Any] = {}
    lines = []
    if normalize_url(hook.url) != wanted.webhook_url:
        fields["url"] = wanted.webhook_url
        lines.append(f"webhook {hook.id}: URL {hook.url} -> {wanted.webhook_url}")
    for flag, what in (
        ("is_active", "active"),
        ("send_payload", "sends the payload"),
        ("send_for_all_actions", "sends every action"),
    ):
        if not getattr(hook, flag):
            fields[flag] = True
            lines.append(f"{name}: {what}")
    headers = _headers(hook.headers, wanted.webhook_secret)
    if headers != dict(hook.headers):
        fields["headers"] = headers
        was = any(k.lower() == WEBHOOK_SECRET_HEADER.lower() for k in hook.headers)
        lines.append(f"{name}: secret header {'replaced' if was else 'set'}")
    return fields, lines


def _headers(headers: Mapping[str, str], secret: str) -> dict[str, str]:
    """``headers`` with the secret's header set (under its one spelling), other headers kept;
    without a secret, unchanged."""
    if not secret:
        return dict(headers)
    kept = {k: v for k, v in headers.items() if k.lower() != WEBHOOK_SECRET_HEADER.lower()}
    return {**kept, WEBHOOK_SECRET_HEADER: secret}


def plan_selection(
    view: ConnectionView, backend: MLBackendView, predicted: Collection[str] = ()
) -> Selection:
    """Select the version the backend serves for the prediction score column (the project's
    ``model_version``; the column counts only the selected version's predictions) when what
    is selected is nothing, an ML backend's title (what connecting selects) or a version of
    ours; another model's predictions stay selected. Label Studio accepts a version only once
    the project holds predictions of it (``predicted``: the versions that have some)."""
    project = view.project
    version = backend.model_version
    selected = project.model_version
    if not needs_selection(view, backend):
        if selected == version:
            return Selection(None, f"prediction score: version {version} is selected")
        return Selection(
            None,
            "prediction score: the backend has no trained version yet; videoloop selects "
            "each new version once it has written its predictions (SELECT_NEW_VERSION)",
        )
    titles = {b.title for b in view.backends if b.title}
    if selected and selected not in titles and not is_version_name(selected):
        return Selection(
            None,
            f"prediction score: predictions of {selected!r} stay selected (another model's; "
            "Settings -> Annotation to change it)",
        )
    if version not in predicted:
        return Selection(
            None,
            f"prediction score: version {version} has no predictions in project {project.id} "
            "yet; videoloop selects it once its refresh has written them (SELECT_NEW_VERSION)",
        )
    line = f"project {project.id}: prediction score shows version {version}"
    step = Step(StepKind.UPDATE_PROJECT, project.id, {"model_version": version}, (line,))
    return Selection(step, "")


def needs_selection(view: ConnectionView, backend: MLBackendView) -> bool:
    """Whether the backend serves a trained version that is not the selected one (only then
    does :func:`plan_selection` need to know which versions have predictions)."""
    version = backend.model_version
    return bool(version) and version != NO_MODEL_VERSION and version != view.project.model_version
