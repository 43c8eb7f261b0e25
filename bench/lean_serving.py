"""Serving with LiteRT against serving with TensorFlow: memory, start-up, parity, in one run.

Why: each serving process held full TensorFlow (about 1 GB resident, 4.5 s from start to the
first prediction: docs/design.md); ``SERVING_RUNTIME=litert`` serves the version's LiteRT file
instead (training/model/litert.py). Trains one small model of the default architecture with
``LITERT_EXPORT=float16`` (or takes ``--model-dir``), then, round after round with the order
swapped each round, starts the real server (``python -m backend.server``, gunicorn, one worker
process) with each runtime and measures:

* start to first prediction: from just before the server process is started to the first
  /predict that returns a prediction (one task, a clip served over HTTP from loopback);
* the worker process's peak resident memory (VmHWM, after every clip has been predicted),
  and the gunicorn master's;
* whether the worker has TensorFlow's library mapped (/proc/PID/maps);
* parity: every clip of tests/data predicted by both runtimes (label and score).

Prints the rounds, the medians and the ratios litert / tensorflow.
Run from the repository root (about 2 minutes on 2 idle cores; not imported by the packages):

    .venv/bin/python bench/lean_serving.py

Results: bench/RESULTS.md#lean-serving.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import requests
from support import (
    CONFIG,
    REPO,
    host_port,
    machine_header,
    serve_folder,
    start_backend,
    train_small_model,
    worker_pids,
)

from training.versions.store import ModelStore

RUNTIMES = ("tensorflow", "litert")


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def has_tensorflow(pid: int) -> bool:
    """True when the process has mapped TensorFlow's native library (imported it)."""
    return "_pywrap_tensorflow" in Path(f"/proc/{pid}/maps").read_text()


def predict(url: str, clips: list[str]) -> list:
    body = {
        "tasks": [{"id": i + 1, "data": {"video": clip}} for i, clip in enumerate(clips)],
        "project": "1.1700000000",
        "label_config": CONFIG,
        "params": {"login": None, "password": None, "context": None},
    }
    response = requests.post(f"{url}/predict", json=body, timeout=100)
    response.raise_for_status()
    return response.json()["results"]


def one_server(work: Path, runtime: str, media_url: str, clips: list[str]) -> dict:
    """Start the server with ``runtime``, time its first prediction, predict every clip."""
    env = {"SERVING_RUNTIME": runtime, "MEDIA_ALLOWED_HOSTS": host_port(media_url)}
    started = time.monotonic()
    with start_backend(work, env, workers=1, threads=4) as (url, server, _log):
        while not predict(url, clips[:1])[0]:  # [] until the model has loaded
            time.sleep(0.02)
        first_s = time.monotonic() - started
        results = predict(url, clips)
        (worker,) = worker_pids(server.pid)
        return {
            "first_s": first_s,
            "worker_mib": vm_kib(worker, "VmHWM") / 1024,
            "master_mib": vm_kib(server.pid, "VmHWM") / 1024,
            "tensorflow": has_tensorflow(worker),
            "predictions": [
                (r["result"][0]["value"]["choices"][0], r["score"]) if r else None for r in results
            ],
        }


def parity(a: list, b: list) -> str:
    both = [(x, y) for x, y in zip(a, b, strict=True) if x and y]
    same = sum(x[0] == y[0] for x, y in both)
    diff = max((abs(x[1] - y[1]) for x, y in both), default=float("nan"))
    return f"{same}/{len(a)} labels agree, max |score difference| {diff:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a store to copy (default: train one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="videoloop-leanbench-"))
    try:
        if args.model_dir:
            shutil.copytree(args.model_dir, work / "models")
            info = ModelStore(work / "models").get_current_info("1")
        else:
            _, info = train_small_model(work, args.frames, args.size, litert="float16")
        print(machine_header())
        record = info.meta.get("litert") or {}
        print(
            f"model: {info.meta['model'].get('parameters')} parameters, sampling "
            f"{info.meta['sampling']}; Keras file {info.model_path.stat().st_size / 1e6:.2f} MB; "
            f"LiteRT served: {record.get('file')} ({record.get('reason', 'parity passed')}); "
            f"export and parity check took {record.get('seconds')} s at publish"
        )
        for name in ("float", "float16"):
            if name in record:
                print(f"  {name}: {record[name]}")
        media = work / "media"
        media.mkdir()
        for clip in sorted((REPO / "tests" / "data").glob("*.mp4")):
            shutil.copy(clip, media / clip.name)
        measure(work, media, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, media: Path, rounds: int) -> None:
    runs: dict[str, list[dict]] = {r: [] for r in RUNTIMES}
    with serve_folder(media) as media_url:
        clips = [f"{media_url}/{p.name}" for p in sorted(media.iterdir())]
        print(f"server: gunicorn, 1 worker x 4 threads; {len(clips)} clips of tests/data\n")
        print(
            f"{'round':<6}{'runtime':<12}{'start->1st s':>13}{'worker MiB':>12}"
            f"{'master MiB':>12}  TensorFlow in worker"
        )
        for n in range(rounds):
            order = RUNTIMES if n % 2 == 0 else RUNTIMES[::-1]
            for runtime in order:
                run = one_server(work, runtime, media_url, clips)
                runs[runtime].append(run)
                print(
                    f"{n + 1:<6}{runtime:<12}{run['first_s']:>13.2f}{run['worker_mib']:>12.0f}"
                    f"{run['master_mib']:>12.0f}  {run['tensorflow']}"
                )
    med = {
        r: {k: statistics.median(x[k] for x in runs[r]) for k in ("first_s", "worker_mib")}
        for r in RUNTIMES
    }
    tf, lite = med["tensorflow"], med["litert"]
    print(
        f"\nmedian   tensorflow: {tf['first_s']:.2f} s, {tf['worker_mib']:.0f} MiB; "
        f"litert: {lite['first_s']:.2f} s, {lite['worker_mib']:.0f} MiB"
    )
    print(
        f"ratio litert/tensorflow: start to first prediction "
        f"{lite['first_s'] / tf['first_s']:.2f}x, worker peak RSS "
        f"{lite['worker_mib'] / tf['worker_mib']:.2f}x"
    )
    print("parity:", parity(runs["tensorflow"][0]["predictions"], runs["litert"][0]["predictions"]))


if __name__ == "__main__":
    sys.exit(main())
