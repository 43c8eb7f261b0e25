"""Large projects (issue 14): "Retrieve predictions" on thousands of tasks in a real Label
Studio, and how the refresh it hands over to scales with the workers.

Why: Label Studio 1.23's Data Manager action ``retrieve_tasks_predictions`` sends every selected
task without a prediction of the current version in ONE ``/predict`` (no batching) and waits
``ML_TIMEOUT_PREDICT`` (100 s) for it (label_studio/ml/models.py ``predict_tasks``,
ml/api_connector.py). videoloop answers within PREDICT_DEADLINE_S (80 s) with what it has
predicted and hands the rest to a background refresh, fanned out in chunk jobs of
REFRESH_CHUNK_TASKS that the workers share (backend/predictor.py, training/jobs/refresh*.py).

What it does, per worker count (``--workers 1 2``), each run on its own:

* a fresh project in one real Label Studio 1.23.2 (tests/support/real_label_studio.py) with
  bench/support.py's classification config and ``--tasks`` tasks over ``--clips`` distinct
  clips (bench/scale_clips.py: cuts of tests/data at 360p and 720p, cached under
  .videoloop/bench-scale/), each task under a URL of its own on a loopback file server;
* a small model (bench/support.py ``train_small_model``, cached) published for the project;
* an empty Redis database, an empty CACHE_DIR (so every run decodes), the backend under
  gunicorn (``python -m backend.server``, 1 process x 8 threads, not pinned) and N
  ``videoloop worker``s, worker i pinned to core i with ``taskset``; the model connected;
* "Retrieve predictions" on every task, as the Data Manager sends it: the seconds until Label
  Studio answers (it must be under its 100 s), then the project's prediction count polled
  (``GET /api/projects/<id>/``, once a second: never a task one by one, which makes Label
  Studio ask the backend) until every task has one; then the whole task list read once to
  check that every task holds exactly one prediction, of the served version.

Prints a machine header and the load average before each run, the table of runs, the ratio of
the times to all predictions (1 worker / most workers: want at least 1.8x), and each process's
peak resident memory (VmRSS sampled every 0.5 s from /proc: Label Studio, the gunicorn master
and worker, each RQ worker) and the CPU seconds each used during the run; writes a PNG of tasks predicted over time (``--chart``).
Run from the repository root (not imported by the packages):

    .venv/bin/python bench/scale.py --tasks 2000 --clips 300 --workers 1 2

Results: bench/RESULTS.md#scale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("LITERT_EXPORT", "off")

from scale_run import Bench, Run, print_runs, write_chart
from support import REPO, find_redis, machine_header

CACHE = REPO / ".videoloop" / "bench-scale"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run, at most")
    parser.add_argument("--chart", type=Path, default=REPO / "bench" / "scale.png")
    parser.add_argument("--redis", default="auto", help="REDIS_URL (auto: an empty database)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the backend and the workers (REFRESH_CHUNK_TASKS=100, ...)",
    )
    args = parser.parse_args()
    # SIGTERM (and SIGINT, which a background shell ignores) end the script through its
    # finally blocks, which stop every process it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    redis_url, owned = find_redis(args.redis)
    if not redis_url:
        sys.exit("no empty Redis database on 127.0.0.1:6379 (scripts/ensure-redis starts one)")
    print(machine_header())
    settings = dict(item.split("=", 1) for item in args.env)
    work = Path(tempfile.mkdtemp(prefix="videoloop-scale-"))
    runs: list[Run] = []
    try:
        with ExitStack() as stack:
            bench = Bench.start(stack, work, CACHE, args.tasks, args.clips, redis_url, settings)
            for workers in args.workers:
                runs.append(bench.run(workers, args.timeout))
        print_runs(runs)
        write_chart(runs, args.chart)
    finally:
        if owned:
            import redis

            redis.Redis.from_url(redis_url).flushdb()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
