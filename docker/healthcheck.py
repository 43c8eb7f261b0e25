"""The images' HEALTHCHECK: healthy means "this container can do its job".

- `videoloop serve`: GET /health on the local port answers {"status": "UP"} within 3 s
  (/health never needs basic auth and never imports TensorFlow).
- `videoloop worker`: Redis answers PING (a worker that cannot reach Redis takes no jobs).
- anything else (`videoloop train`, a shell): healthy; there is nothing to probe.

What the container runs is read from PID 1's command line, so one image serves both roles
without a per-service healthcheck; `healthcheck.py serve|worker` names the role instead.
Standard library only for the /health path (slim images have no curl); the worker check
uses redis-py, which the image has anyway.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

TIMEOUT_S = 3.0
"""Seconds each probe may take (the HEALTHCHECK's own --timeout is a little longer)."""


def videoloop_command(cmdline: Path = Path("/proc/1/cmdline")) -> str | None:
    """The subcommand after `videoloop` in PID 1's arguments (behind `docker-init --` too)."""
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return None
    words = [a.decode(errors="replace") for a in args if a]
    for i, word in enumerate(words[:-1]):
        if os.path.basename(word) == "videoloop":
            return words[i + 1]
    return None


def check_serve() -> None:
    host = os.environ.get("HOST", "").strip()
    if host in ("", "0.0.0.0", "::", "[::]"):  # bound to every address: ask loopback
        host = "127.0.0.1"
    port = os.environ.get("PORT", "").strip() or "9090"
    with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=TIMEOUT_S) as response:
        body = json.load(response)
    if body.get("status") != "UP":
        raise RuntimeError(f"/health answered {body!r}")


def check_worker() -> None:
    import redis

    url = os.environ.get("REDIS_URL", "").strip()
    if not url:
        raise RuntimeError("REDIS_URL is not set")
    redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S).ping()


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else videoloop_command()
    check = {"serve": check_serve, "worker": check_worker}.get(command or "")
    if check is None:
        return 0
    try:
        check()
    except Exception as exc:  # any failure is "unhealthy"; say why in `docker inspect`
        print(f"videoloop {command}: unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
