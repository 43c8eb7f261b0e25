"""One run of bench/scale.py: the processes it starts, what it measures, how it prints them.

Label Studio and the API calls its UI makes come from tests/support/real_label_studio.py (on
sys.path below, with tests/conftest.py it imports); the backend, the file server, the model
and the machine header from bench/support.py. Every process is started in an ExitStack, so it
is stopped whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import redis
import requests
from scale_clips import make_clips
from support import (
    CONFIG,
    REPO,
    child_env,
    host_port,
    serve_folder,
    start_backend,
    train_small_model,
    worker_pids,
)

# As pyproject.toml's pythonpath: the root first, so that ``backend`` is the package, never
# tests/backend.
sys.path += [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "support")]
from conftest import worker_process
from real_label_studio import LabelStudioAPI, TimingProxy, run_label_studio

from training.jobs.coordinator import QUEUE_NAME
from training.jobs.refresh_chunks import describe_refresh
from training.versions.copies import publish_copy
from training.versions.store import ModelStore, VersionInfo

LS_TIMEOUT_S = 100.0
"""Label Studio 1.23's ML_TIMEOUT_PREDICT: how long it waits for /predict."""
POLL_S = 1.0
SAMPLE_S = 0.5


@dataclass
class Run:
    """What one run measured."""

    workers: int
    tasks: int
    version: str
    retrieve_s: float = float("nan")
    """From pressing "Retrieve predictions" to Label Studio's answer."""
    retrieve_answer: dict = field(default_factory=dict)
    predict_s: float = float("nan")
    """How long Label Studio waited for the backend's /predict answer (its timeout: 100 s)."""
    stored_at_answer: int = 0
    """Predictions Label Studio held right after its answer (what /predict returned)."""
    all_s: float | None = None
    """From the press to every task having a prediction; None: not within the timeout."""
    timeline: list[tuple[float, int]] = field(default_factory=list)
    per_task: Counter = field(default_factory=Counter)
    """Predictions of the served version per task -> how many tasks."""
    other_versions: int = 0
    refresh: dict = field(default_factory=dict)
    peak_mib: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds each role used from just before the press to the end of the check."""
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class Bench:
    """What the runs share: Label Studio, the clips on a file server, the model, Redis."""

    ls: LabelStudioAPI
    work: Path
    media_url: str
    clips: list[Path]
    tasks: int
    model: VersionInfo
    redis_url: str
    settings: dict[str, str]

    @classmethod
    def start(
        cls,
        stack: ExitStack,
        work: Path,
        cache: Path,
        tasks: int,
        clips: int,
        redis_url: str,
        settings: dict[str, str],
    ) -> Bench:
        made = make_clips(REPO / "tests" / "data", cache / f"clips-{clips}", clips)
        shutil.copy(REPO / "tests" / "data" / "b.mp4", cache / "warmup.mp4")
        model = _small_model(cache / "model")
        media_url = stack.enter_context(serve_folder(cache))
        files = work / "files"
        files.mkdir()
        server = stack.enter_context(run_label_studio(work, files))
        print(f"Label Studio answered /health {server.start_s:.0f} s after start")
        ls = LabelStudioAPI(server)
        return cls(ls, work, media_url, made, tasks, model, redis_url, settings)

    def env(self) -> dict[str, str]:
        """The settings the backend and the workers share."""
        return {
            "REDIS_URL": self.redis_url,
            "LABEL_STUDIO_URL": self.ls.server.url,
            "LABEL_STUDIO_API_KEY": self.ls.server.token,
            "MEDIA_ALLOWED_HOSTS": host_port(self.media_url),
            "LITERT_EXPORT": "off",
            **self.settings,
        }

    def run(self, workers: int, timeout_s: float) -> Run:
        redis.Redis.from_url(self.redis_url).flushdb()  # no claims, jobs or workers left
        shutil.rmtree(self.work / "cache", ignore_errors=True)  # every run decodes
        project = self.ls.create_project(f"scale, {workers} workers", CONFIG)["id"]
        clip_of = [self.clips[i % len(self.clips)].name for i in range(self.tasks)]
        data = [
            {"video": f"{self.media_url}/{self.clip_dir}/{c}?task={i}"}
            for i, c in enumerate(clip_of)
        ]
        self.ls.import_tasks(project, data)
        store = ModelStore(self.work / "models")
        version = publish_copy(store, str(project), self.model).version
        run = Run(workers, self.tasks, version, load_before=os.getloadavg())
        print(
            f"\n== {workers} worker(s): project {project}, {self.tasks} tasks, version {version}; "
            f"load average before: {' '.join(f'{x:.2f}' for x in run.load_before)}"
        )
        with ExitStack() as stack:
            url, server, _ = stack.enter_context(
                start_backend(self.work, self.env(), workers=1, threads=8)
            )
            self._warm_up(url, project)
            procs = [
                stack.enter_context(_pinned_worker(self.work, self.env(), core, workers))
                for core in range(workers)
            ]
            _wait_workers(self.redis_url, workers)
            proxy = TimingProxy(url)  # how long Label Studio waited for /predict
            stack.callback(proxy.close)
            self.ls.connect_backend(project, proxy.url, interactive=False)
            roles = {
                "label-studio": lambda: _tree(self.ls.server.proc.pid),
                "gunicorn master": lambda: [server.pid],
                "gunicorn worker": lambda: sorted(worker_pids(server.pid)),
                **{f"rq worker {i + 1}": (lambda p=p: _tree(p.pid)) for i, p in enumerate(procs)},
            }
            usage = stack.enter_context(_sample_usage(roles))
            self._measure(run, project, timeout_s)
            run.predict_s = max(proxy.seconds.get("/predict", [float("nan")]))
            run.peak_mib, run.cpu_s = dict(usage.peak_mib), dict(usage.cpu_s)
        return run

    @property
    def clip_dir(self) -> str:
        return self.clips[0].parent.name

    def _warm_up(self, url: str, project: int) -> None:
        """Load the model in the serving process (a video no task has, under a task id
        nothing claims), so the run does not time the first load."""
        body = {
            "tasks": [{"id": "warm-up", "data": {"video": f"{self.media_url}/warmup.mp4"}}],
            "project": f"{project}.1700000000",
            "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": None},
        }
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            answer = requests.post(f"{url}/predict", json=body, timeout=100).json()
            if answer["results"][0]:
                return
            time.sleep(0.5)
        raise SystemExit("the backend did not load the model within 120 s")

    def _measure(self, run: Run, project: int, timeout_s: float) -> None:
        pressed = time.monotonic()
        answer: dict = {}

        def retrieve() -> None:  # a Label Studio client of its own: the poll goes on meanwhile
            answer.update(LabelStudioAPI(self.ls.server).retrieve_predictions(project))
            answer["_s"] = time.monotonic() - pressed

        thread = threading.Thread(target=retrieve, daemon=True)
        thread.start()
        deadline = pressed + timeout_s
        while time.monotonic() < deadline:
            count = self.ls.project(project)["total_predictions_number"]
            now = time.monotonic() - pressed
            run.timeline.append((now, count))
            if "_s" in answer:
                run.retrieve_s, run.stored_at_answer = answer.pop("_s"), count
                run.retrieve_answer = dict(answer)
                print(
                    f"Label Studio answered Retrieve predictions after {run.retrieve_s:.1f} s "
                    f"({answer}); {count} predictions stored"
                )
            if count >= run.tasks and not thread.is_alive():
                run.all_s = now
                break
            time.sleep(POLL_S)
        thread.join(LS_TIMEOUT_S + 30)
        print(f"every task predicted after {run.all_s or float('nan'):.1f} s; refresh ending")
        connection = redis.Redis.from_url(self.redis_url)
        end = time.monotonic() + 120
        while not _queue_idle(connection) and time.monotonic() < end:
            time.sleep(
                POLL_S
            )  # the refresh's end (duplicates pass, selection) after the last write
        run.refresh = describe_refresh(connection, str(project)) or {}
        self._check(run, project)

    def _check(self, run: Run, project: int) -> None:
        """Every task's predictions, from one read of the task list."""
        for task in self.ls.tasks(project):
            versions = Counter(p["model_version"] for p in task["predictions"])
            run.per_task[versions.pop(run.version, 0)] += 1
            run.other_versions += sum(versions.values())


