"""The model store on a disk that fills up: training/durable.py and training/versions/store.py
on a real 1 MB tmpfs (mounted for the test; the machines that run the suite run it as root). A
publish or a pointer change that runs out of space fails, leaves no temporary file or staging
folder, and the current version stays what it was, whole."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.versions.store import MODEL_FILE, ModelStore


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"cannot mount a tmpfs for the test: {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def writer(model_bytes: int):
    def write(folder: Path) -> dict:
        (folder / MODEL_FILE).write_bytes(b"\0" * model_bytes)
        return {"labels": ["a", "b"]}

    return write


def fill(disk: Path) -> None:
    """Take every byte left."""
    with open(disk / "ballast", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def leftovers(root: Path) -> list[str]:
    return sorted(
        p.name for p in root.rglob("*") if p.name.startswith((".current-", ".staging-", ".tmp"))
    )


def test_a_publish_that_fills_the_disk_publishes_nothing(small_disk):
    store = ModelStore(small_disk / "models")
    good = store.publish("3", writer(10_000))

    with pytest.raises(OSError) as raised:
        store.publish("3", writer(2_000_000))  # twice the disk

    assert raised.value.errno == errno.ENOSPC
    assert [v.version for v in store.list_versions("3")] == [good.version]
    assert store.get_current("3") == good.version
    assert store.get_current_info("3").model_path.stat().st_size == 10_000
    assert leftovers(small_disk) == []


def test_a_pointer_change_on_a_full_disk_leaves_the_pointer_and_no_temp_file(small_disk):
    store = ModelStore(small_disk / "models")
    first = store.publish("3", writer(10_000))
    second = store.publish("3", writer(10_000), make_current=False)
    fill(small_disk)

    with pytest.raises(OSError) as raised:
        store.set_current("3", second.version)

    assert raised.value.errno == errno.ENOSPC
    assert store.get_current("3") == first.version
    assert leftovers(small_disk) == []
    os.unlink(small_disk / "ballast")  # space again: the same change now works
    store.set_current("3", second.version)
    assert store.get_current("3") == second.version
    assert store.get_history("3")[-1]["version"] == second.version
