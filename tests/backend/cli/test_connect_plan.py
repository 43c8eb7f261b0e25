"""``videoloop connect``'s plan (backend/cli/connect_plan.py): from what Label Studio shows to
the requests that make the connection what is wanted, one printed line per change, no secret
in any line, and no step at all for a connection already as wanted."""

from __future__ import annotations

import dataclasses

import pytest

from backend.cli.connect_plan import (
    WEBHOOK_SECRET_HEADER,
    StepKind,
    Wanted,
    needs_selection,
    plan_connection,
    plan_selection,
)
from training.labelstudio.connection import (
    BASIC_AUTH,
    NO_AUTH,
    ConnectionView,
    MLBackendView,
    ProjectView,
    WebhookView,
)

URL = "http://backend.internal:9090"
AUTH = ("label-studio", "basic-pass-7c1e")
SECRET = "webhook-secret-4b2a"
VERSION = "v3-20250101-120000"


def wanted(**changes) -> Wanted:
    base = Wanted(project=3, backend_url=URL, basic_auth=AUTH, webhook_secret=SECRET)
    return dataclasses.replace(base, **changes)


def connected(**changes) -> MLBackendView:
    """The backend as Label Studio shows it once connect has run with ``wanted()``."""
    base = MLBackendView(
        id=7,
        url=URL,
        title="videoloop",
        state="CO",
        is_interactive=False,
        auto_update=True,
        auth_method=BASIC_AUTH,
        basic_auth_user=AUTH[0],
        basic_auth_pass_is_set=True,
        model_version="untrained",
    )
    return dataclasses.replace(base, **changes)


def hook(**changes) -> WebhookView:
    base = WebhookView(id=11, url=URL + "/webhook", headers={WEBHOOK_SECRET_HEADER: SECRET})
    return dataclasses.replace(base, **changes)


def project(**changes) -> ProjectView:
    base = ProjectView(id=3, title="videos", train_on_submit=True, model_version="videoloop")
    return dataclasses.replace(base, **changes)


def view(backends=None, webhooks=None, **project_changes) -> ConnectionView:
    return ConnectionView(
        project(**project_changes),
        (connected(),) if backends is None else tuple(backends),
        (hook(),) if webhooks is None else tuple(webhooks),
    )


def all_lines(plan) -> str:
    return "\n".join(plan.lines)


def test_an_empty_project_gets_the_backend_train_on_submit_and_the_webhook_secret():
    empty = view(backends=[], webhooks=[], train_on_submit=False, model_version="")
    plan = plan_connection(empty, wanted(interactive=True))
    assert plan.backend is None
    kinds = [s.kind for s in plan.steps]
    assert kinds == [StepKind.CREATE_BACKEND, StepKind.UPDATE_PROJECT, StepKind.UPDATE_WEBHOOK]
    create, settings, webhook = plan.steps
    assert create.fields == {
        "project": 3,
        "url": URL,
        "auth_method": BASIC_AUTH,
        "basic_auth_user": AUTH[0],
        "basic_auth_pass": AUTH[1],
        "title": "videoloop",
        "is_interactive": True,
        "auto_update": True,
    }
    assert settings.target == 3 and settings.fields == {"min_annotations_to_start_training": 1}
    # The webhook Label Studio creates with the backend: found by its URL when the step runs.
    assert webhook.target is None
    assert webhook.fields == {"headers": {WEBHOOK_SECRET_HEADER: SECRET}}
    assert plan.lines == [
        f"project 3: connect the model at {URL}",
        "ML backend: basic auth as 'label-studio'",
        "ML backend: interactive pre-annotation on",
        "project 3: train on every submitted annotation on",
        f"webhook {URL}/webhook: secret header set",
    ]


def test_a_connection_as_wanted_has_nothing_to_change():
    assert plan_connection(view(), wanted()).steps == ()
    # Trailing slashes and a header name's case are not changes.
    same = view(
        backends=[connected(url=URL + "/")],
        webhooks=[hook(url=URL + "/webhook/", headers={"X-Webhook-Secret": SECRET})],
    )
    assert plan_connection(same, wanted()).steps == ()


