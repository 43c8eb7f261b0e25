"""Refreshing predictions in Label Studio after a version becomes current (training/jobs/refresh.py
and the ``refresh_predictions`` job): the fake Label Studio, real Redis, RQ's SimpleWorker
in this process (burst), a real model from the session fixture."""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import LS_TOKEN, publish_copy, worker_process
from fake_label_studio import FakeLabelStudio
from rq import SimpleWorker, Worker
from rq.job import Job

from training.jobs import refresh_chunks as chunks
from training.jobs.acquisition_rank import UNRANKED
from training.jobs.coordinator import make_coordinator
from training.jobs.prediction_claims import PREDICT_OWNER, REFRESH_OWNER, PredictionClaims
from training.jobs.refresh import order_tasks, refresh_predictions
from training.jobs.refresh_chunks import ChunkProgress
from training.jobs.refresh_queue import enqueue_refresh
from training.jobs.status import project_state
from training.labelstudio.tasks import TaskRefreshState
from training.settings import Settings
from training.versions.store import ModelStore

CONFIG = """
<View>
  <Video name="video" value="$video"/>
  <Choices name="label" toName="video" choice="single">
    <Choice value="left_to_right"/>
    <Choice value="right_to_left"/>
  </Choices>
</View>
"""


@dataclass
class Project:
    ls: FakeLabelStudio
    project: int
    store: ModelStore
    version: str
    unlabelled: list[int]
    labelled: list[int]
    broken: int
    missing: int


@pytest.fixture
def setup(tmp_path, trained_model, monkeypatch) -> Project:
    media = tmp_path / "media"
    media.mkdir()
    for clip in trained_model.synth_clips:
        shutil.copy(clip, media / clip.name)
    (media / "broken.mp4").write_bytes(np.random.default_rng(1).bytes(20_000))
    ls = FakeLabelStudio(media, token=LS_TOKEN)
    project = ls.add_project(CONFIG)
    clips = [c.name for c in trained_model.synth_clips]
    url = f"/data/upload/{project}/"
    unlabelled = [ls.add_task(project, {"video": url + name}) for name in clips[:4]]
    labelled = [ls.add_task(project, {"video": url + name}) for name in clips[4:6]]
    for task in labelled:
        ls.annotate(task, "left_to_right")
    broken = ls.add_task(project, {"video": url + "broken.mp4"})
    missing = ls.add_task(project, {"video": url + "gone.mp4"})
    store = ModelStore(tmp_path / "models")
    version = publish_copy(store, str(project), trained_model.info).version
    for name, value in {
        "MODEL_DIR": str(store.root),
        "CACHE_DIR": str(tmp_path / "cache"),
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": LS_TOKEN,
        "PREDICT_BATCH_SIZE": "2",
        "REFRESH_ALL_TASKS": "false",
    }.items():
        monkeypatch.setenv(name, value)
    yield Project(ls, project, store, version, unlabelled, labelled, broken, missing)
    ls.close()


def run_refresh(redis_conn, project: Project, version: str | None = None) -> Job:
    """Queue the refresh as a promotion does and run it to the end on a SimpleWorker."""
    settings = Settings.from_env()
    job_id = enqueue_refresh(redis_conn, str(project.project), version or project.version, settings)
    assert job_id is not None
    queue = make_coordinator(redis_conn, settings).queue
    SimpleWorker([queue], connection=redis_conn).work(burst=True)
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == "finished", job.latest_result()
    return job


