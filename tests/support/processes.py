"""Ending a process a test started: SIGTERM, then SIGKILL if it outlives ``timeout_s``."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen, timeout_s: float) -> None:
    """Terminate ``proc`` and wait for it; kill it if it has not ended within ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
