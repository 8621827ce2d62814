"""Tar in and out of containers: pack a directory for upload, extract what comes back, safely.

The Docker Engine moves files in and out of containers only as tar streams
(docker-py's ``container.put_archive(path, data)`` and ``container.get_archive(path)``).
This module owns both directions and nothing else:

* :func:`pack` writes a reproducible, uncompressed PAX tar of chosen paths under a
  root into a spooled temporary file (memory up to 16 MiB, then disk). Symlinks are
  stored as symlinks, never followed.
* :func:`safe_extract` unpacks a tar stream given as an iterator of byte chunks (what
  ``get_archive`` returns) into a destination directory without holding the stream in
  memory. The archive comes from a container that ran arbitrary test code, so it is
  treated as hostile: nothing is ever written outside the destination, and every
  member that is not written is listed with the reason.
* :func:`read_member` reads one regular file (the inner run's ``junit.xml``) out of
  such a stream, into memory, under a size cap.

Extraction rules (:func:`safe_extract`)
---------------------------------------
* Names: absolute names, names with a ``..`` component and empty names are refused;
  ``.`` and empty components are dropped (``./a//b`` is ``a/b``).
* No parent of a member may be a symlink (whether it came from this archive or was
  already in the destination), or anything but a directory; missing parents are
  created. Members below a refused member are refused too.
* An existing entry is never replaced (the destination is expected to be fresh): a
  directory member over an existing directory is fine, anything else is refused.
* Regular files are written with ``O_CREAT | O_EXCL | O_NOFOLLOW``; their mode is the
  member's mode ``& 0o755`` (exec bits kept, setuid/setgid/sticky and group/other
  write dropped) plus owner read/write, so the caller can always read what came back.
  Directories get ``& 0o755`` plus owner ``rwx``, applied after all members are in.
* Symlinks: the target must be relative and made only of leading ``..`` components
  followed by plain names (``../../lib/x`` yes, ``a/../b`` no), and must not climb
  above the destination from the link's own directory. Because a link never climbs
  after descending, and every directory it climbs through is a real directory (never
  a symlink, see above), each link resolves inside the destination however other
  links in the archive are later arranged; a purely lexical check of
  ``os.path.normpath`` would not hold once links point at links.
* Hard links: accepted only when the target is a regular file this extraction
  already wrote; the link is then written as an independent copy (counted against
  the size cap). Docker writes a second name of a hardlinked file as a hard link, so
  refusing all of them would lose legitimate artifacts; linking to anything else
  (``/etc/passwd``, a not-yet-extracted name) is refused.
* Device files, fifos and every other type are refused.
* Caps: once the bytes written would exceed ``max_bytes``, that member and every
  later one is refused with reason ``"size cap"`` (the stream is still read, so the
  list of what was left behind is complete). The ``max_members``-th member is the last
  one looked at; past it the rest of the stream is not read.
* A truncated or corrupt stream is not an exception: what was extracted stays, and a
  ``("<stream>", reason)`` entry is added to :attr:`ExtractResult.refused`. Callers put
  that in the run's error fields.

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
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

from .errors import ArchiveError

__all__ = [
    "MAX_EXTRACT_BYTES",
    "MAX_EXTRACT_MEMBERS",
    "PACK_MTIME",
    "SPOOL_MAX_SIZE",
    "STREAM",
    "ExtractResult",
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
    the member cap; ``bytes_written`` counts regular-file content.
    """

    written: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    bytes_written: int = 0

    @property
    def stream_error(self) -> str | None:
        """The reason the stream itself was cut short, if it was."""
        for name, reason in self.refused:
            if name == STREAM:
                return reason
        return None


# --- pack ------------------------------------------------------------------


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


