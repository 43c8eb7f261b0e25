"""training/video/synth.py and training/learn/labelled_files.py: real MP4 files, decoded back."""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import pytest

from training.learn.labelled_files import load_labelled_videos, read_manifest, scan_class_folders
from training.video import synth

FPS = 25
WIDTH, HEIGHT = 96, 64
MIN_FRAMES = round(synth.CLIP_SECONDS[0] * FPS)
MAX_FRAMES = round(synth.CLIP_SECONDS[1] * FPS)
DATASET_CLASSES = ["left_to_right", "right_to_left", "red_then_blue"]


def decode(path: Path) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    """Every frame of ``path`` as RGB, and its video stream (for codec, size and rate)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return frames, stream


def shape_mask(frames: np.ndarray) -> np.ndarray:
    """Pixels of a ``clutter=False`` render that are not the flat grey background."""
    return np.abs(frames.astype(np.int16) - 128).max(axis=-1) > 30


def centroid_x(frames: np.ndarray) -> np.ndarray:
    """Per-frame horizontal centroid of the main shape in a clean render, in pixels."""
    mask = shape_mask(frames)
    xs = np.arange(frames.shape[2])
    return (mask * xs).sum(axis=(1, 2)) / mask.sum(axis=(1, 2))


def clean(label: str, i: int, seed: int = 0) -> np.ndarray:
    """A ``clutter=False`` render of clip i of ``label``, as generate_dataset would seed it."""
    rng = synth.clip_rng(seed, synth.CLASSES.index(label), i)
    return synth.render_clip(label, rng, clutter=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    calls: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("synth")
    manifest = synth.generate_dataset(
        out,
        classes=DATASET_CLASSES,
        per_class=2,
        seed=0,
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert manifest == out / "manifest.csv"
    assert calls == [(k, 6) for k in range(1, 7)]
    return out


def test_select_classes() -> None:
    assert synth.select_classes(2) == ["left_to_right", "right_to_left"]
    assert synth.select_classes(4) == ["left_to_right", "right_to_left", "grow", "shrink"]
    assert synth.select_classes("4") == synth.select_classes(4)
    assert synth.select_classes(None) == list(synth.CLASSES)
    assert synth.select_classes(" grow, red_then_blue ") == ["grow", "red_then_blue"]
    with pytest.raises(ValueError, match="valid names: left_to_right, right_to_left"):
        synth.select_classes("grow,sideways")
    for bad in (0, len(synth.CLASSES) + 1, "grow,grow", "", "motion5"):
        with pytest.raises(ValueError):
            synth.select_classes(bad)


def test_files_are_h264_at_requested_size_and_rate(dataset: Path) -> None:
    videos = sorted(dataset.rglob("*.mp4"))
    assert len(videos) == 6
    for video in videos:
        frames, stream = decode(video)
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (WIDTH, HEIGHT)
        assert stream.average_rate == FPS
        assert MIN_FRAMES <= len(frames) <= MAX_FRAMES
        assert frames[0].shape == (HEIGHT, WIDTH, 3)


def test_decoded_clip_matches_rendered_frames(dataset: Path) -> None:
    rng = synth.clip_rng(0, synth.CLASSES.index("red_then_blue"), 1)
    rendered = synth.render_clip("red_then_blue", rng, width=WIDTH, height=HEIGHT, fps=FPS)
    decoded, _ = decode(dataset / "red_then_blue" / "red_then_blue_0001.mp4")
    assert len(decoded) == len(rendered)
    for index in (0, len(rendered) - 1):
        error = np.abs(decoded[index].astype(np.int16) - rendered[index]).mean()
        assert error < 8, f"frame {index}: mean abs error {error:.1f}"
    # the first frame shows red, the last blue: the encoder kept the colours and the order
    other = np.abs(decoded[-1].astype(np.int16) - rendered[0]).mean()
    assert other > np.abs(decoded[0].astype(np.int16) - rendered[0]).mean()


def test_manifest_rows_match_files_and_labels(dataset: Path) -> None:
    with (dataset / "manifest.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "label"]
    expected = [
        [f"{label}/{label}_{i:04d}.mp4", label] for label in DATASET_CLASSES for i in range(2)
    ]
    assert rows[1:] == expected
    on_disk = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*.mp4")}
    assert on_disk == {row[0] for row in rows[1:]}
    pairs = read_manifest(dataset / "manifest.csv")
    assert pairs == [((dataset / rel).resolve(), label) for rel, label in expected]
    assert load_labelled_videos(dataset) == pairs
    assert load_labelled_videos(dataset / "manifest.csv") == pairs


def test_same_seed_same_pixels_other_seed_different(dataset: Path, tmp_path: Path) -> None:
    kwargs = {"classes": ["left_to_right"], "per_class": 1, "width": WIDTH, "height": HEIGHT}
    synth.generate_dataset(tmp_path / "same", seed=0, **kwargs)
    synth.generate_dataset(tmp_path / "other", seed=1, **kwargs)
    name = "left_to_right/left_to_right_0000.mp4"
    original, _ = decode(dataset / name)
    same, _ = decode(tmp_path / "same" / name)
    other, _ = decode(tmp_path / "other" / name)
    assert len(same) == len(original)
    np.testing.assert_array_equal(same[0], original[0])
    np.testing.assert_array_equal(same[-1], original[-1])
    assert not np.array_equal(other[0], original[0])
    assert not np.array_equal(other[-1], original[-1])


def test_render_clip_shapes_and_clutter() -> None:
    for label in synth.CLASSES:
        frames = synth.render_clip(label, np.random.default_rng(5))
        assert frames.dtype == np.uint8
        assert frames.shape[1:] == (120, 160, 3)
        assert MIN_FRAMES <= len(frames) <= MAX_FRAMES
        # textured background and per-frame noise: not flat, and no two frames alike
        assert frames[0].std() > 5
        assert not np.array_equal(frames[0], frames[1])
    with pytest.raises(ValueError, match="unknown class"):
        synth.render_clip("sideways", np.random.default_rng(0))


def test_clean_render_keeps_the_cluttered_clips_track() -> None:
    cluttered = synth.render_clip("grow", np.random.default_rng(3))
    flat = synth.render_clip("grow", np.random.default_rng(3), clutter=False)
    assert cluttered.shape == flat.shape
    mask = shape_mask(flat[-1])
    inside = cluttered[-1][mask].astype(np.float32).mean(axis=0)
    expected = flat[-1][mask].astype(np.float32).mean(axis=0)
    assert np.abs(inside - expected).max() < 15


@pytest.mark.parametrize("seed", range(8))
def test_horizontal_motion_follows_the_label(seed: int) -> None:
    for label, sign in (("left_to_right", 1), ("right_to_left", -1)):
        x = centroid_x(clean(label, seed)) * sign
        assert np.all(np.diff(x) > -1.0), f"{label} moved the wrong way"
        assert x[-1] - x[0] > 0.2 * 160, f"{label} moved only {x[-1] - x[0]:.1f} px"


@pytest.mark.parametrize("seed", range(4))
def test_size_and_colour_follow_the_label(seed: int) -> None:
    for label, sign in (("grow", 1), ("shrink", -1)):
        area = shape_mask(clean(label, seed)).sum(axis=(1, 2)) * sign
        assert np.all(np.diff(area) > -4), label
        assert abs(area[-1]) > 4 * abs(area[0]) or abs(area[0]) > 4 * abs(area[-1]), label
    for label, first, last in (("red_then_blue", 0, 2), ("blue_then_red", 2, 0)):
        frames = clean(label, seed).astype(np.int16)
        mask = shape_mask(frames)
        start, end = frames[0][mask[0]].mean(axis=0), frames[-1][mask[-1]].mean(axis=0)
        assert start[first] > start[last] + 100, label
        assert end[last] > end[first] + 100, label


def test_single_frames_cannot_tell_the_direction() -> None:
    # per clip, the mean position over all frames; over 20 clips the two directions agree
    means = {
        label: np.mean([centroid_x(clean(label, i)).mean() for i in range(20)])
        for label in ("left_to_right", "right_to_left")
    }
    assert abs(means["left_to_right"] - means["right_to_left"]) < 0.1 * 160
    # a pair's second class is the first one's track backwards: the same frames, reordered
    for forward, backward in (("left_to_right", "right_to_left"), ("grow", "shrink")):
        a = synth.render_clip(forward, np.random.default_rng(11), clutter=False)
        b = synth.render_clip(backward, np.random.default_rng(11), clutter=False)
        np.testing.assert_array_equal(a[::-1], b)
    # both colours show in both colour classes
    for label in ("red_then_blue", "blue_then_red"):
        frames = clean(label, 2).astype(np.int16)
        red_minus_blue = frames[..., 0] - frames[..., 2]
        assert red_minus_blue.max() > 100 and red_minus_blue.min() < -100, label


def test_segmented_clip_moves_right_then_left() -> None:
    frames, labels = synth.render_segmented_clip(
        ("left_to_right", "right_to_left"), np.random.default_rng(4), clutter=False
    )
    assert len(labels) == len(frames)
    split = labels.index("right_to_left")
    assert labels == ["left_to_right"] * split + ["right_to_left"] * (len(labels) - split)
    x = centroid_x(frames)
    assert x[split - 1] - x[0] > 10 and np.all(np.diff(x[:split]) > -1.0)
    assert x[split] - x[-1] > 10 and np.all(np.diff(x[split:]) < 1.0)
    assert abs(x[split] - x[split - 1]) < 3, "the second part should start where the first ends"
    cluttered, _ = synth.render_segmented_clip(
        ("grow", "red_then_blue"), np.random.default_rng(4), width=64, height=48
    )
    assert cluttered.shape[1:] == (48, 64, 3)


def test_write_video_rejects_odd_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        synth.write_video(tmp_path / "odd.mp4", np.zeros((3, 31, 32, 3), np.uint8), FPS)
    with pytest.raises(ValueError, match="uint8"):
        synth.write_video(tmp_path / "float.mp4", np.zeros((3, 32, 32, 3)), FPS)


def write_manifest(folder: Path, lines: list[str]) -> Path:
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_read_manifest_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"")
    manifest = write_manifest(tmp_path, ["path,label", "a.mp4,x", "", "missing.mp4,y"])
    with pytest.raises(ValueError, match=r"line 4: no such file .*missing\.mp4"):
        read_manifest(manifest)
    manifest = write_manifest(tmp_path, ["path,label", "a.mp4,x", "a.mp4"])
    with pytest.raises(ValueError, match="line 3: expected 'path,label'"):
        read_manifest(manifest)
    manifest = write_manifest(tmp_path, ["path,label", "a.mp4,"])
    with pytest.raises(ValueError, match="line 2"):
        read_manifest(manifest)
    manifest = write_manifest(tmp_path, ["video,class", "a.mp4,x"])
    with pytest.raises(ValueError, match="line 1: expected header"):
        read_manifest(manifest)
    manifest = write_manifest(tmp_path, ["path,label", "a.mp4,x", "", f"{tmp_path / 'a.mp4'},y"])
    assert read_manifest(manifest) == [
        ((tmp_path / "a.mp4").resolve(), "x"),
        ((tmp_path / "a.mp4").resolve(), "y"),
    ]


def test_load_labelled_videos_from_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    for rel in ("walk/b.mp4", "walk/a.MOV", "walk/notes.txt", "walk/.hidden.mp4", "run/c.webm"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    (root / ".cache").mkdir()
    (root / ".cache" / "d.mp4").write_bytes(b"")
    expected = [
        ((root / "run" / "c.webm").resolve(), "run"),
        ((root / "walk" / "a.MOV").resolve(), "walk"),
        ((root / "walk" / "b.mp4").resolve(), "walk"),
    ]
    assert scan_class_folders(root) == expected
    assert load_labelled_videos(root) == expected
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="one subfolder per label"):
        load_labelled_videos(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        load_labelled_videos(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"not a \.csv file"):
        load_labelled_videos(root / "walk" / "b.mp4")


def test_write_video_puts_keyframes_every_gop_frames(tmp_path: Path) -> None:
    path = tmp_path / "gop.mp4"
    synth.write_video(path, np.zeros((25, 32, 32, 3), np.uint8), FPS, gop_frames=10)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keyframes = [p.pts for p in container.demux(stream) if p.size and p.is_keyframe]
    assert [round(pts * stream.time_base * FPS) for pts in keyframes] == [0, 10, 20]
