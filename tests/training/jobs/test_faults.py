"""Label Studio failing under a job: the training and refresh jobs on RQ's SimpleWorker in this
process, real Redis, the fake Label Studio answering 500 or 401 where the job reads or writes.
Nothing may be lost: a training run that failed gives its events back, so the next one trains
on them; a refresh that failed writes the rest when it runs again, one prediction per task."""

from __future__ import annotations

import pytest
from rq import SimpleWorker

from training.jobs.coordinator import make_coordinator
from training.settings import Settings

CONFIG = """<View>
  <Video name="video" value="$video"/>
  <Choices name="label" toName="video"><Choice value="a"/><Choice value="b"/></Choices>
</View>"""


@pytest.mark.parametrize("status", [500, 401, None], ids=["500", "401", "unreachable"])
def test_a_training_run_that_label_studio_fails_gives_its_events_back(
    status, label_studio, ls_token, redis_conn, tmp_path, monkeypatch
):
    project = label_studio.add_project(CONFIG)
    for i in range(2):
        task = label_studio.add_task(project, {"video": f"/data/upload/{project}/b.mp4"})
        label_studio.annotate(task, "ab"[i])
    # None: nothing listens where Label Studio should be (port 1 refuses at once)
    url = label_studio.url if status is not None else "http://127.0.0.1:1"
    for name, value in {  # what the job reads (Settings.from_env), as a worker would
        "LABEL_STUDIO_URL": url,
        "LABEL_STUDIO_API_KEY": ls_token,
        "MODEL_DIR": str(tmp_path / "models"),
        "CACHE_DIR": str(tmp_path / "cache"),
        "MIN_PER_LABEL": "1",
    }.items():
        monkeypatch.setenv(name, value)
    coordinator = make_coordinator(redis_conn, Settings.from_env())
    if status is not None:
        label_studio.fail_next(status, path_prefix="/api/", times=20)  # every retry fails too

    coordinator.request(str(project))
    coordinator.request(str(project))
    SimpleWorker([coordinator.queue], connection=redis_conn).work(burst=True)

    state = coordinator.get_state(str(project))
    assert state["last"]["status"] == "failed", state
    assert (f"HTTP {status}" if status else "cannot connect") in state["last"]["error"]
    assert ls_token not in state["last"]["error"]
    assert state["pending_events"] == 2  # given back: the next run takes them
    assert not state["running"] and not state["queued"]