def _queue_idle(connection: redis.Redis) -> bool:
    """No job queued or running on the training queue."""
    from rq import Queue
    from rq.registry import StartedJobRegistry

    queue = Queue(QUEUE_NAME, connection=connection)
    return queue.count == 0 and StartedJobRegistry(queue=queue).count == 0


def _small_model(root: Path) -> VersionInfo:
    """bench/support.py's small model, trained once and kept under ``root``."""
    store = ModelStore(root / "models")
    if store.get_current("1") is None:
        shutil.rmtree(root, ignore_errors=True)
        train_small_model(root)
    return store.get_current_info("1")


@contextmanager
def _pinned_worker(work: Path, env: dict[str, str], core: int, of: int) -> Iterator[Popen]:
    """``videoloop worker`` (tests/conftest.py's, stopped the way the tests stop it) pinned to
    one core with ``taskset`` before it imports anything: its threads inherit the affinity."""
    name = f"scale-{of}-{core}"
    with worker_process(work, child_env(work, LOG_LEVEL="INFO", **env), name) as proc:
        cpu = str(core % (os.cpu_count() or 1))
        subprocess.run(
            ["taskset", "-a", "-pc", cpu, str(proc.pid)], check=True, capture_output=True
        )
        yield proc


def _wait_workers(redis_url: str, count: int, timeout_s: float = 180) -> None:
    """Until ``count`` workers listen (they register after importing TensorFlow)."""
    from rq import Worker

    connection = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    while len(Worker.all(connection=connection)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{count} workers did not register within {timeout_s:g} s")
        time.sleep(0.5)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += worker_pids(current)
    return found


def _rss_mib(pid: int) -> float:
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds ``pid`` has used (/proc/PID/stat)."""
    with suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


@dataclass
class Usage:
    """Per role: peak VmRSS (the largest process of the role) and CPU seconds used."""

    peak_mib: dict[str, float]
    cpu_s: dict[str, float]


@contextmanager
def _sample_usage(roles: dict) -> Iterator[Usage]:
    """Samples every role's processes every SAMPLE_S until the block ends: the peak VmRSS,
    and the CPU seconds each process used since it was first seen."""
    usage = Usage(dict.fromkeys(roles, 0.0), dict.fromkeys(roles, 0.0))
    first: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for role, pids in roles.items():
                with suppress(OSError, ValueError, IndexError):
                    found = pids()
                    usage.peak_mib[role] = max([usage.peak_mib[role], *map(_rss_mib, found)])
                    now = {p: _cpu_s(p) for p in found}
                    for p, cpu in now.items():
                        first.setdefault(p, cpu)
                    usage.cpu_s[role] = sum(cpu - first[p] for p, cpu in now.items())
            stop.wait(SAMPLE_S)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield usage
    finally:
        stop.set()
        thread.join(5)


def print_runs(runs: list[Run]) -> None:
    print(
        f"\n{'workers':>7} {'tasks':>6} {'retrieve answered s':>20} {'/predict s':>11} "
        f"{'stored by it':>13} "
        f"{'time to all s':>14} {'tasks/s':>8} {'exactly 1':>10} {'dupes':>6} "
        f"{'missing':>8} {'chunks':>7} {'load before':>16}"
    )
    for r in runs:
        rate = f"{r.tasks / r.all_s:8.1f}" if r.all_s else f"{'-':>8}"
        total = f"{r.all_s:14.1f}" if r.all_s else f"{'timeout':>14}"
        dupes = sum(n for k, n in r.per_task.items() if k > 1)
        load = " ".join(f"{x:.2f}" for x in r.load_before)
        print(
            f"{r.workers:>7} {r.tasks:>6} {r.retrieve_s:>20.1f} {r.predict_s:>11.1f} "
            f"{r.stored_at_answer:>13} "
            f"{total} {rate} {r.per_task[1]:>10} {dupes:>6} {r.per_task[0]:>8} "
            f"{r.refresh.get('chunks', 0):>7} {load:>16}"
        )
    ok = [r for r in runs if r.all_s]
    if len(ok) >= 2:
        one, most = min(ok, key=lambda r: r.workers), max(ok, key=lambda r: r.workers)
        print(
            f"ratio time to all, {one.workers} worker(s) / {most.workers}: "
            f"{one.all_s / most.all_s:.2f}x (want at least 1.8x)"  # type: ignore[operator]
        )
    for r in runs:
        within = "within" if r.retrieve_s < LS_TIMEOUT_S else "NOT within"
        print(
            f"{r.workers} worker(s): Retrieve answered {within} Label Studio's {LS_TIMEOUT_S:g} s;"
            f" other versions' predictions {r.other_versions}; refresh {_refresh_line(r.refresh)}"
        )
    roles = list(dict.fromkeys(role for r in runs for role in r.peak_mib))
    heads = "".join(f"{str(r.workers) + ' worker(s)':>14}" for r in runs)
    for title, of in (("peak RSS MiB", "peak_mib"), ("CPU seconds", "cpu_s")):
        print(f"\n{title:<20}{heads}")
        for role in roles:
            cells = "".join(f"{getattr(r, of).get(role, float('nan')):>14.0f}" for r in runs)
            print(f"{role:<20}{cells}")


def _refresh_line(state: dict) -> str:
    keys = ("chunks", "chunks_done", "chunks_failed", "written", "already", "skipped")
    return ", ".join(f"{k} {state.get(k)}" for k in keys)


def write_chart(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        xs, ys = zip(*r.timeline, strict=True) if r.timeline else ((), ())
        ax.plot(xs, ys, label=f"{r.workers} worker(s)")
        ax.axvline(r.retrieve_s, linestyle=":", color=ax.lines[-1].get_color())
    ax.set_xlabel("seconds since Retrieve predictions (dotted: Label Studio answered)")
    ax.set_ylabel("predictions stored")
    ax.set_title(f"{runs[0].tasks} tasks, Label Studio 1.23.2" if runs else "")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"chart: {path}")
