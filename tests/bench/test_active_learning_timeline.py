"""bench/active_learning_timeline.py ranks videos as the refresh does, and runs end to end.

Why: the bench's answer rests on its ranking being the product's (a padded frame counted as
an uncertain one would rank short videos first) and on a script that only runs for an hour
at a time; a change that breaks either should fail here, not at the end of a bench run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from active_learning_timeline import _least_certain

REPO = Path(__file__).resolve().parents[2]


def test_least_certain_ranks_by_the_real_frames_only():
    sure, torn = [0.02, 0.96, 0.02], [0.34, 0.33, 0.33]
    frame_probs = np.array(
        [
            [sure, sure, torn, torn],  # sure of both real frames; the padding is not counted
            [torn, torn, torn, torn],  # torn on every frame
            [sure, torn, sure, torn],  # half and half
        ]
    )
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
    order = _least_certain({"timeline": frame_probs}, mask, ["a", "b"], "least_confidence", 0)
    assert order == [1, 2, 0]


@pytest.mark.slow  # trains 2 rounds of one epoch on 4 x 32 x 32 clips: about a minute on 2 cores
def test_a_tiny_run_prints_the_tables_and_draws_the_curves(tmp_path):
    plot = tmp_path / "curves.png"
    done = subprocess.run(
        [
            sys.executable,
            "bench/active_learning_timeline.py",
            *("--pool", "4", "--test", "2", "--seconds", "5-6", "--segments", "1-2"),
            *("--strategies", "uncertainty", "--seeds", "0"),
            *("--seed-clips", "2", "--k", "2", "--budget", "4"),
            *("--epochs", "1", "--frames", "4", "--size", "32", "--target", "0.5"),
            *("--plot", str(plot)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,  # a hang guard only: it took 56-259 s on a loaded machine
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("machine: ")
    assert "labels to reach test accuracy 0.5" in out
    assert "segment F1@0.5 at 8, 16, 32, 4 labels" in out
    assert "  uncertainty:least_confidence seed 0: frame acc " in out
    rounds = [line.split()[0] for line in out.splitlines() if line[:6].strip().isdigit()]
    assert rounds == ["2", "4"]
    assert f"plot: {plot}" in out
    assert plot.stat().st_size > 0