def test_no_line_and_no_repr_shows_a_secret():
    empty = view(backends=[], webhooks=[], train_on_submit=False)
    stale = view(
        backends=[connected(state="ER", basic_auth_user="old")],
        webhooks=[hook(headers={"x-webhook-secret": "old-secret"})],
    )
    for state in (empty, stale):
        plan = plan_connection(state, wanted())
        text = all_lines(plan) + repr(plan) + repr(wanted())
        assert plan.steps and AUTH[1] not in text and SECRET not in text, text


def test_an_update_carries_the_url_project_and_whole_auth_label_studio_checks():
    """Label Studio 1.23 checks /health and /setup with only the fields a PATCH sends."""
    plan = plan_connection(view(), wanted(interactive=True))
    (step,) = plan.steps
    assert step.kind is StepKind.UPDATE_BACKEND and step.target == 7
    assert step.fields == {
        "project": 3,
        "url": URL,
        "auth_method": BASIC_AUTH,
        "basic_auth_user": AUTH[0],
        "basic_auth_pass": AUTH[1],
        "is_interactive": True,
    }
    assert step.lines == ("ML backend 7: interactive pre-annotation on",)


def test_interactive_is_left_alone_unless_asked():
    on = view(backends=[connected(is_interactive=True)])
    assert plan_connection(on, wanted(interactive=None)).steps == ()
    (step,) = plan_connection(on, wanted(interactive=False)).steps
    assert step.fields["is_interactive"] is False


@pytest.mark.parametrize(
    "backend, line",
    [
        (connected(auth_method=NO_AUTH, basic_auth_user=""), "basic auth as 'label-studio'"),
        (connected(basic_auth_user="someone"), "basic auth as 'label-studio'"),
        (connected(basic_auth_pass_is_set=False), "password sent again"),
        # A wrong password shows as a failed /setup: send ours again.
        (connected(state="ER", error_message="401"), "password sent again"),
        (connected(auto_update=False), "auto_update on"),
    ],
)
def test_the_connection_is_updated_where_it_differs(backend, line):
    (step,) = plan_connection(view(backends=[backend]), wanted()).steps
    assert step.kind is StepKind.UPDATE_BACKEND
    assert len(step.lines) == 1 and line in step.lines[0], step.lines
    assert step.fields["basic_auth_pass"] == AUTH[1]


def test_without_basic_auth_the_connection_drops_it():
    (step,) = plan_connection(view(), wanted(basic_auth=None)).steps
    assert step.fields == {"project": 3, "url": URL, "auth_method": NO_AUTH}
    assert step.lines == ("ML backend 7: basic auth off (BASIC_AUTH_USER is not set)",)
    plain = view(backends=[connected(auth_method=NO_AUTH, basic_auth_user="")])
    assert plan_connection(plain, wanted(basic_auth=None)).steps == ()


def test_project_settings():
    off = view(train_on_submit=False, show_predictions=False)
    (step,) = plan_connection(off, wanted()).steps
    assert step.kind is StepKind.UPDATE_PROJECT
    assert step.fields == {"min_annotations_to_start_training": 1, "show_collab_predictions": True}
    assert len(step.lines) == 2
    assert plan_connection(off, wanted(train_on_submit=None)).steps[0].fields == {
        "show_collab_predictions": True
    }
    (step,) = plan_connection(view(), wanted(train_on_submit=False)).steps
    assert step.fields == {"min_annotations_to_start_training": 0}


def test_the_webhook_gets_the_secret_and_keeps_other_headers():
    other = {"X-Team": "video", "X-WEBHOOK-SECRET": "old"}
    (step,) = plan_connection(view(webhooks=[hook(headers=other)]), wanted()).steps
    assert step.kind is StepKind.UPDATE_WEBHOOK and step.target == 11
    assert step.fields == {"headers": {"X-Team": "video", WEBHOOK_SECRET_HEADER: SECRET}}
    assert step.lines == (f"webhook {URL}/webhook: secret header replaced",)
    # Without WEBHOOK_SECRET, a webhook's headers are left alone.
    assert (
        plan_connection(view(webhooks=[hook(headers=other)]), wanted(webhook_secret="")).steps == ()
    )


