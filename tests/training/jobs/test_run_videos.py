"""training/jobs/run.py ``fetch_videos`` with training/video/pinned.py: a training run keeps
every labelled video it fetched until it ends, even when the project's media outgrows the
media cache (CACHE_MAX_MB), over real HTTP from the fake Label Studio; the unlabelled tasks a
run fetches, and the version it fine-tunes (TRAIN_SCRATCH_BELOW), through the whole job."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest

from training.jobs.run import (
    FetchedVideos,
    fetch_labelled_tasks,
    fetch_unlabelled,
    fetch_videos,
    run_training,
    training_run,
    version_to_fine_tune,
)
from training.learn.config import TrainingData
from training.settings import Settings
from training.versions.store import ModelStore
from training.video.media import MEDIA_SUBDIR
from training.video.pinned import RUNS_SUBDIR, PinnedFiles

CONFIG = """<View>
  <Video name="video" value="$video"/>
  <Choices name="label" toName="video"><Choice value="a"/><Choice value="b"/></Choices>
</View>"""

VIDEOS = ["bigbuckbunny.mp4", "carphone_pristine.mp4", "bikes.mp4", "b.mp4", "muted_b.mp4"]
"""2.5 MB together: more than a 1 MB media cache holds."""


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_run_keeps_every_video_when_the_project_outgrows_the_cache(
    tmp_path, label_studio, ls_token, media_root
):
    project = label_studio.add_project(CONFIG)
    for i, name in enumerate(VIDEOS):
        task = label_studio.add_task(project, {"video": f"/data/upload/{project}/{name}"})
        label_studio.annotate(task, "ab"[i % 2])
    settings = Settings(
        label_studio_url=label_studio.url,
        label_studio_api_key=ls_token,
        cache_dir=tmp_path / "cache",
        cache_max_mb=1,
        min_per_label=1,
    )
    tasks = fetch_labelled_tasks(str(project), settings)
    stages = []

    with PinnedFiles(tmp_path / "cache" / RUNS_SUBDIR, stale_after_s=3600) as pinned:
        videos = fetch_videos(str(project), tasks, settings, stages.append, pinned)
        kept = [Path(v.path) for v in videos.data.videos]
        cached = list((tmp_path / "cache" / MEDIA_SUBDIR).iterdir())
        assert len(cached) < len(VIDEOS), "the cache evicted nothing: the test proves nothing"
        assert videos.skipped == []
        assert sorted(digest(p) for p in kept) == sorted(digest(media_root / n) for n in VIDEOS)
        assert pinned.bytes == sum((media_root / n).stat().st_size for n in VIDEOS)
        assert stages[-1] == {"stage": "fetch_videos", "done": len(VIDEOS), "total": len(VIDEOS)}

    assert not any(p.exists() for p in kept)  # the run's folder went with it
    assert list((tmp_path / "cache" / RUNS_SUBDIR).iterdir()) == []


def test_a_file_the_run_keeps_outlives_its_cache_entry(tmp_path):
    cached = tmp_path / "entry" / "clip.mp4"
    cached.parent.mkdir()
    cached.write_bytes(b"video bytes")

    with PinnedFiles(tmp_path / "runs", stale_after_s=3600) as pinned:
        kept = pinned.keep(cached, "task-3.mp4")
        cached.unlink()  # evicted
        assert kept.read_bytes() == b"video bytes"
        assert kept.name.endswith("task-3.mp4")


def test_folders_of_dead_runs_are_removed_once_stale(tmp_path):
    runs = tmp_path / "runs"
    with PinnedFiles(runs, stale_after_s=3600) as alive:
        (alive.folder / "x.mp4").write_bytes(b"x")
        with PinnedFiles(runs, stale_after_s=3600):
            assert alive.folder.exists()  # recent: another run in progress
        dead = runs / "run-dead"
        dead.mkdir()
        old = 1_000_000_000
        os.utime(dead, (old, old))
        with PinnedFiles(runs, stale_after_s=3600):
            assert not dead.exists()
            assert alive.folder.exists()


def test_a_first_run_fetches_unlabelled_tasks_to_pretrain_on(
    tmp_path, label_studio, ls_token, media_root
):
    project = label_studio.add_project(CONFIG)
    for i, name in enumerate(VIDEOS):
        task = label_studio.add_task(project, {"video": f"/data/upload/{project}/{name}"})
        if i < 2:
            label_studio.annotate(task, "ab"[i])
    settings = Settings(
        label_studio_url=label_studio.url,
        label_studio_api_key=ls_token,
        cache_dir=tmp_path / "cache",
        pretrain="order",
        pretrain_clips=2,
    )
    tasks = fetch_labelled_tasks(str(project), settings)
    assert [url.rsplit("/", 1)[-1] for _, url in tasks.data.unlabelled] == VIDEOS[2:]

    with PinnedFiles(tmp_path / "cache" / RUNS_SUBDIR, stale_after_s=3600) as pinned:
        paths = fetch_unlabelled(str(project), tasks, settings, None, pinned)
        assert [digest(p) for p in paths] == [digest(media_root / n) for n in VIDEOS[2:4]]
        no_pretraining = replace(settings, pretrain="none")
        assert fetch_unlabelled(str(project), tasks, no_pretraining, None, pinned) == []
        pseudo_only = replace(no_pretraining, pseudo_labels=1)  # pseudo-labels use them too
        assert len(fetch_unlabelled(str(project), tasks, pseudo_only, None, pinned)) == 2
        parent = object()  # a project with a version fine-tunes it: no pre-training
        assert fetch_unlabelled(str(project), tasks, settings, parent, pinned) == []  # type: ignore[arg-type]
        # ...unless it has fewer labelled tasks (2 here) than TRAIN_SCRATCH_BELOW: then a run
        # trains from scratch, as a first model, and fetches the unlabelled tasks again
        for below, fine_tunes in ((0, parent), (2, parent), (3, None)):
            scratch = replace(settings, train_scratch_below=below)
            assert version_to_fine_tune(str(project), parent, tasks, scratch) is fine_tunes  # type: ignore[arg-type]
        assert version_to_fine_tune(str(project), None, tasks, scratch) is None
        fresh = version_to_fine_tune(str(project), parent, tasks, scratch)  # type: ignore[arg-type]
        assert len(fetch_unlabelled(str(project), tasks, scratch, fresh, pinned)) == 2
        # nothing to learn from the unlabelled tasks: a scratch run would only lose the fine-tune
        labels_only = replace(scratch, pretrain="none", pseudo_labels=0)
        assert version_to_fine_tune(str(project), parent, tasks, labels_only) is parent  # type: ignore[arg-type]
    videos = FetchedVideos(TrainingData([]), [])
    run = training_run(settings, None, None, tasks, videos, force=False)  # type: ignore[arg-type]
    assert run.train_config.pretrain == "order" and run.train_config.pretrain_clips == 2


@pytest.mark.slow
def test_under_train_scratch_below_the_job_trains_a_new_model_gated_on_the_current(
    tmp_path, label_studio, ls_token
):
    """The whole job, twice: a first version, then, with fewer labelled tasks than
    TRAIN_SCRATCH_BELOW and pseudo-labels on, a run that does not fine-tune it but trains from
    scratch with pseudo-labels on the unlabelled tasks, and is gated against it."""
    project = label_studio.add_project(CONFIG)
    for i, name in enumerate(VIDEOS):
        task = label_studio.add_task(project, {"video": f"/data/upload/{project}/{name}"})
        if i < 4:
            label_studio.annotate(task, "ab"[i % 2])
    settings = Settings(
        label_studio_url=label_studio.url,
        label_studio_api_key=ls_token,
        cache_dir=tmp_path / "cache",
        model_dir=tmp_path / "models",
        min_per_label=1,
        train_frames=4,
        train_frame_size=32,
        train_epochs=1,
        gate_tolerance=1.0,  # any version passes: this is about how it trains
    )
    scratch = replace(
        settings, train_scratch_below=5, pseudo_labels=1, pseudo_epochs=1, pseudo_threshold=0.0
    )
    first = run_training(str(project), scratch, force=True, progress=lambda _: None)
    assert first["status"] == "trained", first
    store = ModelStore(tmp_path / "models")
    first_meta = store.get_version(str(project), first["version"]).meta
    assert "train_scratch_below" not in first_meta["source"]  # a first model: nothing replaced
    second = run_training(str(project), scratch, force=True, progress=lambda _: None)
    assert second["status"] == "trained", second
    meta = store.get_version(str(project), second["version"]).meta
    assert meta["parent"] is None and meta["init"] == "scratch"
    assert meta["previous_current"] == first["version"]
    assert meta["gate"]["current_version"] == first["version"]  # gated on the current one
    assert meta["history"]["pseudo_labels"] == [1.0]  # the one unlabelled task, every class
    assert meta["source"]["train_scratch_below"] == 5
