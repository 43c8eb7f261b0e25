"""Local HTTP stand-ins for Label Studio and for a plain file host (a bucket, a CDN).

One ``FakeLabelStudio`` serves both halves of Label Studio that videoloop talks to:

* media, as Label Studio 1.23 serves it: ``/data/upload/<project>/<name>``,
  ``/data/local-files/?d=<path>``, ``/tasks/<id>/presign/?fileuri=<b64>`` (a 303 to
  ``presign_to``), and 404 on ``/storage-data/uploaded/`` (no storage proxy);
* the API that label-studio-sdk 2.x calls: ``GET /api/projects/<id>/``, ``GET /api/tasks/``
  (page-number paging ordered by id, 404 "Invalid page." past the last page, annotations
  and predictions only with ``fields=all``, cloud URIs in task data rewritten to
  ``/tasks/<id>/presign/...`` unless ``resolve_uri=false``), ``POST /api/predictions/``
  (``{task, result, score, model_version}``; 400 for a task that does not exist, as Label
  Studio's serializer answers), ``GET /api/predictions/?task=<id>`` (a plain list), and
  ``POST /api/token/refresh/`` for personal access tokens.

Every route checks ``Authorization: Token <token>`` (legacy token) or ``Bearer <access>``
(an access token this server minted from :attr:`FakeLabelStudio.personal_access_token`).
Tests add projects, tasks and annotations at any time, from any thread, also while a
worker process is reading.

This module is imported by ``conftest.py`` and can be imported by tests as ``from
fake_label_studio import FakeLabelStudio`` (``tests/support/`` is on ``sys.path``: ``pythonpath``
in pyproject.toml).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt

from training.labelstudio.labelconfig import parse_label_config

JWT_SECRET = "fake-label-studio-jwt-signing-key-0123456789"
"""Signs the personal access tokens and access tokens this server mints (HS256)."""

ACCESS_TOKEN_TTL_S = 300
"""Seconds an access token minted by /api/token/refresh/ is valid."""

DEFAULT_PAGE_SIZE = 100
"""Label Studio's TaskPagination.page_size."""

_CLOUD_PREFIXES = ("s3://", "gs://", "azure-blob://")
_EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


class LoopbackServer(ThreadingHTTPServer):
    """The HTTP server behind every stand-in here: a thread per request, and a listen backlog
    that a loaded parallel run cannot fill.

    socketserver listens with a backlog of 5: while that many connections wait to be accepted
    (the serving thread starved on a machine busy with a parallel run), the kernel drops the
    next ones silently and the client waits on retransmissions, long enough to fail with "no
    answer within 30 s". Handler threads are daemons, so a request still being answered (a
    trickle) never holds up ``close``; the port can be bound again at once. ``on_connect`` is
    called for each accepted connection, before its request is read.
    """

    request_queue_size = 128
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        host: str = "127.0.0.1",
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._on_connect = on_connect
        super().__init__((host, 0), handler)
        self.port = self.server_address[1]
        self.url = f"http://{host}:{self.port}"

    @classmethod
    def start(cls, handler: type[BaseHTTPRequestHandler], **kwargs: Any) -> LoopbackServer:
        """A server on a free port, serving on a daemon thread of its own."""
        server = cls(handler, **kwargs)
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return server

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self._on_connect is not None:
            self._on_connect()
        return True

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@dataclass
class Seen:
    """One request a host received."""

    path: str
    headers: dict[str, str]
    method: str = "GET"


