"""A real Label Studio (1.23.2) for the end-to-end suite, and the API calls its UI makes.

``scripts/label-studio`` installs it into a virtual environment of its own, cached outside the
clone (first run on a machine ~70 s, then nothing); :func:`run_label_studio` starts it on a
free port with a fresh data folder, as docs/design.md says (legacy token, local files served,
loopback ML backends allowed, no Sentry, no version check), and kills its process group at
the end. :class:`LabelStudioAPI` speaks to it over HTTP the way the Data Manager, the project
settings and an annotator's Submit do; it connects the model with ``videoloop connect``'s
code.

Opting out: ``VIDEOLOOP_SKIP_LABEL_STUDIO=1`` skips the suite on a machine that cannot install
it (no network); in CI (``CI`` set) that is refused, so the suite never passes by being
skipped. Any other failure to install or start fails the tests with the reason and the log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from conftest import REPO, free_port
from fake_label_studio import LoopbackServer

from backend.cli.connect import connect_project
from backend.cli.connect_plan import Wanted, normalize_url
from training.labelstudio.client import LabelStudioSession
from training.labelstudio.connection import ConnectionAPI, MLBackendView

VERSION = "1.23.2"
SKIP_ENV = "VIDEOLOOP_SKIP_LABEL_STUDIO"
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 180
USERNAME = "e2e@videoloop.test"
PASSWORD = "e2e-password-5b1f"
TOKEN = "e2e-legacy-token-3f9d2c41a7"
"""Label Studio's legacy API token for the admin it creates (``--user-token``)."""

T = TypeVar("T")


def skip_or_fail_without_label_studio() -> None:
    """Honour the opt-out, except in CI, where a skipped suite would look like a pass."""
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
        if os.environ.get("CI", "").strip() not in ("", "0", "false"):
            pytest.fail(f"{SKIP_ENV} is set in CI: the real Label Studio suite must run there")
        pytest.skip(f"{SKIP_ENV} is set: the suite against a real Label Studio is skipped")


def install_label_studio() -> Path:
    """The virtual environment holding label-studio (``scripts/label-studio`` installs it the
    first time); fails the test, saying why, when it cannot be installed."""
    try:
        done = subprocess.run(
            [str(REPO / "scripts" / "label-studio"), "install"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"installing label-studio=={VERSION} took over {INSTALL_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.fail(
            f"cannot install label-studio=={VERSION} (scripts/label-studio exited with "
            f"{done.returncode}; set {SKIP_ENV}=1 to skip this suite on a machine without "
            f"network):\n{done.stderr[-4000:]}"
        )
    if done.stderr.strip():
        print(done.stderr.strip())
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass
class LabelStudioProcess:
    """A running Label Studio: its address, the admin's token and its log."""

    url: str
    token: str
    files_root: Path
    """LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: local-files paths are relative to it."""
    log_path: Path
    proc: subprocess.Popen
    start_s: float
    """Seconds from launching it to its first /health answer."""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextmanager
def run_label_studio(workdir: Path, files_root: Path) -> Iterator[LabelStudioProcess]:
    """Install if needed, start Label Studio with a fresh data folder, wait for /health."""
    venv = install_label_studio()
    port = free_port()
    data = workdir / "label-studio-data"
    data.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data),
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(files_root),
        LABEL_STUDIO_ML_BLOCK_LOCAL_IP="false",  # the backend is on loopback
        LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",
        LABEL_STUDIO_SENTRY_DSN="",
        LATEST_VERSION_CHECK="false",  # no call to PyPI at start
        COLLECT_ANALYTICS="false",
        PYTHONUNBUFFERED="1",
    )
    command = [
        str(venv / "bin" / "label-studio"),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--username",
        USERNAME,
        "--password",
        PASSWORD,
        "--user-token",
        TOKEN,
        "--enable-legacy-api-token",
    ]
    log_path = workdir / "label-studio.log"
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed whole at the end
        )
    server = LabelStudioProcess(url, TOKEN, files_root, log_path, proc, 0.0)
    try:
        deadline = started + START_TIMEOUT_S
        while not _answers(f"{url}/health"):
            if proc.poll() is not None:
                pytest.fail(f"Label Studio exited with {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Label Studio did not answer /health in {START_TIMEOUT_S} s:\n"
                    f"{server.log_tail()}"
                )
            time.sleep(0.25)
        server.start_s = time.monotonic() - started
        yield server
    finally:
        _stop_group(proc)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