def test_a_disabled_or_missing_webhook_is_fixed():
    disabled = hook(is_active=False, send_payload=False)
    (step,) = plan_connection(view(webhooks=[disabled]), wanted()).steps
    assert step.fields == {"is_active": True, "send_payload": True}
    (step,) = plan_connection(view(webhooks=[]), wanted()).steps
    assert step.kind is StepKind.CREATE_WEBHOOK
    assert step.fields == {
        "project": 3,
        "url": URL + "/webhook",
        "send_payload": True,
        "send_for_all_actions": True,
        "is_active": True,
        "headers": {WEBHOOK_SECRET_HEADER: SECRET},
    }
    # Another project's backend elsewhere is not ours: a webhook at another URL stays.
    elsewhere = hook(id=12, url="http://other:9090/webhook")
    assert plan_connection(view(webhooks=[hook(), elsewhere]), wanted()).steps == ()


def test_a_moved_backend_keeps_its_connection_and_its_webhook_follows():
    old = "http://old-host:9090"
    moved = view(backends=[connected(url=old)], webhooks=[hook(url=old + "/webhook")])
    backend_step, webhook_step = plan_connection(moved, wanted()).steps
    assert backend_step.kind is StepKind.UPDATE_BACKEND and backend_step.fields["url"] == URL
    assert backend_step.lines == (f"ML backend 7: URL {old} -> {URL}",)
    assert webhook_step.target == 11 and webhook_step.fields == {"url": URL + "/webhook"}


def test_a_backend_at_another_url_with_another_title_is_left_alone():
    theirs = connected(id=5, url="http://sam:9090", title="segment-anything")
    plan = plan_connection(view(backends=[theirs], webhooks=[]), wanted())
    assert plan.backend is None and plan.steps[0].kind is StepKind.CREATE_BACKEND


@pytest.mark.parametrize("selected", ["", "videoloop", "v1-20240101-000000"])
def test_the_served_version_is_selected_over_nothing_our_title_or_an_older_version(selected):
    backend = connected(model_version=VERSION)
    state = view(backends=[backend], model_version=selected)
    selection = plan_selection(state, backend, predicted={VERSION, "v1-20240101-000000"})
    assert selection.step is not None and selection.note == ""
    assert selection.step.kind is StepKind.UPDATE_PROJECT and selection.step.target == 3
    assert selection.step.fields == {"model_version": VERSION}
    assert selection.step.lines == (f"project 3: prediction score shows version {VERSION}",)


def test_the_selection_is_left_alone_when_done_untrained_or_another_models():
    backend = connected(model_version=VERSION)
    done = view(backends=[backend], model_version=VERSION)
    assert not needs_selection(done, backend)
    selection = plan_selection(done, backend, predicted={VERSION})
    assert (
        selection.step is None
        and selection.note == f"prediction score: version {VERSION} is selected"
    )
    theirs = view(backends=[backend], model_version="human-baseline")
    selection = plan_selection(theirs, backend, predicted={VERSION})
    assert selection.step is None and "'human-baseline' stay selected" in selection.note
    assert not needs_selection(view(), connected())
    selection = plan_selection(view(), connected())
    assert selection.step is None and "no trained version yet" in selection.note


def test_a_version_without_predictions_in_the_project_waits_for_them():
    """Label Studio 1.23 refuses to select a version the project holds no predictions of."""
    backend = connected(model_version=VERSION)
    state = view(backends=[backend])
    assert needs_selection(state, backend)
    selection = plan_selection(state, backend, predicted={"v1-20240101-000000"})
    assert selection.step is None
    assert f"version {VERSION} has no predictions in project 3 yet" in selection.note


def test_the_header_name_is_the_one_the_backend_checks():
    from backend.app import WEBHOOK_SECRET_HEADER as checked

    assert checked == WEBHOOK_SECRET_HEADER
