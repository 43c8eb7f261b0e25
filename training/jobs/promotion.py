"""Whether a just-published version becomes current: the quality gate decides (or a person,
forcing it), and every serving process is told; a rejected version is kept, recorded with
the gate's figures, so ``videoloop models promote`` can still make it current.
"""

from __future__ import annotations

import logging

import redis

from training.learn.gate import gate_allows
from training.versions.current import VersionPointer
from training.versions.store import HistoryAction, ModelStore, VersionInfo

log = logging.getLogger(__name__)


def promote(
    store: ModelStore,
    project: str,
    info: VersionInfo,
    *,
    connection: redis.Redis | None,
    force: bool = False,
) -> bool:
    """Make a just-published version current if its quality gate allows, and tell every
    serving process; otherwise keep it, recorded as rejected with the gate's figures.

    Args:
        store: the ModelStore ``info`` was published to.
        info: the published VersionInfo (its ``meta["gate"]`` decides).
        connection: the job's Redis (pub/sub notice to serving processes), or None.
        force: make it current even if it failed the gate ("Start training" with
            PROMOTE_ON_START_TRAINING, ``videoloop train --promote-anyway``).

    Returns:
        True if the version is now current.
    """
    gate = info.meta.get("gate")
    reason = (gate or {}).get("reason") or "published"
    if not gate_allows(gate, force=force):
        store.record_rejection(project, info.version, reason, gate=gate)
        log.warning(
            "project %s: %s rejected by the quality gate (%s); %s stays current",
            project,
            info.version,
            reason,
            store.get_current(project),
        )
        return False
    if gate_allows(gate):
        action = HistoryAction.CURRENT
    else:
        action, reason = HistoryAction.PROMOTE, f"promoted past the gate (forced): {reason}"
    VersionPointer(store, connection).set(
        project, info.version, action=action, reason=reason, details={"gate": gate}
    )
    return True