class LabelStudioAPI:
    """Label Studio's HTTP API as its UI uses it; a refused call fails the test with Label
    Studio's answer and the end of its log."""

    def __init__(self, server: LabelStudioProcess) -> None:
        self.server = server
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {server.token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, self.server.url + path, timeout=120, **kwargs)
        if response.status_code >= 300:
            pytest.fail(
                f"Label Studio answered {method} {path} with {response.status_code}: "
                f"{response.text[:2000]}\n--- Label Studio log ---\n{self.server.log_tail()}"
            )
        return response.json() if response.content else None

    # -- projects, tasks, storage -----------------------------------------------------------

    def create_project(self, title: str, label_config: str) -> dict:
        return self.call(
            "POST", "/api/projects/", json={"title": title, "label_config": label_config}
        )

    def project(self, project: int) -> dict:
        return self.call("GET", f"/api/projects/{project}/")

    def update_project(self, project: int, **fields: Any) -> dict:
        return self.call("PATCH", f"/api/projects/{project}/", json=fields)

    def upload(self, project: int, paths: list[Path]) -> dict:
        """Import video files as the UI's upload does (one form field per file: Label
        Studio keeps only the last file of a repeated field name)."""
        files = {f"file{i}": (p.name, p.read_bytes(), "video/mp4") for i, p in enumerate(paths)}
        return self.call("POST", f"/api/projects/{project}/import", files=files)

    def import_tasks(self, project: int, data: list[dict]) -> dict:
        return self.call("POST", f"/api/projects/{project}/import", json=data)

    def add_local_storage(self, project: int, folder: Path) -> dict:
        """A local-files storage entry covering ``folder``: Label Studio serves
        ``/data/local-files/?d=...`` only under one."""
        body = {"project": project, "path": str(folder), "title": folder.name}
        return self.call("POST", "/api/storages/localfiles", json={**body, "use_blob_urls": False})

    def local_files_url(self, path: Path) -> str:
        return f"/data/local-files/?d={path.relative_to(self.server.files_root)}"

    def tasks(self, project: int) -> list[dict]:
        """Every task with annotations and predictions (all pages)."""
        tasks: list[dict] = []
        while True:
            params = {"project": project, "fields": "all", "page": len(tasks) // 100 + 1}
            body = self.call("GET", "/api/tasks", params={**params, "page_size": 100})
            tasks += body["tasks"]
            if len(tasks) >= body["total"] or not body["tasks"]:
                return tasks

    def next_task(self, project: int) -> dict:
        """The task the labelling stream opens next, with the predictions it shows."""
        return self.call("GET", f"/api/projects/{project}/next/")

    def predictions(self, task: int) -> list[dict]:
        return self.call("GET", "/api/predictions/", params={"task": task})

    def annotate(self, task: int, result: list[dict]) -> tuple[dict, float]:
        """Submit an annotation as an annotator does; returns it and the request's seconds."""
        started = time.perf_counter()
        annotation = self.call("POST", f"/api/tasks/{task}/annotations/", json={"result": result})
        return annotation, time.perf_counter() - started

    def dm_action(self, project: int, action: str, tasks: list[int] | None = None) -> dict:
        """A Data Manager action (Actions menu) on the given tasks, or on every task."""
        selected = {"all": False, "included": tasks} if tasks else {"all": True, "excluded": []}
        params = {"id": action, "project": project}
        return self.call("POST", "/api/dm/actions", params=params, json={"selectedItems": selected})

    def retrieve_predictions(self, project: int) -> dict:
        """The Data Manager's "Retrieve predictions" on every task."""
        return self.dm_action(project, "retrieve_tasks_predictions")

    def tasks_by_prediction_score(self, project: int) -> list[dict]:
        """The Data Manager's task list sorted by prediction score, lowest first."""
        return self.tasks_ordered_by(project, "tasks:predictions_score")

    def tasks_ordered_by(self, project: int, column: str) -> list[dict]:
        """The Data Manager's task list sorted by a column (``tasks:data.<field>`` for a task
        data field), ascending, as a click on its header asks for it."""
        query = json.dumps({"ordering": [column]})
        return self.call("GET", "/api/tasks", params={"project": project, "query": query})["tasks"]

    # -- the ML backend -----------------------------------------------------------------------

    def connect_backend(
        self,
        project: int,
        url: str,
        basic_auth: tuple[str, str] | None = None,
        webhook_secret: str = "",
        interactive: bool = True,
    ) -> MLBackendView:
        """Project -> Settings -> Model -> Connect Model (with "Use basic auth" when given) and
        the secret header on the project webhook Label Studio creates, as ``videoloop
        connect`` does it (backend/cli/connect.py, the product's code); train on submit is
        left as the project has it. Returns the connection, once Label Studio shows it
        connected."""
        wanted = Wanted(
            project=project,
            backend_url=normalize_url(url),
            basic_auth=basic_auth,
            webhook_secret=webhook_secret,
            interactive=interactive,
            train_on_submit=None,
        )
        with LabelStudioSession(self.server.url, self.server.token, max_retries=0) as session:
            return connect_project(ConnectionAPI(session), wanted, say=lambda line: None)

    def webhooks(self, project: int) -> list[dict]:
        return self.call("GET", "/api/webhooks/", params={"project": project})

    def ml_backend(self, ml_id: int) -> dict:
        """The backend as its settings card shows it (Label Studio calls /health and /setup)."""
        return self.call("GET", f"/api/ml/{ml_id}")

    def start_training(self, ml_id: int) -> float:
        """The "Start training" button; returns the request's seconds."""
        started = time.perf_counter()
        self.call("POST", f"/api/ml/{ml_id}/train", json={})
        return time.perf_counter() - started


class TimingProxy:
    """Forwards HTTP to ``target`` and records how long each answer took, by path: put
    between Label Studio and the backend, it tells how long Label Studio waited for videoloop
    (a Submit's own latency is mostly Label Studio's work, and grows with the machine's load).
    """

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.seconds: dict[str, list[float]] = {}
        self.bodies: list[str] = []
        """Every answer's body, as Label Studio received it."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_POST(self) -> None:
                proxy._forward(self)

        self._httpd = LoopbackServer.start(Handler)
        self.url = self._httpd.url

    def _forward(self, req: BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        headers = {
            k: v
            for k, v in req.headers.items()
            if k.lower() in ("content-type", "authorization", "x-webhook-secret")
        }
        started = time.perf_counter()
        answer = requests.request(
            req.command, self.target + req.path, data=body, headers=headers, timeout=120
        )
        self.seconds.setdefault(req.path.split("?", 1)[0], []).append(time.perf_counter() - started)
        self.bodies.append(answer.content.decode(errors="replace"))
        req.send_response(answer.status_code)
        req.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
        req.send_header("Content-Length", str(len(answer.content)))
        req.end_headers()
        req.wfile.write(answer.content)

    def close(self) -> None:
        self._httpd.close()


def poll(
    probe: Callable[[], T | None],
    what: str,
    timeout_s: float,
    diagnostics: Callable[[], str] = lambda: "",
    every_s: float = 0.25,
) -> T:
    """The first truthy value ``probe`` returns; fails with ``diagnostics()`` after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}\n{diagnostics()}")
        time.sleep(every_s)


def result_problems(result: list[dict], parsed_config: dict) -> list[str]:
    """What is wrong with a stored result for the project, judged by the parsed label config
    Label Studio itself reports (``parsed_label_config``): control names, the object each
    control points at, the region type and the labels it may carry."""
    problems = []
    for region in result:
        control = parsed_config.get(region.get("from_name"))
        if control is None:
            problems.append(f"from_name {region.get('from_name')!r} is not a control")
            continue
        kind = control["type"].lower()
        if region.get("to_name") not in control["to_name"]:
            problems.append(f"to_name {region.get('to_name')!r} is not in {control['to_name']}")
        if region.get("type") != kind:
            problems.append(f"type {region.get('type')!r} is not {kind!r}")
        values = (region.get("value") or {}).get(kind)
        if not values or not set(values) <= set(control["labels"]):
            problems.append(f"value {region.get('value')} is not among {control['labels']}")
    return problems
