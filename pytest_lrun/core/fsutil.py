"""Atomic, durable file writes shared by every module that keeps state on disk.

Readers of a file written here see either the whole old content or the whole new
content, never a torn mix: the data goes to a fresh temporary file in the same
directory (so the final rename stays on one filesystem), is flushed and fsynced,
is renamed over the target with :func:`os.replace`, and finally the directory is
fsynced so the rename itself survives a power cut. If anything fails before the
rename, the temporary file is removed and the target is left untouched.

Temporary files are named ``.<target name>.<random>.tmp``; a crash between
creating one and the rename can leave such an orphan behind, never a damaged
target. Scanners of a directory should ignore names that start with a dot.

``durable=False`` skips both fsyncs (atomicity is kept, durability across a power
cut is not): for tests, benchmarks and caches that can be rebuilt.

A store opens its state dir with :func:`make_state_dir`: created private (0700), or
refused when it exists and is another user's or writable by group or others, since
whoever can write it can forge run records or plant a symlink where a run's files go.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from pytest_lrun.core.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "ENTRY_BYTES",
    "OPEN_NOFOLLOW",
    "NotAFile",
    "atomic_write_bytes",
    "atomic_write_json",
    "fsync_dir",
    "make_state_dir",
    "read_regular",
    "remove_tree",
    "tree_size",
]

# fsync on a directory descriptor is not supported everywhere (some network and
# FUSE filesystems say EINVAL or ENOTSUP); that only weakens durability.
_DIR_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES})


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename or unlink in it) to stable storage, where supported."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:  # e.g. Windows cannot open directories
        if exc.errno in _DIR_FSYNC_UNSUPPORTED or isinstance(exc, PermissionError):
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old or the new file, whole.

    The file gets permission bits ``mode`` (default owner read/write only). The
    parent directory must exist. On failure the target is unchanged and no
    temporary file is left behind.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        try:
            if mode != 0o600 and hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    if durable:
        fsync_dir(directory)


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, mode: int = 0o600, durable: bool = True
) -> None:
    """Write ``obj`` as JSON (indented, trailing newline) via :func:`atomic_write_bytes`.

    The object is serialized before anything touches the disk, so an object that
    cannot be encoded raises ``TypeError``/``ValueError`` with the target unchanged.
    Every string is stored losslessly: the output is ASCII with ``\\uXXXX``
    escapes, so a lone surrogate (how Python carries the bytes of a file name that
    is not valid UTF-8) is escaped like any other character and reads back equal,
    never a reason for the write to fail.
    """
    data = (json.dumps(obj, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
    atomic_write_bytes(path, data, mode=mode, durable=durable)


def stamp() -> str:
    """A fresh, time-sortable name part: ``YYYYmmddTHHMMSS-<8 hex>`` (UTC)."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700 on the last component; leave existing ones."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def make_state_dir(root: Path, subdirs: Iterable[Path] = ()) -> None:
    """Create the state dir ``root`` and its ``subdirs`` (:func:`make_private_dir`), and check
    that each one that already existed is private: owned by this user, not writable by group or others.

    :raises ConfigError: a path cannot be made a directory, or is not private (the message names
        it and the fix)
    """
    for directory in (root, *subdirs):
        try:
            make_private_dir(directory)
            st = os.stat(directory)  # a symlinked state dir is judged by the folder it leads to
        except OSError as exc:
            reason = "exists and is not a directory" if isinstance(exc, FileExistsError) else exc.strerror
            raise ConfigError(f"state dir {root}", f"cannot use it: {reason or exc}") from exc
        me = os.geteuid()
        if st.st_uid != me:
            raise ConfigError(
                f"state dir {directory}",
                f"owned by uid {st.st_uid}, not by you (uid {me}): its owner could forge your runs' "
                "records; use a state dir of your own (--lrun-state-dir, LRUN_STATE_DIR)",
            )
        if st.st_mode & 0o022:
            raise ConfigError(
                f"state dir {directory}",
                f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): they could forge "
                f"run records or plant links; fix it with: chmod 700 {directory}",
            )


