"""Tar out of containers: the hostile tar streams ``get_archive`` returns, extracted safely.

The Docker Engine moves files out of containers only as tar streams (docker-py's
``container.get_archive(path)``); what goes in is written by :mod:`pytest_lrun.tree.archive`,
and :mod:`pytest_lrun.tree.tarstream` reads such a stream under its caps. This module owns
writing one to disk and nothing else:

* :func:`safe_extract` unpacks a tar stream given as an iterator of byte chunks (what
  ``get_archive`` returns) into a destination directory without holding the stream in
  memory. The archive comes from a container that ran arbitrary test code, so it is
  treated as hostile: nothing is ever written outside the destination, what is read
  and written is bounded, and every member that is not written is listed with the
  reason.

Extraction rules (:func:`safe_extract`)
---------------------------------------
* Names: absolute names, names with a ``..`` component, empty names and names with a
  NUL byte (or that the file system encoding cannot represent) are refused; ``.`` and
  empty components are dropped (``./a//b`` is ``a/b``). A name deeper than
  :data:`MAX_EXTRACT_DEPTH` components is refused (``"depth cap"``), so no tree in the
  state dir is deeper than that (deep trees break recursive walkers and ``PATH_MAX``).
* The destination itself may not be a symlink (one planted in a run's folder would
  lead every write elsewhere): the whole stream is then refused, unread.
* No parent of a member may be a symlink (whether it came from this archive or was
  already in the destination), or anything but a directory; missing parents are
  created. Members below a refused member are refused too.
* An existing entry is never replaced (the destination is expected to be fresh): a
  directory member over an existing directory is fine, anything else is refused.
* Regular files are written with ``O_CREAT | O_EXCL | O_NOFOLLOW``; their mode is the
  member's mode ``& 0o755`` (exec bits kept, setuid/setgid/sticky and group/other
  write dropped) plus owner read/write, so the caller can always read what came back.
  Directories get ``& 0o755`` plus owner ``rwx``, applied after all members are in.
* Symlinks: the target must be relative, without NUL, and made only of leading ``..``
  components followed by plain names (``../../lib/x`` yes, ``a/../b`` no), and must
  not climb above the destination from the link's own directory. Because a link never
  climbs after descending, and every directory it climbs through is a real directory
  (never a symlink, see above), each link resolves inside the destination however
  other links in the archive are later arranged; a purely lexical check of
  ``os.path.normpath`` would not hold once links point at links.
* Hard links: accepted only when the target is a regular file this extraction
  already wrote; the link is then written as an independent copy (counted against
  the caps). Docker writes a second name of a hardlinked file as a hard link, so
  refusing all of them would lose legitimate artifacts; linking to anything else
  (``/etc/passwd``, a not-yet-extracted name) is refused.
* Device files, fifos, sparse files and every other type are refused.
* Caps on what is created: every entry created on disk counts against ``max_entries``
  -- files, directories (members and the parents made on the way), symlinks and
  hard-link copies -- and against ``max_bytes``: a file its content, a directory or
  symlink :data:`~pytest_lrun.core.fsutil.ENTRY_BYTES` (about what it occupies on disk). Once either cap would
  be exceeded, that member and every later one is refused with reason ``"entry cap"``
  or ``"size cap"`` (the stream is still read, so the list of what was left behind is
  complete). The ``max_members``-th member is the last one looked at; past it the
  rest of the stream is not read.
* Caps on what is read: at most ``max_read`` bytes of the stream are read (by default
  ``max_bytes`` + :data:`~pytest_lrun.tree.tarstream.STREAM_OVERHEAD`), and extension
  headers are capped, as :mod:`pytest_lrun.tree.tarstream` says. Memory stays at a few
  chunks and one header whatever the stream holds.
* A truncated, corrupt or capped stream is not an exception: what was extracted
  stays, and a ``("<stream>", reason)`` entry is added to
  :attr:`ExtractResult.refused`. Callers put that in the run's error fields.
* Only the first :data:`MAX_REFUSALS_LISTED` refused members are listed by name; the
  rest are counted in one ``("<more>", reason)`` entry, so a stream of a hundred
  thousand bad names gives the run's record a bounded error message, not megabytes.

The destination is assumed not to be modified concurrently by anyone else while the
extraction runs (it is a fresh directory of ours); the checks are made with
``lstat`` before each write, not with ``openat``-style descriptors.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pytest_lrun.core.fsutil import ENTRY_BYTES, OPEN_NOFOLLOW
from pytest_lrun.tree.archive import COPY_CHUNK
from pytest_lrun.tree.tarstream import (
    MAX_EXTRACT_MEMBERS,
    READ_ERRORS,
    Capped,
    TarStream,
    member_parts,
    members,
    name_refusal,
    read_limit,
    stream_reason,
)

__all__ = [
    "MAX_EXTRACT_BYTES",
    "MAX_EXTRACT_DEPTH",
    "MAX_EXTRACT_ENTRIES",
    "MAX_REFUSALS_LISTED",
    "MORE",
    "STREAM",
    "ExtractResult",
    "safe_extract",
]

MAX_EXTRACT_BYTES = 512 * 1024 * 1024

MAX_EXTRACT_ENTRIES = 10_000
"""Entries (files, directories, symlinks, hard-link copies) one extraction may create."""

MAX_EXTRACT_DEPTH = 128
"""Components a member name may have. Far below Python's recursion limit and ``PATH_MAX``."""

