"""``videoloop models``: list, show, promote and roll back a project's versions (no TensorFlow)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from backend.cli.common import command_redis
from training.settings import Settings


def _gate_text(gate: dict | None) -> str:
    if not gate:
        return "-"
    verdict = "pass" if gate.get("passed") else "FAIL"
    if gate.get("current") is None or gate.get("candidate") is None:
        return f"{verdict} (nothing to compare)"
    return f"{gate['candidate']:.3f} vs {gate['current']:.3f} {verdict}"


def _version_row(info) -> dict[str, str]:
    meta = info.meta
    test = (meta.get("metrics") or {}).get("test") or {}
    accuracy = test.get("accuracy")
    frame_accuracy = (test.get("timeline") or {}).get("frame_accuracy")
    dataset = meta.get("dataset") or {}
    created = meta.get("created_at")
    return {
        "version": info.version,
        "status": str(info.status or ""),
        "test acc": f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "-",
        "frame acc": f"{frame_accuracy:.3f}" if isinstance(frame_accuracy, int | float) else "-",
        "gate (new vs current)": _gate_text(meta.get("gate")),
        "parent": meta.get("parent") or "-",
        "created (UTC)": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created))
        if isinstance(created, int | float)
        else "-",
        "videos (train/val/test)": (
            f"{dataset.get('videos', '-')} ({dataset.get('train', '-')}/"
            f"{dataset.get('val', '-')}/{dataset.get('test', '-')})"
        ),
    }


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    """List, show, promote and roll back a project's versions (no TensorFlow needed)."""
    from backend.protocol import normalize_project
    from training.versions.store import ModelStore

    project = normalize_project(args.project)
    store = ModelStore.from_settings(settings)
    if args.models_command == "list":
        versions = store.list_versions(project)
        if args.json:
            print(json.dumps([_version_row(v) for v in versions], indent=2))
            return 0
        if not versions:
            print(f"project {project} has no versions in {settings.model_dir}", file=sys.stderr)
            return 1
        rows = [_version_row(v) for v in versions]
        widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
        print("  ".join(k.ljust(w) for k, w in widths.items()).rstrip())
        for row in rows:
            print("  ".join(row[k].ljust(w) for k, w in widths.items()).rstrip())
        return 0
    if args.models_command == "show":
        statuses = store.get_statuses(project)
        info = store.get_version(project, args.version)
        shown = {
            "version": info.version,
            "status": str(statuses.get(info.version, "")),
            "path": str(info.path),
            "pictures": sorted(str(p) for p in info.path.glob("*.png")),
            "meta": info.meta,
        }
        print(json.dumps(shown, indent=2, default=str))
        return 0
    if args.models_command == "promote":
        return _change_current(store, project, args.version, "promote", settings)
    target = store.get_rollback_target(project)
    if target is None:
        raise RuntimeError(f"project {project} has no earlier current version to roll back to")
    return _change_current(store, project, target, "rollback", settings)


def _change_current(store, project: str, version: str, action: str, settings: Settings) -> int:
    """Point the project at ``version`` through VersionPointer (with Redis, so every serving
    process swaps within seconds), queue the refresh of predictions, print what changed."""
    import redis

    from training.jobs.refresh_queue import enqueue_refresh
    from training.versions.current import VersionPointer

    store.get_version(project, version)  # raises StoreError (exit 2) if absent
    before = store.get_current(project)
    change: dict = {"project": project, "action": action, "previous": before, "current": version}
    if before == version:
        print(json.dumps({**change, "changed": False, "note": f"{version} is already current"}))
        return 0
    connection = command_redis(settings)
    VersionPointer(store, connection).set(
        project, version, action=action, reason=f"videoloop models {action}"
    )
    change.update(changed=True, redis=connection is not None, refresh_job=None)
    if connection is not None:
        try:
            change["refresh_job"] = enqueue_refresh(connection, project, version, settings)
        except redis.RedisError as exc:
            print(f"videoloop models: no refresh queued (Redis: {exc})", file=sys.stderr)
    print(json.dumps(change))
    return 0