@dataclass
class MediaHost:
    """A local HTTP server serving the files of ``root``.

    With a ``token`` it stands in for Label Studio's media routes (see the module docstring)
    and answers them only to an authorised request. Without a token it is a plain file host
    (``/<name>``), like a bucket or a CDN. Every request is recorded in ``seen``.
    """

    root: Path
    token: str | None = None
    presign_to: str | None = None
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                host.seen.append(Seen(self.path, dict(self.headers.items()), "GET"))
                host._route(self)

            def do_POST(self) -> None:
                host.seen.append(Seen(self.path, dict(self.headers.items()), "POST"))
                host._route_post(self)

            def do_PATCH(self) -> None:
                host.seen.append(Seen(self.path, dict(self.headers.items()), "PATCH"))
                host._route_patch(self)

            def do_DELETE(self) -> None:
                host.seen.append(Seen(self.path, dict(self.headers.items()), "DELETE"))
                host._route_delete(self)

        self._httpd = LoopbackServer.start(Handler)
        self.url = self._httpd.url

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def close(self) -> None:
        self._httpd.close()

    def _authorized(self, req: BaseHTTPRequestHandler) -> bool:
        return req.headers.get("Authorization") == f"Token {self.token}"

    def _route(self, req: BaseHTTPRequestHandler) -> None:
        parsed = urlparse(req.path)
        query = parse_qs(parsed.query)
        if self.token is None:
            return self._send_file(req, parsed.path.lstrip("/"))
        if not self._authorized(req):
            return self._send(
                req, 401, b'{"detail": "Authentication credentials were not provided."}'
            )
        if parsed.path.startswith("/storage-data/"):
            return self._send(req, 404, b"not found")
        if parsed.path.startswith("/data/upload/"):
            return self._send_file(req, parsed.path.rsplit("/", 1)[-1])
        if parsed.path.rstrip("/") == "/data/local-files":
            return self._send_file(req, os.path.basename(query.get("d", [""])[-1]))
        if parsed.path.startswith("/tasks/") and parsed.path.endswith("/presign/"):
            uri = base64.urlsafe_b64decode(query["fileuri"][0]).decode()
            req.send_response(303)
            req.send_header("Location", f"{self.presign_to}/{os.path.basename(uri)}?X-Sig=abc")
            req.send_header("Content-Length", "0")
            req.end_headers()
            return None
        return self._send(req, 404, b"not found")

    def _route_post(self, req: BaseHTTPRequestHandler) -> None:
        return self._send(req, 405, b'{"detail": "Method not allowed."}')

    def _route_patch(self, req: BaseHTTPRequestHandler) -> None:
        return self._send(req, 405, b'{"detail": "Method not allowed."}')

    def _route_delete(self, req: BaseHTTPRequestHandler) -> None:
        return self._send(req, 405, b'{"detail": "Method not allowed."}')

    def _send_file(self, req: BaseHTTPRequestHandler, name: str) -> None:
        path = self.root / name
        if not name or not path.is_file():
            return self._send(req, 404, b"not found")
        return self._send(req, 200, path.read_bytes(), "video/mp4")

    @staticmethod
    def _send(req, status: int, body: bytes, ctype: str = "application/json") -> None:
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    @classmethod
    def _send_json(cls, req, status: int, payload: Any) -> None:
        cls._send(req, status, json.dumps(payload).encode())


