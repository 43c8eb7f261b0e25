"""backend/protocol.py: project ids as Label Studio sends them."""

from __future__ import annotations

import pytest

from backend.protocol import normalize_project


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("12.1700000000", "12"),  # /setup and /predict: id.created_at
        ("12", "12"),
        (12, "12"),
        (12.0, "12"),
        ({"id": 12, "title": "Videos"}, "12"),  # webhooks
        (" 7.1 ", "7"),
        ("demo", "demo"),  # CLI projects may have names
    ],
)
def test_normalize_project(sent, expected):
    assert normalize_project(sent) == expected


@pytest.mark.parametrize("sent", [None, "", {}, {"id": None}, True, "../x", "a/b", "a b", "x" * 65])
def test_normalize_project_rejects_unusable_ids(sent):
    with pytest.raises(ValueError):
        normalize_project(sent)