def test_unlabelled_tasks_get_the_new_versions_predictions_once(setup, redis_conn):
    job = run_refresh(redis_conn, setup)
    result = job.return_value()
    assert result["status"] == "done"
    assert result["written"] == len(setup.unlabelled)
    assert result["skipped"] == 2  # the broken video and the missing one
    skipped = {s["task"]: s["reason"] for s in result["skipped_tasks"]}
    assert set(skipped) == {setup.broken, setup.missing}
    assert "404" in skipped[setup.missing]
    progress = job.get_meta(refresh=True)["progress"]
    assert progress["stage"] == "done" and progress["total"] == len(setup.unlabelled) + 2

    labels = {"left_to_right", "right_to_left"}
    for task in setup.unlabelled:
        (prediction,) = setup.ls.predictions(task)
        assert prediction["model_version"] == setup.version
        assert 0.0 <= prediction["score"] <= 1.0
        (region,) = prediction["result"]
        assert region["from_name"] == "label" and region["to_name"] == "video"
        assert region["value"]["choices"][0] in labels
    for task in (*setup.labelled, setup.broken, setup.missing):
        assert setup.ls.predictions(task) == []
    posts = [s for s in setup.ls.seen if s.method == "POST" and "/api/predictions/" in s.path]
    assert len(posts) == len(setup.unlabelled)

    again = run_refresh(redis_conn, setup).return_value()
    assert again["written"] == 0 and again["already"] == len(setup.unlabelled)
    assert len(setup.ls.predictions()) == len(setup.unlabelled)  # nothing twice


def test_with_refresh_all_tasks_labelled_ones_follow_and_nothing_is_doubled(
    setup, redis_conn, monkeypatch
):
    # One task was predicted with this version already (say, Label Studio asked /predict).
    setup.ls.add_prediction(setup.unlabelled[0], [], score=0.5, model_version=setup.version)
    monkeypatch.setenv("REFRESH_ALL_TASKS", "true")
    result = run_refresh(redis_conn, setup).return_value()
    assert result["written"] == len(setup.unlabelled) - 1 + len(setup.labelled)
    assert result["already"] == 1
    for task in (*setup.unlabelled, *setup.labelled):
        assert [p["model_version"] for p in setup.ls.predictions(task)] == [setup.version]
    # Unlabelled tasks were all written first (within a group, two at a time: any order).
    written = [p["task"] for p in setup.ls.predictions() if p["result"]]
    first = len(setup.unlabelled) - 1
    assert sorted(written[:first]) == sorted(setup.unlabelled[1:]), written
    assert sorted(written[first:]) == sorted(setup.labelled), written


def test_a_version_that_is_no_longer_current_writes_nothing(setup, redis_conn, trained_model):
    old = setup.version
    publish_copy(setup.store, str(setup.project), trained_model.info)  # a newer one is current
    result = run_refresh(redis_conn, setup, old).return_value()
    assert result["status"] == "superseded"
    assert setup.ls.predictions() == []


def test_a_second_refresh_of_a_queued_version_is_not_queued_again(setup, redis_conn):
    settings = Settings.from_env()
    first = enqueue_refresh(redis_conn, str(setup.project), setup.version, settings)
    assert first == f"refresh-{setup.project}-{setup.version}"
    assert enqueue_refresh(redis_conn, str(setup.project), setup.version, settings) is None
    assert redis_conn.llen("rq:queue:videoloop-training") == 1


def test_order_puts_unlabelled_tasks_first_and_skips_predicted_ones():
    def task(i: int, labelled: bool, versions=()) -> TaskRefreshState:
        return TaskRefreshState(i, f"/v/{i}.mp4", labelled, frozenset(versions))

    tasks = [task(5, True), task(3, False), task(4, False, ["v2"]), task(1, True), task(2, False)]
    assert [t.task_id for t in order_tasks(tasks, "v2", include_labelled=False)] == [2, 3]
    assert [t.task_id for t in order_tasks(tasks, "v2", include_labelled=True)] == [2, 3, 1, 5]
    assert [t.task_id for t in order_tasks(tasks, "v9", include_labelled=False)] == [2, 3, 4]


