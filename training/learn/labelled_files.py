"""Labelled video files on disk: a ``path,label`` manifest or one folder per label.

Why: training and evaluation outside Label Studio (synthetic sets, benchmarks, a folder of
clips someone already sorted) need the same list of (video, label) pairs, whichever of the
two common layouts the files come in.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

MANIFEST_NAME = "manifest.csv"
"""The manifest ``load_labelled_videos`` looks for inside a folder."""

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})
"""File extensions ``scan_class_folders`` takes as videos (compared in lower case)."""

_EXPECTED = (
    f"a CSV file with a 'path,label' header, a folder holding {MANIFEST_NAME}, or a folder "
    f"with one subfolder per label holding video files ({', '.join(sorted(VIDEO_EXTENSIONS))})"
)


def read_manifest(path: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """Read a ``path,label`` CSV; relative paths are relative to the manifest's folder.

    Blank lines are skipped.

    Returns:
        (absolute video path, label) pairs in file order.

    Raises:
        ValueError: the header is not ``path,label``, or a row (named by its line number)
            does not have two non-empty fields or names a file that does not exist.
    """
    manifest = Path(path).resolve()
    folder = manifest.parent
    rows: list[tuple[Path, str]] = []
    with manifest.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if [field.strip() for field in header or []] != ["path", "label"]:
            raise ValueError(f"{manifest} line 1: expected header 'path,label', got {header}")
        for row in reader:
            line = reader.line_num
            if not any(field.strip() for field in row):
                continue
            fields = [field.strip() for field in row]
            if len(fields) != 2 or not all(fields):
                raise ValueError(f"{manifest} line {line}: expected 'path,label', got {row}")
            video = (folder / fields[0]).resolve()
            if not video.is_file():
                raise ValueError(f"{manifest} line {line}: no such file {video}")
            rows.append((video, fields[1]))
    return rows


def scan_class_folders(root: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """List videos in a folder-per-label tree: ``root/<label>/<video>``.

    Only files directly inside each label folder count; hidden files and folders and files
    with other extensions are skipped.

    Returns:
        (absolute video path, label) pairs sorted by label, then file name.
    """
    base = Path(root).resolve()
    pairs: list[tuple[Path, str]] = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for video in sorted(folder.iterdir()):
            if _is_video_file(video):
                pairs.append((video, folder.name))
    return pairs


def scan_videos(root: str | os.PathLike[str]) -> list[Path]:
    """Every video file under ``root``, at any depth, sorted (``videoloop train --unlabelled``);
    hidden files and folders and files with other extensions are skipped.

    Raises:
        ValueError: ``root`` is not a folder.
    """
    base = Path(root).resolve()
    if not base.is_dir():
        raise ValueError(f"{root} is not a folder of videos")
    return sorted(
        p
        for p in base.rglob("*")
        if _is_video_file(p) and not any(part.startswith(".") for part in p.relative_to(base).parts)
    )


def _is_video_file(path: Path) -> bool:
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in VIDEO_EXTENSIONS
    )


def load_labelled_videos(path: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """Load (video, label) pairs from a manifest CSV, a folder with one, or a label-folder tree.

    Raises:
        ValueError: the path does not exist, the manifest is malformed (see
            ``read_manifest``), or no labelled video was found; the message says what
            layout was expected.
    """
    source = Path(path)
    if source.is_file() and source.suffix.lower() == ".csv":
        pairs = read_manifest(source)
    elif source.is_file():
        raise ValueError(f"{source} is not a .csv file; expected {_EXPECTED}")
    elif source.is_dir() and (source / MANIFEST_NAME).is_file():
        pairs = read_manifest(source / MANIFEST_NAME)
    elif source.is_dir():
        pairs = scan_class_folders(source)
    else:
        raise ValueError(f"{source} does not exist; expected {_EXPECTED}")
    if not pairs:
        raise ValueError(f"no labelled videos in {source}; expected {_EXPECTED}")
    return pairs
