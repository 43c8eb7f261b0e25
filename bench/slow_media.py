"""One slow video never stalls the service: /predict latency with and without slow media in flight.

Why: a task's video comes from wherever its URL points, and a host that sends one byte every few
seconds (by accident or on purpose) must cost its own request only, never the others
(docs/security.md). Starts the backend under gunicorn (``python -m backend.server``, 1 worker
process x THREADS=4, DECODE_THREADS=2, PREDICT_DEADLINE_S=``--deadline-s``, default 20 s, and
DOWNLOAD_DEADLINE_S=120 so that the downloads outlast the request) with a small model it trains
itself (project "1"). Ordinary clips (tests/data/carphone_pristine.mp4 and the synthetic
training clips) come from a loopback folder server; a "trickle" server of the bench's own, on
loopback too, answers ``/slowN.mp4`` with its headers and then one byte every 2 s. Both hosts
are in MEDIA_ALLOWED_HOSTS, as a deployment's own media servers would be.

Measures, in one run, after a warm-up /predict of every ordinary clip: (a) a /predict of one
ordinary video with nothing else in flight, several times; (b) the same while a /predict of 3
slow tasks is in flight, timed once the trickle server has seen 2 of its downloads (both decode
threads of that request), a fresh slow request each time (it starts 2 s after the previous one
answered, so that the refresh job the previous one queued at its deadline is over; the earlier
downloads still trickle until their own deadline); (c) how long each slow request took to
answer, and that it answered ``[]`` for each of its tasks. Every ordinary request names its
video under a URL the server has not seen (a query string), so each one downloads, decodes and
predicts: nothing comes from the media cache. Prints the medians of (a) and (b), their ratio,
and (c).
Run from the repository root (about 2 minutes; not imported by the packages):

    .venv/bin/python bench/slow_media.py

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import requests
from support import (
    CONFIG,
    REPO,
    LoopbackHTTPServer,
    host_port,
    machine_header,
    serve_folder,
    start_backend,
    train_small_model,
)

ORDINARY = "carphone_pristine.mp4"
SLOW_PATH = re.compile(r"/slow\d+\.mp4")
SLOW_TASKS = 3
SETTLE_S = 2.0
"""Pause before each slow request: the refresh job the previous one queued at its deadline
(which fails at once here, with no Label Studio) is over before the next measure."""


class Trickle:
    """A loopback HTTP server answering ``/slowN.mp4`` with 200, an honest Content-Length and
    then one byte every ``interval_s``, until the client hangs up or the server closes; other
    paths 404. ``requests()`` counts the requests it has received."""

    def __init__(self, interval_s: float, total_bytes: int = 100_000) -> None:
        self._count = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with owner._lock:
                    owner._count += 1
                if not SLOW_PATH.fullmatch(urlsplit(self.path).path):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(total_bytes))
                self.end_headers()
                for _ in range(total_bytes):
                    try:
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                    except OSError:  # the client hung up (its download deadline)
                        return
                    if owner._closed.wait(interval_s):
                        return

        self._httpd = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def requests(self) -> int:
        with self._lock:
            return self._count

    def close(self) -> None:
        self._closed.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def predict(url: str, tasks: list[dict]) -> tuple[float, list]:
    """(seconds, results) of one /predict."""
    body = {"tasks": tasks, "project": "1.1700000000", "label_config": CONFIG}
    started = time.perf_counter()
    response = requests.post(f"{url}/predict", json=body, timeout=300)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    return seconds, response.json()["results"]


def predicted(result: object) -> bool:
    """A real prediction (not ``[]``)."""
    return isinstance(result, dict) and bool(result.get("result"))


class Bench:
    """The requests against one started server; task ids never repeat."""

    def __init__(self, server: str, media: str, trickle: Trickle) -> None:
        self.server, self.media, self.trickle = server, media, trickle
        self._ids = itertools.count(1)
        self._slow = itertools.count(0)

    def ordinary(self) -> tuple[float, bool]:
        """(seconds, got a prediction) of one ordinary video under a fresh URL."""
        task = next(self._ids)
        video = f"{self.media}/{ORDINARY}?n={task}"
        seconds, (result,) = predict(self.server, [{"id": task, "data": {"video": video}}])
        return seconds, predicted(result)

    def warm_up(self, clips: list[str], timeout_s: float = 120) -> None:
        """Until the model answers (its first load), then once over every clip."""
        end = time.monotonic() + timeout_s
        while not self.ordinary()[1]:
            if time.monotonic() > end:
                sys.exit("the model never answered")
            time.sleep(0.5)
        tasks = [{"id": next(self._ids), "data": {"video": f"{self.media}/{c}"}} for c in clips]
        _, results = predict(self.server, tasks)
        missing = [c for c, r in zip(clips, results, strict=True) if not predicted(r)]
        if missing:
            sys.exit(f"no prediction for {missing}")

    def during_slow(self, wait_s: float = 90) -> tuple[float, bool, bool, float, list]:
        """An ordinary request while a slow one is in flight: (its seconds, got a prediction,
        the slow one still in flight when it answered, the slow one's seconds, its results)."""
        tasks = [
            {
                "id": next(self._ids),
                "data": {"video": f"{self.trickle.url}/slow{next(self._slow)}.mp4"},
            }
            for _ in range(SLOW_TASKS)
        ]
        slow: dict = {}
        time.sleep(SETTLE_S)  # the previous slow request's hand-over to the refresh is done

        def ask() -> None:
            slow["seconds"], slow["results"] = predict(self.server, tasks)

        before = self.trickle.requests()
        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        end = time.monotonic() + wait_s
        while self.trickle.requests() - before < 2:
            if time.monotonic() > end or not thread.is_alive():
                sys.exit("the slow downloads never started")
            time.sleep(0.02)
        seconds, ok = self.ordinary()
        in_flight = thread.is_alive()
        thread.join()
        return seconds, ok, in_flight, slow["seconds"], slow["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline-s", type=float, default=20.0, help="PREDICT_DEADLINE_S")
    parser.add_argument("--quiet-runs", type=int, default=7, help="ordinary requests alone")
    parser.add_argument("--slow-runs", type=int, default=3, help="slow requests, one at a time")
    parser.add_argument("--interval-s", type=float, default=2.0, help="seconds per slow byte")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="videoloop-slowbench-"))
    trickle = Trickle(args.interval_s)
    try:
        started = time.perf_counter()
        _, info = train_small_model(work, args.frames, args.size)
        trained_s = time.perf_counter() - started
        media = work / "media"
        media.mkdir()
        shutil.copy(REPO / "tests" / "data" / ORDINARY, media / ORDINARY)
        for clip in sorted((work / "synth").rglob("*.mp4")):
            shutil.copy(clip, media / f"{clip.parent.name}-{clip.name}")
        clips = sorted(p.name for p in media.iterdir())

        print(machine_header())
        print(f"load average at start: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        size_mb = info.model_path.stat().st_size / 1e6
        print(
            f"model: {info.meta['model'].get('parameters', '?')} parameters, {size_mb:.1f} MB, "
            f"sampling {info.meta['sampling']} (trained in {trained_s:.0f} s)"
        )
        settings = {
            "DECODE_THREADS": "2",
            "PREDICT_DEADLINE_S": f"{args.deadline_s:g}",
            "DOWNLOAD_DEADLINE_S": "120",
        }
        print(
            "server: 1 worker x 4 threads, "
            + ", ".join(f"{k}={v}" for k, v in settings.items())
            + f"; ordinary video {ORDINARY} (a fresh URL each request); slow tasks: "
            f"{SLOW_TASKS} per request, one byte every {args.interval_s:g} s"
        )
        with serve_folder(media) as media_url:
            allowed = f"{host_port(media_url)},{host_port(trickle.url)}"
            env = {**settings, "MEDIA_ALLOWED_HOSTS": allowed}
            with start_backend(work, env, workers=1, threads=4) as (url, _, log_path):
                bench = Bench(url, media_url, trickle)
                bench.warm_up(clips)
                quiet = [bench.ordinary() for _ in range(args.quiet_runs)]
                during = [bench.during_slow() for _ in range(args.slow_runs)]
                report(args, quiet, during, log_path)
    finally:
        trickle.close()
        shutil.rmtree(work, ignore_errors=True)


def report(
    args: argparse.Namespace,
    quiet: list[tuple[float, bool]],
    during: list[tuple[float, bool, bool, float, list]],
    log_path: Path,
) -> None:
    quiet_s = [s for s, _ in quiet]
    during_s = [d[0] for d in during]
    a, b = statistics.median(quiet_s), statistics.median(during_s)
    print(
        f"\n(a) ordinary /predict, nothing else in flight: median {a:.2f} s "
        f"({', '.join(f'{s:.2f}' for s in quiet_s)}), "
        f"{sum(ok for _, ok in quiet)}/{len(quiet)} predicted"
    )
    print(
        f"(b) ordinary /predict while {SLOW_TASKS} slow tasks are in flight: median {b:.2f} s "
        f"({', '.join(f'{s:.2f}' for s in during_s)}), "
        f"{sum(d[1] for d in during)}/{len(during)} predicted, "
        f"{sum(d[2] for d in during)}/{len(during)} answered before the slow request"
    )
    slow_s = [d[3] for d in during]
    all_empty = all(d[4] == [[]] * SLOW_TASKS for d in during)
    print(
        f"(c) slow /predict answered after {', '.join(f'{s:.1f}' for s in slow_s)} s "
        f"(PREDICT_DEADLINE_S={args.deadline_s:g}); results "
        + ("[[], [], []] each time" if all_empty else f"{[d[4] for d in during]}")
    )
    print(f"ratio (b)/(a): {b / a:.2f}x")
    text = log_path.read_text(errors="replace")
    refreshes = text.count("(training.jobs.training.refresh_predictions)")
    print(
        f"server log: {text.count('not ready within PREDICT_DEADLINE_S')} requests cut at the "
        f"deadline; {refreshes} of the refresh jobs they queued had failed by then (no Label "
        f"Studio here, as expected); {text.count('Traceback') - refreshes} other tracebacks"
    )


if __name__ == "__main__":
    main()
