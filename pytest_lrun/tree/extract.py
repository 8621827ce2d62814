"""Tar out of containers: read the hostile tar streams ``get_archive`` returns, safely.

The Docker Engine moves files out of containers only as tar streams (docker-py's
``container.get_archive(path)``); what goes in is written by :mod:`pytest_lrun.tree.archive`.
This module owns the reading direction and nothing else:

* :func:`safe_extract` unpacks a tar stream given as an iterator of byte chunks (what
  ``get_archive`` returns) into a destination directory without holding the stream in
  memory. The archive comes from a container that ran arbitrary test code, so it is
  treated as hostile: nothing is ever written outside the destination, what is read
  and written is bounded, and every member that is not written is listed with the
  reason.
* :func:`read_member` reads one regular file (the inner run's ``junit.xml``) out of
  such a stream, into memory, under a size cap.

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
  symlink :data:`ENTRY_BYTES` (about what it occupies on disk). Once either cap would
  be exceeded, that member and every later one is refused with reason ``"entry cap"``
  or ``"size cap"`` (the stream is still read, so the list of what was left behind is
  complete). The ``max_members``-th member is the last one looked at; past it the
  rest of the stream is not read.
* Caps on what is read: at most ``max_read`` bytes of the stream are read (by default
  ``max_bytes`` + :data:`STREAM_OVERHEAD`); an extension header (GNU long name or long
  link, PAX) over :data:`MAX_HEADER_BYTES`, global PAX headers over that in total, or
  more than a few extension headers in a row end the read before the header is
  loaded. Memory stays at a few chunks and one header whatever the stream holds.
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
import io
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

from pytest_lrun.core.errors import ArchiveError
from pytest_lrun.core.fsutil import ENTRY_BYTES, OPEN_NOFOLLOW
from pytest_lrun.tree.archive import COPY_CHUNK, TypedTarFile

__all__ = [
    "ENTRY_BYTES",
    "MAX_EXTRACT_BYTES",
    "MAX_EXTRACT_DEPTH",
    "MAX_EXTRACT_ENTRIES",
    "MAX_EXTRACT_MEMBERS",
    "MAX_HEADER_BYTES",
    "MAX_REFUSALS_LISTED",
    "MORE",
    "STREAM",
    "STREAM_OVERHEAD",
    "ExtractResult",
    "read_member",
    "safe_extract",
]

MAX_EXTRACT_BYTES = 512 * 1024 * 1024
MAX_EXTRACT_MEMBERS = 100_000

MAX_EXTRACT_ENTRIES = 10_000
"""Entries (files, directories, symlinks, hard-link copies) one extraction may create."""

MAX_EXTRACT_DEPTH = 128
"""Components a member name may have. Far below Python's recursion limit and ``PATH_MAX``."""

MAX_HEADER_BYTES = 64 * 1024
"""Largest extension header (GNU long name or long link, PAX) read: 16 ``PATH_MAX`` paths."""

STREAM_OVERHEAD = 64 * 1024 * 1024
"""Bytes read beyond ``max_bytes`` by default: headers, padding, members that were refused."""

STREAM = "<stream>"
"""The name under which problems of the stream itself (truncation, corruption, caps) are refused."""

MAX_REFUSALS_LISTED = 100
"""Refused members listed by name in :attr:`ExtractResult.refused`; the rest are counted (:data:`MORE`)."""

MORE = "<more>"
"""The name of the entry that counts the refused members not listed."""

_BLOCKSIZE = tarfile.BLOCKSIZE


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


# --- reading a chunked stream ----------------------------------------------


class _SourceError(Exception):
    """The chunk iterator itself failed (a broken connection, a read timeout)."""


class _Capped(tarfile.TarError):
    """The stream holds more than we read (a cap), or something we do not parse; the reason is the message."""


class _ChunkReader(io.RawIOBase):
    """A read-only, non-seekable file over an iterator of byte chunks, holding one chunk at a time.

    Reading past ``limit`` bytes raises :class:`_Capped`.
    """

    def __init__(self, chunks: Iterable[bytes], limit: int) -> None:
        super().__init__()
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")
        self._done = False
        self._left = limit
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._pending:
            if self._done:
                return 0
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._done = True
                return 0
            except OSError as exc:  # requests' errors derive from OSError
                self._done = True
                raise _SourceError(f"reading the archive stream failed: {exc}") from exc
            self._pending = memoryview(chunk).cast("B")
        if self._left <= 0:
            self._done = True
            raise _Capped(f"read cap: the stream is over {self._limit} bytes; the rest was not read")
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self._pending), self._left)
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self._left -= size
        return size


