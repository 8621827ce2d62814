"""Which paths of a tree are left out: the ignore rules of test directories and of build contexts.

:mod:`pytest_lrun.tree.walk` walks a tree and asks the matcher this module makes
(:func:`matcher`) about each path; this module owns the rules and nothing else:

* :data:`TEST_DIR_IGNORES`, for test directories: :data:`DEFAULT_IGNORES`, then a
  ``.lrunignore`` file at the tree's root in gitignore syntax (a ``!pattern`` line can
  re-include what the defaults exclude).
* :data:`DOCKER_IGNORES`, for build contexts: the context's ``.dockerignore`` in
  Docker's syntax. Its patterns are relative to the context's root (``foo`` is
  ``./foo`` only, where gitignore would match ``foo`` at any depth), ``**`` spans
  folders, ``!`` re-includes, ``#`` starts a comment; a pattern that names a folder
  leaves out all it holds. No defaults: the builder sees what ``docker build`` sends.

The ignore file itself and the rules' ``keep`` paths (a build's Dockerfile) are never
left out, nor are the folders above them: Docker sends the Dockerfile and the
``.dockerignore`` to the builder whatever the file says, and the ignore file of a
test directory is hashed so that a change to it is a change to the tree.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass

import pathspec

from pytest_lrun.core.errors import HashError
from pytest_lrun.core.fsutil import OPEN_READ_NOFOLLOW

__all__ = ["DEFAULT_IGNORES", "DOCKER_IGNORES", "IGNORE_FILE", "TEST_DIR_IGNORES", "IgnoreRules", "matcher"]

#: Ignore patterns (gitignore syntax) applied to every test directory before its ``.lrunignore``.
DEFAULT_IGNORES: tuple[str, ...] = ("__pycache__/", "*.pyc", ".pytest_cache/", ".git/", ".lrun/")

#: Name of a test directory's ignore file, read at the tree's root only. It is hashed itself.
IGNORE_FILE = ".lrunignore"


@dataclass(frozen=True)
class IgnoreRules:
    """A tree's ignore rules: ``defaults``, then the ``file`` at its root; ``keep`` is never ignored.

    ``anchored``: the file's patterns are relative to the root (``.dockerignore``), not
    gitignore's "at any depth" for a pattern without a slash.
    """

    file: str
    defaults: tuple[str, ...] = ()
    anchored: bool = False
    keep: tuple[str, ...] = ()


TEST_DIR_IGNORES = IgnoreRules(IGNORE_FILE, DEFAULT_IGNORES)
DOCKER_IGNORES = IgnoreRules(".dockerignore", anchored=True)


def matcher(top: str, rules: IgnoreRules) -> Callable[[str], bool]:
    """Whether a path relative to ``top`` (a folder's with a trailing ``/``) is left out.

    :raises HashError: the ignore file is not a regular file, not UTF-8, or has a bad pattern
    """
    lines = list(rules.defaults)
    path = os.path.join(top, rules.file)
    for number, line in enumerate(_read(path, rules.file), 1):
        pattern = _anchored(line) if rules.anchored else line
        try:
            pathspec.GitIgnoreSpec.from_lines([pattern])
        except ValueError as exc:
            raise HashError(path, f"line {number}: invalid pattern {line!r}") from exc
        lines.append(pattern)
    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    any_pattern = _any_pattern(spec)
    search = any_pattern.search if any_pattern is not None else None
    exact = spec.match_file
    kept = {rules.file, *rules.keep}
    kept |= {parent + "/" for path in kept for parent in _parents(path)}

    def ignored(relpath: str) -> bool:
        # Most paths match no pattern at all; one combined regex settles those in one call
        # and only the rest pay for the spec's exact last-match-wins evaluation.
        if search is not None and search(relpath) is None:
            return False
        return relpath not in kept and exact(relpath)

    return ignored


def _read(path: str, name: str) -> list[str]:
    """The ignore file's lines ([] when there is none).

    Anything but a regular file is refused unopened; the file is then opened without
    following a symlink and without blocking, and checked again, so one swapped for a
    fifo meanwhile cannot hang the hash.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise HashError(path, exc.strerror or str(exc)) from exc
    if not stat.S_ISREG(st.st_mode):
        raise HashError(path, f"{name} must be a regular file")
    try:
        fd = os.open(path, OPEN_READ_NOFOLLOW)
    except OSError as exc:
        raise HashError(path, f"changed while hashing: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HashError(path, f"changed while hashing: {name} is no longer a regular file")
        try:
            return f.read().decode("utf-8").splitlines()
        except OSError as exc:
            raise HashError(path, exc.strerror or str(exc)) from exc
        except UnicodeDecodeError as exc:
            raise HashError(path, f"{name} is not UTF-8 text: {exc.reason}") from exc


def _anchored(line: str) -> str:
    """A ``.dockerignore`` line as a gitignore pattern anchored at the root (as Docker reads it)."""
    text = line.strip()
    if not text or text.startswith("#"):
        return ""
    negate = text.startswith("!")
    body = text[1:].strip() if negate else text
    # Docker cleans each pattern as a path: "./a//b/" is "a/b", a leading "/" means the root anyway.
    parts = [part for part in body.split("/") if part not in ("", ".")]
    if not parts:
        return ""
    return ("!" if negate else "") + "/" + "/".join(parts)


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _any_pattern(spec: pathspec.GitIgnoreSpec) -> re.Pattern[str] | None:
    """One regex matching wherever any of the spec's patterns matches; None if unsure."""
    parts = []
    for pattern in spec.patterns:
        if getattr(pattern, "include", None) is None:
            continue  # blank lines and comments
        regex = getattr(pattern, "regex", None)
        if (
            not isinstance(regex, re.Pattern)
            or not isinstance(regex.pattern, str)
            or regex.flags != re.UNICODE
            or _BACKREF.search(regex.pattern)
        ):
            return None
        parts.append("(?:" + _NAMED_GROUP.sub("(?:", regex.pattern) + ")")
    try:
        return re.compile("|".join(parts) or "(?!)")
    except re.error:
        return None


_NAMED_GROUP = re.compile(r"\(\?P<[A-Za-z_]\w*>")
_BACKREF = re.compile(r"\\[1-9]|\(\?P=")
