"""What a project's label config asks of us: which <Video> to read and which controls to fill.

Two controls on a video are served: a ``<Choices>`` (the class of the whole video) and a
``<TimelineLabels>`` (labelled segments of frames); a project may have either or both.
Label Studio sends the whole config XML with every /setup and /predict, so parsed configs are
cached by their text. Parsing goes through label-studio-sdk's ``LabelInterface``; it gives
each control's labels as they appear in results (a ``<Choice alias="x">`` yields "x", not its
``value``), which is what annotations, and so the model's labels, contain.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.label_interface.control_tags import ChoicesTag, TimelineLabelsTag
from label_studio_sdk.label_interface.object_tags import VideoTag

from training.labelstudio.timeline import resolve_frame_rate

CONFIG_CACHE_SIZE = 64
"""How many distinct label configs to keep parsed (one per project is typical)."""


class LabelConfigError(ValueError):
    """The label config cannot be served: bad XML, no <Video>, or no control on it that we
    fill (<Choices> or <TimelineLabels>)."""


@dataclass(frozen=True)
class TimelineLabels:
    """A <TimelineLabels> control on the video: frame-level segments with these labels."""

    name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class VideoControls:
    """The <Video> object and the controls that label it.

    ``video_value_key`` is the task data key the video URL is under (``$video`` -> "video").
    ``choices_name`` / ``choice_values``: the <Choices> control and the values its results
    carry (aliases where the config sets them); None / () when the config has none.
    ``timeline``: the <TimelineLabels> control, None when there is none.
    ``frame_rate`` is the <Video frameRate> number (None when unset or taken from the task,
    ``frameRate="$fps"``, whose key is ``frame_rate_key``): timeline frame numbers count at it.
    """

    video_name: str
    video_value_key: str
    choices_name: str | None = None
    choice_values: tuple[str, ...] = ()
    frame_rate: float | None = None
    frame_rate_key: str | None = None
    timeline: TimelineLabels | None = None

    @property
    def has_choices(self) -> bool:
        return self.choices_name is not None

    def task_frame_rate(self, data: Mapping | None) -> float:
        """The frame rate Label Studio numbers this task's frames at (see timeline.py)."""
        return resolve_frame_rate(self.frame_rate, self.frame_rate_key, data)


def parse_label_config(config: str) -> VideoControls:
    """Find the video and the controls that label it in a label config.

    The first <Video> that a <Choices> or a <TimelineLabels> points at (by ``toName``) wins;
    on it, the first <Choices> and the first <TimelineLabels> in document order. Results are
    cached by the config text.

    Raises:
        LabelConfigError: the XML does not parse, has no <Video>, no <Choices> or
            <TimelineLabels> pointing at a <Video>, or a <Video> attribute we need is
            malformed.
    """
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("label config is empty")
    return _parse_cached(config)


@functools.lru_cache(maxsize=CONFIG_CACHE_SIZE)
def _parse_cached(config: str) -> VideoControls:
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the sdk raises several private XML/validation error types
        raise LabelConfigError(f"label config does not parse: {exc}") from None

    videos = [obj for obj in interface.objects if isinstance(obj, VideoTag)]
    if not videos:
        raise LabelConfigError("label config has no <Video> object")
    controls = list(interface.controls)
    for video in videos:
        on_video = [c for c in controls if video.name in (c.to_name or [])]
        choices = [c for c in on_video if isinstance(c, ChoicesTag)]
        timelines = [c for c in on_video if isinstance(c, TimelineLabelsTag)]
        if choices or timelines:
            return _build(video, choices[0] if choices else None, timelines[:1])
    names = " or ".join(f'toName="{v.name}"' for v in videos)
    raise LabelConfigError(f"label config has no <Choices> or <TimelineLabels> with {names}")


def _build(video: VideoTag, choices: ChoicesTag | None, timelines: list) -> VideoControls:
    value = video.value or ""
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(
            f'<Video name="{video.name}"> needs value="$<data key>", got value="{value}"'
        )
    raw_rate = video.attr.get("frameRate")
    frame_rate: float | None = None
    frame_rate_key: str | None = None
    if isinstance(raw_rate, str) and raw_rate.startswith("$") and len(raw_rate) > 1:
        frame_rate_key = raw_rate[1:]
    elif raw_rate not in (None, ""):
        try:
            frame_rate = float(raw_rate)
        except ValueError:
            raise LabelConfigError(
                f'<Video name="{video.name}"> frameRate must be a number or "$<data key>", '
                f'got "{raw_rate}"'
            ) from None
        if frame_rate <= 0:
            raise LabelConfigError(f'<Video name="{video.name}"> frameRate must be positive')
    timeline = None
    if timelines:
        labels = tuple(timelines[0].labels or ())
        if not labels:
            raise LabelConfigError(f'<TimelineLabels name="{timelines[0].name}"> has no labels')
        timeline = TimelineLabels(name=timelines[0].name, labels=labels)
    return VideoControls(
        video_name=video.name,
        video_value_key=value[1:],
        choices_name=choices.name if choices is not None else None,
        choice_values=tuple(choices.labels or ()) if choices is not None else (),
        frame_rate=frame_rate,
        frame_rate_key=frame_rate_key,
        timeline=timeline,
    )
