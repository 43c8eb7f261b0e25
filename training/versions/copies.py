"""Copies of a model version: a new version with the same weights and meta.

Why: a swap, a rollback or a promotion needs a second version to move to, and training one
takes minutes; a copy takes a file copy. The benchmarks (``bench/swap_latency.py``) and the
tests use copies to exercise the hot swap, the ``models`` CLI, the refresh job and serving
without training anything. A copy is also how a project's model is reused in another project:
publish it there under a new name, with that project's history, and make it current or not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from training.versions.store import MODEL_FILE, ModelStore, VersionInfo

NOT_COPIED = ("version", "project")
"""Meta fields the store sets itself on publication."""


def publish_copy(
    store: ModelStore,
    project: str,
    info: VersionInfo,
    *,
    make_current: bool = True,
    extra_meta: dict | None = None,
    with_pictures: bool = False,
) -> VersionInfo:
    """Publish ``info``'s model again, into ``store`` under ``project``, as a new version.

    ``info`` may come from another store or another project. ``make_current=False``
    publishes it aside (``VersionPointer.set`` or a promotion makes it current later);
    ``extra_meta`` is merged over the copied meta (a gate, say); ``with_pictures`` copies the
    version's PNG files too (the ``models show`` output names them).
    """

    def write(folder: Path) -> dict:
        shutil.copy(info.model_path, folder / MODEL_FILE)
        for exported in info.path.glob("*.tflite"):  # LiteRT files (training/model/litert.py)
            shutil.copy(exported, folder / exported.name)
        if with_pictures:
            for picture in info.path.glob("*.png"):
                shutil.copy(picture, folder / picture.name)
        meta = {k: v for k, v in info.meta.items() if k not in NOT_COPIED}
        return {**meta, **(extra_meta or {})}

    return store.publish(project, write, make_current=make_current)
