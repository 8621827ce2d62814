"""Tar in and out of containers: pack a directory for upload, extract what comes back, safely.

The Docker Engine moves files in and out of containers only as tar streams
(docker-py's ``container.put_archive(path, data)`` and ``container.get_archive(path)``).
This module owns both directions and nothing else:

* :class:`TarWriter` writes a reproducible, uncompressed PAX tar into a spooled
  temporary file (memory up to 16 MiB, then disk), member by member, as its caller
  reads them: :func:`pytest_lrun.hashing.snapshot` feeds it the very bytes it hashes.
  :func:`pack` uses it to tar chosen paths under a root. Symlinks are stored as
  symlinks, never followed.
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
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import SupportsRead, WriteableBuffer

from .errors import ArchiveError
from .fsutil import ENTRY_BYTES

__all__ = [
    "ENTRY_BYTES",
    "MAX_EXTRACT_BYTES",
    "MAX_EXTRACT_DEPTH",
    "MAX_EXTRACT_ENTRIES",
    "MAX_EXTRACT_MEMBERS",
    "MAX_HEADER_BYTES",
    "PACK_MTIME",
    "SPOOL_MAX_SIZE",
    "STREAM",
    "STREAM_OVERHEAD",
    "ExtractResult",
    "TarWriter",
    "pack",
    "read_member",
    "safe_extract",
]

SPOOL_MAX_SIZE = 16 * 1024 * 1024
"""Bytes of a packed archive kept in memory before the spool moves to a temporary file."""

PACK_MTIME = 315532800
"""The mtime every packed member gets: 1980-01-01T00:00:00Z.