def test_the_new_version_is_selected_in_label_studio_unless_another_model_is(
    setup, redis_conn, monkeypatch, trained_model
):
    # Connecting the backend selected its title: the score column would stay empty.
    setup.ls.connect_ml_backend(setup.project, title="videoloop")
    result = run_refresh(redis_conn, setup).return_value()
    assert result["selected"] is True
    assert setup.ls.selected_version(setup.project) == setup.version

    # The next version replaces our earlier one.
    newer = publish_copy(setup.store, str(setup.project), trained_model.info).version
    assert run_refresh(redis_conn, setup, newer).return_value()["selected"] is True
    assert setup.ls.selected_version(setup.project) == newer

    # Someone chose another model's predictions: left alone, but predictions still written.
    setup.ls.select_version(setup.project, "human-baseline")
    newest = publish_copy(setup.store, str(setup.project), trained_model.info).version
    kept = run_refresh(redis_conn, setup, newest).return_value()
    assert kept["selected"] is False and kept["written"] == len(setup.unlabelled)
    assert setup.ls.selected_version(setup.project) == "human-baseline"

    # SELECT_NEW_VERSION=false never touches the setting.
    setup.ls.select_version(setup.project, "")
    monkeypatch.setenv("SELECT_NEW_VERSION", "false")
    latest = publish_copy(setup.store, str(setup.project), trained_model.info).version
    assert run_refresh(redis_conn, setup, latest).return_value()["selected"] is False
    assert setup.ls.selected_version(setup.project) == ""


def test_tasks_imported_later_get_predictions_of_the_current_version(setup, redis_conn):
    from training.jobs.refresh_queue import REFRESH_AGAIN_KEY, request_refresh, resume_refreshes

    settings = Settings.from_env()
    project = str(setup.project)
    run_refresh(redis_conn, setup)
    video = setup.ls.task_json(setup.unlabelled[0])["data"]["video"]
    new = setup.ls.add_task(setup.project, {"video": video})  # imported after the refresh

    assert request_refresh(redis_conn, project, settings) == "queued"
    # More tasks while it is queued: the same job takes them (it lists tasks when it runs).
    assert request_refresh(redis_conn, project, settings) == "pending"
    queue = make_coordinator(redis_conn, settings).queue
    SimpleWorker([queue], connection=redis_conn).work(burst=True)
    assert [p["model_version"] for p in setup.ls.predictions(new)] == [setup.version]
    flag = REFRESH_AGAIN_KEY.format(project=project, version=setup.version)
    assert not redis_conn.exists(flag)

    # A request whose job had already ended (the flag is left): recovery queues one.
    redis_conn.set(flag, 1)
    assert resume_refreshes(redis_conn, settings) == [f"refresh-{project}-{setup.version}"]
    assert resume_refreshes(redis_conn, settings) == []  # queued now: not twice
    # ... and a flag for a version that is no longer current is dropped.
    redis_conn.set(REFRESH_AGAIN_KEY.format(project=project, version="v0-old"), 1)
    resume_refreshes(redis_conn, settings)
    assert not redis_conn.exists(REFRESH_AGAIN_KEY.format(project=project, version="v0-old"))


def test_no_model_no_refresh(setup, redis_conn):
    from training.jobs.refresh_queue import request_refresh

    assert request_refresh(redis_conn, "999", Settings.from_env()) == "no_model"
    # Without Label Studio there is nothing a refresh could write to: no job at all.
    settings = dataclasses.replace(Settings.from_env(), label_studio_url="")
    assert request_refresh(redis_conn, str(setup.project), settings) == "no_label_studio"
    assert make_coordinator(redis_conn, settings).queue.count == 0


def test_tasks_answered_by_predict_are_left_to_label_studio(setup, redis_conn):
    """/predict claimed two tasks (Label Studio is storing its answers): the refresh writes
    the others and counts those as already there, so no task gets two predictions."""
    answered = setup.unlabelled[:2]
    PredictionClaims(redis_conn).claim(
        str(setup.project), setup.version, answered, owner=PREDICT_OWNER, ttl_s=60
    )

    result = run_refresh(redis_conn, setup).return_value()

    assert result["written"] == len(setup.unlabelled) - 2
    assert result["already"] == 2
    assert all(setup.ls.predictions(task) == [] for task in answered)
    owners = PredictionClaims(redis_conn).claim(
        str(setup.project), setup.version, setup.unlabelled, owner=PREDICT_OWNER, ttl_s=60
    )
    written = setup.unlabelled[2:]
    assert all(owners[t].startswith(REFRESH_OWNER) for t in written)  # /predict answers []


