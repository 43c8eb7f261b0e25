"""``videoloop connect``: a Label Studio project's model connection in one command.

It reads what Label Studio shows (the project, its ML backends, its webhooks), plans the
changes (``connect_plan.py``, no I/O), makes them one request at a time, printing a line per
change, waits until Label Studio shows the backend connected, and then selects the backend's
current version for the prediction score. Label Studio's address and key come from
LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, the connection's basic auth from BASIC_AUTH_USER
and BASIC_AUTH_PASS, the webhook's secret from WEBHOOK_SECRET: the backend's own settings.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from backend.cli.connect_plan import (
    DEFAULT_TITLE,
    Plan,
    Selection,
    Step,
    StepKind,
    Wanted,
    needs_selection,
    normalize_url,
    plan_connection,
    plan_selection,
)
from training.labelstudio.client import LabelStudioSession
from training.labelstudio.connection import (
    ConnectionAPI,
    ConnectionView,
    LabelStudioRefusal,
    MLBackendView,
)
from training.labelstudio.errors import LabelStudioError
from training.labelstudio.sdk_reader import parse_project_id
from training.settings import Settings

CONNECT_TIMEOUT_S = 30.0
"""Default seconds to wait for Label Studio to show the backend connected."""
POLL_S = 1.0
"""Between two looks at the backend's state (each makes Label Studio call /health, /setup)."""
REACH_HINT = (
    "check that `videoloop serve` is running and that Label Studio's machine reaches it at "
    "this URL (a backend on Label Studio's own machine or network needs "
    "LABEL_STUDIO_ML_BLOCK_LOCAL_IP=false and LABEL_STUDIO_SSRF_PROTECTION_ENABLED=false in "
    "Label Studio)"
)
AUTH_HINT = (
    "the backend refused Label Studio's credentials: BASIC_AUTH_USER and BASIC_AUTH_PASS here "
    "must be the backend's"
)
STATES = {
    "DI": "disconnected: /health does not answer",
    "ER": "error: /setup failed",
    "TR": "training",
    "PR": "predicting",
}

Say = Callable[[str], None]


def add_connect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "connect",
        help="connect a Label Studio project to this backend (LABEL_STUDIO_URL, _API_KEY)",
    )
    p.add_argument("--project", required=True, help="the Label Studio project id")
    p.add_argument(
        "--backend-url", required=True, help="this backend's address as Label Studio reaches it"
    )
    p.add_argument(
        "--interactive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="interactive pre-annotation on (--no-interactive: off; not given: left as it is)",
    )
    p.add_argument(
        "--train-on-submit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train on every submitted annotation (default: on)",
    )
    p.add_argument("--title", default=DEFAULT_TITLE, help="a new connection's name in Label Studio")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument(
        "--timeout",
        type=float,
        default=CONNECT_TIMEOUT_S,
        help="seconds to wait for Label Studio to show the backend connected",
    )


def cmd_connect(args: argparse.Namespace, settings: Settings) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    wanted = Wanted(
        project=parse_project_id(args.project),
        backend_url=check_backend_url(args.backend_url),
        basic_auth=(
            (settings.basic_auth_user, settings.basic_auth_pass)
            if settings.basic_auth_user
            else None
        ),
        webhook_secret=settings.webhook_secret,
        interactive=args.interactive,
        train_on_submit=args.train_on_submit,
        title=args.title,
    )
    # No retries: a POST retried after a lost answer could connect the backend twice, and a
    # person waits for the answer (running it again is safe).
    with LabelStudioSession(
        settings.label_studio_url, settings.label_studio_api_key, max_retries=0
    ) as session:
        api = ConnectionAPI(session)
        if args.dry_run:
            show_plan(api, wanted, say=print)
        else:
            connect_project(api, wanted, timeout_s=args.timeout, say=print)
    return 0