A fixed mtime makes the archive of an unchanged tree byte-for-byte the same, so the
upload is as reproducible as the content hash that names it. Not 0: some tools treat
an epoch-0 mtime as "unset" (GNU tar warns about an implausibly old timestamp); 1980 is
the zip epoch that reproducible Python builds also use. Caveat: mtime-keyed caches in
the container (``__pycache__``, pytest's assertion-rewrite cache) cannot tell two
uploads of a same-sized file apart, so a directory must be shipped into a fresh
location, as each run does. Pass ``mtime=None`` to :func:`pack` to keep real mtimes.
"""

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

_COPY_CHUNK = 1024 * 1024
_BLOCKSIZE = tarfile.BLOCKSIZE
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


@dataclass
class ExtractResult:
    """What :func:`safe_extract` did.

    ``written`` holds the normalized member names (``a/b``, relative to the
    destination) of the files, directories and symlinks written, in stream order;
    ``refused`` holds ``(name, reason)`` for every member not written, plus
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


# --- writing ---------------------------------------------------------------


def _split_relpath(relpath: str, what: str) -> tuple[str, ...]:
    """The components of a relative POSIX path, refusing absolute paths and ``..``."""
    if relpath.startswith("/"):
        raise ArchiveError(f"{what} must be relative", relpath)
    parts = tuple(p for p in relpath.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"{what} must not contain '..'", relpath)
    if any("\0" in p for p in parts):
        raise ArchiveError(f"{what} must not contain NUL", relpath)
    return parts


def file_mode(executable: bool) -> int:
    """The mode a shipped file gets: 0o755 when its owner may execute it, else 0o644.

    Exactly the bit the tree digest covers, so two trees with one digest ship alike.
    """
    return 0o755 if executable else 0o644


class _TarFile(tarfile.TarFile):
    members: list[tarfile.TarInfo]  # every header read or written so far (not in typeshed)
    _loaded: bool  # the end of the archive was reached (not in typeshed)


class TarWriter:
    """A reproducible PAX tar written member by member into a spool; use as a context manager.

    Opening writes a directory entry for each level of ``prefix`` and of each of
    ``extra_dirs`` (relative to the archive root, not under the prefix; the last
    level of each mode 0o777: output directories such as ``lrun/out`` that the inner
    run must be able to write whatever user it runs as, since the Engine creates what
    it unpacks as root), then each of ``extra_files`` (``(path from the archive root,
    bytes)``, mode 0o644: the inner reporter, which is no file of the tree). Each
    ``add_*`` then writes one member at ``prefix/relpath``,
    in the order called (the caller puts parents first). Ownership is uid/gid 0 with
    empty names, directories are 0o755, files :func:`file_mode`, symlinks 0o777 with
    their target unchanged, mtimes ``mtime`` (see :data:`PACK_MTIME`).

    :meth:`finish` returns the archive rewound; the caller closes it. Leaving the
    ``with`` block without finishing (an exception) discards the spool.
    """

    def __init__(
        self,
        *,
        prefix: str = "",
        extra_dirs: Iterable[str] = (),
        extra_files: Iterable[tuple[str, bytes]] = (),
        mtime: int = PACK_MTIME,
    ) -> None:
        self._prefix = _split_relpath(prefix, "prefix")
        writable = {_split_relpath(extra, "extra dir") for extra in extra_dirs}
        writable.discard(())
        files = [(_split_relpath(path, "extra file"), data) for path, data in extra_files]
        parents = [parts[:-1] for parts, _data in files]
        levels = {
            dirs[:depth] for dirs in (self._prefix, *writable, *parents) for depth in range(1, len(dirs) + 1)
        }
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_SIZE)  # noqa: SIM115
        self._finished = False
        try:
            self._tar = _TarFile(
                fileobj=self._spool, mode="w", format=tarfile.PAX_FORMAT, copybufsize=_COPY_CHUNK
            )
            for dirs in sorted(levels):
                self._add(_info("/".join(dirs), tarfile.DIRTYPE, 0o777 if dirs in writable else 0o755, mtime))
            for parts, data in files:
                info = _info("/".join(parts), tarfile.REGTYPE, file_mode(False), mtime)
                info.size = len(data)
                self._add(info, io.BytesIO(data))
        except BaseException:
            self._spool.close()
            raise

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._finished:
            with contextlib.suppress(OSError, tarfile.TarError):
                self._tar.close()
            self._spool.close()

    def _arcname(self, relpath: str) -> str:
        return "/".join((*self._prefix, relpath))

    def _add(self, info: tarfile.TarInfo, source: SupportsRead[bytes] | None = None) -> None:
        self._tar.addfile(info, source)
        # TarFile keeps every header it wrote; a tree of 100k files needs none of them.
        self._tar.members.clear()

    def add_dir(self, relpath: str, *, mtime: int = PACK_MTIME) -> None:
        """A directory entry."""
        self._add(_info(self._arcname(relpath), tarfile.DIRTYPE, 0o755, mtime))

    def add_symlink(self, relpath: str, target: str, *, mtime: int = PACK_MTIME) -> None:
        """A symlink to ``target``, stored as is."""
        info = _info(self._arcname(relpath), tarfile.SYMTYPE, 0o777, mtime)
        info.linkname = target
        self._add(info)

    def add_file(
        self,
        relpath: str,
        source: SupportsRead[bytes],
        *,
        size: int,
        executable: bool,
        mtime: int = PACK_MTIME,
    ) -> None:
        """A regular file of ``size`` bytes, copied from ``source`` in 1 MiB reads.

        ``source`` must give exactly ``size`` bytes; it may raise to stop the copy.
        A source that ends early raises ``OSError`` (tarfile's "unexpected end of data").
        """
        info = _info(self._arcname(relpath), tarfile.REGTYPE, file_mode(executable), mtime)
        info.size = size
        self._add(info, source)

    def finish(self) -> IO[bytes]:
        """Close the archive and return it rewound; the caller closes it."""
        self._tar.close()
        self._spool.seek(0)
        self._finished = True
        return self._spool


