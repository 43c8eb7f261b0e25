"""What a project's label config asks of us: which <Video> to read and which <Choices> to fill.

Label Studio sends the whole config XML with every /setup and /predict, so parsed configs are
cached by their text. Parsing goes through label-studio-sdk's ``LabelInterface``; it gives
each control's labels as they appear in results (a ``<Choice alias="x">`` yields "x", not its
``value``), which is what annotations, and so the model's labels, contain.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.label_interface.control_tags import ChoicesTag, TimelineLabelsTag
from label_studio_sdk.label_interface.object_tags import VideoTag

CONFIG_CACHE_SIZE = 64
"""How many distinct label configs to keep parsed (one per project is typical)."""


class LabelConfigError(ValueError):
    """The label config cannot be served: bad XML, no <Video>, or no <Choices> on it."""


@dataclass(frozen=True)
class TimelineLabels:
    """A <TimelineLabels> control on the video, kept for frame-level prediction."""

    name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class VideoChoices:
    """The <Video> object and the <Choices> control that classifies it.

    ``video_value_key`` is the task data key the video URL is under (``$video`` -> "video").
    ``choice_values`` are the values results must carry (aliases where the config sets them).
    ``frame_rate`` is the <Video frameRate>, needed for timeline regions; None when unset.
    """

    video_name: str
    video_value_key: str
    choices_name: str
    choice_values: tuple[str, ...]
    frame_rate: float | None = None
    timelines: tuple[TimelineLabels, ...] = ()


def parse_label_config(config: str) -> VideoChoices:
    """Find the video and its classification control in a label config.

    The first <Video> that some <Choices> points at (by ``toName``) wins, and the first such
    <Choices> in document order. Results are cached by the config text.

    Raises:
        LabelConfigError: the XML does not parse, has no <Video>, no <Choices> pointing at a
            <Video>, or a <Video> attribute we need is malformed.
    """
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("label config is empty")
    return _parse_cached(config)


@functools.lru_cache(maxsize=CONFIG_CACHE_SIZE)
def _parse_cached(config: str) -> VideoChoices:
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the sdk raises several private XML/validation error types
        raise LabelConfigError(f"label config does not parse: {exc}") from None

    videos = [obj for obj in interface.objects if isinstance(obj, VideoTag)]
    if not videos:
        raise LabelConfigError("label config has no <Video> object")
    controls = list(interface.controls)
    choices = [c for c in controls if isinstance(c, ChoicesTag)]

    for video in videos:
        on_video = [c for c in choices if video.name in (c.to_name or [])]
        if on_video:
            return _build(video, on_video[0], controls)
    names = " or ".join(f'toName="{v.name}"' for v in videos)
    raise LabelConfigError(f"label config has no <Choices> with {names}")


def _build(video: VideoTag, choices: ChoicesTag, controls: list) -> VideoChoices:
    value = video.value or ""
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(
            f'<Video name="{video.name}"> needs value="$<data key>", got value="{value}"'
        )
    raw_rate = video.attr.get("frameRate")
    frame_rate: float | None = None
    if raw_rate not in (None, ""):
        try:
            frame_rate = float(raw_rate)
        except ValueError:
            raise LabelConfigError(
                f'<Video name="{video.name}"> frameRate must be a number, got "{raw_rate}"'
            ) from None
        if frame_rate <= 0:
            raise LabelConfigError(f'<Video name="{video.name}"> frameRate must be positive')
    timelines = tuple(
        TimelineLabels(name=c.name, labels=tuple(c.labels or ()))
        for c in controls
        if isinstance(c, TimelineLabelsTag) and video.name in (c.to_name or [])
    )
    return VideoChoices(
        video_name=video.name,
        video_value_key=value[1:],
        choices_name=choices.name,
        choice_values=tuple(choices.labels or ()),
        frame_rate=frame_rate,
        timelines=timelines,
    )
