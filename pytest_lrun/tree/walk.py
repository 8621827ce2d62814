"""What a tree contains: the one walk of a test directory (or a build context), in a fixed order.

:func:`iter_files` walks a directory with ``os.scandir`` (symlinks are never followed),
leaves out what the ignore rules say (:mod:`pytest_lrun.tree.ignores`: for a test
directory :data:`~pytest_lrun.tree.ignores.DEFAULT_IGNORES` plus a ``.lrunignore`` file in
gitignore syntax at the tree's root; for a build context its ``.dockerignore``) and
yields one :class:`Entry` per file, directory and symlink. The digest
(:mod:`pytest_lrun.tree.hashing`) and the snapshot (:mod:`pytest_lrun.tree.snapshot`) go
through the same walk (:func:`walk`), each with its own leaf function. Entries come in
the byte order of their paths, a directory's path taken with a trailing ``/`` (so a
directory is followed by its contents), whatever order the file system lists them in.

A hostile tree gets a :class:`~pytest_lrun.core.errors.HashError` naming the path and
what is wrong, or the handling said here; never a hang:

* a symlink is hashed and shipped as its text, wherever it points (out of the tree,
  to ``/``, nowhere): nothing is read and no folder is walked through one, and a
  folder or file swapped for one mid-walk is refused ("changed while hashing");
* a fifo, socket or device is refused ("unsupported file type (a fifo)") and never
  opened, unless an ignore rule leaves it out; a file swapped for one after its
  folder was listed is opened non-blocking (no wait for a writer), then refused;
* a file or folder that cannot be read or listed is refused with the system's
  reason ("Permission denied");
* names that are not UTF-8 are hashed and shipped as the file system's bytes; an
  error names them decoded with ``surrogateescape`` (``os.fsencode(err.path)`` is
  the name's bytes, :func:`pytest_lrun.core.text.printable` shows it);
* a file that changes while it is read: see :mod:`pytest_lrun.tree.snapshot` and
  :mod:`pytest_lrun.tree.hashing`;
* a tree of 100k files is walked with one folder open at a time, each folder's
  listing in memory while it is walked; ``python bench/hash.py`` hashes, snapshots
  and re-hashes such a tree.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

from pytest_lrun.core.errors import HashError
from pytest_lrun.core.fsutil import OPEN_READ_NOFOLLOW
from pytest_lrun.tree.ignores import TEST_DIR_IGNORES, IgnoreRules, matcher

__all__ = [
    "Entry",
    "EntryKind",
    "Leaf",
    "LeafFn",
    "Walked",
    "check_root",
    "iter_files",
    "kind_leaf",
    "open_file",
    "os_reason",
    "unsupported",
    "walk",
]

EntryKind = Literal["file", "dir", "symlink"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a tree as it is hashed and shipped.

    ``relpath`` is relative to the root with ``/`` separators; ``abspath`` is the
    absolute path on this machine. ``executable`` is the user-x bit of a file
    (always ``False`` for directories and symlinks), ``size`` a file's size from
    ``lstat`` (0 otherwise) and ``link_target`` a symlink's text, never resolved
    (``None`` otherwise).
    """

    relpath: str
    kind: EntryKind
    executable: bool
    size: int
    abspath: str
    link_target: str | None = None


_L = TypeVar("_L")

# What the walk yields per entry: relpath, relpath as file-system bytes, abspath, and
# None for a directory or what the caller's leaf function made of anything else. Plain
# tuples, as a hash goes through 100k of them.
Walked = tuple[str, bytes, str, _L | None]

# A leaf function gets an entry that is not a directory, its directory's fd (None where
# the walk goes by path), its relpath, the relpath as bytes and its abspath, and says
# what the walk yields for it. ``os.open(entry.path, ..., dir_fd=fd)`` opens the entry
# either way. It runs while the directory is listed, so it may read the entry then.
LeafFn = Callable[[os.DirEntry[str], int | None, str, bytes, str], _L]

# What iter_files and snapshot make of a leaf: kind, lstat result (files only, and
# only if asked for), link text (symlinks only).
Leaf = tuple[EntryKind, os.stat_result | None, str | None]

_FSENC = sys.getfilesystemencoding()
_FSERR = sys.getfilesystemencodeerrors()

# Each directory below the root is opened without following a symlink (one swapped in
# for it mid-walk is refused, never followed out of the tree) and listed through its
# fd; files are opened relative to it, so the kernel resolves one path component per
# file, not all of them. Where directories cannot be opened (Windows) the walk goes by path.
_DIR_FDS = os.scandir in os.supports_fd and os.open in os.supports_dir_fd
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


def iter_files(root: str | os.PathLike[str], *, ignores: IgnoreRules = TEST_DIR_IGNORES) -> Iterator[Entry]:
    """The entries of the tree at ``root`` that are hashed and shipped, in stream order.

    Parents come before their contents. Raises :class:`HashError` at once if ``root``
    is missing or not a directory or its ``.lrunignore`` cannot be read, and while
    iterating if an entry cannot be read or is not a file, directory or symlink.
    """
    top = check_root(root)
    return _entries(walk(top, matcher(top, ignores), _stat_leaf))