@dataclass
class FakeLabelStudio(MediaHost):
    """Label Studio's media routes plus the API label-studio-sdk 2.x uses; see the module
    docstring. State changes go through the methods below and are thread-safe.

    ``legacy_tokens=False`` rejects ``Token`` auth like a Label Studio with legacy tokens
    disabled (personal access tokens still work).
    """

    token: str | None = "fake-ls-token"
    legacy_tokens: bool = True

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._clock = 0  # every change advances it by one second: updated_at is ordered
        self._projects: dict[int, dict] = {}
        self._tasks: dict[int, dict] = {}
        self._annotations: dict[int, dict] = {}
        self._predictions: dict[int, dict] = {}
        # the same dicts by task (id -> dict, in id order: ids only grow), so that listing
        # tasks costs the tasks listed, not every annotation and prediction for each task
        self._annotations_by_task: dict[int, dict[int, dict]] = {}
        self._predictions_by_task: dict[int, dict[int, dict]] = {}
        self._next_id = {"project": 1, "task": 1, "annotation": 1, "prediction": 1}
        self._ml_backends: list[dict] = []
        self._faults: list[tuple[str, dict[str, str], int]] = []
        self.personal_access_token = self._mint("refresh", ttl_s=30 * 24 * 3600)
        super().__post_init__()

    # -- state, for tests -----------------------------------------------------------------

    def add_project(self, label_config: str, *, project_id: int | None = None) -> int:
        """A project with this label config; returns its id."""
        with self._lock:
            pid = self._new_id("project", project_id)
            self._projects[pid] = {
                "id": pid,
                "title": f"Project {pid}",
                "label_config": label_config,
                "created_at": self._now(),
                "model_version": "",
            }
            return pid

    def connect_ml_backend(self, project_id: int, title: str = "videoloop") -> None:
        """An ML backend on the project, as connecting one does: Label Studio then selects
        the backend's title as the project's predictions version."""
        with self._lock:
            self._ml_backends.append(
                {
                    "id": len(self._ml_backends) + 1,
                    "project": project_id,
                    "title": title,
                    "url": "http://backend:9090",
                }
            )
            self._projects[project_id]["model_version"] = title

    def selected_version(self, project_id: int) -> str:
        with self._lock:
            return self._projects[project_id]["model_version"]

    def select_version(self, project_id: int, version: str) -> None:
        """What a person does in Settings -> Annotation -> Prelabeling."""
        with self._lock:
            self._projects[project_id]["model_version"] = version

    def set_label_config(self, project_id: int, label_config: str) -> None:
        with self._lock:
            self._projects[project_id]["label_config"] = label_config

    def add_task(self, project_id: int, data: dict, *, task_id: int | None = None) -> int:
        """A task with ``data`` (e.g. ``{"video": "/data/upload/1/b.mp4"}``); returns its id."""
        with self._lock:
            if project_id not in self._projects:
                raise KeyError(f"no project {project_id}")
            tid = self._new_id("task", task_id)
            now = self._now()
            self._tasks[tid] = {
                "id": tid,
                "project": project_id,
                "data": copy.deepcopy(data),
                "created_at": now,
                "updated_at": now,
            }
            return tid

    def add_tasks(self, project_id: int, data: list[dict]) -> list[int]:
        return [self.add_task(project_id, d) for d in data]

    def annotate(
        self,
        task_id: int,
        label: str | list[str] | None = None,
        *,
        result: list[dict] | None = None,
        cancelled: bool = False,
        completed_by: int = 1,
    ) -> int:
        """Add an annotation to a task; returns its id.

        ``label`` builds the ``choices`` result Label Studio stores for the project's
        <Choices> control (a list makes a multi-choice result); ``result`` gives the raw
        result list instead. ``cancelled`` makes it a skipped task (``was_cancelled``).
        """
        with self._lock:
            task = self._tasks[task_id]
            if result is None:
                result = self._choices_result(task["project"], label) if label is not None else []
            aid = self._new_id("annotation", None)
            now = self._now()
            self._annotations[aid] = self._annotations_by_task.setdefault(task_id, {})[aid] = {
                "id": aid,
                "task": task_id,
                "project": task["project"],
                "result": copy.deepcopy(result),
                "was_cancelled": cancelled,
                "ground_truth": False,
                "completed_by": completed_by,
                "updated_by": completed_by,
                "created_at": now,
                "updated_at": now,
                "lead_time": 3.5,
                "last_action": None,
                "parent_prediction": None,
                "parent_annotation": None,
                "unique_id": str(uuid.uuid4()),
            }
            task["updated_at"] = now
            return aid

    def update_annotation(
        self,
        annotation_id: int,
        label: str | list[str] | None = None,
        *,
        result: list[dict] | None = None,
        cancelled: bool | None = None,
    ) -> None:
        """Change an annotation as an annotator's "Update" does (``updated_at`` moves on)."""
        with self._lock:
            ann = self._annotations[annotation_id]
            if label is not None:
                result = self._choices_result(ann["project"], label)
            if result is not None:
                ann["result"] = copy.deepcopy(result)
            if cancelled is not None:
                ann["was_cancelled"] = cancelled
            ann["updated_at"] = self._now()

    def delete_annotation(self, annotation_id: int) -> None:
        with self._lock:
            ann = self._annotations.pop(annotation_id)
            del self._annotations_by_task[ann["task"]][annotation_id]

    def delete_task(self, task_id: int) -> None:
        with self._lock:
            del self._tasks[task_id]
            for aid in self._annotations_by_task.pop(task_id, {}):
                del self._annotations[aid]
            for pid in self._predictions_by_task.pop(task_id, {}):
                del self._predictions[pid]

    def add_prediction(
        self, task_id: int, result: list[dict], *, score: float | None, model_version: str
    ) -> int:
        """Store a prediction on a task as ``POST /api/predictions/`` does; returns its id."""
        with self._lock:
            return self._add_prediction(task_id, result, score, model_version)

    def predictions(self, task_id: int | None = None) -> list[dict]:
        """Stored predictions (of one task, or all), oldest first."""
        with self._lock:
            return [
                copy.deepcopy(p)
                for p in sorted(self._predictions.values(), key=lambda p: p["id"])
                if task_id is None or p["task"] == task_id
            ]

    def fail_next(
        self,
        status: int,
        *,
        path_prefix: str = "/api/",
        query: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests under ``path_prefix`` (and with these query
        parameters, e.g. ``{"page": "2"}``) with ``status`` and a JSON ``detail``."""
        with self._lock:
            self._faults.extend([(path_prefix, dict(query or {}), status)] * times)

    def clear_faults(self) -> None:
        """Forget the faults ``fail_next`` queued and no request has taken yet."""
        with self._lock:
            self._faults.clear()

    def task_json(self, task_id: int, *, with_annotations: bool = True) -> dict:
        """The task as ``GET /api/tasks/?fields=all`` shows it."""
        with self._lock:
            return self._task_json(self._tasks[task_id], with_annotations)

    def api_requests(self) -> list[Seen]:
        return [s for s in self.seen if urlparse(s.path).path.startswith("/api/")]

    # -- HTTP -----------------------------------------------------------------------------

    def _authorized(self, req: BaseHTTPRequestHandler) -> bool:
        auth = req.headers.get("Authorization") or ""
        if auth.startswith("Token "):
            return self.legacy_tokens and auth == f"Token {self.token}"
        if auth.startswith("Bearer "):
            claims = self._decode(auth[len("Bearer ") :])
            return claims is not None and claims.get("token_type") == "access"
        return False

    def _route(self, req: BaseHTTPRequestHandler) -> None:
        parsed = urlparse(req.path)
        if self._take_fault(req):
            return None
        if not parsed.path.startswith("/api/"):
            return super()._route(req)
        if not self._authorized(req):
            return self._send_json(
                req, 401, {"detail": "Authentication credentials were not provided."}
            )
        parts = [p for p in parsed.path.split("/") if p]
        if len(parts) == 3 and parts[:2] == ["api", "projects"]:
            return self._get_project(req, parts[2])
        if parts == ["api", "tasks"]:
            return self._list_tasks(req, parse_qs(parsed.query))
        if parts == ["api", "predictions"]:
            return self._list_predictions(req, parse_qs(parsed.query))
        if parts == ["api", "ml"]:
            wanted = parse_qs(parsed.query).get("project", [""])[-1]
            with self._lock:
                found = [dict(m) for m in self._ml_backends if str(m["project"]) == wanted]
            return self._send_json(req, 200, found)
        return self._send_json(req, 404, {"detail": "Not found."})

    def _route_patch(self, req: BaseHTTPRequestHandler) -> None:
        """``PATCH /api/projects/<id>/``: the project settings videoloop changes (the selected
        predictions version); other fields are refused so a test notices a surprise."""
        parsed = urlparse(req.path)
        if self._take_fault(req):
            return None
        if not self._authorized(req):
            return self._send_json(
                req, 401, {"detail": "Authentication credentials were not provided."}
            )
        parts = [p for p in parsed.path.split("/") if p]
        length = int(req.headers.get("Content-Length") or 0)
        body = json.loads(req.rfile.read(length) or b"{}")
        if len(parts) == 3 and parts[:2] == ["api", "tasks"] and parts[2].isdigit():
            return self._patch_task(req, int(parts[2]), body)
        if len(parts) != 3 or parts[:2] != ["api", "projects"] or not parts[2].isdigit():
            return self._send_json(req, 404, {"detail": "Not found."})
        if set(body) - {"model_version"}:
            return self._send_json(req, 400, {"detail": f"unexpected fields {sorted(body)}"})
        with self._lock:
            project = self._projects.get(int(parts[2]))
            if project is not None:
                project.update(body)
                payload = dict(project)
        if project is None:
            return self._send_json(req, 404, {"detail": "Not found."})
        return self._send_json(req, 200, payload)

    def _patch_task(self, req: BaseHTTPRequestHandler, task_id: int, body: dict) -> None:
        """``PATCH /api/tasks/<id>/`` with ``{"data": ...}``: the data replaced whole, as Label
        Studio 1.23 does (acquisition ranks); other fields are refused."""
        if set(body) != {"data"} or not isinstance(body["data"], dict):
            return self._send_json(req, 400, {"detail": f"unexpected fields {sorted(body)}"})
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None:
                task["data"] = copy.deepcopy(body["data"])
                task["updated_at"] = self._now()
                payload = self._task_json(task, False)
        if task is None:
            return self._send_json(req, 404, {"detail": "Not found."})
        return self._send_json(req, 200, payload)

    def _route_delete(self, req: BaseHTTPRequestHandler) -> None:
        """``DELETE /api/predictions/<id>/``: 204, or 404 for an unknown id."""
        if self._take_fault(req):
            return None
        if not self._authorized(req):
            return self._send_json(req, 401, {"detail": "Invalid token."})
        parts = [p for p in urlparse(req.path).path.split("/") if p]
        if len(parts) != 3 or parts[:2] != ["api", "predictions"] or not parts[2].isdigit():
            return self._send_json(req, 404, {"detail": "Not found."})
        with self._lock:
            prediction = self._predictions.pop(int(parts[2]), None)
            if prediction is not None:
                del self._predictions_by_task[prediction["task"]][prediction["id"]]
        if prediction is None:
            return self._send_json(req, 404, {"detail": "No Prediction matches the given query."})
        req.send_response(204)
        req.send_header("Content-Length", "0")
        req.end_headers()
        return None

    def _route_post(self, req: BaseHTTPRequestHandler) -> None:
        parsed = urlparse(req.path)
        if self._take_fault(req):
            return None
        if parsed.path not in ("/api/token/refresh/", "/api/predictions/"):
            return self._send_json(req, 404, {"detail": "Not found."})
        length = int(req.headers.get("Content-Length") or 0)
        try:
            body = json.loads(req.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            return self._send_json(req, 400, {"detail": "JSON parse error"})
        if parsed.path == "/api/predictions/":
            return self._post_prediction(req, body)
        claims = self._decode(str(body.get("refresh", "")))
        if claims is None or claims.get("token_type") != "refresh":
            return self._send_json(
                req, 401, {"detail": "Token is invalid or expired", "code": "token_not_valid"}
            )
        return self._send_json(req, 200, {"access": self._mint("access", ACCESS_TOKEN_TTL_S)})

    def _post_prediction(self, req: BaseHTTPRequestHandler, body: Any) -> None:
        """Label Studio's PredictionAPI create: task and result are required."""
        if not self._authorized(req):
            return self._send_json(
                req, 401, {"detail": "Authentication credentials were not provided."}
            )
        errors: dict[str, list[str]] = {}
        task_id = body.get("task") if isinstance(body, dict) else None
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, list):
            errors["result"] = ["This field is required."]
        with self._lock:
            if not isinstance(task_id, int) or task_id not in self._tasks:
                errors["task"] = [f'Invalid pk "{task_id}" - object does not exist.']
            if errors:
                payload = None
            else:
                pid = self._add_prediction(
                    task_id, result, body.get("score"), str(body.get("model_version") or "")
                )
                payload = copy.deepcopy(self._predictions[pid])
        if payload is None:
            return self._send_json(req, 400, errors)
        return self._send_json(req, 201, payload)

    def _take_fault(self, req: BaseHTTPRequestHandler) -> bool:
        parsed = urlparse(req.path)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        with self._lock:
            matching = [
                i
                for i, (prefix, wanted, _) in enumerate(self._faults)
                if parsed.path.startswith(prefix) and wanted.items() <= query.items()
            ]
            if not matching:
                return False
            status = self._faults.pop(matching[0])[2]
        self._send_json(req, status, {"detail": f"injected fault {status}"})
        return True

    def _get_project(self, req: BaseHTTPRequestHandler, raw_id: str) -> None:
        with self._lock:
            project = self._projects.get(int(raw_id)) if raw_id.isdigit() else None
            if project is None:
                payload = None
            else:
                payload = dict(project)
                payload["task_number"] = sum(
                    1 for t in self._tasks.values() if t["project"] == project["id"]
                )
        if payload is None:
            return self._send_json(req, 404, {"detail": "Not found."})
        return self._send_json(req, 200, payload)

    def _list_predictions(self, req: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        """Label Studio's PredictionAPI list: a plain list, filtered by task and project."""
        wanted = {k: query[k][-1] for k in ("task", "project") if k in query}
        if any(not v.isdigit() for v in wanted.values()):
            return self._send_json(req, 400, {"detail": "Enter a number."})
        with self._lock:
            payload = [
                copy.deepcopy(p)
                for p in sorted(self._predictions.values(), key=lambda p: p["id"])
                if all(p[k] == int(v) for k, v in wanted.items())
            ]
        return self._send_json(req, 200, payload)

    def _list_tasks(self, req: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        """Label Studio's TaskListAPI: DRF page-number paging ordered by id."""
        try:
            page = int(query.get("page", ["1"])[-1])
            page_size = int(query.get("page_size", [str(DEFAULT_PAGE_SIZE)])[-1])
        except ValueError:
            return self._send_json(req, 404, {"detail": "Invalid page."})
        project = query.get("project", [None])[-1]
        with_annotations = query.get("fields", ["task_only"])[-1] == "all"
        resolve_uri = query.get("resolve_uri", ["true"])[-1].lower() not in ("false", "0")
        with self._lock:
            if project is not None and (
                not project.isdigit() or int(project) not in self._projects
            ):
                payload = None
            else:
                tasks = sorted(
                    (
                        t
                        for t in self._tasks.values()
                        if project is None or t["project"] == int(project)
                    ),
                    key=lambda t: t["id"],
                )
                pages = max(1, -(-len(tasks) // max(page_size, 1)))
                chunk = tasks[(page - 1) * page_size : page * page_size]
                payload = {
                    "total": len(tasks),
                    "total_annotations": sum(
                        len(self._annotations_by_task.get(t["id"], ())) for t in tasks
                    ),
                    "total_predictions": sum(
                        len(self._predictions_by_task.get(t["id"], ())) for t in tasks
                    ),
                    "tasks": [self._task_json(t, with_annotations, resolve_uri) for t in chunk],
                }
        if payload is None:
            return self._send_json(req, 404, {"detail": "Not found."})
        if page < 1 or page > pages or page_size < 1:
            return self._send_json(req, 404, {"detail": "Invalid page."})
        return self._send_json(req, 200, payload)

    # -- helpers (call with the lock held) ------------------------------------------------

    def _new_id(self, kind: str, wanted: int | None) -> int:
        if wanted is None:
            wanted = self._next_id[kind]
        self._next_id[kind] = max(self._next_id[kind], wanted + 1)
        return wanted

    def _now(self) -> str:
        self._clock += 1
        stamp = _EPOCH + dt.timedelta(seconds=self._clock, microseconds=123456)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _add_prediction(
        self, task_id: int, result: list[dict], score: float | None, model_version: str
    ) -> int:
        task = self._tasks[task_id]
        pid = self._new_id("prediction", None)
        now = self._now()
        self._predictions[pid] = self._predictions_by_task.setdefault(task_id, {})[pid] = {
            "id": pid,
            "task": task_id,
            "project": task["project"],
            "result": copy.deepcopy(result),
            "score": score,
            "model_version": model_version,
            "model": None,
            "model_run": None,
            "cluster": None,
            "neighbors": None,
            "mislabeling": 0.0,
            "created_ago": "0\xa0minutes",
            "created_at": now,
            "updated_at": now,
        }
        return pid

    def _predictions_of(self, task_id: int) -> list[dict]:
        return sorted(self._predictions_by_task.get(task_id, {}).values(), key=lambda p: p["id"])

    def _annotations_of(self, task_id: int) -> list[dict]:
        return sorted(self._annotations_by_task.get(task_id, {}).values(), key=lambda a: a["id"])

    def _task_json(self, task: dict, with_annotations: bool, resolve_uri: bool = False) -> dict:
        annotations = self._annotations_of(task["id"])
        done = [a for a in annotations if not a["was_cancelled"]]
        data = copy.deepcopy(task["data"])
        if resolve_uri:  # Label Studio rewrites cloud URIs to its presign proxy by default
            for key, value in data.items():
                if isinstance(value, str) and value.startswith(_CLOUD_PREFIXES):
                    b64 = base64.urlsafe_b64encode(value.encode()).decode()
                    data[key] = f"/tasks/{task['id']}/presign/?fileuri={b64}"
        payload = {
            "id": task["id"],
            "inner_id": task["id"],
            "project": task["project"],
            "data": data,
            "meta": {},
            "created_at": task["created_at"],
            "updated_at": task["updated_at"],
            "is_labeled": bool(done),
            "overlap": 1,
            "file_upload": None,
            "total_annotations": len(done),
            "cancelled_annotations": len(annotations) - len(done),
            "total_predictions": len(self._predictions_of(task["id"])),
            "comment_count": 0,
            "unresolved_comment_count": 0,
            "last_comment_updated_at": None,
            "updated_by": [],
            "annotators": sorted({a["completed_by"] for a in annotations}),
        }
        if with_annotations:
            payload["annotations"] = copy.deepcopy(annotations)
            payload["predictions"] = copy.deepcopy(self._predictions_of(task["id"]))
            payload["drafts"] = []
        return payload

    def _choices_result(self, project_id: int, label: str | list[str]) -> list[dict]:
        parsed = parse_label_config(self._projects[project_id]["label_config"])
        return [
            {
                "id": uuid.uuid4().hex[:10],
                "from_name": parsed.choices_name,
                "to_name": parsed.video_name,
                "type": "choices",
                "origin": "manual",
                "value": {"choices": [label] if isinstance(label, str) else list(label)},
            }
        ]

    def _mint(self, token_type: str, ttl_s: float) -> str:
        claims = {
            "token_type": token_type,
            "exp": int(time.time() + ttl_s),
            "iat": int(time.time()),
            "jti": uuid.uuid4().hex,
            "user_id": 1,
        }
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")

    @staticmethod
    def _decode(token: str) -> dict | None:
        try:
            return jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            return None


ScriptedRoute = Any
"""``route(handler)``: answers one request on a :class:`ScriptedHost` (see its helpers)."""


@dataclass
class ScriptedHost:
    """A loopback HTTP server that records every connection and request it receives and
    answers each path with a scripted behaviour: a redirect, a slow trickle, a body larger
    than announced. Stands in for an attacker's host or a misbehaving media server.

    ``connections`` counts accepted TCP connections, so a test can tell "no request at all"
    from "a request that failed". Unknown paths answer 404.
    """

    host: str = "127.0.0.1"
    seen: list[Seen] = field(default_factory=list)
    routes: dict[str, ScriptedRoute] = field(default_factory=dict)
    connections: int = 0

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.seen.append(Seen(self.path, dict(self.headers.items()), "GET"))
                route = owner.routes.get(urlparse(self.path).path)
                if route is None:
                    MediaHost._send(self, 404, b"not found")
                else:
                    route(self)

        def count_connection() -> None:  # called on the serving thread only: no race
            owner.connections += 1

        self._httpd = LoopbackServer.start(Handler, host=self.host, on_connect=count_connection)
        self.port = self._httpd.port
        self.url = self._httpd.url

    @property
    def host_port(self) -> str:
        """``host:port``, as MEDIA_ALLOWED_HOSTS takes it."""
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        self._httpd.close()

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        """``path`` answers ``status`` with ``Location: location``."""

        def route(req: BaseHTTPRequestHandler) -> None:
            req.send_response(status)
            req.send_header("Location", location)
            req.send_header("Content-Length", "0")
            req.end_headers()

        self.routes[path] = route

    def serve(self, path: str, body: bytes, *, content_length: int | None = -1) -> None:
        """``path`` answers 200 with ``body``; ``content_length`` None sends no
        Content-Length (the body ends when the connection closes), -1 the body's length."""

        def route(req: BaseHTTPRequestHandler) -> None:
            req.send_response(200)
            req.send_header("Content-Type", "video/mp4")
            if content_length is not None:
                length = len(body) if content_length == -1 else content_length
                req.send_header("Content-Length", str(length))
            else:
                req.close_connection = True
                req.send_header("Connection", "close")
            req.end_headers()
            try:
                req.wfile.write(body)
            except OSError:  # the client hung up (e.g. past its size cap)
                return

        self.routes[path] = route

    def trickle(
        self, path: str, *, total_bytes: int, interval_s: float, in_headers: bool = False
    ) -> None:
        """``path`` sends one byte every ``interval_s`` (at most ``total_bytes``): of the body
        after an honest Content-Length, or of the status line itself with ``in_headers``.
        Stops as soon as the client hangs up."""

        def route(req: BaseHTTPRequestHandler) -> None:
            if in_headers:
                data = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * total_bytes
            else:
                req.send_response(200)
                req.send_header("Content-Length", str(total_bytes))
                req.end_headers()
                req.wfile.flush()
                data = b"\0" * total_bytes
            for i in range(len(data)):  # bounded: one byte per step
                try:
                    req.wfile.write(data[i : i + 1])
                    req.wfile.flush()
                except OSError:
                    return
                time.sleep(interval_s)
            req.close_connection = True

        self.routes[path] = route