def check_backend_url(url: str) -> str:
    """The backend's URL without a trailing slash; refuses what Label Studio cannot use."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--backend-url must be http(s)://host[:port], got {url!r}")
    if parts.username or parts.password:
        raise ValueError(
            "--backend-url must not carry credentials (Label Studio shows them in its API): "
            "set BASIC_AUTH_USER and BASIC_AUTH_PASS instead"
        )
    return normalize_url(url)


def connect_project(
    api: ConnectionAPI, wanted: Wanted, *, timeout_s: float = CONNECT_TIMEOUT_S, say: Say = print
) -> MLBackendView:
    """Make the project's model connection what ``wanted`` says, printing each change, wait
    until Label Studio shows it connected, and select the backend's version.

    Returns:
        The connection as Label Studio shows it, connected.

    Raises:
        LabelStudioError: Label Studio unreachable or refusing (401, no such project), the
            backend unreachable from Label Studio, or not connected within ``timeout_s``.
    """
    plan = plan_connection(api.read(wanted.project), wanted)
    backend = plan.backend
    for step in plan.steps:
        created = _apply(api, wanted, step)
        backend = created or backend
        for line in step.lines:
            say(line)
    if backend is None:  # the plan's first step creates it when there is none
        raise RuntimeError("the plan connected no ML backend")
    backend = wait_connected(api, backend.id, wanted.backend_url, timeout_s)
    selection = _plan_selection(api, api.read(wanted.project), backend)
    if selection.step is not None:
        _apply(api, wanted, selection.step)
        for line in selection.step.lines:
            say(line)
    if not plan.steps and selection.step is None:
        say("nothing to change")
    say(f"ML backend {backend.id} at {backend.url}: connected, serving {backend.model_version}")
    if selection.note:
        say(selection.note)
    return backend


def show_plan(api: ConnectionAPI, wanted: Wanted, say: Say = print) -> Plan:
    """``--dry-run``: what :func:`connect_project` would change, from what Label Studio shows
    now; changes nothing."""
    view = api.read(wanted.project)
    plan = plan_connection(view, wanted)
    lines = plan.lines
    backend = plan.backend
    touched = any(s.kind in (StepKind.CREATE_BACKEND, StepKind.UPDATE_BACKEND) for s in plan.steps)
    if backend is not None and backend.connected and not touched:
        selection = _plan_selection(api, view, backend)
        lines += list(selection.step.lines if selection.step else ())
        note = selection.note
    else:
        note = "prediction score: once connected, the backend's version is selected if trained"
    for line in lines:
        say(f"would: {line}")
    if not lines:
        say("nothing to change")
    if backend is not None:
        say(f"ML backend {backend.id} at {backend.url}: {_state(backend)}")
    if note:
        say(note)
    return plan


def _plan_selection(api: ConnectionAPI, view: ConnectionView, backend: MLBackendView) -> Selection:
    needed = needs_selection(view, backend)
    predicted = api.prediction_versions(view.project.id) if needed else set()
    return plan_selection(view, backend, predicted)


def wait_connected(
    api: ConnectionAPI, backend_id: int, url: str, timeout_s: float
) -> MLBackendView:
    """The backend once Label Studio shows it connected (state CO)."""
    deadline = time.monotonic() + timeout_s
    while True:
        backend = api.get_backend(backend_id)
        if backend.connected:
            return backend
        if time.monotonic() >= deadline:
            raise LabelStudioError(
                f"Label Studio does not show the model at {url} as connected after "
                f"{timeout_s:g} s ({_state(backend)}): {REACH_HINT}; and that "
                "BASIC_AUTH_USER and BASIC_AUTH_PASS here are the backend's"
            )
        time.sleep(POLL_S)


def _state(backend: MLBackendView) -> str:
    if backend.connected:
        return f"connected, serving {backend.model_version}"
    state = STATES.get(backend.state, f"state {backend.state}")
    detail = " ".join(backend.error_message.split())[:200]
    return f"{state}: {detail}" if detail else state


def _apply(api: ConnectionAPI, wanted: Wanted, step: Step) -> MLBackendView | None:
    """Make one step's request; returns the backend when the step creates or changes it."""
    try:
        if step.kind is StepKind.CREATE_BACKEND:
            return api.create_backend(step.fields)
        if step.kind is StepKind.UPDATE_BACKEND:
            assert step.target is not None
            return api.update_backend(step.target, step.fields)
    except LabelStudioRefusal as exc:
        hint = AUTH_HINT if "401" in exc.reason or "authentication" in exc.reason else REACH_HINT
        raise LabelStudioError(
            f"Label Studio cannot connect the model at {wanted.backend_url}: {exc.reason} ({hint})",
            status=400,
        ) from None
    if step.kind is StepKind.UPDATE_PROJECT:
        api.update_project(step.target or wanted.project, step.fields)
    elif step.kind is StepKind.CREATE_WEBHOOK:
        api.create_webhook(step.fields)
    elif step.target is not None:
        api.update_webhook(step.target, step.fields)
    else:
        _update_new_webhook(api, wanted, step)
    return None


def _update_new_webhook(api: ConnectionAPI, wanted: Wanted, step: Step) -> None:
    """The webhook Label Studio created with the backend just now (or a new one, if it did
    not)."""
    hook = next(
        (h for h in api.webhooks(wanted.project) if normalize_url(h.url) == wanted.webhook_url),
        None,
    )
    if hook is not None:
        api.update_webhook(hook.id, step.fields)
        return
    api.create_webhook(
        {
            "project": wanted.project,
            "url": wanted.webhook_url,
            "send_payload": True,
            "send_for_all_actions": True,
            "is_active": True,
            **step.fields,
        }
    )
