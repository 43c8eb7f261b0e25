"""training/labelstudio/client.py through the real label-studio-sdk against the fake Label Studio
(tests/support/fake_label_studio.py) over real HTTP, and training/labelstudio/tasks.py on what it
reads."""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
from fake_label_studio import JWT_SECRET, FakeLabelStudio

from training.labelstudio.client import fetch_project_data
from training.labelstudio.errors import LabelStudioError
from training.labelstudio.tasks import LabelledTask, count_per_label, read_task_label

CONFIG = """<View>
  <Video name="video" value="$video"/>
  <Choices name="label" toName="video" choice="single">
    <Choice value="left_to_right"/>
    <Choice value="right_to_left"/>
    <Choice value="Approaching" alias="approach"/>
  </Choices>
  <Choices name="quality" toName="video"><Choice value="good"/><Choice value="bad"/></Choices>
</View>"""

LABELS = ["left_to_right", "right_to_left", "approach"]


def fetch(ls, project, key, **kwargs):
    kwargs.setdefault("max_retries", 0)
    return fetch_project_data(str(project), url=ls.url, api_key=key, **kwargs)


def task_pages(ls) -> list[dict[str, list[str]]]:
    return [
        parse_qs(urlparse(s.path).query)
        for s in ls.api_requests()
        if urlparse(s.path).path == "/api/tasks/"
    ]


def test_every_page_is_read(label_studio, ls_token):
    project = label_studio.add_project(CONFIG)
    for i in range(250):
        task = label_studio.add_task(project, {"video": f"/data/upload/{project}/v{i}.mp4"})
        label_studio.annotate(task, LABELS[i % 2])

    data = fetch(label_studio, project, ls_token, page_size=100)

    assert len(data.tasks) == 250
    assert [t.task_id for t in data.tasks] == list(range(1, 251))
    assert data.skipped == []
    assert data.tasks[7] == LabelledTask(
        task_id=8,
        video_url=f"/data/upload/{project}/v7.mp4",
        label="right_to_left",
        annotation_id=8,
        result=data.tasks[7].result,
    )
    assert data.tasks[7].result[0]["value"] == {"choices": ["right_to_left"]}
    assert count_per_label(data) == {"left_to_right": 125, "right_to_left": 125, "approach": 0}
    assert data.labels == LABELS
    assert data.label_config == CONFIG
    assert data.project == str(project)
    assert data.controls.choices_name == "label"

    # What the sdk asks: the project, then pages until Label Studio answers 404 past the end.
    requests = label_studio.api_requests()
    assert urlparse(requests[0].path).path == f"/api/projects/{project}/"
    pages = task_pages(label_studio)
    assert [p["page"] for p in pages] == [["1"], ["2"], ["3"], ["4"]]
    for params in pages:
        assert params["project"] == [str(project)]
        assert params["page_size"] == ["100"]
        assert params["fields"] == ["all"]  # without it there are no annotations
        assert params["resolve_uri"] == ["false"]
    assert all(r.headers["Authorization"] == f"Token {ls_token}" for r in requests)


def test_a_page_size_that_divides_the_tasks_and_an_empty_project(label_studio, ls_token):
    project = label_studio.add_project(CONFIG)
    for _ in range(4):
        label_studio.annotate(label_studio.add_task(project, {"video": "a.mp4"}), "approach")
    assert len(fetch(label_studio, project, ls_token, page_size=2).tasks) == 4

    empty = label_studio.add_project(CONFIG)
    data = fetch(label_studio, empty, ls_token)
    assert (data.tasks, data.skipped) == ([], [])
    assert count_per_label(data) == dict.fromkeys(LABELS, 0)


def test_the_latest_submitted_annotation_wins(label_studio, ls_token):
    project = label_studio.add_project(CONFIG)
    task = label_studio.add_task(project, {"video": "/data/upload/1/b.mp4"})
    first = label_studio.annotate(task, "left_to_right")
    second = label_studio.annotate(task, "right_to_left", completed_by=2)
    label_studio.annotate(task, "approach", cancelled=True)  # newest, but skipped

    (picked,) = fetch(label_studio, project, ls_token).tasks
    assert (picked.label, picked.annotation_id) == ("right_to_left", second)

    # Updating the older annotation makes it the latest: updated_at counts, not the id.
    label_studio.update_annotation(first, "approach")
    (picked,) = fetch(label_studio, project, ls_token).tasks
    assert (picked.label, picked.annotation_id) == ("approach", first)


