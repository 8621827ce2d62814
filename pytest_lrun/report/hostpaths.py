"""Container paths as the host names them.

A run's workdir in the container holds the dispatched directory, so a path the
inner pytest names -- in a traceback, a crash location, a skip -- is a file of
that directory on the host. Reports, annotations and summaries show the host's
path, the way local pytest would show it: relative to the directory pytest was
started in where that is shorter (pytest's ``bestrelpath``), absolute otherwise.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# A location at the start of a traceback line, as pytest's long and short styles print it:
# ``test_x.py:13: AssertionError``, ``sub/test_x.py:9: in test_y``.
_LOCATION_LINE = re.compile(r"^(?P<path>[^\s/:][^\s:]*\.py)(?P<rest>:\d+:)", re.MULTILINE)


class HostPaths:
    """Maps the paths of one run's container (its ``workdir``) to the dispatched directory's."""

    def __init__(self, test_dir: Path, workdir: str, invocation_dir: Path) -> None:
        self.test_dir = test_dir
        self.start = invocation_dir
        self.workdir = workdir.rstrip("/")
        shown = _shortest(test_dir, invocation_dir)
        self._prefix = "" if shown == "." else shown.rstrip("/") + "/"  # what a relative inner path gains

    def absolute(self, path: str) -> str:
        """``path`` (absolute in the container, or relative to its workdir) as an absolute host path;
        a path outside the workdir (the image's own files) is left as it is."""
        if path == self.workdir or path.startswith(self.workdir + "/"):
            return str(self.test_dir / path[len(self.workdir) + 1 :])
        if not os.path.isabs(path):
            return str(self.test_dir / path)
        return path

    def relative(self, path: str) -> str:
        """``path`` relative to the directory pytest was started in (``fails/test_x.py``): what a
        problem matcher or a CI annotation needs; absolute when outside it."""
        if path.startswith(self.workdir + "/"):
            path = path[len(self.workdir) + 1 :]
        return self._prefix + path if not os.path.isabs(path) else path

    def text(self, text: str) -> str:
        """A failure's text with the container's paths turned into the host's: locations relative
        to the workdir first, then absolute paths below it."""
        if self._prefix:
            text = _LOCATION_LINE.sub(self._relocated, text)
        return text.replace(self.workdir + "/", self._prefix)

    def _relocated(self, match: re.Match[str]) -> str:
        path = match["path"]
        if path.startswith(("../", "./")):  # outside the directory: not one of its files
            return match[0]
        return self._prefix + path + match["rest"]


def _shortest(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when that is shorter than the absolute path (pytest's choice)."""
    try:
        rel = os.path.relpath(path, start)
    except ValueError:  # another drive
        return str(path)
    return rel if len(rel) < len(str(path)) else str(path)