_EXTENSION_TYPES = {
    tarfile.GNUTYPE_LONGNAME: "GNU long-name",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link",
    tarfile.XHDTYPE: "PAX",
    tarfile.XGLTYPE: "global PAX",
    tarfile.SOLARIS_XHDTYPE: "PAX",
}
_MAX_EXTENSION_CHAIN = 8  # extension headers in a row; tarfile reads each chain recursively


class _Probe(tarfile.TarInfo):
    """TarInfo that notes the end marker and refuses, before reading them, headers that are not bounded.

    In stream mode tarfile treats a truncated or garbled header after the first one as
    a quiet end of archive; the all-zero end marker is how a complete stream is told
    apart (``saw_end_marker``). tarfile reads an extension header's whole payload
    into memory, chains of them recursively, and a sparse map from the data that
    follows; this class raises :class:`_Capped` at the 512-byte header instead, so
    nothing of the payload is read. Docker's archives have no sparse members and no
    global headers, and their extension headers hold a path or two. Subclassed per
    call (:func:`_probe_class`) so that concurrent reads do not share the counters.
    """

    saw_end_marker = False
    chain = 0
    global_bytes = 0

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _Probe:
        cls.saw_end_marker = len(buf) == _BLOCKSIZE and buf.count(0) == _BLOCKSIZE
        info = super().frombuf(buf, encoding, errors)
        kind = _EXTENSION_TYPES.get(info.type)
        if kind is None:
            cls.chain = 0
        else:
            cls.chain += 1
            if cls.chain > _MAX_EXTENSION_CHAIN:
                raise _Capped(f"header cap: more than {_MAX_EXTENSION_CHAIN} extension headers in a row")
            if info.type == tarfile.XGLTYPE:
                cls.global_bytes += info.size
            size = cls.global_bytes if info.type == tarfile.XGLTYPE else info.size
            if size > MAX_HEADER_BYTES:
                raise _Capped(f"header cap: a {kind} header of {size} bytes (cap {MAX_HEADER_BYTES})")
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise _Capped("sparse member (not supported)")
        return info

    # tarfile's readers of the PAX forms of a sparse map: 0.1 can raise ValueError and
    # 1.0 reads the map from the data without bound, so none of them runs.
    def _proc_gnusparse_00(self, *args: object) -> None:
        raise _Capped("sparse member (not supported)")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


def _probe_class() -> type[_Probe]:
    class _CallProbe(_Probe):
        pass

    return _CallProbe


def _open_stream(reader: _ChunkReader, probe: type[_Probe]) -> TypedTarFile:
    return TypedTarFile.open(fileobj=reader, mode="r|", tarinfo=probe)


def _members(tar: TypedTarFile) -> Iterator[tarfile.TarInfo]:
    """The members of a stream, one at a time; none is called for once the end was reached.

    Before Python 3.11 a ``next()`` after the end seeks backwards, which a stream cannot:
    an empty archive has reached its end when it is opened.
    """
    while not tar._loaded and (member := tar.next()) is not None:
        yield member
        # TarFile keeps every header it read (with its PAX records); we need only this one.
        tar.members.clear()


def _stream_reason(exc: Exception) -> str:
    if isinstance(exc, _Capped):
        return str(exc)
    return f"corrupt or truncated tar stream: {exc}"


def _name_refusal(name: str) -> str | None:
    """Why a name cannot be used as a path on this file system at all, or None."""
    if "\0" in name:
        return "NUL in name"
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        return "name not representable in the file system encoding"
    return None


def _member_parts(name: str) -> tuple[str, ...] | str:
    """The components of a member name, or the reason it is refused."""
    if name.startswith("/"):
        return "absolute path"
    unusable = _name_refusal(name)
    if unusable is not None:
        return unusable
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        return "'..' in path"
    return parts


# --- safe_extract ----------------------------------------------------------