def test_equal_timestamps_fall_back_to_the_highest_id():
    from training.labelstudio.labelconfig import parse_label_config

    controls = parse_label_config(CONFIG)
    stamp = "2025-03-01T10:00:00.000000Z"

    def annotation(aid: int, label: str) -> dict:
        result = {"from_name": "label", "to_name": "video", "type": "choices"}
        result["value"] = {"choices": [label]}
        return {"id": aid, "updated_at": stamp, "was_cancelled": False, "result": [result]}

    task = {
        "id": 5,
        "data": {"video": "x.mp4"},
        "annotations": [annotation(9, "approach"), annotation(3, "left_to_right")],
    }
    assert read_task_label(task, controls).annotation_id == 9


def test_unusable_tasks_are_skipped_with_the_reason(label_studio, ls_token):
    project = label_studio.add_project(CONFIG)
    add = label_studio.add_task
    good = add(project, {"video": "s3://bucket/clips/good.mp4"})
    label_studio.annotate(good, "left_to_right")
    unlabelled = add(project, {"video": "a.mp4"})
    cancelled = add(project, {"video": "a.mp4"})
    label_studio.annotate(cancelled, "left_to_right", cancelled=True)
    unknown = add(project, {"video": "a.mp4"})
    label_studio.annotate(unknown, "Approaching")  # the value, but results carry the alias
    several = add(project, {"video": "a.mp4"})
    label_studio.annotate(several, ["left_to_right", "right_to_left"])
    other_control = add(project, {"video": "a.mp4"})
    label_studio.annotate(
        other_control,
        result=[
            {
                "from_name": "quality",
                "to_name": "video",
                "type": "choices",
                "value": {"choices": ["good"]},
            }
        ],
    )
    no_video = add(project, {"image": "a.png"})
    label_studio.annotate(no_video, "right_to_left")
    empty_video = add(project, {"video": "  "})
    label_studio.annotate(empty_video, "right_to_left")
    emptied = add(project, {"video": "a.mp4"})
    older = label_studio.annotate(emptied, "right_to_left")
    label_studio.annotate(emptied, result=[])  # the latest says nothing: not the older one

    data = fetch(label_studio, project, ls_token)

    (task,) = data.tasks
    # Cloud URIs come as imported, not rewritten to Label Studio's presign proxy.
    assert (task.task_id, task.video_url) == (good, "s3://bucket/clips/good.mp4")
    reasons = dict(data.skipped)
    assert list(reasons) == [
        unlabelled,
        cancelled,
        unknown,
        several,
        other_control,
        no_video,
        empty_video,
        emptied,
    ]
    assert reasons[unlabelled] == "no annotation"
    assert "cancelled" in reasons[cancelled]
    assert "'Approaching'" in reasons[unknown] and "approach" in reasons[unknown]
    assert "several choices" in reasons[several]
    assert 'name="label"' in reasons[other_control]
    assert "data['video']" in reasons[no_video]
    assert "data['video']" in reasons[empty_video]
    assert f"annotation {older + 1} has no choice" in reasons[emptied]
    assert count_per_label(data) == {"left_to_right": 1, "right_to_left": 0, "approach": 0}


def test_wrong_key_is_an_error_naming_the_url_and_status_but_not_the_key(label_studio, caplog):
    caplog.set_level(logging.DEBUG)
    project = label_studio.add_project(CONFIG)
    key = "wrong-key-5d1e0c9b"
    with pytest.raises(LabelStudioError) as err:
        fetch(label_studio, project, key)
    message = str(err.value)
    assert f"{label_studio.url}/api/projects/{project}/" in message
    assert "401" in message
    assert key not in message
    assert all(key not in record.getMessage() for record in caplog.records)


def test_missing_project_is_a_404_error(label_studio, ls_token):
    with pytest.raises(LabelStudioError, match=r"/api/projects/77/: HTTP 404"):
        fetch(label_studio, 77, ls_token)


