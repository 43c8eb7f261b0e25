"""/predict latency in steady state and while new versions are swapped in: one run, as ratios.

Why: every serving process swaps each new version in while it serves; this measures what that
costs the requests in flight. Starts the backend under gunicorn (``python -m backend.server``,
2 worker processes x 4 threads, Redis pub/sub when a Redis answers) on a store with one small
model it trains itself (or ``--model-dir``), has client threads call /predict continuously,
first in a steady-state window, then while a new version is made current every ``--every-s``
seconds through ``VersionPointer``. Prints p50/p99 per window and their ratios, how long the
last version took to reach every worker, and the workers' resident memory after each window.
Run from the repository root (about 1 minute; not imported by the packages):

    .venv/bin/python bench/swap_latency.py

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import redis
import requests

from backend.app import PID_HEADER
from backend.serving import SWAP_DELAY_S
from training.versions.current import CURRENT_KEY, VersionPointer
from training.versions.store import MODEL_FILE, ModelStore, VersionInfo

REPO = Path(__file__).resolve().parents[1]

CONFIG = """<View>
  <Video name="video" value="$video"/>
  <Choices name="label" toName="video" choice="single">
    <Choice value="left_to_right"/>
    <Choice value="right_to_left"/>
  </Choices>
</View>"""


@dataclass(frozen=True)
class Call:
    started: float
    seconds: float
    ok: bool
    pid: int | None
    version: str | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_redis(url: str) -> tuple[str | None, bool]:
    """(REDIS_URL to use, whether this run owns the database). ``auto``: the first empty
    database of 127.0.0.1:6379 counting up (the tests' fixture counts down from 15)."""
    if url != "auto":
        return (url or None), False
    try:
        for db in range(1, 16):
            if redis.Redis(port=6379, db=db, socket_connect_timeout=0.5).dbsize() == 0:
                return f"redis://127.0.0.1:6379/{db}", True
    except redis.RedisError:
        pass
    return None, False


def train_small_model(root: Path, frames: int, size: int) -> tuple[ModelStore, VersionInfo]:
    """Synthetic clips, default ModelConfig, one epoch: a model of realistic size, fast."""
    from training.learn.config import TrainConfig, TrainingData, TrainingRun
    from training.learn.labelled_files import read_manifest
    from training.learn.publish import train_and_publish
    from training.video.clip import SamplingConfig
    from training.video.synth import generate_dataset

    manifest = generate_dataset(
        root / "synth", classes=["left_to_right", "right_to_left"], per_class=4, seed=0
    )
    store = ModelStore(root / "models")
    info = train_and_publish(
        store,
        "1",
        TrainingData(read_manifest(manifest)),
        TrainingRun(
            sampling=SamplingConfig(frames=frames, height=size, width=size),
            train_config=TrainConfig(epochs=1, batch_size=4, patience=1, augment=False),
        ),
    )
    return store, info


def publish_copy(store: ModelStore, project: str, info: VersionInfo) -> VersionInfo:
    def write(folder: Path) -> dict:
        shutil.copy(info.model_path, folder / MODEL_FILE)
        return {k: v for k, v in info.meta.items() if k not in ("version", "project")}

    return store.publish(project, write, make_current=False)


def worker_pids(master: int) -> set[int]:
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.add(int(stat.parent.name))
    return pids


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Clients:
    """Threads calling /predict until stopped, each call recorded."""

    def __init__(self, url: str, project: str, clips: list[Path], n: int) -> None:
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

    def _run(self, url: str, project: str, clip: Path) -> None:
        body = {
            "tasks": [{"id": 1, "data": {"video": str(clip)}}],
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
                    ok, version = bool(result["result"]), result["model_version"]
            except (requests.RequestException, ValueError, KeyError):
                pass
            call = Call(wall, time.perf_counter() - started, ok, pid, version)
            with self._lock:
                self.calls.append(call)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if values else 0.0


def summarize(name: str, calls: list[Call]) -> tuple[float, float]:
    ms = [c.seconds * 1000 for c in calls]
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    failed = sum(not c.ok for c in calls)
    print(
        f"{name:<14} {len(calls):>6} calls  {failed} failed  p50 {p50:7.1f} ms  "
        f"p99 {p99:7.1f} ms  max {max(ms):7.1f} ms"
    )
    return p50, p99


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

    import gunicorn
    import keras
    import tensorflow as tf

    redis_url, own_db = find_redis(args.redis_url)
    work = Path(tempfile.mkdtemp(prefix="videoloop-swapbench-"))
    server = None
    try:
        started = time.perf_counter()
        if args.model_dir:
            shutil.copytree(args.model_dir, work / "models")
            store = ModelStore(work / "models")
            info = store.get_current_info(args.project)
            if info is None:
                sys.exit(f"project {args.project} has no current version in {args.model_dir}")
            clips = list(args.clips or [])
        else:
            store, info = train_small_model(work, args.frames, args.size)
            clips = sorted((work / "synth").rglob("*.mp4"))
        if args.clips:
            clips = list(args.clips)
        if not clips:
            sys.exit("no clips to predict: pass --clips")
        trained_s = time.perf_counter() - started

        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
            f"{platform.python_version()}, tensorflow {tf.__version__}, keras "
            f"{keras.__version__}, gunicorn {gunicorn.__version__}"
        )
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
            f"a new connection per call"
        )

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_URL")}
        env.update(
            HOST="127.0.0.1",
            PORT=str(port),
            WORKERS=str(args.workers),
            THREADS=str(args.threads),
            MODEL_DIR=str(work / "models"),
            CACHE_DIR=str(work / "cache"),
            KERAS_HOME=str(work / "keras"),
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            **({"REDIS_URL": redis_url} if redis_url else {}),
        )
        log_path = work / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "backend.server"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        pids = worker_pids(server.pid)
        while len(pids) < args.workers and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = worker_pids(server.pid)

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
            sys.exit(f"{version} never reached every worker:\n{log_path.read_text()[-3000:]}")

        served_by_all(info.version, 0.0)  # both workers loaded and answering
        time.sleep(2.0)  # let first-call effects (media cache, tracing) pass

        steady_from = time.time()
        time.sleep(args.steady_s)
        steady_to = time.time()
        rss_steady = {pid: rss_mb(pid) for pid in sorted(pids)}

        pointer = VersionPointer(store, redis.Redis.from_url(redis_url) if redis_url else None)
        published: list[tuple[str, float]] = []
        for i in range(args.swaps):
            new = publish_copy(store, args.project, info)
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
            print(f"FAILED calls: {len(failed)}; server log {log_path}")
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=40)
            except subprocess.TimeoutExpired:
                server.kill()
        if redis_url:
            connection = redis.Redis.from_url(redis_url)
            if own_db:
                connection.flushdb()
            else:
                connection.delete(CURRENT_KEY.format(args.project))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