class _Extractor:
    def __init__(self, dest: Path, max_bytes: int, max_entries: int) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.result = ExtractResult()
        self.charged = 0  # against max_bytes: file content plus ENTRY_BYTES per directory and symlink
        self.capped: str | None = None  # "size cap" or "entry cap" once one was reached
        self.files: set[tuple[str, ...]] = set()  # regular files written, by parts
        self.refused_parts: set[tuple[str, ...]] = set()
        self.dir_modes: list[tuple[Path, int]] = []
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

    def _over_cap(self, cost: int) -> str | None:
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

    def _created(self, cost: int) -> None:
        self.result.entries += 1
        self.charged += cost

    def _prepare_parents(self, parts: tuple[str, ...]) -> str | None:
        """Create missing parents of ``parts``; the reason to refuse it, if any."""
        for depth in range(1, len(parts)):
            if parts[:depth] in self.refused_parts:
                return "parent was refused"
        path = self.dest
        for part in parts[:-1]:
            path = path / part
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                cap = self._over_cap(ENTRY_BYTES)
                if cap is not None:
                    return cap
                os.mkdir(path, 0o755)
                self._created(ENTRY_BYTES)
                continue
            if stat.S_ISLNK(st.st_mode):
                return "path through symlink"
            if not stat.S_ISDIR(st.st_mode):
                return "parent is not a directory"
        return None

    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        checked = _member_parts(name)
        if isinstance(checked, str):
            self.refuse(name, checked)
            return
        parts = checked
        if self.capped is not None:
            self.refuse(name, self.capped, parts)
            return
        if not parts:
            if not member.isdir():
                self.refuse(name, "empty name")
            return  # "." itself: the destination, nothing to do
        reason = _depth_refusal(parts) or _kind_refusal(member)
        if reason is None and member.issym():
            reason = _symlink_refusal(parts, member.linkname)
        if reason is not None:
            self.refuse(name, reason, parts)
            return
        link_source: tuple[str, ...] | None = None
        if member.islnk():
            target = _member_parts(member.linkname)
            if isinstance(target, str) or target not in self.files:
                self.refuse(name, "hardlink to a file not extracted before it", parts)
                return
            link_source = target
        try:
            reason = self._prepare_parents(parts)
            if reason is not None:
                self.refuse(name, reason, parts)
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
            self.refuse(name, f"write failed: {exc.strerror or exc}", parts)

    def _write_dir(self, path: Path, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            cap = self._over_cap(ENTRY_BYTES)
            if cap is not None:
                self.refuse(member.name, cap, parts)
                return
            os.mkdir(path, 0o700)
            self._created(ENTRY_BYTES)
        else:
            if not stat.S_ISDIR(st.st_mode):
                self.refuse(member.name, "already exists", parts)
                return
        self.dir_modes.append((path, (member.mode & 0o755) | 0o700))
        self.result.written.append("/".join(parts))

    def _write_symlink(self, path: Path, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        if os.path.lexists(path):
            self.refuse(member.name, "already exists", parts)
            return
        cap = self._over_cap(ENTRY_BYTES)
        if cap is not None:
            self.refuse(member.name, cap, parts)
            return
        os.symlink(member.linkname, path)
        self._created(ENTRY_BYTES)
        self.result.written.append("/".join(parts))

    def _create(self, path: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | OPEN_NOFOLLOW
        return os.open(path, flags, 0o600)

    def _fits(self, name: str, parts: tuple[str, ...], size: int) -> bool:
        cap = self._over_cap(size)
        if cap is not None:
            self.refuse(name, cap, parts)
            return False
        return True

    def _write_file(
        self, tar: tarfile.TarFile, name: str, parts: tuple[str, ...], path: Path, member: tarfile.TarInfo
    ) -> None:
        if not self._fits(name, parts, member.size):
            return
        if os.path.lexists(path):
            self.refuse(name, "already exists", parts)
            return
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            self.refuse(name, "no data", parts)
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
            if not self._fits(name, parts, st.st_size):
                return
            if os.path.lexists(path):
                self.refuse(name, "already exists", parts)
                return
            self._copy_into(name, parts, path, source, st.st_mode)

    def _copy_into(self, name: str, parts: tuple[str, ...], path: Path, source: IO[bytes], mode: int) -> None:
        fd = self._create(path)
        written = 0
        ok = False
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(COPY_CHUNK):
                    written += len(chunk)
                    if self.charged + written > self.max_bytes:
                        self.capped = "size cap"
                        self.refuse(name, "size cap", parts)
                        return
                    out.write(chunk)
                os.fchmod(out.fileno(), (mode & 0o755) | 0o600)
            ok = True
        finally:
            if not ok:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        self._created(written)
        self.result.bytes_written += written
        self.files.add(parts)
        self.result.written.append("/".join(parts))

    def finish(self) -> None:
        if self.unlisted:
            self.result.refused.append(
                (MORE, f"{self.unlisted} more members refused; the first {MAX_REFUSALS_LISTED} are listed")
            )
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
    unusable = _name_refusal(target)
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
    extractor = _Extractor(dest, max_bytes, max_entries)
    result = extractor.result
    reader = _ChunkReader(chunks, max_bytes + STREAM_OVERHEAD if max_read is None else max_read)
    probe = _probe_class()
    try:
        try:
            tar = _open_stream(reader, probe)
        except (tarfile.TarError, _SourceError) as exc:
            reason = str(exc) if isinstance(exc, _Capped) else f"not a readable tar stream: {exc}"
            result.refused.append((STREAM, reason))
            return result
        with tar:
            members = _members(tar)
            count = 0
            while True:
                try:
                    member = next(members, None)
                except (tarfile.TarError, _SourceError) as exc:
                    result.refused.append((STREAM, _stream_reason(exc)))
                    break
                if member is None:
                    if not probe.saw_end_marker:
                        result.refused.append((STREAM, "truncated tar stream: no end-of-archive marker"))
                    break
                count += 1
                if count > max_members:
                    extractor.refuse(member.name, "member cap")
                    result.refused.append(
                        (STREAM, f"member cap of {max_members} reached; the rest was not read")
                    )
                    break
                try:
                    extractor.extract(tar, member)
                except (tarfile.TarError, _SourceError) as exc:
                    extractor.refuse(member.name, "truncated data")
                    result.refused.append((STREAM, _stream_reason(exc)))
                    break
    finally:
        extractor.finish()
    return result


# --- read_member -----------------------------------------------------------


def read_member(
    chunks: Iterable[bytes],
    name: str,
    *,
    max_bytes: int,
    max_members: int = MAX_EXTRACT_MEMBERS,
    max_read: int | None = None,
) -> bytes | None:
    """The content of the regular-file member ``name`` of a tar stream, or None if it has none.

    ``name`` is matched after normalization (``./junit.xml`` is ``junit.xml``). Reading
    stops at the member; the rest of the stream is left unread. At most ``max_read``
    bytes of the stream are read (default ``max_bytes + STREAM_OVERHEAD``), and
    extension headers are capped as for :func:`safe_extract`. Raises
    :class:`ArchiveError` when the member is larger than ``max_bytes``, is not a
    regular file, or the stream is corrupt, truncated, over a cap or has more than
    ``max_members`` members before it.
    """
    wanted = _member_parts(name)
    if isinstance(wanted, str) or not wanted:
        raise ArchiveError(f"invalid member name ({wanted or 'empty'})", name)
    reader = _ChunkReader(chunks, max_bytes + STREAM_OVERHEAD if max_read is None else max_read)
    probe = _probe_class()
    try:
        with _open_stream(reader, probe) as tar:
            for count, member in enumerate(_members(tar), start=1):
                if count > max_members:
                    raise ArchiveError(f"more than {max_members} members before it", name)
                if _member_parts(member.name) != wanted:
                    continue
                if not member.isreg():
                    raise ArchiveError("archive member is not a regular file", name)
                if member.size > max_bytes:
                    raise ArchiveError(
                        f"archive member is {member.size} bytes, over the cap of {max_bytes}", name
                    )
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    raise ArchiveError("archive member has no data", name)
                with source:
                    data = source.read(max_bytes + 1)
                if len(data) > max_bytes:  # pragma: no cover - sizes agree for regular members
                    raise ArchiveError(f"archive member is over the cap of {max_bytes} bytes", name)
                return data
    except (tarfile.TarError, _SourceError) as exc:
        raise ArchiveError(_stream_reason(exc), name) from exc
    if not probe.saw_end_marker:
        raise ArchiveError("truncated tar stream: no end-of-archive marker", name)
    return None
