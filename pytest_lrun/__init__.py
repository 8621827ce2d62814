"""pytest-lrun: dispatch test directories to named Docker Engines as container runs."""

from __future__ import annotations

__version__ = "0.1.0"