def test_duplicates_of_the_version_are_deleted_at_the_end(setup, redis_conn):
    """Whatever got past the claims (Redis down during a /predict, another tool): the oldest
    prediction of the version stays, later copies go; other versions are left alone."""
    task = setup.labelled[0]
    region = [{"from_name": "label", "to_name": "video", "type": "choices",
               "value": {"choices": ["left_to_right"]}}]  # fmt: skip
    first = setup.ls.add_prediction(task, region, score=0.9, model_version=setup.version)
    setup.ls.add_prediction(task, region, score=0.8, model_version=setup.version)
    setup.ls.add_prediction(task, region, score=0.7, model_version=setup.version)
    other = setup.ls.add_prediction(task, region, score=0.5, model_version="someone-else")

    result = run_refresh(redis_conn, setup).return_value()

    assert result["duplicates_deleted"] == 2
    assert [p["id"] for p in setup.ls.predictions(task)] == [first, other]
    for unlabelled in setup.unlabelled:
        assert len(setup.ls.predictions(unlabelled)) == 1


@pytest.mark.parametrize("status", [500, 401, None], ids=["500", "401", "unreachable"])
def test_a_refresh_that_label_studio_fails_writes_the_rest_when_run_again(
    status, setup, redis_conn, monkeypatch
):
    """Label Studio answering 500 or 401 to the predictions API, or not listening at all: the
    job fails (RQ keeps it as failed, with the reason), giving back the claims of what it
    could not write; run again, it writes every task once."""
    if status is None:  # nothing listens there: port 1 refuses at once
        monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:1")
    else:
        setup.ls.fail_next(status, path_prefix="/api/predictions/", times=12)  # past retries
    settings = Settings.from_env()
    job_id = enqueue_refresh(redis_conn, str(setup.project), setup.version, settings)
    SimpleWorker([make_coordinator(redis_conn, settings).queue], connection=redis_conn).work(
        burst=True
    )
    failed = Job.fetch(job_id, connection=redis_conn)
    assert failed.get_status() == "failed"
    reason = failed.latest_result().exc_string
    assert (f"HTTP {status}" if status else "cannot connect") in reason, reason
    assert LS_TOKEN not in reason
    setup.ls.clear_faults()  # Label Studio answers again
    monkeypatch.setenv("LABEL_STUDIO_URL", setup.ls.url)

    result = run_refresh(redis_conn, setup).return_value()

    assert result["written"] + result["already"] == len(setup.unlabelled)
    for task in setup.unlabelled:
        assert [p["model_version"] for p in setup.ls.predictions(task)] == [setup.version]


def test_a_failed_clean_up_pass_does_not_fail_the_written_refresh(setup, redis_conn):
    """The duplicates pass is a safety net: Label Studio refusing it leaves the refresh done."""
    setup.ls.fail_next(
        500, path_prefix="/api/predictions/", query={"project": str(setup.project)}, times=12
    )
    result = run_refresh(redis_conn, setup).return_value()
    assert result["status"] == "done" and result["duplicates_deleted"] == 0
    assert result["written"] == len(setup.unlabelled)


# -- a refresh split into chunks (training/jobs/refresh_chunks.py) ------------------------------


def chunk_jobs(redis_conn, ids: list[str]) -> list[Job]:
    jobs = Job.fetch_many(ids, connection=redis_conn)
    assert None not in jobs
    return jobs


