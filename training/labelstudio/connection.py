"""The Label Studio calls that connect a model to a project: its ML backends, the project's
settings and its webhooks, read as small records and changed field by field (the I/O;
``backend/cli/connect_plan.py`` decides what to change).

Through label-studio-sdk 2.x on a :class:`LabelStudioSession` (its authentication, and its
errors that name the URL and never the key):

* ``GET /api/projects/<id>/``, ``PATCH /api/projects/<id>/`` (``min_annotations_to_start_training``,
  which Label Studio 1.23 shows as ``start_training_on_annotation_update``: 1 trains on every
  submit, 0 never; ``show_collab_predictions``; ``model_version``);
* ``GET /api/ml?project=<id>``, ``GET /api/ml/<id>``, ``POST /api/ml``, ``PATCH /api/ml/<id>``;
* ``GET /api/webhooks/?project=<id>``, ``POST /api/webhooks/``, ``PATCH /api/webhooks/<id>/``;
* ``GET /api/predictions/?project=<id>`` for the versions that have predictions.

The traps, in Label Studio 1.23.2 (``ml/serializers.py``, ``ml/models.py``):

* Reading an ML backend (list or one) makes Label Studio call its ``/health`` and ``/setup``
  there and then: ``state`` is live (``CO`` connected, ``DI`` no answer, ``ER`` ``/setup``
  failed) and ``model_version`` is what ``/setup`` reported.
* ``POST`` and ``PATCH /api/ml`` check the connection before saving, with only the fields sent:
  a PATCH must carry ``url``, ``project`` and the whole auth (``auth_method``, and for
  ``BASIC_AUTH`` the user and password), or Label Studio refuses it or fails. A backend it
  cannot reach is refused with 400 and a validation message.
* A project's ``model_version`` can be set only to an ML backend's title or to a version
  that has predictions in the project: 400 otherwise.
* ``basic_auth_pass`` is write-only: reading shows ``basic_auth_pass_is_set`` only.
* Creating an ML backend creates the project webhook ``<url>/webhook`` (all actions, with the
  payload) unless one exists; changing the backend's URL later does not move it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from label_studio_sdk.core.api_error import ApiError

from training.labelstudio.client import LabelStudioSession
from training.labelstudio.errors import LabelStudioError

CONNECTED = "CO"
"""An ML backend's state when Label Studio's last /health and /setup calls succeeded."""

BASIC_AUTH = "BASIC_AUTH"
NO_AUTH = "NONE"
REFUSAL_CHARS = 400
"""How much of Label Studio's reason for refusing a change goes into the message."""


@dataclass(frozen=True)
class MLBackendView:
    """An ML backend connection as ``GET /api/ml`` shows it (state checked there and then)."""

    id: int
    url: str
    title: str = ""
    state: str = ""
    """``CO`` connected, ``DI`` disconnected, ``ER`` error, ``TR`` training, ``PR`` predicting."""
    is_interactive: bool = False
    auto_update: bool = True
    auth_method: str = NO_AUTH
    basic_auth_user: str = ""
    basic_auth_pass_is_set: bool = False
    model_version: str = ""
    """The version the backend's /setup reported (with ``auto_update`` on)."""
    error_message: str = ""

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED


@dataclass(frozen=True)
class WebhookView:
    """A project webhook."""

    id: int
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Sent with every call; may hold a secret, so never shown."""
    is_active: bool = True
    send_payload: bool = True
    send_for_all_actions: bool = True


@dataclass(frozen=True)
class ProjectView:
    """The project settings connecting touches."""

    id: int
    title: str = ""
    train_on_submit: bool = False
    """Settings -> Model -> "Start model training on annotation submission"."""
    show_predictions: bool = True
    """Settings -> Annotation -> "Use predictions to prelabel tasks" (show_collab_predictions)."""
    model_version: str = ""
    """The predictions selected for prelabeling and the prediction score column: a version, an
    ML backend's title (what connecting selects), or nothing."""


@dataclass(frozen=True)
class ConnectionView:
    """What Label Studio shows of a project's model connection."""

    project: ProjectView
    backends: tuple[MLBackendView, ...] = ()
    webhooks: tuple[WebhookView, ...] = ()