def move_aside(path: Path, corrupt_dir: Path, label: str, *, durable: bool = True) -> Path | None:
    """Move ``path`` into ``corrupt_dir`` under a fresh name, never replacing a file there.

    Returns the new path, or ``None`` if ``path`` is already gone.
    """
    while True:
        dest = corrupt_dir / f"{label}.{stamp()}.json"
        try:
            os.link(path, dest)  # unlike rename, never replaces an existing file
        except FileNotFoundError:
            return None
        except FileExistsError:
            continue
        except OSError:  # no hard links here: the random stamp keeps the name fresh
            if dest.exists():
                continue
            try:
                os.rename(path, dest)
            except FileNotFoundError:
                return None
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        break
    if durable:
        fsync_dir(corrupt_dir)
        fsync_dir(path.parent)
    return dest


class Unparseable(Exception):
    """A state file exists but is not what it should be (bad JSON, UTF-8 or shape)."""


def parse_record(raw: bytes, from_dict: Callable[[Any], T]) -> T:
    """Decode a JSON state record with ``from_dict``; any malformation raises :class:`Unparseable`."""
    try:
        return from_dict(json.loads(raw))
    except (ValueError, TypeError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise Unparseable(str(exc) or type(exc).__name__) from exc


#: Flags to add to ``os.open`` of a file in a tree we pack or extract: a symlink is not
#: followed, the descriptor does not leak into child processes, and Windows does not
#: translate newlines. Each is 0 where the platform lacks it.
OPEN_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

#: ``os.open`` flags to read a file found in a tree we hash, pack or read rules from: as
#: :data:`OPEN_NOFOLLOW`, and non-blocking, so a file swapped for a fifo after its listing
#: cannot make the open wait for a writer (the caller's fstat then refuses it).
OPEN_READ_NOFOLLOW = os.O_RDONLY | OPEN_NOFOLLOW | getattr(os, "O_NONBLOCK", 0)


class NotAFile(OSError):
    """A path that should be a regular file is something else (``kind``: "a directory", "a fifo", ...)."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{path} is {kind}, not a regular file")
        self.path = path
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.kind))


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words: "a regular file", "a directory", "a fifo", ..."""
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a file"


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the regular file at ``path``, opened without following a symlink or waiting.

    A fifo, a directory, a device or a symlink at ``path`` is never read (a fifo
    would block the open or the read for ever): it raises :class:`NotAFile`.

    :raises FileNotFoundError: nothing at ``path``
    :raises NotAFile: something other than a regular file is there
    :raises OSError: it could not be read
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, OPEN_READ_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise NotAFile(name, "a symbolic link") from None
        if exc.errno == errno.ENXIO:  # a socket
            raise NotAFile(name, "a socket") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotAFile(name, file_kind(mode))
    with os.fdopen(fd, "rb") as f:
        return f.read()


#: What a directory, symlink or other non-file entry is counted as in a size cap: the
#: block it takes on most file systems. Without it a tree of empty folders weighs nothing.
ENTRY_BYTES = 4096


def _scan(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []  # removed while we walk


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes under ``path``: each regular file's size, each other entry :data:`ENTRY_BYTES`.

    Walks with an explicit stack (no recursion, whatever the depth), never follows
    a symlink, and skips what vanishes meanwhile.
    """
    total = 0
    stack = [os.fspath(path)]
    while stack:
        for entry in _scan(stack.pop()):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
            else:
                total += ENTRY_BYTES
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return total


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` and everything under it; a path already gone is fine.

    Walks with an explicit stack, so a tree of any depth goes (``shutil.rmtree``
    recurses and raises ``RecursionError`` on a tree a thousand folders deep).
    Symlinks are removed, never followed.

    :raises OSError: an entry could not be removed (other than by vanishing first)
    """
    top = os.fspath(path)
    try:
        if not stat.S_ISDIR(os.lstat(top).st_mode):
            os.unlink(top)
            return
    except FileNotFoundError:
        return
    stack = [top]
    while stack:
        current = stack[-1]
        subdirs = []
        for entry in _scan(current):
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        if subdirs:
            stack.extend(subdirs)
            continue
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(current)
        stack.pop()
