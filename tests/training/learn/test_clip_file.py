"""training/learn/clip_file.py: a run's decoded clips written to a file as they are decoded and
read back by row, standing in for the in-memory array wherever a run indexes it (real clips
from tests/data, decoded by decode_labelled both ways)."""

from __future__ import annotations

import numpy as np
import pytest

from training.learn.clip_file import ClipFile, ClipFileWriter
from training.learn.dataset import decode_labelled
from training.video.clip import SamplingConfig

SAMPLING = SamplingConfig(frames=6, height=32, width=40)


@pytest.fixture
def both(tmp_path, data_dir):
    pairs = [(p, "ab"[i % 2]) for i, p in enumerate(sorted(data_dir.glob("*.mp4")))]
    pairs.append((tmp_path / "missing.mp4", "a"))  # skipped either way
    in_memory, skipped = decode_labelled(pairs, ["a", "b"], SAMPLING)
    in_file, skipped_too = decode_labelled(
        pairs, ["a", "b"], SAMPLING, clips_file=tmp_path / "run" / "clips.u8"
    )
    assert len(skipped) == len(skipped_too) == 1
    return in_memory, in_file


def test_a_clip_file_reads_back_what_memory_holds(both):
    in_memory, in_file = both
    assert isinstance(in_file.frames, ClipFile) and isinstance(in_memory.frames, np.ndarray)
    assert len(in_file.frames) == len(in_memory.frames) >= 3
    assert in_file.frames.shape == in_memory.frames.shape
    np.testing.assert_array_equal(in_file.mask, in_memory.mask)
    np.testing.assert_array_equal(in_file.y, in_memory.y)
    frames, expected = in_file.frames, in_memory.frames
    np.testing.assert_array_equal(frames[1], expected[1])
    np.testing.assert_array_equal(frames[-1], expected[-1])
    np.testing.assert_array_equal(frames[1:3], expected[1:3])
    np.testing.assert_array_equal(frames[np.array([2, 0])], expected[np.array([2, 0])])
    np.testing.assert_array_equal(np.asarray(frames), expected)


def test_a_subset_stays_in_the_file_and_reads_its_own_rows(both):
    in_memory, in_file = both
    idx = np.array([2, 0])
    part, expected = in_file.subset(idx), in_memory.subset(idx)
    assert isinstance(part.frames, ClipFile)
    assert part.sources == expected.sources and part.keys == expected.keys
    np.testing.assert_array_equal(part.frames[np.arange(2)], expected.frames)
    np.testing.assert_array_equal(part.subset(np.array([1])).frames[0], expected.frames[1])


def test_the_writer_refuses_a_clip_of_another_shape(tmp_path):
    writer = ClipFileWriter(tmp_path / "clips.u8", (2, 4, 4, 3))
    writer.append(np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="not uint8"):
        writer.append(np.zeros((3, 4, 4, 3), np.uint8))
    assert len(writer.close()) == 1
    (tmp_path / "clips.u8").write_bytes(b"\0" * 10)  # cut short under the reader
    with pytest.raises(OSError, match="short"):
        ClipFile(tmp_path / "clips.u8", (2, 4, 4, 3), np.arange(1))[0]