def test_a_large_refresh_is_split_into_chunks_that_write_each_task_once(
    setup, redis_conn, monkeypatch
):
    """Six tasks to predict, two per chunk: three chunk jobs, every task written once, the
    refresh's progress summed over the chunks, and the last chunk ending the refresh (the
    duplicates pass). Run again, nothing is written twice."""
    monkeypatch.setenv("REFRESH_CHUNK_TASKS", "2")
    parent = run_refresh(redis_conn, setup).return_value()
    assert parent["status"] == "fanned_out" and parent["chunks"] == 3

    jobs = chunk_jobs(redis_conn, parent["chunk_jobs"])
    assert [job.get_status() for job in jobs] == ["finished"] * 3
    results = [job.return_value() for job in jobs]
    assert sum(r["written"] for r in results) == len(setup.unlabelled)
    assert sum(r["skipped"] for r in results) == 2  # the broken video and the missing one
    assert ["end" in r for r in results].count(True) == 1  # the last one ends the refresh
    for task in setup.unlabelled:
        assert [p["model_version"] for p in setup.ls.predictions(task)] == [setup.version]

    coordinator = make_coordinator(redis_conn, Settings.from_env())
    refresh = project_state(coordinator, str(setup.project))["refresh"]
    assert refresh["version"] == setup.version and refresh["status"] == "done"
    assert refresh["total"] == refresh["done"] == len(setup.unlabelled) + 2
    assert (refresh["written"], refresh["skipped"], refresh["chunks_done"]) == (4, 2, 3)

    again = run_refresh(redis_conn, setup).return_value()  # two left (both fail): no split
    assert again["status"] == "done" and again["written"] == 0
    assert len(setup.ls.predictions()) == len(setup.unlabelled)


def test_a_newer_version_cancels_the_queued_chunks_of_an_older_one(
    setup, redis_conn, trained_model, monkeypatch
):
    monkeypatch.setenv("REFRESH_CHUNK_TASKS", "1")
    settings = Settings.from_env()
    project = str(setup.project)

    def fan_out(version: str) -> dict:  # what the refresh job does, without running chunks
        split = functools.partial(chunks.fan_out, redis_conn, project, version, settings)
        return refresh_predictions(project, version, settings, fan_out=split)

    older = fan_out(setup.version)
    assert older["chunks"] == 6
    # The version's refresh asked for again meanwhile waits for its chunks.
    assert enqueue_refresh(redis_conn, project, setup.version, settings) is None
    newer = publish_copy(setup.store, project, trained_model.info).version
    assert fan_out(newer)["chunks"] == 6

    assert {job.get_status() for job in chunk_jobs(redis_conn, older["chunk_jobs"])} == {"canceled"}
    SimpleWorker([make_coordinator(redis_conn, settings).queue], connection=redis_conn).work(
        burst=True
    )
    for task in setup.unlabelled:
        assert [p["model_version"] for p in setup.ls.predictions(task)] == [newer]
    state = project_state(make_coordinator(redis_conn, settings), project)["refresh"]
    assert state["version"] == newer and state["chunks_done"] == 6