def test_server_down_is_an_error_naming_the_url(unused_port):
    url = f"http://127.0.0.1:{unused_port}"
    with pytest.raises(LabelStudioError, match="cannot connect") as err:
        fetch_project_data("3", url=url, api_key="k-123", max_retries=0, timeout_s=2)
    assert f"{url}/api/projects/3/" in str(err.value)
    assert "k-123" not in str(err.value)


def test_a_server_error_is_retried_by_the_sdk(label_studio, ls_token):
    project = label_studio.add_project(CONFIG)
    label_studio.annotate(label_studio.add_task(project, {"video": "a.mp4"}), "approach")
    label_studio.fail_next(503, path_prefix="/api/tasks/")
    started = time.monotonic()
    data = fetch(label_studio, project, ls_token, max_retries=1)
    assert len(data.tasks) == 1
    assert time.monotonic() - started >= 0.5  # the sdk backs off (about 1 s) before retrying

    label_studio.fail_next(500, path_prefix="/api/tasks/", times=2)
    with pytest.raises(LabelStudioError, match=r"/api/tasks/\?project=\d+&page=1: HTTP 500"):
        fetch(label_studio, project, ls_token, max_retries=0)


def test_an_error_on_a_later_page_is_not_mistaken_for_the_end(label_studio, ls_token, caplog):
    project = label_studio.add_project(CONFIG)
    for _ in range(3):
        label_studio.annotate(label_studio.add_task(project, {"video": "a.mp4"}), "approach")
    label_studio.fail_next(403, path_prefix="/api/tasks/", query={"page": "2"})
    with pytest.raises(LabelStudioError, match=r"page=2: HTTP 403: injected fault 403"):
        fetch(label_studio, project, ls_token, page_size=2)
    # Past the last page, 404 is the end, as the sdk's own pager treats it.
    label_studio.fail_next(404, path_prefix="/api/tasks/", query={"page": "2"})
    assert len(fetch(label_studio, project, ls_token, page_size=2).tasks) == 2
    assert "reported 3 tasks but 2 were read" in caplog.text


def test_personal_access_tokens_are_exchanged_for_bearer_tokens(media_root):
    ls = FakeLabelStudio(media_root, token="legacy-abc", legacy_tokens=False)
    try:
        project = ls.add_project(CONFIG)
        ls.annotate(ls.add_task(project, {"video": "a.mp4"}), "left_to_right")

        data = fetch(ls, project, ls.personal_access_token)
        assert len(data.tasks) == 1
        refresh = [s for s in ls.seen if s.path == "/api/token/refresh/"]
        assert len(refresh) == 1 and refresh[0].method == "POST"
        api_gets = [s for s in ls.api_requests() if s.method == "GET"]
        assert all(s.headers["Authorization"].startswith("Bearer ") for s in api_gets)

        # Legacy tokens disabled: the legacy key is refused, and the message says what to do.
        with pytest.raises(LabelStudioError, match="401") as err:
            fetch(ls, project, "legacy-abc")
        assert "personal access token" in str(err.value)
        assert "legacy-abc" not in str(err.value)

        expired = jwt.encode(
            {"token_type": "refresh", "exp": int(time.time()) - 60}, JWT_SECRET, "HS256"
        )
        with pytest.raises(LabelStudioError, match="401") as err:
            fetch(ls, project, expired)
        assert expired not in str(err.value)
    finally:
        ls.close()


def test_a_config_without_video_choices_is_an_error(label_studio, ls_token):
    project = label_studio.add_project(
        '<View><Image name="img" value="$image"/>'
        '<Choices name="c" toName="img"><Choice value="x"/></Choices></View>'
    )
    with pytest.raises(LabelStudioError, match="no <Video>"):
        fetch(label_studio, project, ls_token)


def test_project_ids_and_settings_are_checked_before_any_request(label_studio, ls_token):
    project = label_studio.add_project(CONFIG)
    assert fetch(label_studio, f"{project}.1712345678", ls_token).project == str(project)
    with pytest.raises(ValueError, match="project id"):
        fetch(label_studio, "abc", ls_token)
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL"):
        fetch_project_data("1", url="", api_key=ls_token)
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY"):
        fetch_project_data("1", url=label_studio.url, api_key="")
    assert len(label_studio.api_requests()) == 2  # only the first fetch: project + one page


