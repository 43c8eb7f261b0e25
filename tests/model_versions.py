"""Publishing a copy of a model version: the one helper the tests share for it.

A copy is a new version (a new name, the same weights and meta): what the hot swap, the
``models`` CLI, the refresh job and the serving tests need, without training anything.
Importable as ``from model_versions import publish_copy`` (tests/ is on sys.path).
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

    ``make_current=False`` publishes it aside (``VersionPointer.set`` or a promotion makes it
    current later); ``extra_meta`` is merged over the copied meta (a gate, say);
    ``with_pictures`` copies the version's PNG files too (the ``models show`` output names
    them).
    """

    def write(folder: Path) -> dict:
        shutil.copy(info.model_path, folder / MODEL_FILE)
        if with_pictures:
            for picture in info.path.glob("*.png"):
                shutil.copy(picture, folder / picture.name)
        meta = {k: v for k, v in info.meta.items() if k not in NOT_COPIED}
        return {**meta, **(extra_meta or {})}

    return store.publish(project, write, make_current=make_current)
