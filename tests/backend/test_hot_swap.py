"""Hot swap across every serving process, under load, on real parts.

The backend runs under gunicorn (``python -m backend.server``) with 2 worker processes x 4
threads and a real Redis; 8 client threads call /predict continuously (each call on a new
connection, so calls land on either process) with tasks whose videos a local file host serves
(real clips, fetched, decoded and predicted by the real model). The test process makes three
new versions current one after another through ``VersionPointer`` (the same call the training
job makes), then rolls back to an older one.

One tiny real model is trained per session (conftest ``trained_model``) and each new version
is a copy of it under a new name: what is tested is the swap machinery (notice, background
load and warm-up, the agreed swap instant, the reference swap), not training, and a real RQ
worker producing versions is covered by tests/loop/test_training_loop.py.

It runs twice: with the store in a folder the server and the test share (MODEL_DIR), and in
a bucket of a real S3-compatible server (moto's server mode on loopback,
tests/support/s3_server.py; no MinIO here) where the server and the test each keep their own
cache (MODEL_STORE_URL), as pods without a shared volume do (docs/kubernetes.md).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from conftest import run_videoloop

from backend.app import PID_HEADER
from backend.serving import SWAP_DELAY_S
from training.settings import Settings
from training.versions.copies import publish_copy
from training.versions.current import VersionPointer
from training.versions.store import ModelStore

CONFIG = """<View>
  <Video name="video" value="$video"/>
  <Choices name="direction" toName="video" choice="single">
    <Choice value="left_to_right"/>
    <Choice value="right_to_left"/>
  </Choices>
</View>"""
PROJECT = "1"
CLIENTS = 8
WORKERS = 2
SWAP_TARGET_S = 5.0
"""The issue's target: every process serves a new current version within this many seconds.
Measured 3.0-3.5 s on 2 idle cores (SWAP_DELAY_S, the agreed instant, and a request), too close
to hold a loaded machine to it: the figures are printed against it, and what is asserted is
SWAP_DEADLINE_S and that no process swaps before the agreed instant."""
SWAP_DEADLINE_S = 120.0
"""Every process serves each new version within this: 35x the measured figure, because a
process loads the version while the suite's other tests train beside it (one took over 30 s
in a full run where every training test ran 2-2.5x its usual time)."""
STARTUP_DEADLINE_S = 120.0
"""Every process serves the first version within this after the server started: its first
load includes importing TensorFlow, which took 29 s on a machine loaded 5x over (not a swap)."""
LOAD_MARGIN_S = 0.5
"""A load counts as done before the agreed instant if it ended this much before it."""
SWAP_SPREAD_S = 0.5
"""Most seconds between the processes' swaps of a version every one of them had loaded before
the agreed instant: then each swaps on a timer set to that same instant."""
CLOCK_SLACK_S = 0.1
"""The pointer's time is its file's modification time, which the kernel's coarse clock can put
a few milliseconds before the test's ``time.time()``."""
GAP_S = 1.5
"""Seconds between one version reaching every process and the next publication (each client
makes several calls meanwhile)."""


@dataclass(frozen=True)
class Call:
    """One /predict as a client saw it."""

    client: int
    started: float
    ended: float
    status: int
    pid: int | None
    versions: tuple[str, ...]
    ok: bool
    error: str = ""


def number(version: str) -> int:
    """The N of ``vN-YYYYMMDD-HHMMSS``: versions are ordered by it."""
    match = re.match(r"^v(\d+)-", version)
    assert match, version
    return int(match.group(1))


def out_of_order(calls: list[Call], rolled_at: float, rollback: str) -> list[tuple[Call, Call]]:
    """Pairs of these calls (one process's, or one client's) where the second was sent after
    the first was answered and yet carries an older version (before the rollback), or, after
    the rollback, another version than the rollback's once that had been answered."""
    found: list[tuple[Call, Call]] = []
    before = [c for c in calls if c.ended < rolled_at]
    answered = sorted(before, key=lambda c: c.ended)
    newest: Call | None = None
    i = 0
    for call in sorted(before, key=lambda c: c.started):
        while i < len(answered) and answered[i].ended <= call.started:
            if newest is None or number(answered[i].versions[0]) > number(newest.versions[0]):
                newest = answered[i]
            i += 1
        if newest is not None and number(call.versions[0]) < number(newest.versions[0]):
            found.append((newest, call))
    after = [c for c in calls if c.started > rolled_at]
    back = [c for c in after if c.versions[0] == rollback]
    if back:
        first = min(back, key=lambda c: c.ended)
        found += [
            (first, c) for c in after if c.started >= first.ended and c.versions[0] != rollback
        ]
    return found