class LabelStudioRefusal(LabelStudioError):
    """Label Studio refused a change (400); ``reason`` is what it said, on one line."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"Label Studio refused {where}: {reason}", status=400)
        self.reason = reason


class ConnectionAPI:
    """Reads and changes a project's model connection. Every method raises LabelStudioError
    (naming the URL and the HTTP status, never the key) when a call fails, and
    LabelStudioRefusal when Label Studio refuses a change (400), with its reason cleared of
    the secrets sent."""

    def __init__(self, session: LabelStudioSession) -> None:
        self.session = session
        self.base = session.base

    def read(self, project: int) -> ConnectionView:
        """The project, its ML backends (Label Studio checks each one) and its webhooks."""
        client = self.session.client
        where = f"/api/projects/{project}/"
        try:
            found = client.projects.get(project)
        except ApiError as exc:
            if exc.status_code == 404:
                raise LabelStudioError(
                    f"project {project} not found in Label Studio at {self.base}", status=404
                ) from None
            raise self.session.error(where, exc) from None
        except Exception as exc:
            raise self.session.error(where, exc) from None
        backends = self._call(f"/api/ml?project={project}", lambda: client.ml.list(project=project))
        return ConnectionView(
            _project_view(project, found),
            tuple(_backend_view(b) for b in backends or ()),
            self.webhooks(project),
        )

    def webhooks(self, project: int) -> tuple[WebhookView, ...]:
        client = self.session.client
        where = f"/api/webhooks/?project={project}"
        hooks = self._call(where, lambda: client.webhooks.list(project=str(project)))
        return tuple(_webhook_view(h) for h in hooks or ())

    def prediction_versions(self, project: int) -> set[str]:
        """The versions the project's predictions carry (``GET /api/predictions/?project=``):
        Label Studio selects a version for prelabeling only once it has predictions."""
        client = self.session.client
        where = f"/api/predictions/?project={project}"
        predictions = self._call(where, lambda: client.predictions.list(project=project))
        return {str(p.model_version) for p in predictions or () if p.model_version}

    def get_backend(self, backend_id: int) -> MLBackendView:
        """One ML backend, after Label Studio has called its /health and /setup."""
        client = self.session.client
        return _backend_view(self._call(f"/api/ml/{backend_id}", lambda: client.ml.get(backend_id)))

    def create_backend(self, fields: Mapping[str, Any]) -> MLBackendView:
        """``POST /api/ml`` (Label Studio checks the backend first, and creates its webhook)."""
        client = self.session.client
        return _backend_view(self._change("/api/ml", fields, lambda: client.ml.create(**fields)))

    def update_backend(self, backend_id: int, fields: Mapping[str, Any]) -> MLBackendView:
        """``PATCH /api/ml/<id>``: ``fields`` must hold url, project and the whole auth."""
        client = self.session.client
        where = f"/api/ml/{backend_id}"
        return _backend_view(
            self._change(where, fields, lambda: client.ml.update(backend_id, **fields))
        )

    def update_project(self, project: int, fields: Mapping[str, Any]) -> None:
        client = self.session.client
        where = f"/api/projects/{project}/"
        self._change(where, fields, lambda: client.projects.update(project, **fields))

    def create_webhook(self, fields: Mapping[str, Any]) -> WebhookView:
        client = self.session.client
        created = self._change("/api/webhooks/", fields, lambda: client.webhooks.create(**fields))
        return _webhook_view(created)

    def update_webhook(self, webhook_id: int, fields: Mapping[str, Any]) -> None:
        client = self.session.client
        where = f"/api/webhooks/{webhook_id}/"
        self._change(where, fields, lambda: client.webhooks.update(webhook_id, **fields))

    def _call(self, where: str, call: Any) -> Any:
        try:
            return call()
        except Exception as exc:
            raise self.session.error(where, exc) from None

    def _change(self, where: str, fields: Mapping[str, Any], call: Any) -> Any:
        try:
            return call()
        except ApiError as exc:
            if exc.status_code == 400:
                reason = _scrub(refusal_reason(exc.body), _secrets(fields))
                raise LabelStudioRefusal(where, reason) from None
            raise self.session.error(where, exc, verb="update") from None
        except Exception as exc:
            raise self.session.error(where, exc, verb="update") from None


def refusal_reason(body: object) -> str:
    """Label Studio's reason for a 400, on one line and without HTML: its validation errors
    (``{"detail": "Validation error", "validation_errors": {field: [messages]}}``), else its
    detail."""
    messages: list[str] = []
    if isinstance(body, Mapping):
        errors = body.get("validation_errors")
        if isinstance(errors, Mapping):
            for name, found in errors.items():
                items = found if isinstance(found, list) else [found]
                prefix = "" if name == "non_field_errors" else f"{name}: "
                messages += [prefix + str(item) for item in items]
        elif body.get("detail"):
            messages.append(str(body["detail"]))
    elif body:
        messages.append(str(body))
    text = " ".join(re.sub(r"<[^>]*>", "", " ".join(messages)).split())
    if len(text) > REFUSAL_CHARS:
        text = text[:REFUSAL_CHARS] + "..."
    return text or "no reason given"


def _secrets(fields: Mapping[str, Any]) -> list[str]:
    found = [str(fields.get("basic_auth_pass") or "")]
    headers = fields.get("headers")
    if isinstance(headers, Mapping):
        found += [str(v) for v in headers.values()]
    return [s for s in found if s]


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _get(item: object, name: str, default: Any = None) -> Any:
    value = item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)
    return default if value is None else value


def _project_view(project: int, found: object) -> ProjectView:
    return ProjectView(
        id=project,
        title=str(_get(found, "title", "")),
        train_on_submit=bool(_get(found, "start_training_on_annotation_update", False)),
        show_predictions=bool(_get(found, "show_collab_predictions", True)),
        model_version=str(_get(found, "model_version", "")),
    )


def _backend_view(found: object) -> MLBackendView:
    return MLBackendView(
        id=int(_get(found, "id", 0)),
        url=str(_get(found, "url", "")),
        title=str(_get(found, "title", "")),
        state=str(_get(found, "state", "")),
        is_interactive=bool(_get(found, "is_interactive", False)),
        auto_update=bool(_get(found, "auto_update", True)),
        auth_method=str(_get(found, "auth_method", NO_AUTH)),
        basic_auth_user=str(_get(found, "basic_auth_user", "")),
        basic_auth_pass_is_set=bool(_get(found, "basic_auth_pass_is_set", False)),
        model_version=str(_get(found, "model_version", "")),
        error_message=str(_get(found, "error_message", "")),
    )


def _webhook_view(found: object) -> WebhookView:
    headers = _get(found, "headers", {})
    return WebhookView(
        id=int(_get(found, "id", 0)),
        url=str(_get(found, "url", "")),
        headers={str(k): str(v) for k, v in headers.items()}
        if isinstance(headers, Mapping)
        else {},
        is_active=bool(_get(found, "is_active", True)),
        send_payload=bool(_get(found, "send_payload", True)),
        send_for_all_actions=bool(_get(found, "send_for_all_actions", True)),
    )