def test_idle_workers_share_the_chunks_of_a_refresh(setup, redis_conn, redis_url, tmp_path):
    """Two ``videoloop worker`` processes, waiting, then one refresh of six tasks in chunks of
    one: both workers take chunks, and every task is written once."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REDIS_URL")},
        "REDIS_URL": redis_url,
        "REFRESH_CHUNK_TASKS": "1",
        "LOG_LEVEL": "INFO",
    }
    with worker_process(tmp_path, env, "one"), worker_process(tmp_path, env, "two"):
        deadline = time.monotonic() + 120
        while len(Worker.all(connection=redis_conn)) < 2:  # both started and waiting
            assert time.monotonic() < deadline
            time.sleep(0.2)
        settings = Settings.from_env()
        enqueue_refresh(redis_conn, str(setup.project), setup.version, settings)
        coordinator = make_coordinator(redis_conn, settings)
        while True:
            state = project_state(coordinator, str(setup.project))["refresh"]
            if state is not None and state["status"] == "done":
                break
            assert time.monotonic() < deadline + 120, state
            time.sleep(0.2)
    parent = Job.fetch(f"refresh-{setup.project}-{setup.version}", connection=redis_conn)
    jobs = chunk_jobs(redis_conn, parent.return_value()["chunk_jobs"])
    assert len(jobs) == 6
    assert {job.worker_name for job in jobs} == {"one", "two"}
    for task in setup.unlabelled:
        assert [p["model_version"] for p in setup.ls.predictions(task)] == [setup.version]


def test_a_chunk_counts_once_and_the_last_one_is_told_even_when_it_failed(redis_conn):
    """RQ may run a chunk twice: it counts once. The last chunk to finish, failed or not, is
    told so (it ends the refresh), and only it."""
    redis_conn.hset("videoloop:refresh:7:f1:progress", mapping={"chunks": 3})
    progress = [ChunkProgress(redis_conn, "7", "f1", i, lambda event: None) for i in range(3)]
    assert not progress[0].finish("c0", failed=False)
    assert not progress[0].finish("c0", failed=False)  # run again
    assert not progress[1].finish("c1", failed=False)
    assert progress[2].finish("c2", failed=True)
    assert not progress[2].finish("c2", failed=True)
    counts = redis_conn.hmget("videoloop:refresh:7:f1:progress", ["chunks_done", "chunks_failed"])
    assert counts == [b"2", b"1"]


def test_a_chunk_whose_worker_died_runs_again_and_the_refresh_still_ends(
    setup, redis_conn, monkeypatch
):
    """A worker dies in the middle of a chunk, and again when the chunk runs once more after
    the others: the chunk is run again once, then counted as failed, and the refresh still
    ends (its end queued as a job of its own). The death is a stand-in: RQ's own bookkeeping
    of a worker taking the job (``prepare_execution``) with nothing run after it, then
    RQ's own clean-up of started jobs at a time past the heartbeat, as a live worker's
    maintenance does once the job's timeout (TRAIN_TIMEOUT_S) and a minute have passed."""
    monkeypatch.setenv("REFRESH_CHUNK_TASKS", "2")
    settings = Settings.from_env()
    project = str(setup.project)
    split = functools.partial(chunks.fan_out, redis_conn, project, setup.version, settings)
    fanned = refresh_predictions(project, setup.version, settings, fan_out=split)
    queue = make_coordinator(redis_conn, settings).queue
    doomed = Job.fetch(fanned["chunk_jobs"][0], connection=redis_conn)

    def die_running(job: Job, name: str) -> None:
        queue.remove(job)
        worker = SimpleWorker([queue], connection=redis_conn, name=name)
        worker.prepare_execution(job)  # what RQ's worker does as it takes a job
        worker.prepare_job_execution(job)
        assert job.get_status(refresh=True) == "started"
        # A worker running jobs in its own process gives a job its timeout and a minute.
        past_heartbeat = time.time() + settings.train_timeout_s + 120
        queue.started_job_registry.cleanup(timestamp=past_heartbeat)

    die_running(doomed, "first-death")
    assert doomed.get_status(refresh=True) == "queued"  # it runs once more
    queue.remove(doomed)  # ... after the other chunks
    SimpleWorker([queue], connection=redis_conn).work(burst=True)
    die_running(doomed, "second-death")
    assert doomed.get_status(refresh=True) == "failed"
    end_id = f"refresh-{project}-{setup.version}-{doomed.args[3]}-end"
    assert queue.get_job_ids() == [end_id]  # the dead chunk was the last: its end is queued
    SimpleWorker([queue], connection=redis_conn).work(burst=True)

    end = Job.fetch(end_id, connection=redis_conn)
    assert end.get_status() == "finished" and end.return_value() is not None
    state = project_state(make_coordinator(redis_conn, settings), project)["refresh"]
    assert state["status"] == "done", state
    assert (state["chunks_done"], state["chunks_failed"]) == (2, 1), state
    lost = {t.task_id for t in chunks.tasks_of(doomed.args[2])}
    for task in setup.unlabelled:
        versions = [p["model_version"] for p in setup.ls.predictions(task)]
        assert versions == ([] if task in lost else [setup.version]), (task, lost)


