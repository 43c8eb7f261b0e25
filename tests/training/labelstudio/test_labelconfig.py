"""training/labelstudio/labelconfig.py on real label configs, parsed by the sdk's LabelInterface."""

from __future__ import annotations

import pytest

from training.labelstudio.labelconfig import LabelConfigError, TimelineLabels, parse_label_config

CLASSIFY = """<View>
  <Header value="What happens?"/>
  <Video name="video" value="$video" frameRate="29.97"/>
  <Choices name="label" toName="video" choice="single-radio">
    <Choice value="Walking"/>
    <Choice value="Running" alias="run"/>
    <Choice value="Standing"/>
  </Choices>
  <TimelineLabels name="segments" toName="video">
    <Label value="Jump"/>
    <Label value="Fall"/>
  </TimelineLabels>
</View>"""


def test_finds_video_choices_and_timeline():
    parsed = parse_label_config(CLASSIFY)
    assert parsed.video_name == "video"
    assert parsed.video_value_key == "video"
    assert parsed.choices_name == "label"
    # Results carry a choice's alias when it has one.
    assert parsed.choice_values == ("Walking", "run", "Standing")
    assert parsed.frame_rate == pytest.approx(29.97)
    assert parsed.timeline == TimelineLabels(name="segments", labels=("Jump", "Fall"))


def test_parsed_configs_are_cached_by_text():
    assert parse_label_config(CLASSIFY) is parse_label_config(CLASSIFY)
    other = CLASSIFY.replace("Standing", "Sitting")
    assert parse_label_config(other) is not parse_label_config(CLASSIFY)
    assert parse_label_config(other).choice_values[-1] == "Sitting"


def test_frame_rate_and_timelines_are_optional():
    parsed = parse_label_config(
        '<View><Video name="clip" value="$url"/>'
        '<Choices name="cls" toName="clip"><Choice value="A"/><Choice value="B"/></Choices></View>'
    )
    assert (parsed.video_name, parsed.video_value_key, parsed.choices_name) == (
        "clip",
        "url",
        "cls",
    )
    assert parsed.frame_rate is None
    assert parsed.timeline is None


def test_picks_the_choices_that_point_at_a_video():
    parsed = parse_label_config(
        """<View>
          <Text name="caption" value="$caption"/>
          <Choices name="sentiment" toName="caption"><Choice value="pos"/></Choices>
          <Video name="first" value="$a"/>
          <Video name="second" value="$b"/>
          <Choices name="kind" toName="second"><Choice value="cat"/><Choice value="dog"/></Choices>
          <Choices name="quality" toName="second"><Choice value="good"/></Choices>
        </View>"""
    )
    assert (parsed.video_name, parsed.video_value_key) == ("second", "b")
    assert parsed.choices_name == "kind"  # the first in document order
    assert parsed.choice_values == ("cat", "dog")


def test_choices_with_several_targets_count():
    parsed = parse_label_config(
        '<View><Video name="v" value="$v"/><Audio name="a" value="$a"/>'
        '<Choices name="c" toName="v,a"><Choice value="x"/></Choices></View>'
    )
    assert (parsed.video_name, parsed.choices_name) == ("v", "c")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("", "empty"),
        ("<View><Video name='v' value='$v'/>", "does not parse"),
        (
            '<View><Image name="img" value="$image"/>'
            '<Choices name="c" toName="img"><Choice value="x"/></Choices></View>',
            "no <Video>",
        ),
        (
            '<View><Video name="video" value="$video"/><Text name="t" value="$t"/>'
            '<Choices name="c" toName="t"><Choice value="x"/></Choices></View>',
            'no <Choices> or <TimelineLabels> with toName="video"',
        ),
        (
            '<View><Video name="video" value="video"/>'
            '<Choices name="c" toName="video"><Choice value="x"/></Choices></View>',
            'value="\\$<data key>"',
        ),
        (
            '<View><Video name="video" value="$video" frameRate="fast"/>'
            '<Choices name="c" toName="video"><Choice value="x"/></Choices></View>',
            "frameRate must be a number",
        ),
        (
            '<View><Video name="video" value="$video"/>'
            '<TimelineLabels name="tl" toName="video"></TimelineLabels></View>',
            "has no labels",
        ),
    ],
)
def test_unusable_configs_say_what_is_missing(config, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(config)


def test_label_config_error_is_a_value_error():
    assert issubclass(LabelConfigError, ValueError)


def test_a_timeline_alone_is_a_frame_level_project():
    parsed = parse_label_config(
        '<View><Video name="video" value="$video" frameRate="25"/>'
        '<TimelineLabels name="tl" toName="video"><Label value="Run"/><Label value="Walk"/>'
        "</TimelineLabels></View>"
    )
    assert not parsed.has_choices
    assert parsed.choices_name is None and parsed.choice_values == ()
    assert parsed.timeline == TimelineLabels(name="tl", labels=("Run", "Walk"))
    assert parsed.task_frame_rate({"video": "x"}) == 25.0


def test_frame_rate_from_task_data():
    parsed = parse_label_config(
        '<View><Video name="video" value="$video" frameRate="$fps"/>'
        '<TimelineLabels name="tl" toName="video"><Label value="Run"/></TimelineLabels></View>'
    )
    assert parsed.frame_rate is None and parsed.frame_rate_key == "fps"
    assert parsed.task_frame_rate({"fps": "29.97"}) == pytest.approx(29.97)
    # missing or unusable: Label Studio's own default
    assert parsed.task_frame_rate({}) == 24.0
    assert parsed.task_frame_rate({"fps": "fast"}) == 24.0
    assert parsed.task_frame_rate(None) == 24.0


def test_the_first_video_with_any_control_wins():
    parsed = parse_label_config(
        """<View>
          <Video name="a" value="$a"/>
          <Video name="b" value="$b"/>
          <TimelineLabels name="tl" toName="a"><Label value="x"/></TimelineLabels>
          <Choices name="c" toName="b"><Choice value="y"/><Choice value="z"/></Choices>
        </View>"""
    )
    assert parsed.video_name == "a"
    assert parsed.timeline is not None and parsed.choices_name is None
