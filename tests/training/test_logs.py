"""training/logs.py: LOG_FORMAT=json writes one JSON object per line with the fields a log
shipper indexes (and the project, task and job when known); both formats cut URL secrets; one
configure_logging call replaces the previous one instead of stacking handlers."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager

import pytest

from training.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    get_log_context,
    log_context,
)
from training.settings import Settings

SIGNED = "https://bucket.example/v.mp4?X-Amz-Signature=s3cr3t&X-Amz-Credential=AKIA"


def record(msg: str, *args: object, exc_info=None, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("backend.predictor", logging.WARNING, __file__, 1, msg, args, exc_info)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


@contextmanager
def root_handlers_restored():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


def test_a_json_line_has_the_shippers_fields_and_the_context():
    with log_context(project="3", job="train-3-1"), log_context(task=41):
        line = JsonFormatter().format(record("project %s: over %s", "3", "MAX_VIDEO_MB"))
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "backend.predictor"
    assert entry["message"] == "project 3: over MAX_VIDEO_MB"
    assert entry["time"].endswith("Z") and entry["time"][:2] == "20"
    assert (entry["project"], entry["task"], entry["job"]) == ("3", 41, "train-3-1")
    assert get_log_context() == {}  # the blocks ended


def test_extra_wins_over_the_context_and_unknown_fields_are_left_out():
    with log_context(project="3", task=None):
        entry = json.loads(JsonFormatter().format(record("hello", task=7)))
    assert entry["project"] == "3" and entry["task"] == 7
    assert "job" not in entry
    assert "job" not in json.loads(JsonFormatter().format(record("hi")))


def test_a_multi_line_message_and_its_traceback_stay_one_line_of_json():
    try:
        raise ValueError(f"cannot fetch {SIGNED}")
    except ValueError:
        line = JsonFormatter().format(record("two\nlines", exc_info=sys.exc_info()))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "two\nlines"
    assert "ValueError: cannot fetch https://bucket.example/v.mp4" in entry["exception"]


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_url_secrets_never_reach_a_line(formatter):
    try:
        raise RuntimeError(SIGNED)
    except RuntimeError:
        line = formatter.format(
            record("fetching %s", "https://user:pa55@host/x.mp4?token=t0k", exc_info=sys.exc_info())
        )
    for secret in ("s3cr3t", "AKIA", "pa55", "t0k"):
        assert secret not in line
    assert "https://bucket.example/v.mp4" in line and "https://host/x.mp4" in line


def test_the_text_line_names_the_process():
    line = TextFormatter().format(record("hello"))
    assert f"WARNING [{record('x').process}] backend.predictor: hello" in line


def test_configure_logging_replaces_its_own_handler_and_keeps_others(capsys):
    with root_handlers_restored() as root:
        other = logging.NullHandler()
        root.addHandler(other)
        configure_logging("INFO", "text")
        configure_logging("debug", "json")
        ours = [h for h in root.handlers if h is not other and isinstance(h, logging.StreamHandler)]
        assert other in root.handlers
        assert root.level == logging.DEBUG
        with log_context(project="9"):
            logging.getLogger("training.jobs.run").info("trained %d clips", 12)
        for handler in ours:
            handler.flush()
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    assert [(e["logger"], e["message"], e["project"]) for e in lines] == [
        ("training.jobs.run", "trained 12 clips", "9")
    ]


def test_log_format_is_a_checked_setting():
    assert Settings(log_format="JSON").log_format == "json"
    assert Settings().log_format == "text"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        Settings(log_format="xml")
