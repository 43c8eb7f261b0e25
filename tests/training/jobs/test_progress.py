"""training/jobs/progress.py JobProgress: the breakdown of a run's time by stage, which the
training job returns (``stage_s``) and the real-Label-Studio suite prints."""

from __future__ import annotations

import pytest

from training.jobs import progress as progress_module
from training.jobs.progress import JobProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def test_each_stage_gets_the_time_until_the_next_one_began(clock):
    progress = JobProgress(None, "7")
    clock.now += 5.0  # before the first event: not a stage
    progress({"stage": "fetch_tasks"})
    clock.now += 1.5
    progress({"stage": "decode", "done": 0, "total": 4})
    clock.now += 2.0
    progress({"stage": "decode", "done": 4, "total": 4})  # the same stage goes on
    clock.now += 1.0
    progress({"stage": "train", "epoch": 1})
    clock.now += 10.25
    assert progress.stage_seconds() == {"fetch_tasks": 1.5, "decode": 3.0, "train": 10.25}
    assert list(progress.stage_seconds()) == ["fetch_tasks", "decode", "train"]


def test_a_stage_that_comes_back_adds_up(clock):
    progress = JobProgress(None, "7")
    progress({"stage": "fetch_videos"})
    clock.now += 2.0
    progress({"stage": "decode"})
    clock.now += 3.0
    progress({"stage": "fetch_videos"})
    clock.now += 4.0
    progress({"stage": "done"})
    assert progress.stage_seconds() == {"fetch_videos": 6.0, "decode": 3.0, "done": 0.0}
