"""A redis-server of a test's own, on a free loopback port, that the test can stop and start.

The shared Redis on 127.0.0.1:6379 must never go down under other tests; the faults "Redis
down" and "Redis restarted" need a server the test owns. It persists the way
docker/docker-compose.yml runs Redis (an append-only file in its own folder), so a restart
keeps what a restarted production Redis keeps; ``appendonly=False`` gives one that keeps
nothing (the machine's own Redis here, and Redis' default without a config file).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

START_TIMEOUT_S = 30.0


class RedisServer:
    """One redis-server process at a time on a fixed port and data folder."""

    def __init__(self, port: int, folder: Path, *, appendonly: bool = True) -> None:
        self.port, self.folder, self.appendonly = port, folder, appendonly
        self.folder.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it answers PING (after loading its file)."""
        assert self._proc is None, "already running"
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.folder)]
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 (the process holds it)
        self._proc = subprocess.Popen(["redis-server", *args], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        with redis.Redis(port=self.port, socket_timeout=1) as connection:
            while True:
                try:
                    connection.ping()
                    return
                except redis.RedisError:  # not listening yet, or still loading its file
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        self.stop(signal.SIGKILL)
                        raise RuntimeError(
                            f"redis-server did not start: {self.folder / 'redis.log'}"
                        ) from None
                    time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server: SIGTERM is a clean shutdown (what ``docker restart`` sends, the
        append-only file flushed); SIGKILL a crash."""
        if self._proc is None:
            return
        self._proc.send_signal(sig)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop cleanly, stay down ``down_s`` seconds, start again on the same port and file."""
        self.stop()
        time.sleep(down_s)
        self.start()


@contextmanager
def redis_server(port: int, folder: Path, *, appendonly: bool = True) -> Iterator[RedisServer]:
    server = RedisServer(port, folder, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)