def test_a_chunked_refresh_writes_one_acquisition_order_over_every_chunk(
    setup, redis_conn, monkeypatch
):
    """ACQUISITION=badge over three chunks: the last one ranks every predicted task (1..4,
    whichever chunk predicted it), the other tasks after them (UNRANKED), the video URLs kept; a
    task that refuses its write is a failure with the reason, and the next refresh of the
    version writes just that one."""
    monkeypatch.setenv("REFRESH_CHUNK_TASKS", "2")
    monkeypatch.setenv("ACQUISITION", "badge")
    monkeypatch.setenv("ACQUISITION_BATCH", "2")
    refused = setup.unlabelled[1]
    setup.ls.fail_next(403, path_prefix=f"/api/tasks/{refused}/")
    every = [*setup.unlabelled, *setup.labelled, setup.broken, setup.missing]
    before = {t: setup.ls.task_json(t)["data"] for t in every}
    parent = run_refresh(redis_conn, setup).return_value()
    results = [job.return_value() for job in chunk_jobs(redis_conn, parent["chunk_jobs"])]
    (end,) = [r["end"] for r in results if "end" in r]
    assert end["ranked"] == len(setup.unlabelled)
    assert [f["task"] for f in end["rank_failed"]] == [refused]
    assert "403" in end["rank_failed"][0]["reason"]
    data = {t: setup.ls.task_json(t)["data"] for t in before}
    ranks = {t: d.get("videoloop_rank") for t, d in data.items()}
    assert ranks[refused] is None
    ranked = sorted(ranks[t] for t in setup.unlabelled if t != refused)
    assert set(ranked) <= {"000001", "000002", "000003", "000004"} and len(set(ranked)) == 3
    after = sorted(t for t in before if t not in setup.unlabelled)
    assert [ranks[t] for t in after] == [UNRANKED] * 4  # after them, the same every time
    for task, fields in data.items():
        assert {k: v for k, v in fields.items() if k != "videoloop_rank"} == before[task]
    for task in setup.unlabelled:  # the score stays the prediction's confidence
        (prediction,) = setup.ls.predictions(task)
        assert 0.0 <= prediction["score"] <= 1.0

    monkeypatch.setenv("REFRESH_CHUNK_TASKS", "200")
    again = run_refresh(redis_conn, setup).return_value()
    assert (again["ranked"], again["rank_written"], again["rank_failed"]) == (4, 1, [])
    assert setup.ls.task_json(refused)["data"]["videoloop_rank"] not in ranked


def test_a_refresh_in_one_process_orders_its_tasks_from_memory(setup, monkeypatch):
    """Without a job (the embedded mode: no Redis), the signals stay in memory and the end of
    the same call writes the order: ACQUISITION=kcenter ranks the four predicted tasks first,
    and a second call with nothing to predict leaves the order as it is."""
    monkeypatch.setenv("ACQUISITION", "kcenter")
    settings = Settings.from_env()
    result = refresh_predictions(str(setup.project), setup.version, settings)
    assert (result["status"], result["ranked"], result["rank_failed"]) == ("done", 4, [])
    ranks = {t: setup.ls.task_json(t)["data"]["videoloop_rank"] for t in setup.unlabelled}
    assert sorted(ranks.values()) == ["000001", "000002", "000003", "000004"]
    patches = sum(s.method == "PATCH" for s in setup.ls.seen)
    again = refresh_predictions(str(setup.project), setup.version, settings)
    assert again["written"] == 0 and "ranked" not in again
    assert sum(s.method == "PATCH" for s in setup.ls.seen) == patches
