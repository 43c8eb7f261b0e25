"""WSGI entry for an external gunicorn: ``gunicorn -k gthread --threads 8 backend.wsgi:app``.

Do not pass ``--preload``: the app starts model-loading threads, and each worker must build
its own after the fork (docs/design.md). ``python -m backend.server`` sets the options for you.
"""

from __future__ import annotations

from backend.app import create_app

app = create_app()
