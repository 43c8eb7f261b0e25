"""Keyframe-nearest sampling (SAMPLE_MODE=keyframe): each of the T targets moves to its nearest
keyframe.

Why: to sample a long video uniformly the decoder seeks to the keyframe before each target and
decodes every frame from there to the target, on average half a keyframe interval per target
(tens to hundreds of frames when keyframes are 2-10 s apart). A keyframe decodes on its own, so
taking the keyframe nearest each target costs one decoded frame per target plus one pass over
the packets (demuxing, no decoding) to find the keyframes: bench/keyframe_sampling.py measures
it several times faster on 60-80 s clips, at a small accuracy cost (the frames are up to half a
keyframe interval away from the uniform ones, and two targets may share one). So it is an
opt-in, and only for videos sampled by seeking (longer than decoder.SEEK_ABOVE_S); shorter ones
are decoded in order as under ``uniform``.

training.video.decoder reads the frames (``_read_by_seeking``, with its budget checks and error
types); this module only says which.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from fractions import Fraction

import av

from training.video.decode_limits import DecodeBudget

CHECK_EVERY_PACKETS: int = 256
"""Packets demuxed between two checks of the decode deadline and length caps."""


def keyframe_indices(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    rate: Fraction,
    budget: DecodeBudget,
) -> list[int]:
    """The 0-based frame numbers of the stream's keyframes, by demuxing every packet once.

    Packets are not decoded; the container's index is not trusted either (not every file has
    one, and it holds decode, not presentation, times). Leaves the container at its end: the
    caller seeks.

    Args:
        container: the open file.
        stream: its video stream.
        rate: the stream's frame rate, in frames per second.
        budget: the decode's limits; packets count as frames against MAX_VIDEO_FRAMES and
            MAX_VIDEO_SECONDS.

    Returns:
        Distinct, increasing frame numbers (presentation time x rate).

    Raises:
        VideoDecodeError: over a limit of ``budget`` (PyAV's own errors pass through, for
            sample_clip to turn into one).
    """
    start = stream.start_time or 0
    frame_pts = 1 / (rate * stream.time_base)  # one frame's duration in time-base units
    found: set[int] = set()
    packets = seen = 0
    for packet in container.demux(stream):
        seen += 1  # empty packets too: a file of nothing else is still bounded in time
        if seen % CHECK_EVERY_PACKETS == 0:
            budget.check_time()
            budget.check_length(packets, packets / float(rate))
        if packet.size == 0:  # the flush packet at the end
            continue
        packets += 1
        pts = packet.pts if packet.pts is not None else packet.dts
        if packet.is_keyframe and pts is not None:
            found.add(max(0, round((pts - start) / frame_pts)))
    budget.check_length(packets, packets / float(rate))
    return sorted(found)


def nearest_keyframes(targets: Sequence[int], keyframes: Sequence[int]) -> list[int]:
    """The keyframe nearest each target (the earlier one on a tie).

    Args:
        targets: frame numbers, as decoder.frame_indices gives them.
        keyframes: increasing keyframe frame numbers; at least one.

    Returns:
        One keyframe per target, non-decreasing when ``targets`` are: consecutive targets
        that share a keyframe repeat it.
    """
    chosen = []
    for target in targets:
        after = bisect.bisect_left(keyframes, target)
        candidates = keyframes[max(after - 1, 0) : after + 1]
        chosen.append(min(candidates, key=lambda k: (abs(k - target), k)))
    return chosen


def keyframe_targets(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    targets: list[int],
    rate: Fraction,
    budget: DecodeBudget,
) -> list[int]:
    """``targets`` moved to their nearest keyframes, or unchanged (uniform sampling) when the
    stream has fewer than 2 keyframes: an all-in-one-GOP video would give T copies of its
    first frame.

    Args:
        container, stream, rate, budget: as :func:`keyframe_indices`.
        targets: the uniform targets, decoder.frame_indices.

    Returns:
        Frame numbers for decoder._read_by_seeking, which repeats a frame for a repeated one.
    """
    keyframes = keyframe_indices(container, stream, rate, budget)
    if len(keyframes) < 2:
        return targets
    return nearest_keyframes(targets, keyframes)
