"""``python -m pytest_lrun``: the ``lrun`` command line."""

from __future__ import annotations

from pytest_lrun.cli import main

raise SystemExit(main())