def _base_info(arcname: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = mtime
    return info


def _normal_mode(st_mode: int) -> int:
    """0o755 for directories and executables, 0o644 otherwise: reproducible whatever the umask."""
    if stat.S_ISDIR(st_mode) or st_mode & 0o111:
        return 0o755
    return 0o644


class _Packer:
    def __init__(self, tar: tarfile.TarFile, root: Path, mtime: int | None) -> None:
        self.tar = tar
        self.root = root
        self.mtime = mtime
        self.checked_dirs: set[tuple[str, ...]] = {()}

    def add_dir_entry(self, arcname: str, mode: int) -> None:
        info = _base_info(arcname, PACK_MTIME if self.mtime is None else self.mtime)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        self.tar.addfile(info)

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

    def add(self, parts: tuple[str, ...], arcname: str) -> None:
        self._check_parents(parts)
        path = self.root.joinpath(*parts)
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise ArchiveError(f"cannot pack: {exc.strerror}", str(path)) from exc
        mtime = int(st.st_mtime) if self.mtime is None else self.mtime
        info = _base_info(arcname, mtime)
        if stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
            info.mode = 0o777
            self.tar.addfile(info)
        elif stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            info.mode = _normal_mode(st.st_mode)
            self.tar.addfile(info)
            self.checked_dirs.add(parts)
        elif stat.S_ISREG(st.st_mode):
            self._add_file(path, info)
        else:
            raise ArchiveError("cannot pack: not a regular file, directory or symlink", str(path))

    def _add_file(self, path: Path, info: tarfile.TarInfo) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY)
        except OSError as exc:
            raise ArchiveError(f"cannot pack: {exc.strerror}", str(path)) from exc
        with os.fdopen(fd, "rb") as fileobj:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ArchiveError("cannot pack: changed type while packing", str(path))
            info.type = tarfile.REGTYPE
            info.mode = _normal_mode(st.st_mode)
            info.size = st.st_size
            try:
                # addfile copies exactly info.size bytes from the file object, in blocks.
                self.tar.addfile(info, fileobj)
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

    The archive is uncompressed, PAX format, with members in path order (parents
    before children; duplicates dropped) under ``prefix/`` when ``prefix`` is given
    (with a directory entry for each level of the prefix). ``extra_dirs`` are empty
    directories to create, relative to the archive root (not under the prefix), each
    level an entry, the last one mode 0o777: output directories such as ``lrun/out``
    that the inner run must be able to write whatever user it runs as (the Engine
    creates what it unpacks as root). They come first. Only the listed paths are
    stored: a listed directory becomes one directory entry, its content is not
    added. Ownership is normalized to uid/gid 0 with empty names, modes to 0o755
    (directories, files with any exec bit) or 0o644, mtimes to ``mtime`` (see
    :data:`PACK_MTIME`; ``None`` keeps each file's own). Symlinks are stored as
    symlinks with their target unchanged; a parent that is a symlink, a path that
    vanished, or a fifo, socket or device raises :class:`ArchiveError`.

    File content is streamed into the archive, which lives in memory up to
    :data:`SPOOL_MAX_SIZE` and in a temporary file beyond. The caller closes it.
    """
    root = Path(root)
    prefix_parts = _split_relpath(prefix, "prefix")
    writable = {_split_relpath(extra, "extra dir") for extra in extra_dirs}
    writable.discard(())
    dir_entries = {dirs[:depth] for dirs in (prefix_parts, *writable) for depth in range(1, len(dirs) + 1)}
    unique = {_split_relpath(rel, "path") for rel in relpaths}
    unique.discard(())
    ordered = sorted(unique)  # component-wise: parents before children
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_SIZE)  # noqa: SIM115 - returned
    try:
        with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
            packer = _Packer(tar, root, mtime)
            for dirs in sorted(dir_entries):
                packer.add_dir_entry("/".join(dirs), 0o777 if dirs in writable else 0o755)
            for parts in ordered:
                packer.add(parts, "/".join(prefix_parts + parts))
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


# --- reading a chunked stream ----------------------------------------------


class _SourceError(Exception):
    """The chunk iterator itself failed (a broken connection, a read timeout)."""


class _ChunkReader(io.RawIOBase):
    """A read-only, non-seekable file over an iterator of byte chunks, holding one chunk at a time."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")
        self._done = False

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
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class _EndProbe(tarfile.TarInfo):
    """TarInfo that notes whether the last header block tarfile read was the all-zero end marker.

    In stream mode tarfile treats a truncated or garbled header after the first one as
    a quiet end of archive; the end marker is how a complete stream is told apart.
    Subclassed per call (:func:`_probe_class`) so that concurrent reads do not share it.
    """

    saw_end_marker = False

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _EndProbe:
        cls.saw_end_marker = len(buf) == _BLOCKSIZE and buf.count(0) == _BLOCKSIZE
        return super().frombuf(buf, encoding, errors)


def _probe_class() -> type[_EndProbe]:
    class _CallProbe(_EndProbe):
        pass

    return _CallProbe


def _open_stream(reader: _ChunkReader, probe: type[_EndProbe]) -> tarfile.TarFile:
    return tarfile.open(fileobj=reader, mode="r|", tarinfo=probe)


def _member_parts(name: str) -> tuple[str, ...] | str:
    """The components of a member name, or the reason it is refused."""
    if name.startswith("/"):
        return "absolute path"
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        return "'..' in path"
    return parts


# --- safe_extract ----------------------------------------------------------


