"""Waiting on videoloop's training state with a bound on stalls, not on speed.

A run of 60 epochs took under 150 s on one day and over 300 s on another on the same 2-core
machine, with the same code: a wall-clock bound on a whole run either fails on a slow day or is
so wide it hides a hang for half an hour. The state ``/training/<project>`` reports changes
while a run makes progress (each epoch, each stage, each new run), so the bound here is on the
time *nothing* changed: a stuck run fails after ``quiet_s``, a slow one that keeps reporting
passes. ``cap_s`` bounds the whole wait all the same, so a run that never settles still fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

CAP_S = 3600.0


def wait_on_training(
    status: Callable[[], dict],
    accept: Callable[[dict], T | None],
    what: str,
    quiet_s: float = 300,
    diagnostics: Callable[[], str] = lambda: "",
    every_s: float = 0.25,
    cap_s: float = CAP_S,
) -> T:
    """The first truthy ``accept(state)`` for the states ``status()`` returns; fails when the
    state has not changed for ``quiet_s`` or after ``cap_s`` in all."""
    started = changed = time.monotonic()
    seen = ""
    while True:
        state = status()
        value = accept(state)
        if value:
            return value
        now = time.monotonic()
        fingerprint = json.dumps(state, sort_keys=True, default=str)
        if fingerprint != seen:
            seen, changed = fingerprint, now
        if now - changed > quiet_s or now - started > cap_s:
            pytest.fail(
                f"waited {now - started:.0f} s for {what}, the last {now - changed:.0f} s with"
                f" no change in the training state; last state {state}\n{diagnostics()}"
            )
        time.sleep(every_s)
