"""LabelStudioError, and how a failed call to Label Studio becomes one.

Why apart from the client: every message must name the URL and the HTTP status and never
the API key, yet what comes back from outside (an answer's detail, an exception's text) may
echo the key; this one place builds every such message and clears the key from it.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.parse_error import ParsingError

DETAIL_CHARS = 200
"""How much of an error answer's detail goes into the message, in characters."""


class LabelStudioError(RuntimeError):
    """Label Studio cannot be read: unreachable, 401/403/404, or an answer we cannot use.

    The message names the URL and the HTTP status, never the API key; ``status`` is the
    HTTP status when Label Studio answered (None when it did not, or for a local problem).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def call_error(
    base: str, api_key: str, where: str, exc: Exception, *, timeout_s: float, verb: str = "read"
) -> LabelStudioError:
    """The error for a failed call to ``where`` (a path under ``base``, or a description).

    Args:
        base: Label Studio's base URL.
        api_key: the key the call used, cleared from whatever the message quotes.
        where: ``/api/...`` (shown under ``base``) or a description ("the API key").
        exc: what the sdk or httpx raised.
        timeout_s: the timeout the call had, for the message when it ran out.
        verb: what failed: "read", "write to", "update".
    """
    target = where if not where.startswith("/") else f"{base}{where}"
    if isinstance(exc, ApiError):
        status = exc.status_code
        text = f"{target}: HTTP {status}{_scrub(_detail(exc.body), api_key)}"
        if status in (401, 403):
            text += _auth_hint(api_key)
    elif isinstance(exc, httpx.TimeoutException):
        text = f"{target}: no answer within {timeout_s:g} s"
    elif isinstance(exc, httpx.HTTPError):
        text = f"{target}: cannot connect ({type(exc).__name__})"
    elif isinstance(exc, ParsingError | ValueError):
        text = f"{target}: the answer is not what the API returns ({type(exc).__name__})"
    else:
        text = f"{target}: {type(exc).__name__}: {_scrub(str(exc), api_key)}"
    status = exc.status_code if isinstance(exc, ApiError) else None
    return LabelStudioError(f"cannot {verb} Label Studio: " + text, status=status)


def _auth_hint(api_key: str) -> str:
    if api_key.count(".") == 2:
        return (
            " (LABEL_STUDIO_API_KEY looks like a personal access token: it is exchanged at "
            "/api/token/refresh/; check that it is current and for this Label Studio)"
        )
    return (
        " (check LABEL_STUDIO_API_KEY: a legacy token is refused where legacy tokens are "
        "disabled, use a personal access token there)"
    )


def _detail(body: object) -> str:
    if isinstance(body, Mapping):
        detail = body.get("detail") or body.get("message") or body.get("error")
        text = str(detail) if detail else ""
    elif body is None:
        text = ""
    else:
        text = " ".join(str(body).split())
    text = text[:DETAIL_CHARS]
    return f": {text}" if text else ""


def _scrub(text: str, api_key: str) -> str:
    return text.replace(api_key, "***") if api_key else text
