"""The model store's operations on a local folder and on S3, side by side in one run.

What a deployment pays for MODEL_STORE_URL: publishing a version (upload), reading the pointer
(what every serving process does each second per loaded project), a version's first read on
a machine (download into its cache) and the next reads (cached). The S3 server is moto's, a
real process on loopback (tests/support/s3_server.py), so the figures are request overhead
without network latency: a real bucket adds its round trips to each.

    .venv/bin/python bench/store_latency.py [--model-mb 1 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), "tests/support"]

from s3_server import run_s3_server  # noqa: E402

from training.settings import Settings  # noqa: E402
from training.versions.store import MODEL_FILE, ModelStore  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(make_store, model_mb: int, repeat: int) -> dict[str, float]:
    payload = os.urandom(model_mb * 1024 * 1024)

    def write(folder: Path) -> dict:
        (folder / MODEL_FILE).write_bytes(payload)
        return {"labels": ["a", "b"]}

    publisher = make_store("publisher")
    version = publisher.publish("1", write).version
    readers = iter(range(10_000))

    def cold() -> None:  # a machine that never read this version
        make_store(f"reader-{next(readers)}").get_version("1", version)

    warm_reader = make_store("warm")
    warm_reader.get_version("1", version)
    return {
        "publish": timed(lambda: publisher.publish("1", write, make_current=False), repeat),
        "read pointer": timed(lambda: publisher.get_pointer("1"), repeat * 4),
        "first read": timed(cold, repeat),
        "cached read": timed(lambda: warm_reader.get_version("1", version), repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-mb", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp, run_s3_server(Path(tmp)) as server:
        os.environ.update(server.credentials())
        for model_mb in args.model_mb:
            local_root = Path(tmp) / f"local-{model_mb}"
            url = f"s3://{server.new_bucket()}/models"

            def local(_machine: str, root: Path = local_root) -> ModelStore:
                return ModelStore(root)  # one folder every machine mounts

            def s3(machine: str, url: str = url, mb: int = model_mb) -> ModelStore:
                settings = Settings(
                    model_dir=Path(tmp) / f"s3-{mb}" / machine,
                    model_store_url=url,
                    s3_endpoint_url=server.endpoint_url,
                )
                return ModelStore.from_settings(settings)

            results = {"local": measure(local, model_mb, args.repeat)}
            results["s3"] = measure(s3, model_mb, args.repeat)
            print(
                f"\nmodel file {model_mb} MB, median of {args.repeat} (pointer: {4 * args.repeat})"
            )
            print("| operation | local ms | S3 (moto, loopback) ms | S3 / local |")
            print("|---|---|---|---|")
            for op in results["local"]:
                a, b = results["local"][op] * 1e3, results["s3"][op] * 1e3
                print(f"| {op} | {a:.2f} | {b:.2f} | {b / a:.1f}x |")


if __name__ == "__main__":
    main()
