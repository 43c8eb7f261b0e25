"""/predict under concurrent load for minutes while a worker trains and publishes twice.

Why: the serving processes must stay correct and flat over time, not only in a 1-minute bench:
no failed call while another process trains with TensorFlow on the same cores and two real
versions are swapped in under load, latency that comes back after each swap, and resident
memory that stops growing once warmed up (each swap loads a model; the old one must be freed).

What: starts the backend under gunicorn (``python -m backend.server``, 2 worker processes x 4
threads, Redis pub/sub, so every process hears of a new version at once) on a store with one
small model it trains itself (project "1"), and a loopback folder server with the clips (the
synthetic ones of ``train_small_model`` and ``tests/data/*.mp4``), its host in
MEDIA_ALLOWED_HOSTS. Client threads call /predict continuously, one task per call, each call a
new task id and, unless ``--reuse-urls``, its video under a URL the server has not seen (a
query string), so each call downloads, decodes and predicts; every answer must be a prediction
with a non-empty ``result`` (``[]`` or an error counts as an error). At ``--publish-at`` seconds
(default 1:30 and 3:00) a separate process, ``python -m backend.cli train --promote-anyway``,
trains from scratch on 24 other synthetic clips (``--epochs``, default 5: the default 40 take
minutes on 2 cores under this load), shares the backend's CACHE_DIR and publishes into its
MODEL_DIR, making its version current; each serving process then swaps it in under load.
Prints a progress line a minute (calls, errors, p50/p99, the versions answered, the media
cache's entries and how long one scan of them takes, the eviction pass each download makes, and
resident memory), then errors and p50/p99/max per window: "before" (warm-up end
to the first training), "during" (from the start of each training process to 20 s after its
version was answered by every worker), "after" (the rest), and their ratios; the swaps each
worker logged; the resident memory of the gunicorn master and each worker every minute, and
its change from the first minute after warm-up to the last.
Run from the repository root (about 6 minutes with the defaults; not imported by the packages):

    .venv/bin/python bench/soak.py

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import redis
import requests
from support import (
    CONFIG,
    REPO,
    child_env,
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
from training.versions.current import CURRENT_KEY
from training.versions.store import VersionInfo
from training.video.diskcache import evict_lru
from training.video.media import MEDIA_SUBDIR

SETTLE_S = 20.0
"""A "during" window ends this long after every worker answered with the new version."""

SERVING_LINE = re.compile(
    r"\[(\d+)\] backend\.serving: project (\S+): serving version (\S+) \(loaded and warmed up "
    r"in ([\d.]+) s; swapped in ([\d.]+) s after it became current\)"
)


@dataclass(frozen=True)
class Call:
    started: float
    seconds: float
    error: str | None
    pid: int | None
    version: str | None


class Clients:
    """Threads calling /predict until stopped, one new task per call, each call recorded; and
    when each worker first answered with each version."""

    def __init__(self, url: str, project: str, clips: list[str], n: int, reuse_urls: bool) -> None:
        self.calls: list[Call] = []
        self.first_answer: dict[tuple[str, int], float] = {}
        """(version, pid) -> when that worker first finished a call answered with it."""
        self._url, self._project, self._clips, self._reuse = url, project, clips, reuse_urls
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(110)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def served_by(self, version: str, pids: set[int]) -> float | None:
        """When the last of ``pids`` first answered with ``version``; None until all did."""
        with self._lock:
            seen = [self.first_answer.get((version, pid)) for pid in pids]
        return None if not pids or None in seen else max(seen)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                task = next(self._ids)
            clip = self._clips[task % len(self._clips)]
            body = {
                "tasks": [
                    {"id": task, "data": {"video": clip if self._reuse else f"{clip}?t={task}"}}
                ],
                "project": f"{self._project}.1700000000",
                "label_config": CONFIG,
                "params": {"login": None, "password": None, "context": None},
            }
            wall, started = time.time(), time.perf_counter()
            error, pid, version = None, None, None
            try:
                response = requests.post(f"{self._url}/predict", json=body, timeout=100)
                pid = int(response.headers.get(PID_HEADER, 0)) or None
                if response.status_code != 200:
                    error = f"HTTP {response.status_code}"
                else:
                    (result,) = response.json()["results"]
                    if not result:
                        error = "no prediction ([])"
                    elif not result.get("result"):
                        error = "prediction with an empty result"
                    else:
                        version = result["model_version"]
            except requests.RequestException as exc:
                error = type(exc).__name__
            except (ValueError, KeyError, TypeError) as exc:
                error = f"bad answer ({type(exc).__name__})"
            call = Call(wall, time.perf_counter() - started, error, pid, version)
            with self._lock:
                self.calls.append(call)
                if version and pid:
                    self.first_answer.setdefault((version, pid), wall + call.seconds)


@dataclass
class Training:
    """One ``videoloop train`` process: trains from scratch, publishes, makes it current."""

    number: int
    at_s: float
    started: float = 0.0
    ended: float = 0.0
    current_at: float = 0.0
    """When it printed its summary (right after making its version current)."""
    summary: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None
    peak_rss: float = 0.0
    served_at: float | None = None
    """When every worker had answered with its version."""
    log_path: Path | None = None
    announced: bool = False
    _reader: threading.Thread | None = None

    def start(self, args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
        command = [
            sys.executable,
            "-m",
            "backend.cli",
            "train",
            "--data",
            str(work / "train"),
            "--project",
            args.project,
            "--epochs",
            str(args.epochs),
            "--frames",
            str(args.frames),
            "--size",
            str(args.size),
            "--seed",
            str(self.number),
            "--quiet",
            "--promote-anyway",
        ]
        self.log_path = work / f"train-{self.number}.log"
        self.started = time.time()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.current_at = time.time()
                self.summary = json.loads(line)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def poll(self) -> bool:
        """Sample its memory; True once when it has just ended."""
        if self.process is None or self.ended:
            return False
        if self.process.poll() is None:
            with contextlib.suppress(OSError):  # it may just have exited
                self.peak_rss = max(self.peak_rss, rss_mb(self.process.pid))
            return False
        if self._reader is not None:
            self._reader.join(5)
        self.ended = time.time()
        return True

    @property
    def version(self) -> str | None:
        return self.summary.get("version") if self.summary.get("current") else None


def media_cache(work: Path) -> tuple[int, float]:
    """Entries in the server's media cache, and the milliseconds one scan of it takes here:
    the scan each download's eviction pass makes (training.video.diskcache.evict_lru)."""
    folder = work / "cache" / MEDIA_SUBDIR
    if not folder.is_dir():
        return 0, 0.0
    entries = sum(1 for _ in folder.iterdir())
    started = time.perf_counter()
    evict_lru(folder, 1 << 62, what="bench scan")  # a bound it never reaches: nothing goes
    return entries, (time.perf_counter() - started) * 1000


def clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def prepare(args: argparse.Namespace, work: Path) -> tuple[VersionInfo, float]:
    """The store under ``work/models`` with its first version, the training set of the
    worker under ``work/train``, the clips to predict in ``work/media``; the seconds it took."""
    from training.video.synth import generate_dataset

    started = time.perf_counter()
    _, info = train_small_model(work, args.frames, args.size)
    generate_dataset(
        work / "train",
        classes=["left_to_right", "right_to_left"],
        per_class=args.train_per_class,
        seed=1,
    )
    clips = sorted((work / "synth").rglob("*.mp4")) + sorted((REPO / "tests/data").glob("*.mp4"))
    (work / "media").mkdir()
    for i, clip in enumerate(clips):  # one folder to serve, names kept apart
        shutil.copy(clip, work / "media" / f"{i:03d}-{clip.name}")
    return info, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="load time, warm-up included")
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--publish-at",
        type=float,
        nargs="*",
        default=[90.0, 180.0],
        help="seconds into the run at which a training process starts (it publishes when done)",
    )
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each training")
    parser.add_argument("--train-per-class", type=int, default=12, help="training clips a class")
    parser.add_argument("--reuse-urls", action="store_true", help="no query string per call")
    parser.add_argument("--project", default="1")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--redis-url", default="auto", help='"auto", "" (none) or a URL')
    args = parser.parse_args()

    redis_url, own_db = find_redis(args.redis_url)
    if not redis_url and args.workers > 1:
        sys.exit("several workers need Redis (REDIS_URL); none answered at 127.0.0.1:6379")
    work = Path(tempfile.mkdtemp(prefix="videoloop-soak-"))
    try:
        info, prepared_s = prepare(args, work)
        print(machine_header())
        size_mb = info.model_path.stat().st_size / 1e6
        print(
            f"model: {info.meta['model'].get('parameters', '?')} parameters, {size_mb:.1f} MB, "
            f"sampling {info.meta['sampling']} (first version and clips made in "
            f"{prepared_s:.0f} s)"
        )
        print(
            f"server: {args.workers} workers x {args.threads} threads, "
            f"{'Redis pub/sub ' + redis_url if redis_url else 'no Redis (polling only)'}, "
            f"SWAP_DELAY_S={SWAP_DELAY_S}; {args.clients} clients, 1 new task per call, "
            f"{'the same URLs' if args.reuse_urls else 'a new URL per call'} over HTTP from "
            f"loopback (MEDIA_ALLOWED_HOSTS)"
        )
        print(
            f"run: {clock(args.minutes * 60)}, warm-up {clock(args.warmup_s)}; training "
            f"processes (videoloop train --epochs {args.epochs}, "
            f"{2 * args.train_per_class} clips, --promote-anyway) start at "
            + (", ".join(clock(s) for s in sorted(args.publish_at)) or "none")
        )
        with serve_folder(work / "media") as media_url:
            env = {"MEDIA_ALLOWED_HOSTS": host_port(media_url)}
            if redis_url:
                env["REDIS_URL"] = redis_url
            with start_backend(work, env, args.workers, args.threads) as (url, server, log):
                clips = [f"{media_url}/{p.name}" for p in sorted((work / "media").iterdir())]
                train_env = child_env(work)
                if redis_url:
                    train_env["REDIS_URL"] = redis_url
                soak(args, info, url, server, clips, log, work, train_env)
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


