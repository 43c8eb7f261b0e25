"""training/model/inference.py's failure kinds: the fixed words /metrics counts failed tasks by,
taken from the real errors that real clips, a corrupt file and the media policy raise."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.model.inference import DEADLINE_REACHED, LIMIT_SETTINGS, failure_kind
from training.settings import Settings
from training.video.clip import SamplingConfig
from training.video.decoder import DecodeLimits, VideoDecodeError, sample_clip
from training.video.media import HttpStatusError, MediaError, MediaResolver

SAMPLING = SamplingConfig(frames=4, height=32, width=32)


def kind_of(call) -> str:
    with pytest.raises(Exception) as caught:
        call()
    return failure_kind(caught.value)


@pytest.mark.parametrize(
    ("limits", "kind"),
    [
        (DecodeLimits(max_pixels=100), "max_video_pixels"),
        (DecodeLimits(max_frames=3), "max_video_frames"),
        (DecodeLimits(max_duration_s=0.5), "max_video_seconds"),
    ],
)
def test_a_video_over_a_decode_limit_is_counted_by_the_limit(data_dir, limits, kind):
    clip = data_dir / "b.mp4"
    assert kind_of(lambda: sample_clip(clip, SAMPLING, limits=limits)) == kind


def test_an_unreadable_video_is_a_decode_error(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00not a video" * 1000)
    assert kind_of(lambda: sample_clip(corrupt, SAMPLING)) == "decode_error"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:1/a.mp4", "file:///etc/passwd", "http://169.254.169.254/latest"],
)
def test_media_the_policy_refuses_is_media_refused(tmp_path, url):
    resolver = MediaResolver.from_settings(Settings(cache_dir=tmp_path))
    assert kind_of(lambda: resolver.resolve(url, task_id=1)) == "media_refused"


def test_an_error_status_and_other_media_errors_have_their_own_kinds(bucket, tmp_path):
    host = bucket.url.split("://", 1)[1]
    resolver = MediaResolver.from_settings(
        Settings(cache_dir=tmp_path, media_allowed_hosts=host, max_video_mb=1)
    )
    assert kind_of(lambda: resolver.resolve(f"{bucket.url}/missing.mp4")) == "http_status"
    # bigbuckbunny.mp4 is over 1 MB: the download stops at MAX_VIDEO_MB
    assert kind_of(lambda: resolver.resolve(f"{bucket.url}/bigbuckbunny.mp4")) == "max_video_mb"
    assert failure_kind(HttpStatusError("HTTP 403 Forbidden from https://x/", 403)) == (
        "http_status"
    )
    assert failure_kind(MediaError("the answer was empty")) == "media_error"


def test_every_limit_and_the_rest_map_to_fixed_words():
    words = {failure_kind(MediaError(f"x is over {s}=1")) for s in LIMIT_SETTINGS}
    assert words == {s.lower() for s in LIMIT_SETTINGS}
    assert failure_kind(VideoDecodeError(f"{Path('a')}: no video stream")) == "decode_error"
    assert failure_kind(RuntimeError("a bug")) == "internal_error"
    assert DEADLINE_REACHED.kind == "deadline" and DEADLINE_REACHED.unfinished