def test_tasks_annotated_while_reading_are_safe_to_add(label_studio, ls_token):
    project = label_studio.add_project(CONFIG)
    stop = threading.Event()
    added: list[int] = []

    def annotator() -> None:
        while not stop.is_set() and len(added) < 300:
            task = label_studio.add_task(project, {"video": "a.mp4"})
            label_studio.annotate(task, "right_to_left")
            added.append(task)

    thread = threading.Thread(target=annotator)
    thread.start()
    try:
        while len(added) < 20:
            time.sleep(0.005)
        during = fetch(label_studio, project, ls_token, page_size=7)
    finally:
        stop.set()
        thread.join()
    assert 20 <= len(during.tasks) + len(during.skipped) <= len(added)
    after = fetch(label_studio, project, ls_token, page_size=50)
    assert len(after.tasks) + len(after.skipped) == len(added)
    # A task added between its creation and its annotation may be read unannotated.
    assert all(reason == "no annotation" for _, reason in during.skipped)
    assert after.skipped == []


MIXED = """<View>
  <Video name="video" value="$video" frameRate="$fps"/>
  <Choices name="label" toName="video"><Choice value="a"/><Choice value="b"/></Choices>
  <TimelineLabels name="tl" toName="video">
    <Label value="Run"/><Label value="Walk"/>
  </TimelineLabels>
</View>"""


def timeline_region(start, end, label, name="tl"):
    return {
        "from_name": name,
        "to_name": "video",
        "type": "timelinelabels",
        "value": {"ranges": [{"start": start, "end": end}], "timelinelabels": [label]},
    }


def test_timeline_regions_are_read_with_the_class_or_alone(label_studio, ls_token):
    from training.labelstudio.tasks import count_per_timeline_label
    from training.labelstudio.timeline import Segment

    project = label_studio.add_project(MIXED)
    add = label_studio.add_task
    both = add(project, {"video": "a.mp4", "fps": 30})
    choice = {"from_name": "label", "to_name": "video", "type": "choices"}
    label_studio.annotate(
        both,
        result=[
            {**choice, "value": {"choices": ["a"]}},
            timeline_region(1, 10, "Run"),
            timeline_region(11, 20, "Walk"),
        ],
    )
    segments_only = add(project, {"video": "b.mp4"})
    label_studio.annotate(segments_only, result=[timeline_region(5, 9, "Run")])
    class_only = add(project, {"video": "c.mp4"})
    label_studio.annotate(class_only, "b")
    # several choices: the class does not count, the segments still do
    bad_choice = add(project, {"video": "d.mp4"})
    label_studio.annotate(
        bad_choice,
        result=[{**choice, "value": {"choices": ["a", "b"]}}, timeline_region(1, 2, "Walk")],
    )
    neither = add(project, {"video": "e.mp4"})
    label_studio.annotate(neither, result=[timeline_region(1, 3, "Fly")])  # not a config label

    data = fetch(label_studio, project, ls_token)
    tasks = {t.task_id: t for t in data.tasks}
    assert data.timeline_labels == ["Run", "Walk"]
    assert tasks[both].label == "a"
    assert tasks[both].segments == (Segment(1, 10, "Run"), Segment(11, 20, "Walk"))
    assert tasks[both].frame_rate == 30.0  # frameRate="$fps" from the task's data
    assert tasks[segments_only].label is None
    assert tasks[segments_only].segments == (Segment(5, 9, "Run"),)
    assert tasks[segments_only].frame_rate == 24.0  # Label Studio's default
    assert tasks[class_only].label == "b" and tasks[class_only].segments is None
    assert tasks[bad_choice].label is None and tasks[bad_choice].segments is not None
    (reason,) = [r for t, r in data.skipped if t == neither]
    assert "no choice" in reason and 'no region for <TimelineLabels name="tl">' in reason
    assert count_per_label(data) == {"a": 1, "b": 1}
    assert count_per_timeline_label(data) == {"Run": 2, "Walk": 2}
