"""Text output of the ``lrun`` command line: how lines, times, ages and directories are shown.

Lines are escaped to what the stream can encode, messages folded to one line;
logs go to stdout as bytes. Shared by the commands (:mod:`pytest_lrun.cli`) and
log following (:mod:`pytest_lrun.cli.follow`). The ``--json`` envelope stays with
the commands, whose contract it is.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO

from pytest_lrun.core.errors import LrunError
from pytest_lrun.core.times import rfc3339

__all__ = ["age", "binary_stdout", "say", "shown_dir", "when"]


def say(line: str, *, err: bool = False) -> None:
    """Print a line of text output; what the stream cannot encode is backslash-escaped.

    Records may hold lone surrogates (file names that are not UTF-8, decoded by
    ``os.fsdecode``), which a strict UTF-8 stream refuses with ``UnicodeEncodeError``.
    """
    stream = sys.stderr if err else sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    print(line.encode(encoding, "backslashreplace").decode(encoding), file=stream)


def age(since: float | None, now: float) -> str:
    if since is None:
        return "-"
    seconds = max(0.0, now - since)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def when(stamp: float | None, now: float) -> str:
    if stamp is None:
        return "-"
    return f"{rfc3339(stamp)} ({age(stamp, now)} ago)"


def shown_dir(test_dir: str) -> str:
    try:
        return str(Path(test_dir).relative_to(Path.cwd()))
    except ValueError:
        return test_dir


def binary_stdout() -> IO[bytes]:
    sys.stdout.flush()
    buffer: IO[bytes] | None = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only replacement (some test harnesses)
        raise LrunError("stdout cannot take bytes")
    return buffer