def soak(
    args: argparse.Namespace,
    info: VersionInfo,
    url: str,
    server: subprocess.Popen,
    clips: list[str],
    log_path: Path,
    work: Path,
    train_env: dict[str, str],
) -> None:
    """The run against a started server; prints progress, then the figures."""
    clients = Clients(url, args.project, clips, args.clients, args.reuse_urls)
    clients.start()
    deadline = time.monotonic() + 120
    while clients.served_by(info.version, worker_pids(server.pid)) is None:
        if time.monotonic() > deadline:
            clients.stop()
            sys.exit(f"not every worker answered:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)
    t0 = time.time()
    end = t0 + args.minutes * 60
    print(f"\n[0:00] every worker answers {info.version}; the run starts", flush=True)

    trainings = [Training(i + 1, at) for i, at in enumerate(sorted(args.publish_at))]
    rss: dict[int, dict[str, float]] = {}  # minute -> process -> MiB
    all_pids: dict[str, int] = {}
    minute = 0
    last_count = 0

    def sample_rss() -> dict[str, float]:
        sample = {"master": rss_mb(server.pid)}
        for pid in sorted(worker_pids(server.pid)):
            try:
                sample[f"worker {pid}"] = rss_mb(pid)
            except OSError:  # a worker that just exited
                continue
            all_pids[f"worker {pid}"] = pid
        return sample

    rss[0] = sample_rss()
    while True:
        now = time.time()
        for training in trainings:
            if not training.started and now >= t0 + training.at_s and now < end:
                training.start(args, work, train_env)
                print(f"[{clock(now - t0)}] training {training.number} starts", flush=True)
            ended = training.poll()
            if training.summary and not training.announced:
                training.announced = True
                s = training.summary
                gate = (s.get("gate") or {}).get("passed")
                print(
                    f"[{clock(training.current_at - t0)}] training {training.number} publishes "
                    f"after {training.current_at - training.started:.0f} s: {s['version']}, "
                    + (
                        f"current ({s['epochs_run']} epochs, test accuracy "
                        f"{s['test_accuracy']:.2f}, quality gate {'passed' if gate else 'forced'})"
                        if training.version
                        else "not current"
                    ),
                    flush=True,
                )
            if ended and not training.summary:
                print(
                    f"[{clock(training.ended - t0)}] training {training.number} exits "
                    f"{training.process.returncode} after {training.ended - training.started:.0f}"
                    f" s without publishing; its log ends:\n"
                    + training.log_path.read_text(errors="replace")[-1500:],
                    flush=True,
                )
            if training.version and training.served_at is None:
                served = clients.served_by(training.version, worker_pids(server.pid))
                if served is not None:
                    training.served_at = served
                    print(
                        f"[{clock(served - t0)}] every worker answers {training.version} "
                        f"({served - training.current_at:.1f} s after it became current)",
                        flush=True,
                    )
        if now >= t0 + 60 * (minute + 1) or now >= end:
            minute += 1
            rss[minute] = sample_rss()
            entries, scan_ms = media_cache(work)
            calls = clients.snapshot()
            recent = calls[last_count:]
            last_count = len(calls)
            ms = [c.seconds * 1000 for c in recent]
            errors = sum(c.error is not None for c in recent)
            versions = Counter(c.version for c in recent if c.version)
            print(
                f"[{clock(now - t0)}] last minute: {len(recent)} calls, {errors} errors, p50 "
                f"{percentile(ms, 50):.0f} ms, p99 {percentile(ms, 99):.0f} ms; versions "
                + ", ".join(f"{v} x{n}" for v, n in sorted(versions.items()))
                + f"; media cache {entries} entries (one scan {scan_ms:.0f} ms)"
                + "; RSS MB "
                + ", ".join(f"{k} {v:.0f}" for k, v in rss[minute].items())
                + "".join(
                    f"; training {t.number} running for {max(0.0, now - t.started):.0f} s"
                    for t in trainings
                    if t.running
                ),
                flush=True,
            )
            if now >= end:
                break
        time.sleep(0.25)

    clients.stop()
    for training in trainings:
        if training.running:
            print(f"training {training.number} still running at the end: stopped")
            training.process.terminate()
            training.process.wait(30)
        training.poll()
    report(args, t0, end, clients.snapshot(), trainings, rss, all_pids, log_path)


def report(
    args: argparse.Namespace,
    t0: float,
    end: float,
    calls: list[Call],
    trainings: list[Training],
    rss: dict[int, dict[str, float]],
    all_pids: dict[str, int],
    log_path: Path,
) -> None:
    warm_end = t0 + args.warmup_s
    started = [t for t in trainings if t.started]
    first = min((t.started for t in started), default=end)
    during = [(t.started, (t.served_at + SETTLE_S) if t.served_at else end) for t in started]

    def window(c: Call) -> str:
        if c.started < warm_end:
            return "warm-up"
        if any(a <= c.started < b for a, b in during):
            return "during"
        return "before" if c.started < first else "after"

    merged: list[list[float]] = []  # the "during" intervals within the run, overlaps joined
    for a, b in sorted((max(a, warm_end), min(b, end)) for a, b in during):
        if a >= b:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    spans = {
        "before": max(0.0, min(first, end) - warm_end),
        "during": sum(b - a for a, b in merged),
    }
    spans["after"] = max(0.0, end - warm_end - spans["before"] - spans["during"])
    print(
        f"\nwindows: warm-up {args.warmup_s:.0f} s; before {spans['before']:.0f} s "
        f"(to the first training); during {spans['during']:.0f} s (each training, start to "
        f"{SETTLE_S:.0f} s after every worker answers its version); after "
        f"{spans['after']:.0f} s"
    )
    by_window: dict[str, list[Call]] = {}
    for c in calls:
        if c.started < end:  # not the few calls between the end and the clients' stop
            by_window.setdefault(window(c), []).append(c)
    figures: dict[str, tuple[float, float]] = {}
    print(
        f"{'window':<8} {'calls':>6} {'calls/s':>7} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
    )
    for name in ("warm-up", "before", "during", "after"):
        group = by_window.get(name, [])
        ms = [c.seconds * 1000 for c in group]
        p50, p99 = percentile(ms, 50), percentile(ms, 99)
        figures[name] = p50, p99
        span = args.warmup_s if name == "warm-up" else spans[name]
        print(
            f"{name:<8} {len(group):>6} {len(group) / span if span else 0:>7.1f} "
            f"{sum(c.error is not None for c in group):>6} {p50:>7.0f} {p99:>7.0f} "
            f"{max(ms, default=float('nan')):>7.0f}"
        )
    b50, b99 = figures["before"]
    for name in ("during", "after"):
        p50, p99 = figures[name]
        if by_window.get(name) and by_window.get("before"):
            print(f"ratio {name}/before: p50 {p50 / b50:.2f}x, p99 {p99 / b99:.2f}x")

    errors = Counter(c.error for c in calls if c.error)
    print(
        f"errors: {sum(errors.values())} of {len(calls)} calls"
        + (": " + ", ".join(f"{e} x{n}" for e, n in errors.most_common()) if errors else "")
    )

    text = log_path.read_text(errors="replace")
    swaps: dict[str, dict[int, tuple[float, float]]] = {}
    for pid, project, version, load_s, swap_s in SERVING_LINE.findall(text):
        if project == args.project:
            swaps.setdefault(version, {})[int(pid)] = (float(load_s), float(swap_s))
    for t in trainings:
        if not t.started:
            print(f"training {t.number}: not started (--publish-at {t.at_s:g} is past the end)")
            continue
        line = (
            f"training {t.number}: {clock(t.started - t0)}-{clock(t.ended - t0)} "
            f"({t.ended - t.started:.0f} s, peak RSS {t.peak_rss:.0f} MB)"
        )
        if t.version:
            per_worker = swaps.get(t.version, {})
            line += f", {t.version}: swapped in by {len(per_worker)} workers " + ", ".join(
                f"[{pid}] load {load:.1f} s, serving {swap:.1f} s after current"
                for pid, (load, swap) in sorted(per_worker.items())
            )
            if t.served_at:
                line += f"; answered by every worker {t.served_at - t.current_at:.1f} s after"
        else:
            line += ": no version made current"
            if t.log_path and t.log_path.exists():
                line += f"; its log ends:\n{t.log_path.read_text(errors='replace')[-1500:]}"
        print(line)

    minutes = sorted(rss)

    def at(m: int) -> str:  # the last sample is at the end, which may fall inside a minute
        return clock(min(m * 60, args.minutes * 60))

    base = next((m for m in minutes if m * 60 >= args.warmup_s), minutes[-1])
    names = ["master", *all_pids]
    print(
        f"\n{'RSS MB':<14} "
        + " ".join(f"{at(m):>6}" for m in minutes)
        + f"   change {at(base)} to {at(minutes[-1])}"
    )
    for name in names:
        values = [rss[m].get(name) for m in minutes]
        first_v, last_v = rss[base].get(name), rss[minutes[-1]].get(name)
        change = f"{(last_v - first_v) / first_v * 100:+.1f} %" if first_v and last_v else "-"
        print(
            f"{name:<14} "
            + " ".join(f"{v:>6.0f}" if v is not None else f"{'-':>6}" for v in values)
            + f"   {change}"
        )
    if errors:
        print(f"\nthe server log ends:\n{text[-3000:]}")


if __name__ == "__main__":
    main()