STREAM = "<stream>"
"""The name under which problems of the stream itself (truncation, corruption, caps) are refused."""

MAX_REFUSALS_LISTED = 100
"""Refused members listed by name in :attr:`ExtractResult.refused`; the rest are counted (:data:`MORE`)."""

MORE = "<more>"
"""The name of the entry that counts the refused members not listed."""


@dataclass
class ExtractResult:
    """What :func:`safe_extract` did.

    ``written`` holds the normalized member names (``a/b``, relative to the
    destination) of the files, directories and symlinks written, in stream order;
    ``refused`` holds ``(name, reason)`` for the first :data:`MAX_REFUSALS_LISTED`
    members not written, then ``("<more>", reason)`` counting the others, plus
    ``("<stream>", reason)`` when the stream itself was truncated, corrupt or cut at
    a cap; ``bytes_written`` counts regular-file content; ``entries`` counts every
    entry created on disk, the parent directories made on the way included.
    """

    written: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    bytes_written: int = 0
    entries: int = 0

    @property
    def stream_error(self) -> str | None:
        """The reason the stream itself was cut short, if it was."""
        for name, reason in self.refused:
            if name == STREAM:
                return reason
        return None


class _Ledger:
    """One extraction's account: what it created against the caps, and what it refused."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.result = ExtractResult()
        self.charged = 0  # against max_bytes: file content plus ENTRY_BYTES per directory and symlink
        self.capped: str | None = None  # "size cap" or "entry cap" once one was reached
        self.refused_parts: set[tuple[str, ...]] = set()
        self.listed = 0  # refused members listed by name
        self.unlisted = 0  # refused members past MAX_REFUSALS_LISTED

    def refuse(self, name: str, reason: str, parts: tuple[str, ...] | None = None) -> None:
        if self.listed < MAX_REFUSALS_LISTED:
            self.result.refused.append((name, reason))
            self.listed += 1
        else:
            self.unlisted += 1
        if parts:
            self.refused_parts.add(parts)

    def over_cap(self, cost: int) -> str | None:
        """The cap one more entry costing ``cost`` bytes would break (and it then sticks), or None."""
        if self.result.entries >= self.max_entries:
            self.capped = "entry cap"
        elif cost < 0:
            return "invalid size"
        elif self.charged + cost > self.max_bytes:
            self.capped = "size cap"
        else:
            return None
        return self.capped

    def fits(self, name: str, parts: tuple[str, ...], size: int) -> bool:
        """Whether an entry of ``size`` bytes is within the caps; it is refused if not."""
        cap = self.over_cap(size)
        if cap is not None:
            self.refuse(name, cap, parts)
            return False
        return True

    def created(self, cost: int) -> None:
        self.result.entries += 1
        self.charged += cost

    def close(self) -> None:
        """Count the refused members not listed by name."""
        if self.unlisted:
            self.result.refused.append(
                (MORE, f"{self.unlisted} more members refused; the first {MAX_REFUSALS_LISTED} are listed")
            )


class _Extractor:
    """Writes the members of one stream under ``dest``, each checked first; the account is ``ledger``'s."""

    def __init__(self, dest: Path, ledger: _Ledger) -> None:
        self.dest = dest
        self.ledger = ledger
        self.files: set[tuple[str, ...]] = set()  # regular files written, by parts
        self.dir_modes: list[tuple[Path, int]] = []

    def _prepare_parents(self, parts: tuple[str, ...]) -> str | None:
        """Create missing parents of ``parts``; the reason to refuse it, if any."""
        for depth in range(1, len(parts)):
            if parts[:depth] in self.ledger.refused_parts:
                return "parent was refused"
        path = self.dest
        for part in parts[:-1]:
            path = path / part
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                cap = self.ledger.over_cap(ENTRY_BYTES)
                if cap is not None:
                    return cap
                os.mkdir(path, 0o755)
                self.ledger.created(ENTRY_BYTES)
                continue
            if stat.S_ISLNK(st.st_mode):
                return "path through symlink"
            if not stat.S_ISDIR(st.st_mode):
                return "parent is not a directory"
        return None

    def _checked_parts(self, member: tarfile.TarInfo) -> tuple[str, ...] | None:
        """The member's parts once it passed the checks that need no disk; None: refused (or ``.``)."""
        name = member.name
        checked = member_parts(name)
        if isinstance(checked, str):
            self.ledger.refuse(name, checked)
            return None
        parts = checked
        if self.ledger.capped is not None:
            self.ledger.refuse(name, self.ledger.capped, parts)
            return None
        if not parts:
            if not member.isdir():
                self.ledger.refuse(name, "empty name")
            return None  # "." itself: the destination, nothing to do
        reason = _depth_refusal(parts) or _kind_refusal(member)
        if reason is None and member.issym():
            reason = _symlink_refusal(parts, member.linkname)
        if reason is not None:
            self.ledger.refuse(name, reason, parts)
            return None
        return parts

    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        parts = self._checked_parts(member)
        if parts is None:
            return
        link_source: tuple[str, ...] | None = None
        if member.islnk():
            target = member_parts(member.linkname)
            if isinstance(target, str) or target not in self.files:
                self.ledger.refuse(name, "hardlink to a file not extracted before it", parts)
                return
            link_source = target
        try:
            reason = self._prepare_parents(parts)
            if reason is not None:
                self.ledger.refuse(name, reason, parts)
                return
            path = self.dest.joinpath(*parts)
            if member.isdir():
                self._write_dir(path, member, parts)
            elif member.issym():
                self._write_symlink(path, member, parts)
            elif link_source is not None:
                self._copy_hardlink(name, parts, path, link_source)
            else:
                self._write_file(tar, name, parts, path, member)
        except OSError as exc:
            self.ledger.refuse(name, f"write failed: {exc.strerror or exc}", parts)

    def _write_dir(self, path: Path, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not self.ledger.fits(member.name, parts, ENTRY_BYTES):
                return
            os.mkdir(path, 0o700)
            self.ledger.created(ENTRY_BYTES)
        else:
            if not stat.S_ISDIR(st.st_mode):
                self.ledger.refuse(member.name, "already exists", parts)
                return
        self.dir_modes.append((path, (member.mode & 0o755) | 0o700))
        self.ledger.result.written.append("/".join(parts))

    def _write_symlink(self, path: Path, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        if os.path.lexists(path):
            self.ledger.refuse(member.name, "already exists", parts)
            return
        if not self.ledger.fits(member.name, parts, ENTRY_BYTES):
            return
        os.symlink(member.linkname, path)
        self.ledger.created(ENTRY_BYTES)
        self.ledger.result.written.append("/".join(parts))

    def _create(self, path: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | OPEN_NOFOLLOW
        return os.open(path, flags, 0o600)

    def _write_file(
        self, tar: tarfile.TarFile, name: str, parts: tuple[str, ...], path: Path, member: tarfile.TarInfo
    ) -> None:
        if not self.ledger.fits(name, parts, member.size):
            return
        if os.path.lexists(path):
            self.ledger.refuse(name, "already exists", parts)
            return
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            self.ledger.refuse(name, "no data", parts)
            return
        with source:
            self._copy_into(name, parts, path, source, member.mode)

    def _copy_hardlink(
        self, name: str, parts: tuple[str, ...], path: Path, source_parts: tuple[str, ...]
    ) -> None:
        # A hard link shares its target's inode: the copy takes the target's content and mode.
        source_path = self.dest.joinpath(*source_parts)
        fd = os.open(source_path, os.O_RDONLY | OPEN_NOFOLLOW)
        with os.fdopen(fd, "rb") as source:
            st = os.fstat(fd)
            if not self.ledger.fits(name, parts, st.st_size):
                return
            if os.path.lexists(path):
                self.ledger.refuse(name, "already exists", parts)
                return
            self._copy_into(name, parts, path, source, st.st_mode)

    def _copy_into(self, name: str, parts: tuple[str, ...], path: Path, source: IO[bytes], mode: int) -> None:
        ledger = self.ledger
        fd = self._create(path)
        written = 0
        ok = False
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(COPY_CHUNK):
                    written += len(chunk)
                    if ledger.charged + written > ledger.max_bytes:
                        ledger.capped = "size cap"
                        ledger.refuse(name, "size cap", parts)
                        return
                    out.write(chunk)
                os.fchmod(out.fileno(), (mode & 0o755) | 0o600)
            ok = True
        finally:
            if not ok:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        ledger.created(written)
        ledger.result.bytes_written += written
        self.files.add(parts)
        ledger.result.written.append("/".join(parts))

    def finish(self) -> None:
        self.ledger.close()
        # Directory modes last, so a read-only directory member does not stop its own content.
        for path, mode in self.dir_modes:
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    os.chmod(path, mode)
            except OSError:
                pass


def _depth_refusal(parts: tuple[str, ...]) -> str | None:
    return "depth cap" if len(parts) > MAX_EXTRACT_DEPTH else None


def _kind_refusal(member: tarfile.TarInfo) -> str | None:
    if member.isreg() or member.isdir() or member.issym() or member.islnk():
        return None
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "fifo"
    return f"unsupported member type {member.type!r}"


def _symlink_refusal(parts: tuple[str, ...], target: str) -> str | None:
    """Why a symlink at ``parts`` pointing to ``target`` is refused, or None if it is safe."""
    if not target:
        return "empty symlink target"
    if target.startswith("/"):
        return "absolute symlink target"
    unusable = name_refusal(target)
    if unusable is not None:
        return f"symlink target: {unusable}"
    components = [c for c in target.split("/") if c not in ("", ".")]
    climbs = 0
    while climbs < len(components) and components[climbs] == "..":
        climbs += 1
    if ".." in components[climbs:]:
        return "symlink target has '..' after a name"
    if climbs > len(parts) - 1:
        return "symlink target escapes destination"
    return None


def safe_extract(
    chunks: Iterable[bytes],
    dest: Path,
    *,
    max_bytes: int = MAX_EXTRACT_BYTES,
    max_members: int = MAX_EXTRACT_MEMBERS,
    max_entries: int = MAX_EXTRACT_ENTRIES,
    max_read: int | None = None,
) -> ExtractResult:
    """Extract a tar stream, given as byte chunks, into ``dest`` (created if missing) under the rules above.

    ``max_read`` defaults to ``max_bytes + STREAM_OVERHEAD``. Never raises for
    anything the archive contains; a failing chunk iterator (``OSError``, which
    covers requests' errors) is recorded as a stream error too. Errors of the
    destination itself (not creatable) propagate as ``OSError``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink():
        return ExtractResult(refused=[(STREAM, f"{dest} is a symbolic link: nothing was extracted")])
    dest = dest.resolve(strict=True)
    ledger = _Ledger(max_bytes, max_entries)
    extractor = _Extractor(dest, ledger)
    result = ledger.result
    stream = TarStream(chunks, read_limit(max_bytes, max_read))
    try:
        try:
            tar = stream.open()
        except READ_ERRORS as exc:
            reason = str(exc) if isinstance(exc, Capped) else f"not a readable tar stream: {exc}"
            result.refused.append((STREAM, reason))
            return result
        with tar:
            each = members(tar)
            count = 0
            while True:
                try:
                    member = next(each, None)
                except READ_ERRORS as exc:
                    result.refused.append((STREAM, stream_reason(exc)))
                    break
                if member is None:
                    if not stream.ended:
                        result.refused.append((STREAM, "truncated tar stream: no end-of-archive marker"))
                    break
                count += 1
                if count > max_members:
                    ledger.refuse(member.name, "member cap")
                    result.refused.append(
                        (STREAM, f"member cap of {max_members} reached; the rest was not read")
                    )
                    break
                try:
                    extractor.extract(tar, member)
                except READ_ERRORS as exc:
                    ledger.refuse(member.name, "truncated data")
                    result.refused.append((STREAM, stream_reason(exc)))
                    break
    finally:
        extractor.finish()
    return result