def _entries(items: Iterator[Walked[Leaf]]) -> Iterator[Entry]:
    for relpath, _, abspath, leaf in items:
        if leaf is None:
            yield Entry(relpath, "dir", False, 0, abspath)
            continue
        kind, st, target = leaf
        if st is None:
            yield Entry(relpath, kind, False, 0, abspath, target)
        else:
            yield Entry(relpath, kind, bool(st.st_mode & stat.S_IXUSR), st.st_size, abspath)


def check_root(root: str | os.PathLike[str]) -> str:
    """``root`` made absolute, once it is known to be a directory (else :class:`HashError`)."""
    top = os.path.abspath(os.fspath(root))
    try:
        st = os.stat(top)
    except FileNotFoundError:
        raise HashError(top, "no such directory") from None
    except OSError as exc:
        raise HashError(top, os_reason(exc)) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise HashError(top, "not a directory")
    return top


def walk(top: str, ignored: Callable[[str], bool], leaf: LeafFn[_L]) -> Iterator[Walked[_L]]:
    """The entries under ``top`` that ``ignored`` keeps, in stream order, each leaf as ``leaf`` makes it."""
    # Depth first with an explicit stack (no recursion limit on deep trees); each
    # directory's children sorted, a directory keyed with a trailing "/". A directory
    # is listed whole and its fd closed before any of it is yielded: one directory fd
    # is open at a time, however deep the tree.
    stack = [iter(_list_dir(top, "", ignored, leaf, follow=True))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        yield item
        if item[3] is None:
            stack.append(iter(_list_dir(item[2], item[0] + "/", ignored, leaf)))


def _list_dir(
    dirpath: str, prefix: str, ignored: Callable[[str], bool], leaf: LeafFn[_L], *, follow: bool = False
) -> list[Walked[_L]]:
    # Sorted by file-system bytes, not str: the order must not depend on the locale.
    keyed: list[tuple[bytes, Walked[_L]]] = []
    base = dirpath if dirpath.endswith(os.sep) else dirpath + os.sep
    dir_fd = _open_dir(dirpath, follow) if _DIR_FDS else None
    try:
        with os.scandir(dirpath if dir_fd is None else dir_fd) as it:
            for de in it:
                relpath = prefix + de.name
                name = relpath.encode(_FSENC, _FSERR)
                abspath = base + de.name
                try:
                    if de.is_dir(follow_symlinks=False):
                        if not ignored(relpath + "/"):
                            keyed.append((name + b"/", (relpath, name, abspath, None)))
                    elif not ignored(relpath):
                        keyed.append(
                            (name, (relpath, name, abspath, leaf(de, dir_fd, relpath, name, abspath)))
                        )
                except OSError as exc:
                    raise HashError(abspath, os_reason(exc)) from exc
    except OSError as exc:
        raise HashError(dirpath, os_reason(exc)) from exc
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    keyed.sort()
    return [item for _, item in keyed]


def _open_dir(dirpath: str, follow: bool) -> int:
    try:
        return os.open(dirpath, _DIR_FLAGS if follow else _DIR_FLAGS | _NOFOLLOW)
    except OSError as exc:
        if not follow and exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise HashError(dirpath, "changed while hashing: no longer a directory") from exc
        raise HashError(dirpath, os_reason(exc)) from exc


def _stat_leaf(de: os.DirEntry[str], dir_fd: int | None, relpath: str, name: bytes, abspath: str) -> Leaf:
    """iter_files' leaf: a file with its lstat result, or a symlink with its text."""
    if de.is_symlink():
        return ("symlink", None, os.readlink(de.path, dir_fd=dir_fd))
    st = de.stat(follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise unsupported(abspath, st.st_mode)
    return ("file", st, None)


def kind_leaf(de: os.DirEntry[str], dir_fd: int | None, relpath: str, name: bytes, abspath: str) -> Leaf:
    """snapshot's leaf: a file the listing says is regular is not lstat'ed (its read takes an fstat)."""
    if de.is_file(follow_symlinks=False):
        return ("file", None, None)
    return _stat_leaf(de, dir_fd, relpath, name, abspath)


def unsupported(abspath: str, mode: int) -> HashError:
    # Found by the listing, a fifo, socket or device is never opened: opening a fifo
    # for reading waits for a writer, and opening a device may act on it.
    return HashError(abspath, f"unsupported file type ({_kind_name(mode)})")


def _kind_name(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return f"mode {stat.S_IFMT(mode):o}"


def os_reason(exc: OSError) -> str:
    """The system's words for ``exc`` ("Permission denied"), as a :class:`HashError` gives them."""
    return exc.strerror or str(exc)


def open_file(path: str, dir_fd: int | None, abspath: str) -> int:
    """Open a file the walk found, for reading, never through a symlink and never waiting on a fifo."""
    try:
        return os.open(path, OPEN_READ_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HashError(abspath, "changed while hashing: now a symlink") from exc
        raise HashError(abspath, os_reason(exc)) from exc
