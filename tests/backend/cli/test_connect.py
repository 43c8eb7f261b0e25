"""``videoloop connect`` as a user runs it, when it cannot connect: exit status 2 and one line
saying why (Label Studio unreachable, the key refused, no such project, a setting missing),
never a traceback nor the key; and TensorFlow stays off its path. The connection itself is
tested against a real Label Studio 1.23.2 (tests/loop/test_label_studio_e2e.py), the plan
in test_connect_plan.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import LS_TOKEN, REPO, free_port, run_videoloop

WRONG_KEY = "wrong-key-2d7c19e0"
SETTINGS = ("LABEL_STUDIO_", "BASIC_AUTH_", "WEBHOOK_SECRET", "REDIS_URL", "LOG_LEVEL")


def connect_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS)}
    return {**env, **settings}


def connect(project: str, backend_url: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    args = ("connect", "--project", project, "--backend-url", backend_url)
    return run_videoloop(*args, env=env, timeout_s=60)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unreachable", "/api/projects/3/: cannot connect (ConnectError)"),
        ("wrong key", "/api/projects/3/: HTTP 401"),
        ("no such project", "project 99 not found in Label Studio at http://127.0.0.1:"),
        ("no address", "LABEL_STUDIO_URL is not set"),
        ("credentials in the URL", "--backend-url must not carry credentials"),
        ("not http", "--backend-url must be http(s)://host[:port]"),
    ],
)
def test_a_failure_is_one_line_without_the_key(label_studio, case, expected):
    project = str(label_studio.add_project("<View/>", project_id=3))
    url, key, backend = label_studio.url, LS_TOKEN, "http://127.0.0.1:9090"
    if case == "unreachable":
        url = f"http://127.0.0.1:{free_port()}"
    elif case == "wrong key":
        key = WRONG_KEY
    elif case == "no such project":
        project = "99"
    elif case == "no address":
        url = ""
    elif case == "credentials in the URL":
        backend = "http://user:pass@127.0.0.1:9090"
    elif case == "not http":
        backend = "127.0.0.1:9090"
    env = connect_env(LABEL_STUDIO_URL=url, LABEL_STUDIO_API_KEY=key)

    done = connect(project, backend, env)

    assert done.returncode == 2, done
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("videoloop connect: ") and expected in line, line
    assert LS_TOKEN not in line and WRONG_KEY not in line
    if case == "wrong key":
        assert "check LABEL_STUDIO_API_KEY" in line


def test_half_of_basic_auth_is_refused_before_any_request(label_studio):
    env = connect_env(
        LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=LS_TOKEN, BASIC_AUTH_USER="u"
    )
    done = connect("3", "http://127.0.0.1:9090", env)
    assert done.returncode == 2
    assert "BASIC_AUTH_USER and BASIC_AUTH_PASS go together" in done.stderr
    assert label_studio.api_requests() == []


def test_tensorflow_stays_off_the_command_path():
    script = (
        "import sys\n"
        "from backend.cli import main\n"
        "main(['connect', '--project', '3', '--backend-url', 'http://127.0.0.1:9090'])\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    env = connect_env(
        LABEL_STUDIO_URL=f"http://127.0.0.1:{free_port()}", LABEL_STUDIO_API_KEY=LS_TOKEN
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.stdout.strip() == "False False", done.stderr
