"""A real S3-compatible server on loopback for the model store's S3 tests: moto's server mode.

MinIO cannot be installed here (no network for its binary at test time, and no package), so
the tests run moto's server as a process of its own on a free port and speak to it over HTTP
through boto3, exactly as a deployment speaks to S3 or MinIO. moto 5 implements the
conditional writes the store relies on (``If-None-Match: *`` and ``If-Match`` on PutObject,
answered 412). moto accepts any credentials; the tests still pass ones they can look for.

One difference from ``python -m moto.server``: it serves one request at a time. moto checks a
condition and writes in two steps with no lock, so on its request threads two conditional
writes could both succeed, which S3 (and MinIO) never allow; the tests that two writers never
both win would then be testing moto. Serialised, each conditional write is atomic, as in S3.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
from processes import stop_process

START_TIMEOUT_S = 30.0

ACCESS_KEY = "AKIAVIDEOLOOPTEST"
SECRET_KEY = "videoloop-test-secret-5b1f0c"
"""A secret no message or log may contain (checked by the tests)."""


_SERVE = """
import sys
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
from werkzeug.serving import run_simple
app = DomainDispatcherApplication(create_backend_app)
run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=False, request_handler=MotoRequestHandler)
"""
"""moto.server's main(), one request at a time (the module docstring says why)."""


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def credentials(self) -> dict[str, str]:
        """The environment a videoloop process needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "S3_ENDPOINT_URL": self.endpoint_url,
        }

    def new_bucket(self) -> str:
        """A fresh, empty bucket (one per test: tests sharing the server never meet)."""
        name = f"videoloop-{uuid.uuid4().hex[:16]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        ).create_bucket(Bucket=name)
        return name


@contextmanager
def run_s3_server(folder: Path) -> Iterator[S3Server]:
    """Start ``python -m moto.server`` on a free loopback port; stop it on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(folder / f"moto-{port}.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.name}") from None
                time.sleep(0.05)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        stop_process(proc, timeout_s=10)
        log.close()
