"""``python -m backend.cli``: the ``videoloop`` command."""

import sys

from backend.cli import main

sys.exit(main())
