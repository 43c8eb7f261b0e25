"""/predict latency in steady state and while new versions are swapped in: one run, as ratios.

Why: every serving process swaps each new version in while it serves; this measures what that
costs the requests in flight. Starts the backend under gunicorn (``python -m backend.server``,
2 worker processes x 4 threads, Redis pub/sub when a Redis answers) on a store with one small
model it trains itself (or ``--model-dir``), has client threads call /predict continuously
with videos served over HTTP from loopback (``serve_folder``, its host in
``MEDIA_ALLOWED_HOSTS``), first in a steady-state window, then while a new version (a copy,
``training.versions.copies``) is made current every ``--every-s`` seconds through
``VersionPointer``. Prints p50/p99 per window and their ratios, how long the last version took
to reach every worker, and the workers' resident memory after each window.
Run from the repository root (about 1 minute; not imported by the packages):

    .venv/bin/python bench/swap_latency.py

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import redis
import requests
from support import (
    CONFIG,
    find_redis,
    host_port,
    machine_header,
    percentile,
    rss_mb,
    serve_folder,
    start_backend,
    train_small_model,
    worker_pids,
)

from backend.app import PID_HEADER
from backend.serving import SWAP_DELAY_S
from training.jobs.prediction_claims import CLAIM_KEY
from training.versions.copies import publish_copy
from training.versions.current import CURRENT_KEY, VersionPointer
from training.versions.store import ModelStore, VersionInfo


@dataclass(frozen=True)
class Call:
    started: float
    seconds: float
    ok: bool
    pid: int | None
    version: str | None


class Clients:
    """Threads calling /predict until stopped, each call recorded."""

    def __init__(self, url: str, project: str, clips: list[str], n: int) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._run, args=(url, project, clips[i % len(clips)]), daemon=True
            )
            for i in range(n)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def _run(self, url: str, project: str, clip: str) -> None:
        body = {
            "tasks": [{"id": 1, "data": {"video": clip}}],
            "project": f"{project}.1700000000",
            "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": None},
        }
        while not self._stop.is_set():
            wall, started = time.time(), time.perf_counter()
            ok, pid, version = False, None, None
            try:
                response = requests.post(f"{url}/predict", json=body, timeout=100)
                pid = int(response.headers.get(PID_HEADER, 0)) or None
                if response.status_code == 200:
                    (result,) = response.json()["results"]
                    if result:  # [] when the task got no prediction
                        ok, version = bool(result["result"]), result["model_version"]
            except (requests.RequestException, ValueError, KeyError, TypeError):
                pass
            call = Call(wall, time.perf_counter() - started, ok, pid, version)
            with self._lock:
                self.calls.append(call)


def summarize(name: str, calls: list[Call]) -> tuple[float, float]:
    ms = [c.seconds * 1000 for c in calls]
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    failed = sum(not c.ok for c in calls)
    print(
        f"{name:<14} {len(calls):>6} calls  {failed} failed  p50 {p50:7.1f} ms  "
        f"p99 {p99:7.1f} ms  max {max(ms):7.1f} ms"
    )
    return p50, p99


def prepare(args: argparse.Namespace, work: Path) -> tuple[ModelStore, VersionInfo, float]:
    """The store under ``work/models`` and its current version; the clips into
    ``work/media``; the seconds it took."""
    started = time.perf_counter()
    if args.model_dir:
        shutil.copytree(args.model_dir, work / "models")
        store = ModelStore(work / "models")
        info = store.get_current_info(args.project)
        if info is None:
            sys.exit(f"project {args.project} has no current version in {args.model_dir}")
        clips = []
    else:
        store, info = train_small_model(work, args.frames, args.size)
        clips = sorted((work / "synth").rglob("*.mp4"))
    clips = list(args.clips or clips)
    if not clips:
        sys.exit("no clips to predict: pass --clips")
    (work / "media").mkdir()
    for i, clip in enumerate(clips):  # one folder to serve, names kept apart
        shutil.copy(clip, work / "media" / f"{i:03d}-{clip.name}")
    return store, info, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a store to copy (default: train one)")
    parser.add_argument("--project", default="1")
    parser.add_argument("--clips", type=Path, nargs="*", help="videos to predict")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--steady-s", type=float, default=25.0)
    parser.add_argument("--swaps", type=int, default=10, help="versions made current")
    parser.add_argument("--every-s", type=float, default=2.0)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--redis-url", default="auto", help='"auto", "" (none) or a URL')
    args = parser.parse_args()

    redis_url, own_db = find_redis(args.redis_url)
    work = Path(tempfile.mkdtemp(prefix="videoloop-swapbench-"))
    try:
        store, info, trained_s = prepare(args, work)
        print(machine_header())
        size_mb = info.model_path.stat().st_size / 1e6
        print(
            f"model: {info.meta['model'].get('parameters', '?')} parameters, {size_mb:.1f} MB, "
            f"sampling {info.meta['sampling']} ({'given' if args.model_dir else 'trained'} "
            f"in {trained_s:.0f} s)"
        )
        print(
            f"server: {args.workers} workers x {args.threads} threads, "
            f"{'Redis pub/sub ' + redis_url if redis_url else 'no Redis (polling only)'}, "
            f"SWAP_DELAY_S={SWAP_DELAY_S}; {args.clients} clients, 1 task per call, "
            f"a new connection per call, videos over HTTP from loopback (MEDIA_ALLOWED_HOSTS)"
        )
        with serve_folder(work / "media") as media_url:
            env = {"MEDIA_ALLOWED_HOSTS": host_port(media_url)}
            if redis_url:
                env["REDIS_URL"] = redis_url
            with start_backend(work, env, args.workers, args.threads) as (url, server, log):
                clips = [f"{media_url}/{p.name}" for p in sorted((work / "media").iterdir())]
                measure(args, store, info, redis_url, url, worker_pids(server.pid), clips, log)
    finally:
        if redis_url:
            connection = redis.Redis.from_url(redis_url)
            if own_db:
                connection.flushdb()
            else:
                connection.delete(CURRENT_KEY.format(args.project))
                claims = CLAIM_KEY.format(project=args.project, version="*", task="*")
                for key in connection.scan_iter(claims):
                    connection.delete(key)
        shutil.rmtree(work, ignore_errors=True)


def measure(
    args: argparse.Namespace,
    store: ModelStore,
    info: VersionInfo,
    redis_url: str | None,
    url: str,
    pids: set[int],
    clips: list[str],
    log_path: Path,
) -> None:
    """The two windows against a started server; prints the figures."""
    clients = Clients(url, args.project, clips, args.clients)
    clients.start()

    def served_by_all(version: str, since: float, timeout_s: float = 60) -> float:
        """Seconds from ``since`` until every worker answered with ``version``."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            seen: dict[int, float] = {}
            for call in clients.snapshot():
                if call.started >= since and call.version == version and call.pid:
                    finished = call.started + call.seconds
                    seen[call.pid] = min(seen.get(call.pid, finished), finished)
            if pids <= set(seen):
                return max(seen.values()) - since
            time.sleep(0.05)
        clients.stop()
        sys.exit(f"{version} never reached every worker:\n{log_path.read_text()[-3000:]}")

    served_by_all(info.version, 0.0)  # every worker loaded and answering
    time.sleep(2.0)  # let first-call effects (media cache, tracing) pass

    steady_from = time.time()
    time.sleep(args.steady_s)
    steady_to = time.time()
    rss_steady = {pid: rss_mb(pid) for pid in sorted(pids)}

    pointer = VersionPointer(store, redis.Redis.from_url(redis_url) if redis_url else None)
    published: list[tuple[str, float]] = []
    for i in range(args.swaps):
        new = publish_copy(store, args.project, info, make_current=False)
        set_at = time.time()
        pointer.set(args.project, new.version)
        published.append((new.version, set_at))
        if i + 1 < args.swaps:
            time.sleep(max(0.0, set_at + args.every_s - time.time()))
    last_version, last_set_at = published[-1]
    reach_last = served_by_all(last_version, last_set_at)
    swap_to = time.time()
    rss_swaps = {pid: rss_mb(pid) for pid in sorted(pids)}
    clients.stop()
    calls = clients.snapshot()

    steady = [c for c in calls if steady_from <= c.started < steady_to]
    swapping = [c for c in calls if steady_to <= c.started < swap_to]
    print(
        f"\nwindows: steady {steady_to - steady_from:.0f} s, swapping "
        f"{swap_to - steady_to:.0f} s ({args.swaps} versions made current, one every "
        f"{args.every_s:g} s; the window ends when every worker serves the last)"
    )
    s50, s99 = summarize("steady", steady)
    w50, w99 = summarize("during swaps", swapping)
    print(f"ratio (during swaps / steady): p50 {w50 / s50:.2f}x, p99 {w99 / s99:.2f}x")
    text = log_path.read_text(errors="replace")
    swaps = [
        text.count(f"[{pid}] backend.serving: project {args.project}: serving version") - 1
        for pid in sorted(pids)
    ]
    seen_versions = {c.version for c in swapping if c.version}
    print(
        f"versions swapped in per worker {swaps}, {len(seen_versions)} versions answered; "
        f"the last one answered by every worker {reach_last:.2f} s after it became current"
    )
    print(
        "worker RSS MB after steady "
        + ", ".join(f"{v:.0f}" for v in rss_steady.values())
        + " / after swaps "
        + ", ".join(f"{v:.0f}" for v in rss_swaps.values())
    )
    failed = [c for c in calls if not c.ok]
    if failed:
        print(f"FAILED calls: {len(failed)}; the server log ends:\n{text[-3000:]}")


if __name__ == "__main__":
    main()
