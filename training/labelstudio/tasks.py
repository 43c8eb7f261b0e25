"""What Label Studio's tasks say, read from the JSON ``GET /api/tasks/?fields=all`` returns.

No I/O here (client.py does the requests): training reads each task's label and segments
from its latest submitted annotation (:func:`read_task_label`), the refresh job reads which
model versions already predicted it (:func:`task_refresh_state`). Kept apart so that these
rules, the part most likely to change with Label Studio, are tested on plain dicts.

The rules for a task's label: the latest annotation that was not cancelled (skipped)
counts, latest by ``updated_at`` then id, so with several annotators on one task the last
word wins. Its ``choices`` result for the config's <Choices> on the <Video> gives the label,
its ``timelinelabels`` regions for the config's <TimelineLabels> the segments. A choice does
not count when the annotation has several (a multi-choice config: the model is single-label,
and picking one of them would teach it a label the annotator did not single out) or a label
the config does not offer (renamed or removed since). A task is skipped, with the reason,
when it has no such annotation, when that gives neither a choice nor a region, or when the
task has no video URL under the <Video>'s data key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from training.labelstudio.labelconfig import VideoControls
from training.labelstudio.timeline import DEFAULT_FRAME_RATE, Segment, segments_from_result

_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class LabelledTask:
    """One task with what its latest submitted annotation says: the class (<Choices>), the
    segments (<TimelineLabels>), or both.

    ``label`` None: no usable choice. ``segments`` None: no timeline region (the task is not
    annotated on the timeline; its frames do not count for the timeline head).
    ``frame_rate`` is what the segments' frame numbers count at. ``result`` is the
    annotation's whole result list as Label Studio stores it.
    """

    task_id: int
    video_url: str
    label: str | None
    annotation_id: int
    result: tuple[dict, ...] = field(default=(), hash=False)
    segments: tuple[Segment, ...] | None = None
    frame_rate: float = DEFAULT_FRAME_RATE


@dataclass(frozen=True)
class ProjectData:
    """A project's label config and its tasks: those usable for training and the others.

    ``labels`` are the config's choice values in order (the model's classes),
    ``timeline_labels`` its <TimelineLabels> labels; ``skipped`` holds ``(task id, reason)``
    for every task not in ``tasks``.
    """

    project: str
    label_config: str
    controls: VideoControls
    labels: list[str]
    tasks: list[LabelledTask]
    skipped: list[tuple[int, str]]
    timeline_labels: list[str] = field(default_factory=list)
    unlabelled: list[tuple[int, str]] = field(default_factory=list)
    """``(task id, video URL)`` of the tasks nobody annotated (pre-training's clips)."""


@dataclass(frozen=True)
class TaskRefreshState:
    """What the refresh job needs of a task: its video, whether it is labelled, and the
    model versions it already has predictions of (``video_url`` None: none in the data)."""

    task_id: int
    video_url: str | None
    labelled: bool
    model_versions: frozenset[str]
    frame_rate: float | None = None
    """The frame rate Label Studio numbers this task's frames at (timeline regions)."""


def read_project_data(
    project: str, label_config: str, controls: VideoControls, tasks: Iterable[Mapping[str, Any]]
) -> ProjectData:
    """The ProjectData of a project's tasks: each task's label read by read_task_label,
    the tasks it cannot use listed with the reason (``tasks`` may be a lazy reader)."""
    labelled: list[LabelledTask] = []
    skipped: list[tuple[int, str]] = []
    unlabelled: list[tuple[int, str]] = []
    for task in tasks:
        picked = read_task_label(task, controls)
        if isinstance(picked, LabelledTask):
            labelled.append(picked)
            continue
        skipped.append(picked)
        state = task_refresh_state(task, controls)
        if not state.labelled and not task.get("annotations") and state.video_url:
            unlabelled.append((state.task_id, state.video_url))
    return ProjectData(
        project=project,
        label_config=label_config,
        controls=controls,
        labels=list(controls.choice_values),
        tasks=labelled,
        skipped=skipped,
        timeline_labels=list(controls.timeline.labels) if controls.timeline else [],
        unlabelled=unlabelled,
    )


def task_refresh_state(task: Mapping[str, Any], controls: VideoControls) -> TaskRefreshState:
    """The TaskRefreshState of one task as ``GET /api/tasks/?fields=all`` returns it.

    A task counts as labelled when it has an annotation that was not cancelled.
    """
    annotations = [a for a in task.get("annotations") or () if isinstance(a, Mapping)]
    if "annotations" in task:
        labelled = any(not a.get("was_cancelled") for a in annotations)
    else:
        labelled = bool(task.get("is_labeled"))
    versions = frozenset(
        str(p["model_version"])
        for p in task.get("predictions") or ()
        if isinstance(p, Mapping) and p.get("model_version")
    )
    data = task.get("data")
    video = data.get(controls.video_value_key) if isinstance(data, Mapping) else None
    return TaskRefreshState(
        task_id=_as_int(task.get("id")),
        video_url=video.strip() if isinstance(video, str) and video.strip() else None,
        labelled=labelled,
        model_versions=versions,
        frame_rate=controls.task_frame_rate(data if isinstance(data, Mapping) else None),
    )


def count_per_label(data: ProjectData) -> dict[str, int]:
    """Labelled tasks per class, every class of the config included (zero when unused)."""
    counts = dict.fromkeys(data.labels, 0)
    for task in data.tasks:
        if task.label is not None:
            counts[task.label] = counts.get(task.label, 0) + 1
    return counts


def count_per_timeline_label(data: ProjectData) -> dict[str, int]:
    """Tasks with at least one segment of each timeline label (zero when unused)."""
    counts = dict.fromkeys(data.timeline_labels, 0)
    for task in data.tasks:
        for label in {s.label for s in task.segments or ()}:
            counts[label] = counts.get(label, 0) + 1
    return counts


def read_task_label(
    task: Mapping[str, Any], controls: VideoControls
) -> LabelledTask | tuple[int, str]:
    """The LabelledTask for one task as ``GET /api/tasks/?fields=all`` returns it, or
    ``(task id, reason)`` when it cannot be used (the rules: this module's docstring).

    Per control: the <Choices> result gives the class unless it has several choices or a
    label the config does not offer; the <TimelineLabels> regions give the segments. A task
    counts when either is there.
    """
    task_id = _as_int(task.get("id"))
    annotations = [a for a in task.get("annotations") or () if isinstance(a, Mapping)]
    submitted = [a for a in annotations if not a.get("was_cancelled")]
    if not submitted:
        if annotations:
            return task_id, "every annotation was cancelled (skipped)"
        return task_id, "no annotation"
    latest = max(submitted, key=lambda a: (_timestamp(a), _as_int(a.get("id"))))
    annotation_id = _as_int(latest.get("id"))
    result = [r for r in latest.get("result") or () if isinstance(r, Mapping)]
    label, why_no_label = _choice(result, controls, annotation_id)
    segments = None
    if controls.timeline is not None:
        found = segments_from_result(
            result, controls.timeline.name, controls.video_name, controls.timeline.labels
        )
        segments = tuple(found) if found else None
    if label is None and segments is None:
        if controls.timeline is not None:
            timeline = f'no region for <TimelineLabels name="{controls.timeline.name}">'
            why_no_label = (
                f"{why_no_label}; {timeline}"
                if why_no_label
                else (f"annotation {annotation_id} has {timeline}")
            )
        return task_id, why_no_label
    data = task.get("data")
    video = data.get(controls.video_value_key) if isinstance(data, Mapping) else None
    if not isinstance(video, str) or not video.strip():
        return task_id, f"no video URL under data[{controls.video_value_key!r}]"
    return LabelledTask(
        task_id=task_id,
        video_url=video.strip(),
        label=label,
        annotation_id=annotation_id,
        result=tuple(dict(r) for r in result),
        segments=segments,
        frame_rate=controls.task_frame_rate(data if isinstance(data, Mapping) else None),
    )


def _choice(
    result: list[Mapping], controls: VideoControls, annotation_id: int
) -> tuple[str | None, str]:
    """The class an annotation's result gives, or None and why (empty: no <Choices>)."""
    if controls.choices_name is None:
        return None, ""
    values: list[str] = []
    for region in result:
        if (
            region.get("type") == "choices"
            and region.get("from_name") == controls.choices_name
            and region.get("to_name") == controls.video_name
        ):
            picked = (region.get("value") or {}).get("choices")
            for value in picked if isinstance(picked, list) else ():
                if isinstance(value, str) and value not in values:
                    values.append(value)
    if not values:
        control = f'<Choices name="{controls.choices_name}">'
        return None, f"annotation {annotation_id} has no choice for {control}"
    if len(values) > 1:
        return (
            None,
            f"annotation {annotation_id} has several choices {values}; training is single-label",
        )
    if values[0] not in controls.choice_values:
        return None, (
            f"annotation {annotation_id} has label {values[0]!r}, not among the config's "
            f"choices {list(controls.choice_values)}"
        )
    return values[0], ""


def _as_int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -1


def _timestamp(annotation: Mapping[str, Any]) -> dt.datetime:
    """``updated_at`` (else ``created_at``) as an aware datetime; missing sorts first."""
    for key in ("updated_at", "created_at"):
        raw = annotation.get(key)
        if isinstance(raw, dt.datetime):
            return raw if raw.tzinfo else raw.replace(tzinfo=dt.UTC)
        if isinstance(raw, str) and raw:
            try:
                stamp = dt.datetime.fromisoformat(raw)
            except ValueError:
                continue
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
    return _NEVER
