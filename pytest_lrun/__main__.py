"""``python -m pytest_lrun``: the ``lrun`` command line."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
