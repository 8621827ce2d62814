"""What the ``lrun`` command line prints: text lines, the ``--json`` envelope, errors and warnings.

Lines are escaped to what the stream can encode, messages folded to one line;
logs go to stdout as bytes; times, ages and directories are shown one way. The
``--json`` envelope (:func:`print_json`) carries :data:`JSON_SCHEMA_VERSION`; an
error is one ``lrun: error:`` line or the envelope's ``error`` (:func:`print_error`);
the package's warnings are ``lrun: warning:`` lines printed once, at the end
(:func:`warnings_at_exit`). Shared by the commands (:mod:`pytest_lrun.cli.commands`),
their context, log following (:mod:`pytest_lrun.cli.follow`) and ``main``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pytest_lrun.core.errors import LrunError
from pytest_lrun.core.text import one_line
from pytest_lrun.core.times import rfc3339

__all__ = [
    "JSON_SCHEMA_VERSION",
    "age",
    "binary_stdout",
    "print_error",
    "print_json",
    "relative_to_cwd",
    "say",
    "warnings_at_exit",
    "when",
]

#: ``schema_version`` of every ``--json`` envelope; raised when a shape changes incompatibly.
JSON_SCHEMA_VERSION = 1


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


def relative_to_cwd(test_dir: str) -> str:
    """A run's directory as the CLI's tables show it: relative to where ``lrun`` runs, when below it."""
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


def print_json(**members: Any) -> None:
    """Print the ``--json`` envelope: ``schema_version`` and ``members`` (ASCII: escapes never fail)."""
    json.dump({"schema_version": JSON_SCHEMA_VERSION, **members}, sys.stdout, indent=2, ensure_ascii=True)
    sys.stdout.write("\n")


def print_error(err: LrunError, *, as_json: bool) -> int:
    """Print the error a command ends with, in the output format asked for; returns its exit status."""
    if as_json:
        print_json(error=err.to_dict())
    else:
        say(f"lrun: error: {one_line(str(err)) or err.code}", err=True)
    return err.exit_code


class _Collect(logging.Handler):
    """Keeps the package's log records (corrupt records moved aside, an index rebuilt) for the end."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def warnings_at_exit() -> Iterator[list[LrunError]]:
    """Print the package's warnings once, at the end, as ``lrun: warning: ...`` lines on stderr.

    Yields a list for the error the command ends with: a warning about that very
    error (``lrun show`` of a corrupt record) is not repeated.
    """
    logger = logging.getLogger("pytest_lrun")
    handler = _Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # else Python's last-resort handler prints each one bare, at once
    printed: list[LrunError] = []
    try:
        yield printed
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        for record in handler.records:
            args = record.args if isinstance(record.args, tuple) else ()
            if not any(arg is err for arg in args for err in printed):
                say(f"lrun: warning: {record.getMessage()}", err=True)
