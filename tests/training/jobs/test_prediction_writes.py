"""A refresh's predictions checked and written a batch at a time, a few side by side
(training/jobs/prediction_writes.py), over real HTTP to the Label Studio stand-in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import LS_TOKEN

from training.jobs.prediction_writes import PendingWrites
from training.jobs.refresh_summary import RefreshSummary
from training.labelstudio.client import LabelStudioSession
from training.labelstudio.errors import LabelStudioError

CONFIG = """<View><Video name="video" value="$video"/>
<Choices name="label" toName="video"><Choice value="a"/><Choice value="b"/></Choices></View>"""
VERSION = "v1-20261203-000000"


def prediction(choice: str = "a") -> dict:
    region = {"from_name": "label", "to_name": "video", "type": "choices"}
    result = [{**region, "value": {"choices": [choice]}}]
    return {"result": result, "score": 0.75, "model_version": VERSION}


@pytest.fixture
def project(label_studio) -> tuple[int, list[int]]:
    pid = label_studio.add_project(CONFIG)
    return pid, [label_studio.add_task(pid, {"video": f"/v/{i}.mp4"}) for i in range(5)]


@pytest.fixture
def writes(label_studio, project) -> Iterator[tuple[PendingWrites, list[int]]]:
    released: list[int] = []
    with LabelStudioSession(label_studio.url, LS_TOKEN) as ls:
        summary = RefreshSummary(str(project[0]), VERSION, lambda _: None)
        yield PendingWrites(ls, summary, released.append, size=3), released


def writes_seen(label_studio) -> list[str]:
    return [s.path for s in label_studio.seen if s.method == "POST"]


def test_predictions_wait_for_a_full_batch_and_the_rest_goes_at_flush(
    label_studio, project, writes
):
    pending, released = writes
    _, tasks = project
    for task in tasks:
        pending.add(task, prediction())
    assert len(writes_seen(label_studio)) == 3  # the first batch of 3; 2 wait
    pending.flush()
    assert len(writes_seen(label_studio)) == len(tasks) and pending.summary.written == len(tasks)
    for task in tasks:
        (stored,) = label_studio.predictions(task)
        assert stored["model_version"] == VERSION and stored["score"] == 0.75
    assert released == []


def test_a_task_deleted_meanwhile_is_skipped_and_the_rest_of_its_batch_written(
    label_studio, project, writes
):
    pending, released = writes
    _, tasks = project
    pending.add(tasks[0], prediction())
    pending.add(tasks[1], prediction())
    label_studio.delete_task(tasks[1])
    pending.flush()
    assert [p["task"] for p in label_studio.predictions()] == [tasks[0]]
    assert pending.summary.written == 1 and pending.summary.skipped == 1
    assert [s["task"] for s in pending.summary.skipped_tasks] == [tasks[1]]
    assert released == [tasks[1]]  # its claim given back; the written one keeps its claim


def test_a_task_that_got_the_version_meanwhile_is_not_written_twice(label_studio, project, writes):
    """The last look before each write: a prediction of the version stored since the task
    was listed (Label Studio storing /predict's answer after its claim expired) counts as
    already there, and its claim stays taken."""
    pending, released = writes
    _, tasks = project
    before = prediction("b")["result"]
    label_studio.add_prediction(tasks[1], before, score=0.5, model_version=VERSION)
    for task in tasks[:3]:
        pending.add(task, prediction())
    assert [len(label_studio.predictions(t)) for t in tasks[:3]] == [1, 1, 1]
    assert label_studio.predictions(tasks[1])[0]["score"] == 0.5  # the one stored before
    assert pending.summary.already == 1 and pending.summary.written == 2 and released == []


def test_a_refused_write_gives_back_the_claims_of_what_was_not_written(
    label_studio, project, writes
):
    """Anything else Label Studio answers fails the flush, and nothing stays claimed but
    unwritten: a later refresh writes those tasks."""
    pending, released = writes
    _, tasks = project
    label_studio.fail_next(500, path_prefix="/api/predictions/", times=40)  # past the retries
    pending.add(tasks[0], prediction())
    pending.add(tasks[1], prediction())
    with pytest.raises(LabelStudioError, match="500"):
        pending.flush()
    assert sorted(released) == tasks[:2] and label_studio.predictions() == []
    label_studio.clear_faults()
    pending.add(tasks[2], prediction())
    pending.drop()  # the refresh failed before writing it
    assert sorted(released) == tasks[:3] and pending.summary.written == 0


def test_a_new_group_first_stores_what_waits(label_studio, project, writes):
    """The unlabelled tasks (one group) are all stored before the first labelled one (the
    next) is written, though writes within a group run side by side."""
    pending, _ = writes
    _, tasks = project
    pending.add(tasks[0], prediction(), group=False)
    pending.add(tasks[1], prediction(), group=False)
    assert label_studio.predictions() == []  # the batch of 3 is not full
    pending.add(tasks[2], prediction(), group=True)
    assert sorted(p["task"] for p in label_studio.predictions()) == tasks[:2]
    pending.flush()
    assert [p["task"] for p in label_studio.predictions()][-1] == tasks[2]
