from __future__ import annotations

import contextlib
import io
import os
import random
import stat
import subprocess
import sys
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_lrun.core.errors import ArchiveError, BadInput
from pytest_lrun.core.fsutil import ENTRY_BYTES
from pytest_lrun.tree.archive import PACK_MTIME, pack
from pytest_lrun.tree.extract import (
    MAX_EXTRACT_DEPTH,
    MAX_REFUSALS_LISTED,
    MORE,
    STREAM,
    ExtractResult,
    safe_extract,
)
from pytest_lrun.tree.tarstream import MAX_HEADER_BYTES, STREAM_OVERHEAD, read_member

# --- helpers ---------------------------------------------------------------


def chunked(data: bytes, size: int = 997) -> Iterator[bytes]:
    """Like docker-py's get_archive stream: the archive in arbitrary-sized pieces."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    mode: int = 0o644,
    linkname: str = "",
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def make_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


class Box:
    """A destination inside a sentinel directory that must hold nothing but the destination."""

    def __init__(self, tmp_path: Path) -> None:
        self.outer = tmp_path / "box"
        self.dest = self.outer / "dest"
        self.victim = tmp_path / "victim"
        self.dest.mkdir(parents=True)
        self.victim.mkdir()

    def extract(self, data: bytes, **kwargs: int) -> ExtractResult:
        result = safe_extract(chunked(data), self.dest, **kwargs)
        self.assert_outside_untouched()
        return result

    def assert_outside_untouched(self) -> None:
        assert [p.name for p in self.outer.iterdir()] == ["dest"]
        assert list(self.victim.iterdir()) == []

    def tree(self) -> dict[str, str]:
        """Each entry under dest: "dir", "-> target" for symlinks, the text of files."""
        found: dict[str, str] = {}
        for path in sorted(self.dest.rglob("*")):
            rel = path.relative_to(self.dest).as_posix()
            if path.is_symlink():
                found[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = path.read_bytes().decode("latin-1")
        return found


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def reasons(result: ExtractResult) -> dict[str, str]:
    return dict(result.refused)


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "test_x.py").write_text("def test_x():\n    pass\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o750)
    (root / "data.bin").write_bytes(bytes(range(256)) * 300)
    os.symlink("pkg/sub/test_x.py", root / "link_to_test")
    os.symlink("pkg", root / "link_to_dir")
    return root


def listing(root: Path) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(Path(dirpath, name).relative_to(root).as_posix())
    return out


# --- pack ------------------------------------------------------------------


def test_pack_round_trip(source_tree: Path, box: Box) -> None:
    with pack(source_tree, listing(source_tree)) as archive:
        result = box.extract(archive.read())
    assert result.refused == []
    assert box.tree() == {
        "data.bin": (source_tree / "data.bin").read_bytes().decode("latin-1"),
        "empty": "dir",
        "link_to_dir": "-> pkg",
        "link_to_test": "-> pkg/sub/test_x.py",
        "pkg": "dir",
        "pkg/__init__.py": "",
        "pkg/sub": "dir",
        "pkg/sub/test_x.py": "def test_x():\n    pass\n",
        "run.sh": "#!/bin/sh\necho hi\n",
    }
    assert os.stat(box.dest / "run.sh").st_mode & 0o777 == 0o755
    assert os.stat(box.dest / "pkg" / "__init__.py").st_mode & 0o777 == 0o644
    assert (box.dest / "link_to_dir").is_symlink()
    assert result.bytes_written == sum(
        (source_tree / rel).stat().st_size
        for rel in ("data.bin", "pkg/__init__.py", "pkg/sub/test_x.py", "run.sh")
    )
    assert sorted(result.written) == sorted(listing(source_tree))


def test_pack_metadata_is_normalized_and_reproducible(source_tree: Path) -> None:
    os.utime(source_tree / "run.sh", (1_700_000_000, 1_700_000_000))
    with pack(source_tree, listing(source_tree)) as first:
        data = first.read()
    os.utime(source_tree / "run.sh", (1_600_000_000, 1_600_000_000))
    with pack(source_tree, reversed(listing(source_tree))) as second:
        assert second.read() == data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert tar.pax_headers == {}
    assert [m.name for m in members] == sorted(listing(source_tree), key=lambda n: n.split("/"))
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", PACK_MTIME)
    modes = {m.name: m.mode for m in members}
    assert modes["run.sh"] == 0o755
    assert modes["pkg"] == 0o755
    assert modes["data.bin"] == 0o644


def test_pack_keeps_real_mtime_on_request(source_tree: Path) -> None:
    os.utime(source_tree / "run.sh", (1_700_000_000, 1_700_000_000))
    with pack(source_tree, ["run.sh"], mtime=None) as archive, tarfile.open(fileobj=archive) as tar:
        assert tar.getmember("run.sh").mtime == 1_700_000_000


def test_pack_strips_setuid_and_group_write(tmp_path: Path) -> None:
    (tmp_path / "tool").write_text("x")
    os.chmod(tmp_path / "tool", 0o4775)
    with pack(tmp_path, ["tool"]) as archive, tarfile.open(fileobj=archive) as tar:
        assert tar.getmember("tool").mode == 0o755


def test_pack_prefix_adds_directory_entries(source_tree: Path) -> None:
    with (
        pack(source_tree, ["pkg/__init__.py", "pkg"], prefix="lrun/src/") as archive,
        tarfile.open(fileobj=archive) as tar,
    ):
        names = [(m.name, m.isdir()) for m in tar.getmembers()]
    assert names == [
        ("lrun", True),
        ("lrun/src", True),
        ("lrun/src/pkg", True),
        ("lrun/src/pkg/__init__.py", False),
    ]


def test_pack_extra_dirs_are_writable_and_at_the_root(source_tree: Path) -> None:
    with (
        pack(
            source_tree, ["run.sh"], prefix="lrun/work", extra_dirs=["lrun/out", "lrun/artifacts/"]
        ) as archive,
        tarfile.open(fileobj=archive) as tar,
    ):
        modes = {m.name: (m.type, m.mode) for m in tar.getmembers()}
    assert list(modes) == ["lrun", "lrun/artifacts", "lrun/out", "lrun/work", "lrun/work/run.sh"]
    assert modes["lrun"] == (tarfile.DIRTYPE, 0o755)
    assert modes["lrun/work"] == (tarfile.DIRTYPE, 0o755)
    assert modes["lrun/out"] == (tarfile.DIRTYPE, 0o777)
    assert modes["lrun/artifacts"] == (tarfile.DIRTYPE, 0o777)


def test_pack_stores_symlinks_without_following(source_tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    os.symlink(outside, source_tree / "abs_link")
    with pack(source_tree, ["abs_link", "link_to_dir"]) as archive, tarfile.open(fileobj=archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"abs_link", "link_to_dir"}
    assert members["abs_link"].issym() and members["abs_link"].linkname == str(outside)
    assert members["link_to_dir"].issym() and members["link_to_dir"].linkname == "pkg"


def test_pack_refuses_reading_through_a_symlinked_parent(source_tree: Path) -> None:
    with pytest.raises(ArchiveError, match="parent is not a directory"):
        pack(source_tree, ["link_to_dir/__init__.py"])


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside", "pkg/../../x"])
def test_pack_refuses_paths_leaving_root(source_tree: Path, bad: str) -> None:
    with pytest.raises(ArchiveError) as excinfo:
        pack(source_tree, [bad])
    assert isinstance(excinfo.value, BadInput)
    assert excinfo.value.code == "archive_invalid"
    assert excinfo.value.name == bad


def test_pack_refuses_missing_and_special_files(source_tree: Path) -> None:
    with pytest.raises(ArchiveError, match="cannot pack"):
        pack(source_tree, ["nope.txt"])
    if hasattr(os, "mkfifo"):
        os.mkfifo(source_tree / "pipe")
        with pytest.raises(ArchiveError, match="not a regular file"):
            pack(source_tree, ["pipe"])


def test_pack_large_file_spools_to_disk_and_round_trips(tmp_path: Path, box: Box) -> None:
    blob = os.urandom(1024 * 1024) * 17  # past the 16 MiB in-memory spool
    (tmp_path / "big.bin").write_bytes(blob)
    with pack(tmp_path, ["big.bin"]) as archive:
        assert archive.fileno() >= 0
        result = safe_extract(iter(lambda: archive.read(65536), b""), box.dest)
    assert result.refused == []
    assert result.bytes_written == len(blob)
    assert (box.dest / "big.bin").read_bytes() == blob


def test_pack_of_nothing_is_an_empty_archive(tmp_path: Path, box: Box) -> None:
    with pack(tmp_path, []) as archive:
        result = box.extract(archive.read())
    assert result == ExtractResult()


# --- safe_extract: hostile archives ----------------------------------------


def test_absolute_name_refused(box: Box) -> None:
    target = box.outer / "abs.txt"
    result = box.extract(make_tar(member(str(target), data=b"pwned"), member("ok.txt", data=b"ok")))
    assert reasons(result) == {str(target): "absolute path"}
    assert result.written == ["ok.txt"]
    assert not target.exists()


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "a/b/../../../escape", ".."])
def test_dotdot_refused(box: Box, name: str) -> None:
    result = box.extract(make_tar(member(name, data=b"pwned")))
    assert reasons(result) == {name: "'..' in path"}
    assert box.tree() == {}


def test_absolute_symlink_and_write_through_it(box: Box) -> None:
    result = box.extract(
        make_tar(
            member("link", tarfile.SYMTYPE, linkname=str(box.victim)),
            member("link/passwd", data=b"root::0:0::/:/bin/sh\n"),
            member("etc", tarfile.SYMTYPE, linkname="/etc"),
            member("etc/passwd", data=b"pwned"),
        )
    )
    assert reasons(result) == {
        "link": "absolute symlink target",
        "link/passwd": "parent was refused",
        "etc": "absolute symlink target",
        "etc/passwd": "parent was refused",
    }
    assert box.tree() == {}


def test_write_through_extracted_inside_symlink_refused(box: Box) -> None:
    result = box.extract(
        make_tar(
            member("real", tarfile.DIRTYPE, mode=0o755),
            member("alias", tarfile.SYMTYPE, linkname="real"),
            member("alias/file", data=b"through"),
        )
    )
    assert reasons(result) == {"alias/file": "path through symlink"}
    assert box.tree() == {"alias": "-> real", "real": "dir"}


def test_write_through_preexisting_symlink_refused(box: Box) -> None:
    os.symlink(box.victim, box.dest / "planted")
    result = box.extract(make_tar(member("planted/passwd", data=b"pwned")))
    assert reasons(result) == {"planted/passwd": "path through symlink"}


@pytest.mark.parametrize(
    ("name", "target", "reason"),
    [
        ("up", "..", "symlink target escapes destination"),
        ("a/b/up", "../../../etc", "symlink target escapes destination"),
        ("a/mid", "x/../../..", "symlink target has '..' after a name"),
        ("a/sneaky", "x/../y", "symlink target has '..' after a name"),
        ("empty", "", "empty symlink target"),
    ],
)
def test_escaping_symlink_refused(box: Box, name: str, target: str, reason: str) -> None:
    result = box.extract(make_tar(member(name, tarfile.SYMTYPE, linkname=target)))
    assert reasons(result) == {name: reason}
    assert not os.path.lexists(box.dest / name)


def test_symlink_chain_cannot_escape(box: Box) -> None:
    # "s" points back up to the destination root; a lexical normpath check of "t" would
    # see a/b/c/s/../../../x = a/x, but the kernel resolves s first: dest/.. = outside.
    result = box.extract(
        make_tar(
            member("a/b/c/s", tarfile.SYMTYPE, linkname="../../.."),
            member("a/b/c/t", tarfile.SYMTYPE, linkname="s/../../../x"),
            member("a/b/c/ok", tarfile.SYMTYPE, linkname="../../../a"),
        )
    )
    assert reasons(result) == {"a/b/c/t": "symlink target has '..' after a name"}
    assert result.written == ["a/b/c/s", "a/b/c/ok"]
    assert os.path.realpath(box.dest / "a/b/c/s") == str(box.dest)


def test_hardlinks(box: Box) -> None:
    result = box.extract(
        make_tar(
            member("f.txt", data=b"content", mode=0o755),
            member("copy.txt", tarfile.LNKTYPE, linkname="f.txt"),
            member("passwd", tarfile.LNKTYPE, linkname="/etc/passwd"),
            member("escape", tarfile.LNKTYPE, linkname="../box/x"),
            member("early", tarfile.LNKTYPE, linkname="later.txt"),
            member("later.txt", data=b"later"),
        )
    )
    assert reasons(result) == {
        "passwd": "hardlink to a file not extracted before it",
        "escape": "hardlink to a file not extracted before it",
        "early": "hardlink to a file not extracted before it",
    }
    assert box.tree() == {"copy.txt": "content", "f.txt": "content", "later.txt": "later"}
    copy_stat = os.stat(box.dest / "copy.txt")
    assert copy_stat.st_ino != os.stat(box.dest / "f.txt").st_ino
    assert copy_stat.st_mode & 0o777 == 0o755
    assert result.bytes_written == len(b"content") * 2 + len(b"later")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (tarfile.CHRTYPE, "device file"),
        (tarfile.BLKTYPE, "device file"),
        (tarfile.FIFOTYPE, "fifo"),
        (tarfile.CONTTYPE, None),  # contiguous file: a regular file
        (b"V", "unsupported member type"),
    ],
)
def test_special_members_refused(box: Box, kind: bytes, reason: str | None) -> None:
    info, _ = member("special", kind)
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    result = box.extract(make_tar((info, b"")))
    if reason is None:
        assert result.written == ["special"]
    else:
        [(name, why)] = result.refused
        assert name == "special" and why.startswith(reason)
        assert not os.path.lexists(box.dest / "special")


def test_setuid_and_write_bits_stripped(box: Box) -> None:
    result = box.extract(
        make_tar(
            member("suid", data=b"x", mode=0o6777),
            member("locked", data=b"y", mode=0o000),
            member("ro_dir", tarfile.DIRTYPE, mode=0o1555),
            member("ro_dir/inside", data=b"z", mode=0o444),
        )
    )
    assert result.refused == []
    assert stat.S_IMODE(os.stat(box.dest / "suid").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(box.dest / "locked").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(box.dest / "ro_dir").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(box.dest / "ro_dir/inside").st_mode) == 0o644


def test_existing_entries_are_not_replaced(box: Box) -> None:
    (box.dest / "keep.txt").write_text("mine")
    (box.dest / "dir").mkdir()
    result = box.extract(
        make_tar(
            member("keep.txt", data=b"theirs"),
            member("dir", tarfile.DIRTYPE, mode=0o755),
            member("twice", data=b"1"),
            member("twice", data=b"2"),
            member("dir", tarfile.SYMTYPE, linkname="keep.txt"),
        )
    )
    assert result.refused == [
        ("keep.txt", "already exists"),
        ("twice", "already exists"),
        ("dir", "already exists"),
    ]
    assert box.tree() == {"dir": "dir", "keep.txt": "mine", "twice": "1"}


def test_parent_that_is_a_file_refused(box: Box) -> None:
    result = box.extract(make_tar(member("f", data=b"x"), member("f/g", data=b"y")))
    assert reasons(result) == {"f/g": "parent is not a directory"}


def test_names_are_normalized(box: Box) -> None:
    result = box.extract(
        make_tar(
            member(".", tarfile.DIRTYPE, mode=0o755), member("./a//b.txt", data=b"x"), member("./", data=b"")
        )
    )
    assert result.written == ["a/b.txt"]
    assert result.refused == [("./", "empty name")]
    assert box.tree() == {"a": "dir", "a/b.txt": "x"}


def test_size_cap(box: Box) -> None:
    result = box.extract(
        make_tar(
            member("one", data=b"0123456789"),
            member("two", data=b"0123456789"),
            member("three", data=b"0123456789"),
            member("four", data=b"x"),
            member("dir", tarfile.DIRTYPE, mode=0o755),
        ),
        max_bytes=25,
    )
    assert result.written == ["one", "two"]
    assert result.bytes_written == 20
    assert result.refused == [("three", "size cap"), ("four", "size cap"), ("dir", "size cap")]
    assert result.stream_error is None
    assert box.tree() == {"one": "0123456789", "two": "0123456789"}


def test_size_cap_counts_hardlink_copies(box: Box) -> None:
    result = box.extract(
        make_tar(member("a", data=b"x" * 10), member("b", tarfile.LNKTYPE, linkname="a")), max_bytes=15
    )
    assert result.refused == [("b", "size cap")]


def test_member_cap(box: Box) -> None:
    result = box.extract(make_tar(*(member(f"f{i}", data=b"x") for i in range(10))), max_members=4)
    assert result.written == ["f0", "f1", "f2", "f3"]
    assert result.refused[0] == ("f4", "member cap")
    assert result.refused[1][0] == STREAM
    assert len(result.refused) == 2
    assert result.stream_error is not None and "member cap" in result.stream_error


# --- safe_extract: broken streams ------------------------------------------


def good_archive() -> bytes:
    return make_tar(member("first.txt", data=b"a" * 1000), member("second.txt", data=b"b" * 3000))


@pytest.mark.parametrize(
    ("cut", "written", "refused_name"),
    [
        (512 + 1024 + 100, ["first.txt"], None),  # inside second's header
        (512 + 1024 + 512 + 1000, ["first.txt"], "second.txt"),  # inside second's data
        (512 + 300, [], "first.txt"),  # inside first's data
        (512 + 1024 + 512 + 3072, ["first.txt", "second.txt"], None),  # end marker missing
    ],
)
def test_truncated_stream(box: Box, cut: int, written: list[str], refused_name: str | None) -> None:
    data = good_archive()
    # PAX_FORMAT writes no extended headers for these plain names: header, data, header, data.
    result = box.extract(data[:cut])
    assert result.written == written
    assert result.stream_error is not None
    names = [name for name, _ in result.refused]
    assert names == ([refused_name] if refused_name else []) + [STREAM]
    if refused_name:
        assert not (box.dest / refused_name).exists()  # the partial file was removed


def test_garbage_after_a_member(box: Box) -> None:
    data = good_archive()
    garbage = data[: 512 + 1024] + b"\xff" * 4096
    result = box.extract(garbage)
    assert result.written == ["first.txt"]
    assert result.stream_error is not None


@pytest.mark.parametrize("data", [b"", b"not a tar at all" * 100, b"\0" * 100])
def test_unreadable_stream(box: Box, data: bytes) -> None:
    result = box.extract(data)
    assert result.written == []
    assert [name for name, _ in result.refused] == [STREAM]


def test_empty_but_valid_archive(box: Box) -> None:
    assert box.extract(make_tar()) == ExtractResult()


def test_failing_chunk_iterator(box: Box) -> None:
    data = good_archive()

    def broken() -> Iterator[bytes]:
        yield data[: 512 + 1024 + 512 + 100]  # into second.txt's data
        raise ConnectionResetError("peer went away")

    result = safe_extract(broken(), box.dest)
    assert result.written == ["first.txt"]
    assert result.refused[0] == ("second.txt", "truncated data")
    assert result.stream_error is not None and "peer went away" in result.stream_error
    assert not (box.dest / "second.txt").exists()

    def broken_early() -> Iterator[bytes]:
        yield data[:700]  # first.txt's data is cut; the error comes while reading a header or data
        raise ConnectionResetError("peer went away")

    other = safe_extract(broken_early(), box.dest / "other")
    assert other.written == []
    assert other.stream_error is not None and "peer went away" in other.stream_error


def test_other_iterator_errors_propagate(box: Box) -> None:
    def broken() -> Iterator[bytes]:
        raise KeyError("bug")
        yield b""

    with pytest.raises(KeyError):
        safe_extract(broken(), box.dest)


def test_dest_is_created(tmp_path: Path) -> None:
    result = safe_extract(chunked(good_archive()), tmp_path / "new" / "dest")
    assert result.written == ["first.txt", "second.txt"]


# --- read_member -----------------------------------------------------------


def junit_archive(name: str = "junit.xml", data: bytes = b"<testsuites/>") -> bytes:
    return make_tar(member("other.txt", data=b"x" * 2000), member(name, data=data))


def test_read_member_found() -> None:
    assert read_member(chunked(junit_archive()), "junit.xml", max_bytes=1000) == b"<testsuites/>"
    assert read_member(chunked(junit_archive("./junit.xml")), "junit.xml", max_bytes=13) == b"<testsuites/>"


def test_read_member_absent() -> None:
    assert read_member(chunked(junit_archive("other.xml")), "junit.xml", max_bytes=1000) is None
    assert read_member(chunked(make_tar()), "junit.xml", max_bytes=1000) is None


def test_read_member_cap() -> None:
    with pytest.raises(ArchiveError, match="over the cap of 12") as excinfo:
        read_member(chunked(junit_archive()), "junit.xml", max_bytes=12)
    assert excinfo.value.code == "archive_invalid"
    assert excinfo.value.name == "junit.xml"


def test_read_member_not_regular() -> None:
    data = make_tar(member("junit.xml", tarfile.SYMTYPE, linkname="/etc/passwd"))
    with pytest.raises(ArchiveError, match="not a regular file"):
        read_member(chunked(data), "junit.xml", max_bytes=1000)


@pytest.mark.parametrize("cut", [0, 100, 512 + 1024 + 100])
def test_read_member_broken_stream(cut: int) -> None:
    with pytest.raises(ArchiveError, match="tar stream"):
        read_member(chunked(junit_archive("other.xml")[:cut]), "junit.xml", max_bytes=1000)


def test_read_member_truncated_data() -> None:
    data = junit_archive(data=b"y" * 5000)
    with pytest.raises(ArchiveError, match="tar stream"):
        read_member(chunked(data[: 512 + 2048 + 512 + 100]), "junit.xml", max_bytes=10_000)


def test_read_member_member_cap() -> None:
    data = make_tar(*(member(f"f{i}") for i in range(5)), member("junit.xml", data=b"x"))
    with pytest.raises(ArchiveError, match="more than 3 members"):
        read_member(chunked(data), "junit.xml", max_bytes=10, max_members=3)


def test_read_member_invalid_name() -> None:
    with pytest.raises(ArchiveError):
        read_member(chunked(junit_archive()), "../junit.xml", max_bytes=10)


# --- safe_extract and read_member: names no file system call may see ----------


def pax(entry: tuple[tarfile.TarInfo, bytes], **records: str) -> tuple[tarfile.TarInfo, bytes]:
    """The member with raw PAX records (``path``, ``linkpath``...): what a hostile tar can say."""
    entry[0].pax_headers = records
    return entry


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (pax(member("x", data=b"pwned"), path="a\0b"), "NUL in name"),
        (pax(member("x", tarfile.SYMTYPE), path="link", linkpath="t\0x"), "symlink target: NUL in name"),
        (pax(member("x", tarfile.LNKTYPE), path="hard", linkpath="ok\0"), "hardlink to a file not extracted"),
    ],
)
def test_nul_in_a_name_or_link_target_is_refused_not_raised(
    box: Box, entry: tuple[tarfile.TarInfo, bytes], reason: str
) -> None:
    data = make_tar(member("ok", data=b"ok"), entry, member("after", data=b"a"))
    result = box.extract(data)
    [(_, got)] = result.refused
    assert got.startswith(reason)
    assert result.written == ["ok", "after"]
    assert read_member(chunked(data), "after", max_bytes=10) == b"a"


def test_a_name_that_is_not_utf8_is_written_under_its_own_bytes(box: Box) -> None:
    result = box.extract(make_tar(pax(member("x", data=b"data"), path="caf\udce9/\udcff.txt")))
    assert result.refused == []
    assert os.listdir(bytes(box.dest)) == [b"caf\xe9"]
    assert os.listdir(bytes(box.dest / "caf\udce9")) == [b"\xff.txt"]


def test_a_name_the_file_system_encoding_cannot_represent_is_refused(tmp_path: Path) -> None:
    # Under a C locale without UTF-8 mode the file-system encoding is ASCII, and a PAX
    # name (always UTF-8) such as "é" cannot be encoded for a system call.
    data = make_tar(member("caf\u00e9.txt", data=b"x"), member("ok.txt", data=b"y"))
    (tmp_path / "in.tar").write_bytes(data)
    script = (
        "import sys, pathlib; from pytest_lrun.tree.extract import safe_extract; "
        "print(sys.getfilesystemencoding()); "
        "r = safe_extract([pathlib.Path('in.tar').read_bytes()], pathlib.Path('out')); "
        "print(r.written, ascii(r.refused))"
    )
    env = {**os.environ, "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    encoding, outcome = done.stdout.splitlines()
    if encoding != "ascii":
        pytest.skip(f"this interpreter keeps {encoding} under the C locale")
    assert outcome == "['ok.txt'] [('caf\\xe9.txt', 'name not representable in the file system encoding')]"


def test_hostile_headers_never_raise(tmp_path: Path) -> None:
    # Random damage to the headers of archives using every header form must end in
    # refusals or stream errors, never in an exception out of tarfile's parser.
    long = "d/" + "\u00e9" * 60 + "x" * 60
    entries = [
        member("d", tarfile.DIRTYPE, mode=0o755),
        member(long, data=b"hello" * 40),
        member("d/l", tarfile.SYMTYPE, linkname="\u00e9" * 80),
        member("h", tarfile.LNKTYPE, linkname=long),
        member("junit.xml", data=b"<x/>"),
    ]
    archives = []
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for info, data in entries:
                tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
        archives.append(buf.getvalue())
    rng = random.Random(7)
    for i in range(400):
        damaged = bytearray(rng.choice(archives))
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(3072)] = rng.choice(b"\x00\xff09\n= SxLg" + bytes([rng.randrange(256)]))
        safe_extract([bytes(damaged)], tmp_path / str(i), max_bytes=1 << 20)
        with contextlib.suppress(ArchiveError):
            read_member([bytes(damaged)], "junit.xml", max_bytes=1 << 20)


# --- safe_extract: every created entry is counted ---------------------------------


def deep(depth: int, top: str = "d") -> str:
    return "/".join([top] * depth)


def entries_on_disk(root: Path) -> tuple[int, int]:
    """How many entries are under ``root`` and the most components any has, walked iteratively."""
    count, deepest, stack = 0, 0, [(root, 0)]
    while stack:
        path, depth = stack.pop()
        with os.scandir(path) as it:
            for entry in it:
                count += 1
                deepest = max(deepest, depth + 1)
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), depth + 1))
    return count, deepest


def test_a_1100_deep_tree_stops_at_the_depth_cap(box: Box) -> None:
    levels = [member(deep(n), tarfile.DIRTYPE, mode=0o755) for n in range(1, 1101)]
    result = box.extract(make_tar(*levels, member(deep(1100) + "/f", data=b"x")))
    assert len(result.written) == MAX_EXTRACT_DEPTH
    refused = 1100 - MAX_EXTRACT_DEPTH + 1
    assert result.refused[:-1] == [(name, "depth cap") for name, _ in result.refused[:-1]]
    assert result.refused[-1] == (
        MORE,
        f"{refused - MAX_REFUSALS_LISTED} more members refused; the first 100 are listed",
    )
    assert entries_on_disk(box.dest) == (MAX_EXTRACT_DEPTH, MAX_EXTRACT_DEPTH)


def test_the_folder_bomb_of_the_issue_creates_nothing(box: Box) -> None:
    # 10 members, each a file 2,000 folders down: 20,000 folders before the caps.
    result = box.extract(make_tar(*(member(deep(2000, f"t{i}") + "/f") for i in range(10))))
    assert [reason for _, reason in result.refused] == ["depth cap"] * 10
    assert (result.entries, entries_on_disk(box.dest)) == (0, (0, 0))


def test_folders_made_on_the_way_count_against_the_entry_cap(box: Box) -> None:
    # 400 members 50 folders deep ask for 20,000 folders (the default cap is 10,000).
    result = box.extract(make_tar(*(member(deep(50, f"t{i}") + "/f") for i in range(400))), max_entries=500)
    assert result.entries == 500
    assert entries_on_disk(box.dest)[0] == 500
    assert result.bytes_written == 0
    capped = [name for name, reason in result.refused if reason == "entry cap"]
    assert len(capped) == len(result.refused) - 1 == MAX_REFUSALS_LISTED
    assert result.refused[-1][1].startswith(f"{400 - len(result.written) - MAX_REFUSALS_LISTED} more members")


def test_folders_made_on_the_way_are_charged_against_the_byte_cap(box: Box) -> None:
    result = box.extract(
        make_tar(*(member(deep(10, f"t{i}") + "/f") for i in range(10))), max_bytes=25 * ENTRY_BYTES
    )
    assert result.written == ["t0/" + deep(9, "t0") + "/f", "t1/" + deep(9, "t1") + "/f"]
    assert result.entries == 2 * 11 + 5  # two members (ten folders and a file), five folders of the third
    assert [reason for _, reason in result.refused] == ["size cap"] * 8
    assert result.bytes_written == 0


def test_links_and_directories_are_entries(box: Box) -> None:
    result = box.extract(
        make_tar(
            member("dir", tarfile.DIRTYPE, mode=0o755),
            member("dir/file", data=b"0123456789"),
            member("copy", tarfile.LNKTYPE, linkname="dir/file"),
            member("link", tarfile.SYMTYPE, linkname="dir/file"),
            member("more/file", data=b"x"),
        ),
        max_entries=5,
    )
    assert result.written == ["dir", "dir/file", "copy", "link"]
    assert result.refused == [("more/file", "entry cap")]
    assert result.entries == 5  # the four members and the folder "more"
    assert result.bytes_written == 20


# --- safe_extract and read_member: what is read from the engine is bounded --------


MIB = 1024 * 1024


def header_block(kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo("././@LongLink")
    info.type = kind
    info.size = size
    return info.tobuf(tarfile.GNU_FORMAT)


class Lazy:
    """A stream of chunks made as they are pulled, counting what was pulled."""

    def __init__(self, head: bytes, body: int, tail: bytes = b"") -> None:
        self.head, self.body, self.tail = head, body, tail
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        chunk = b"a" * MIB
        for piece in (self.head, *(chunk for _ in range(self.body // MIB)), self.tail):
            self.pulled += len(piece)
            yield piece


def peak_memory(run: Callable[[], object], *, tries: int = 3) -> int:
    """The least peak of Python memory over ``tries`` calls of ``run``: tracemalloc counts every
    thread's allocations, and a daemon thread an earlier test left (a server, a stream's reader)
    may allocate during one call, never during all of them."""
    peaks = []
    for _ in range(tries):
        tracemalloc.start()
        try:
            run()
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    return min(peaks)


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (tarfile.GNUTYPE_LONGNAME, "GNU long-name"),
        (tarfile.GNUTYPE_LONGLINK, "GNU long-link"),
        (tarfile.XHDTYPE, "PAX"),
        (tarfile.XGLTYPE, "global PAX"),
    ],
)
def test_a_256_mib_header_is_refused_before_it_is_read(box: Box, kind: bytes, what: str) -> None:
    # Before the cap tarfile read the whole header into memory: a 785 MiB peak.
    bombs: list[Lazy] = []
    result = ExtractResult()

    def extract() -> None:
        nonlocal result
        bombs.append(Lazy(blocks("first", b"1") + header_block(kind, 256 * MIB), 256 * MIB))
        result = safe_extract(bombs[-1], box.dest / f"try-{len(bombs)}")

    assert peak_memory(extract) < 4 * MIB
    assert max(bomb.pulled for bomb in bombs) < 2 * MIB
    assert result.written == ["first"]
    assert result.stream_error == f"header cap: a {what} header of {256 * MIB} bytes (cap {MAX_HEADER_BYTES})"

    bomb = Lazy(header_block(kind, 256 * MIB), 256 * MIB)
    with pytest.raises(ArchiveError, match="header cap"):
        peak_memory(lambda: read_member(bomb, "junit.xml", max_bytes=MIB))
    assert bomb.pulled < 2 * MIB


def blocks(name: str, data: bytes = b"", **records: str) -> bytes:
    """One member as its header blocks and padded data, to splice into a stream by hand."""
    info = pax(member(name, data=data), **records)[0]
    return info.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def test_global_headers_are_capped_in_total(box: Box) -> None:
    global_header = header_block(tarfile.XGLTYPE, 40_000) + b"40000 c=" + b"x" * 39_991 + b"\n" + b"\0" * 448
    data = blocks("a") + global_header + blocks("b") + global_header + blocks("c") + b"\0" * 1024
    result = box.extract(data)
    assert result.written == ["a", "b"]
    assert result.stream_error == f"header cap: a global PAX header of 80000 bytes (cap {MAX_HEADER_BYTES})"


def test_a_chain_of_extension_headers_is_cut_not_recursed(box: Box) -> None:
    # tarfile reads each extension header by recursion: 3,000 in a row was a RecursionError.
    link = header_block(tarfile.GNUTYPE_LONGNAME, 2) + b"a\0" + b"\0" * 510
    result = box.extract(link * 3000 + make_tar(member("x")))
    assert result.stream_error == "header cap: more than 8 extension headers in a row"
    with pytest.raises(ArchiveError, match="extension headers in a row"):
        read_member(chunked(link * 3000), "junit.xml", max_bytes=10)


@pytest.mark.parametrize(
    "records",
    [
        {"GNU.sparse.map": "0,x", "GNU.sparse.size": "10"},  # 0.1: int("x") was a ValueError
        {"GNU.sparse.size": "10", "GNU.sparse.offset": "0", "GNU.sparse.numbytes": "1"},  # 0.0
        {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.realsize": "10",
        },  # 1.0: unbounded read
    ],
)
def test_sparse_members_end_the_stream(box: Box, records: dict[str, str]) -> None:
    result = box.extract(make_tar(member("ok", data=b"1"), pax(member("s", data=b"x" * 600), **records)))
    assert result.written == ["ok"]
    assert result.stream_error == "sparse member (not supported)"


def test_an_old_gnu_sparse_member_ends_the_stream(box: Box) -> None:
    # An old GNU sparse header whose extension blocks run past the end was an IndexError.
    sparse = bytearray(header_block(tarfile.GNUTYPE_SPARSE, 0))
    sparse[482] = 1  # "isextended": more sparse blocks follow
    sparse[148:156] = b" " * 8
    sparse[148:156] = b"%06o\0 " % sum(sparse)
    result = box.extract(blocks("ok", b"1") + bytes(sparse))
    assert result.written == ["ok"]
    assert result.stream_error == "sparse member (not supported)"


def test_what_is_read_of_the_stream_is_capped(box: Box) -> None:
    huge = member("huge", data=b"")[0]
    huge.size = 256 * MIB
    stream = Lazy(blocks("first", b"1") + huge.tobuf(tarfile.PAX_FORMAT), 256 * MIB)
    result = safe_extract(stream, box.dest, max_bytes=MIB, max_read=4 * MIB)
    assert result.refused[0] == ("huge", "size cap")
    assert result.stream_error == f"read cap: the stream is over {4 * MIB} bytes; the rest was not read"
    assert stream.pulled <= 5 * MIB

    stream = Lazy(huge.tobuf(tarfile.PAX_FORMAT), 256 * MIB)
    with pytest.raises(ArchiveError, match="read cap"):
        read_member(stream, "junit.xml", max_bytes=MIB)
    assert stream.pulled <= MIB + STREAM_OVERHEAD + MIB


def test_headers_already_read_are_not_kept(box: Box) -> None:
    # tarfile keeps every header it read: 400 members with a 32 KiB PAX record each
    # held 13 MiB until the end of the stream.
    def stream() -> Iterator[bytes]:
        for i in range(400):
            yield blocks(f"{i:03d}", b"1", comment="c" * (32 * 1024))
        yield b"\0" * 1024

    result = ExtractResult()

    tries = 0

    def extract() -> None:
        nonlocal result, tries
        tries += 1
        result = safe_extract(stream(), box.dest / f"try-{tries}")

    assert peak_memory(extract) < 4 * MIB
    assert result.refused == []
    assert result.entries == 400