class _Extractor:
    def __init__(self, dest: Path, max_bytes: int) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.result = ExtractResult()
        self.size_capped = False
        self.files: set[tuple[str, ...]] = set()  # regular files written, by parts
        self.refused_parts: set[tuple[str, ...]] = set()
        self.dir_modes: list[tuple[Path, int]] = []

    def refuse(self, name: str, reason: str, parts: tuple[str, ...] | None = None) -> None:
        self.result.refused.append((name, reason))
        if parts:
            self.refused_parts.add(parts)

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
                os.mkdir(path, 0o755)
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
        if self.size_capped:
            self.refuse(name, "size cap", parts)
            return
        if not parts:
            if not member.isdir():
                self.refuse(name, "empty name")
            return  # "." itself: the destination, nothing to do
        kind = _kind_refusal(member)
        if kind is not None:
            self.refuse(name, kind, parts)
            return
        if member.issym():
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
                if os.path.lexists(path):
                    self.refuse(name, "already exists", parts)
                    return
                os.symlink(member.linkname, path)
                self.result.written.append("/".join(parts))
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
            os.mkdir(path, 0o700)
        else:
            if not stat.S_ISDIR(st.st_mode):
                self.refuse(member.name, "already exists", parts)
                return
        self.dir_modes.append((path, (member.mode & 0o755) | 0o700))
        self.result.written.append("/".join(parts))

    def _create(self, path: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY
        return os.open(path, flags, 0o600)

    def _fits(self, name: str, parts: tuple[str, ...], size: int) -> bool:
        if size < 0:
            self.refuse(name, "invalid size", parts)
            return False
        if self.result.bytes_written + size > self.max_bytes:
            self.size_capped = True
            self.refuse(name, "size cap", parts)
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
                    if self.result.bytes_written + written > self.max_bytes:
                        self.size_capped = True
                        self.refuse(name, "size cap", parts)
                        return
                    out.write(chunk)
                os.fchmod(out.fileno(), (mode & 0o755) | 0o600)
            ok = True
        finally:
            if not ok:
                with contextlib.suppress(OSError):
                    os.unlink(path)
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
) -> ExtractResult:
    """Extract a tar stream, given as byte chunks, into ``dest`` (created if missing) under the rules above.

    Never raises for anything the archive contains; a failing chunk iterator
    (``OSError``, which covers requests' errors) is recorded as a stream error too.
    Errors of the destination itself (not creatable) propagate as ``OSError``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve(strict=True)
    extractor = _Extractor(dest, max_bytes)
    result = extractor.result
    reader = _ChunkReader(chunks)
    probe = _probe_class()
    try:
        try:
            tar = _open_stream(reader, probe)
        except (tarfile.TarError, _SourceError) as exc:
            result.refused.append((STREAM, f"not a readable tar stream: {exc}"))
            return result
        with tar:
            # Iterate rather than call tar.next() directly: before 3.11 a next() after the
            # end of the archive was reached tries to seek backwards and fails.
            members = iter(tar)
            count = 0
            while True:
                try:
                    member = next(members, None)
                except (tarfile.TarError, _SourceError) as exc:
                    result.refused.append((STREAM, f"corrupt or truncated tar stream: {exc}"))
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
                    result.refused.append((STREAM, f"corrupt or truncated tar stream: {exc}"))
                    break
    finally:
        extractor.finish()
    return result


# --- read_member -----------------------------------------------------------


def read_member(
    chunks: Iterable[bytes], name: str, *, max_bytes: int, max_members: int = MAX_EXTRACT_MEMBERS
) -> bytes | None:
    """The content of the regular-file member ``name`` of a tar stream, or None if it has none.

    ``name`` is matched after normalization (``./junit.xml`` is ``junit.xml``). Reading
    stops at the member; the rest of the stream is left unread. Raises
    :class:`ArchiveError` when the member is larger than ``max_bytes``, is not a
    regular file, or the stream is corrupt, truncated or has more than
    ``max_members`` members before it.
    """
    wanted = _member_parts(name)
    if isinstance(wanted, str) or not wanted:
        raise ArchiveError(f"invalid member name ({wanted or 'empty'})", name)
    reader = _ChunkReader(chunks)
    probe = _probe_class()
    try:
        with _open_stream(reader, probe) as tar:
            for count, member in enumerate(tar, start=1):
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
        raise ArchiveError(f"corrupt or truncated tar stream: {exc}", name) from exc
    if not probe.saw_end_marker:
        raise ArchiveError("truncated tar stream: no end-of-archive marker", name)
    return None