def _info(arcname: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = mtime
    return info


class _Packer:
    """Adds listed paths under a root to a :class:`TarWriter`, checking each one with ``lstat``."""

    def __init__(self, writer: TarWriter, root: Path, mtime: int | None) -> None:
        self.writer = writer
        self.root = root
        self.mtime = mtime
        self.checked_dirs: set[tuple[str, ...]] = {()}

    def _check_parents(self, parts: tuple[str, ...]) -> None:
        # Never read through a symlinked directory: the caller's listing says which
        # paths to ship, and a parent that is (now) a symlink would ship other files.
        for depth in range(1, len(parts)):
            parent = parts[:depth]
            if parent in self.checked_dirs:
                continue
            path = self.root.joinpath(*parent)
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise ArchiveError(f"cannot pack: {exc.strerror}", str(path)) from exc
            if not stat.S_ISDIR(st.st_mode):
                raise ArchiveError("cannot pack: a parent is not a directory (or is a symlink)", str(path))
            self.checked_dirs.add(parent)

    def add(self, parts: tuple[str, ...]) -> None:
        self._check_parents(parts)
        relpath = "/".join(parts)
        path = self.root.joinpath(*parts)
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise ArchiveError(f"cannot pack: {exc.strerror}", str(path)) from exc
        mtime = int(st.st_mtime) if self.mtime is None else self.mtime
        if stat.S_ISLNK(st.st_mode):
            self.writer.add_symlink(relpath, os.readlink(path), mtime=mtime)
        elif stat.S_ISDIR(st.st_mode):
            self.writer.add_dir(relpath, mtime=mtime)
            self.checked_dirs.add(parts)
        elif stat.S_ISREG(st.st_mode):
            self._add_file(path, relpath, mtime)
        else:
            raise ArchiveError("cannot pack: not a regular file, directory or symlink", str(path))

    def _add_file(self, path: Path, relpath: str, mtime: int) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY)
        except OSError as exc:
            raise ArchiveError(f"cannot pack: {exc.strerror}", str(path)) from exc
        with os.fdopen(fd, "rb") as fileobj:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ArchiveError("cannot pack: changed type while packing", str(path))
            try:
                self.writer.add_file(
                    relpath, fileobj, size=st.st_size, executable=bool(st.st_mode & stat.S_IXUSR), mtime=mtime
                )
            except OSError as exc:
                raise ArchiveError(f"cannot pack: {exc} (did it shrink while packing?)", str(path)) from exc


def pack(
    root: Path,
    relpaths: Iterable[str],
    *,
    prefix: str = "",
    extra_dirs: Iterable[str] = (),
    mtime: int | None = PACK_MTIME,
) -> IO[bytes]:
    """Tar ``relpaths`` (relative to ``root``, ``/``-separated) for ``put_archive``; return it rewound.

    A :class:`TarWriter` (``prefix``, ``extra_dirs`` and the normalized metadata are
    its) with members in path order (parents before children; duplicates dropped).
    Only the listed paths are stored: a listed directory becomes one directory entry,
    its content is not added. ``mtime=None`` keeps each entry's own mtime. A parent
    that is a symlink, a path that vanished, or a fifo, socket or device raises
    :class:`ArchiveError`. The caller closes the archive.
    """
    root = Path(root)
    unique = {_split_relpath(rel, "path") for rel in relpaths}
    unique.discard(())
    fixed = PACK_MTIME if mtime is None else mtime
    with TarWriter(prefix=prefix, extra_dirs=extra_dirs, mtime=fixed) as writer:
        packer = _Packer(writer, root, mtime)
        for parts in sorted(unique):  # component-wise: parents before children
            packer.add(parts)
        return writer.finish()


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


def _open_stream(reader: _ChunkReader, probe: type[_Probe]) -> _TarFile:
    return _TarFile.open(fileobj=reader, mode="r|", tarinfo=probe)


def _members(tar: _TarFile) -> Iterator[tarfile.TarInfo]:
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

    def refuse(self, name: str, reason: str, parts: tuple[str, ...] | None = None) -> None:
        self.result.refused.append((name, reason))
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
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY
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
        fd = os.open(source_path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY)
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
                while chunk := source.read(_COPY_CHUNK):
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
                    result.refused.append((member.name, "member cap"))
                    result.refused.append(
                        (STREAM, f"member cap of {max_members} reached; the rest was not read")
                    )
                    break
                try:
                    extractor.extract(tar, member)
                except (tarfile.TarError, _SourceError) as exc:
                    result.refused.append((member.name, "truncated data"))
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
