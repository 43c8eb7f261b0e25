"""What videoloop calls its versions: ``v<N>-<YYYYMMDD>-<HHMMSS>`` (``v3-20250101-120000``),
N counting up per project. Apart from the store so that code which only needs to recognise a
version of ours (connecting a project in Label Studio) does not need the store."""

from __future__ import annotations

import re
import time

VERSION_RE = re.compile(r"^v(\d+)-\d{8}-\d{6}$")
"""A version's name; group 1 is its number."""


def is_version_name(name: str) -> bool:
    """Whether ``name`` has the form of a videoloop version (not whether it exists)."""
    return bool(VERSION_RE.match(name))


def new_version_name(number: int) -> str:
    """The name of version ``number`` published now: ``v<number>-<UTC date>-<UTC time>``."""
    return f"v{number}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