SWAP_LINE = re.compile(
    r"\[(\d+)\] [\w.]+: project \S+: serving version (\S+) \(loaded and warmed up in "
    r"([\d.]+) s; swapped in ([\d.]+) s after it became current\)"
)


def swaps_in_log(log: str) -> dict[int, dict[str, list[tuple[float, float]]]]:
    """pid -> version -> (seconds its load took, seconds from the version becoming current to
    the swap) for each time the process swapped it in, in order, from the server's log."""
    swaps: dict[int, dict[str, list[tuple[float, float]]]] = {}
    for pid, version, load_s, swap_s in SWAP_LINE.findall(log):
        entry = (float(load_s), float(swap_s))
        swaps.setdefault(int(pid), {}).setdefault(version, []).append(entry)
    return swaps


def worker_pids(master: int) -> set[int]:
    """The gunicorn workers: the master's child processes."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.add(int(stat.parent.name))
    return pids


class Clients:
    """``CLIENTS`` threads calling /predict until stopped; every call is recorded."""

    def __init__(self, url: str, tasks: list[dict]) -> None:
        self.url, self.tasks = url, tasks
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"client-{i}", daemon=True)
            for i in range(CLIENTS)
        ]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def _run(self, client: int) -> None:
        body = {
            "tasks": self.tasks,
            "project": f"{PROJECT}.1700000000",
            "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": None},
        }
        while not self._stop.is_set():
            started = time.time()
            try:
                # A new connection per call (no Session): calls land on either process.
                response = requests.post(f"{self.url}/predict", json=body, timeout=30)
            except requests.RequestException as exc:
                call = Call(client, started, time.time(), 0, None, (), False, repr(exc))
            else:
                call = self._judge(client, started, response)
            with self._lock:
                self.calls.append(call)

    def _judge(self, client: int, started: float, response: requests.Response) -> Call:
        ended = time.time()
        pid = int(response.headers[PID_HEADER]) if PID_HEADER in response.headers else None
        if response.status_code != 200:
            return Call(client, started, ended, response.status_code, pid, (), False, response.text)
        results = response.json().get("results")
        ok = isinstance(results, list) and len(results) == len(self.tasks)
        ok = ok and all(isinstance(r, dict) and r.get("result") for r in results)  # readable
        versions = tuple(r.get("model_version", "") for r in results) if ok else ()
        return Call(client, started, ended, 200, pid, versions, ok, "" if ok else response.text)


WHY_NO_PREDICTION = re.compile(
    r"no prediction of|could not be prepared|Traceback|not ready within|from the refresh job"
    r"|no model to predict|fills no control|gave no result"
)
"""Server log lines that say why a task was answered ``[]`` (backend/predictor.py logs each
reason; a swap itself never should)."""


def why_failed(failed: list[Call], log: str) -> str:
    """What a failure message needs: the first failed calls and every log line, from the whole
    log (not its tail: the test ends well after a failure mid-run), saying why a task got
    ``[]``."""
    reasons = [line for line in log.splitlines() if WHY_NO_PREDICTION.search(line)]
    return (
        f"first failed calls: {failed[:3]}\n"
        f"server log lines explaining a task without a prediction ({len(reasons)}):\n"
        + "\n".join(reasons[:40])
        + f"\n...\nlog tail:\n{log[-3000:]}"
    )


def first_answer_with(calls: list[Call], version: str, after: float) -> dict[int, float]:
    """For each process, when its first answer with ``version`` (to a call sent after
    ``after``) came back: the process served that version by then at the latest."""
    seen: dict[int, float] = {}
    for call in sorted(calls, key=lambda c: c.ended):
        if call.started >= after and call.pid is not None and version in call.versions:
            seen.setdefault(call.pid, call.ended)
    return seen


def wait_until_every_process_serves(
    clients: Clients,
    pids: set[int],
    version: str,
    since: float,
    log,
    deadline_s: float = SWAP_DEADLINE_S,
) -> dict[int, float]:
    deadline = time.time() + deadline_s
    while True:
        seen = first_answer_with(clients.snapshot(), version, since)
        if pids <= set(seen):
            return seen
        if time.time() > deadline:
            missing = pids - set(seen)
            pytest.fail(
                f"{version} not served by {missing} after {deadline_s:g} s\n{log()[-4000:]}"
            )
        time.sleep(0.05)


@pytest.fixture(params=["local", "s3"])
def served(request, tmp_path, trained_model, media_root, make_media_host, start_server, redis_url):
    """(server, media host, the test's store, the first version): the store shared as a folder,
    or in S3 with a cache of the test's own (the server's MODEL_DIR is another)."""
    if request.param == "local":
        shutil.copytree(trained_model.store_root, tmp_path / "models")
        store = ModelStore(tmp_path / "models")
    else:
        env = request.getfixturevalue("s3_env")  # in os.environ too: the server inherits it
        store = ModelStore.from_settings(
            Settings(
                model_dir=tmp_path / "test-machine",
                model_store_url=env["MODEL_STORE_URL"],
                s3_endpoint_url=env["S3_ENDPOINT_URL"],
            )
        )
        publish_copy(store, PROJECT, trained_model.info)
    first = store.get_current(PROJECT)
    bucket = make_media_host(media_root)
    with start_server(
        tmp_path,
        WORKERS=str(WORKERS),
        THREADS="4",
        REDIS_URL=redis_url,
        MEDIA_ALLOWED_HOSTS=urlsplit(bucket.url).netloc,  # a public host's stand-in, on loopback
        PREDICT_BATCH_SIZE="2",
        DECODE_THREADS="1",
    ) as server:
        yield server, bucket, store, first


def test_every_process_swaps_each_new_version_under_load_without_a_failed_request(
    served, trained_model, redis_conn, redis_url
):
    server, bucket, store, first = served
    pointer = VersionPointer(store, redis_conn)
    assert pointer.get(PROJECT) == first
    tasks = [
        {"id": 1, "data": {"video": f"{bucket.url}/carphone_pristine.mp4"}},
        {"id": 2, "data": {"video": f"{bucket.url}/carphone_distorted.mp4"}},
    ]
    deadline = time.monotonic() + 30  # gunicorn forks its workers after opening the port
    while len(pids := worker_pids(server.proc.pid)) < WORKERS:
        assert time.monotonic() < deadline, pids
        time.sleep(0.05)
    assert len(pids) == WORKERS, pids

    with Clients(server.url, tasks) as clients:
        # Steady state: both processes answer with the first version. Calls sent before then
        # wait for the processes' first load (TensorFlow's import included), which on a
        # loaded machine can outlast a client's 30 s: they are start-up, not swaps, and are
        # left out of what is judged below.
        wait_until_every_process_serves(
            clients, pids, first, 0.0, server.log_text, STARTUP_DEADLINE_S
        )
        steady_at = time.time()
        time.sleep(GAP_S)

        published: list[tuple[str, float, dict[int, float]]] = []
        for _ in range(3):
            # Published aside: VersionPointer.set makes it current, as the training job does.
            info = publish_copy(store, PROJECT, trained_model.info, make_current=False)
            set_at = time.time()
            pointer.set(PROJECT, info.version)
            seen = wait_until_every_process_serves(
                clients, pids, info.version, set_at, server.log_text
            )
            published.append((info.version, set_at, seen))
            time.sleep(GAP_S)

        # `videoloop models rollback`: back to the version current before the last one.
        rollback = published[1][0]
        env = {**os.environ, "MODEL_DIR": str(store.root), "REDIS_URL": redis_url}
        done = run_videoloop("models", "rollback", "--project", PROJECT, env=env, timeout_s=60)
        assert done.returncode == 0, done.stderr
        assert rollback in done.stdout
        # From when the command changed the pointer, not from when its process started (a
        # fresh clone's interpreter start took 1.5 s of the 5 s bound in CI once).
        rolled_at = pointer.get_current(PROJECT).set_at
        rolled = wait_until_every_process_serves(
            clients, pids, rollback, rolled_at, server.log_text
        )
        time.sleep(1.0)

    calls = [c for c in clients.snapshot() if c.started >= steady_at]
    log = server.log_text()

    # Zero failed requests, each answered whole by one version.
    failed = [c for c in calls if not c.ok]
    assert not failed, f"{len(failed)} of {len(calls)} calls failed; {why_failed(failed, log)}"
    assert all(len(set(c.versions)) == 1 for c in calls)
    assert {c.pid for c in calls} == pids  # no worker was restarted meanwhile

    # Every process served each new version (within SWAP_DEADLINE_S: wait_until_every_...),
    # and none before the instant agreed for the swap: they swap together, not as each loads.
    delays = {
        version: {pid: round(at - set_at, 2) for pid, at in seen.items()}
        for version, set_at, seen in published
    }
    delays["rollback " + rollback] = {pid: round(at - rolled_at, 2) for pid, at in rolled.items()}
    slowest = max(max(per_pid.values()) for per_pid in delays.values())
    print(
        f"{len(calls)} calls; seconds from publication to each process serving it: {delays}; "
        f"slowest {slowest:.2f} s (target {SWAP_TARGET_S:g} s, swap instant {SWAP_DELAY_S:g} s)"
    )
    for version, per_pid in delays.items():
        assert min(per_pid.values()) >= SWAP_DELAY_S - CLOCK_SLACK_S, (
            version,
            per_pid,
            log[-4000:],
        )

    # What each process answered never went backwards (until the deliberate rollback), and
    # after the rollback it never answered a newer version again: true however loaded the
    # machine is.
    for pid in pids:
        mine = [c for c in calls if c.pid == pid]
        assert not out_of_order(mine, rolled_at, rollback), (
            pid,
            out_of_order(mine, rolled_at, rollback)[:3],
        )

    # The processes swap together, at the agreed instant, when each has loaded the version by
    # then: asserted for each version every process loaded in time (the server logs each
    # load's time), printed for the others. Loads took 0.5-2.3 s in bench/swap_latency.py (4
    # clients), 2.5-4 s here alone (8 clients) and up to 5.3 s beside the rest of the suite:
    # a process that loads past the instant swaps late (0.6 s apart measured), and a client,
    # whose calls land on either process, may briefly see an older version again.
    swaps = swaps_in_log(log)
    together, late = {}, {}
    for label, version in [(v, v) for v, _, _ in published] + [(f"rollback {rollback}", rollback)]:
        logged = {pid: swaps.get(pid, {}).get(version) for pid in pids}
        assert all(logged.values()), f"no swap of {version} logged by {logged}:\n{log[-4000:]}"
        per_pid = {pid: entries.pop(0) for pid, entries in logged.items()}  # its next swap
        spread = max(s for _, s in per_pid.values()) - min(s for _, s in per_pid.values())
        # Loaded with time to spare (the load starts when the notice arrives, just after
        # the version became current): the timer at the agreed instant made the swap.
        in_time = all(load < SWAP_DELAY_S - LOAD_MARGIN_S for load, _ in per_pid.values())
        (together if in_time else late)[label] = round(spread, 3)
    seen_backwards = sum(
        len(out_of_order([c for c in calls if c.client == k], rolled_at, rollback))
        for k in range(CLIENTS)
    )
    print(
        f"swap spread between processes, seconds: loaded in time {together}, late {late}; "
        f"client calls that saw an older version than their previous one: {seen_backwards}"
    )
    for version, spread in together.items():
        assert spread <= SWAP_SPREAD_S, (version, spread, log[-4000:])
    assert len({c.versions[0] for c in calls}) == 4  # the first version and three new ones

    # The pointer's Redis mirror followed the file.
    assert pointer.get_mirror(PROJECT) == pointer.get(PROJECT) == rollback
