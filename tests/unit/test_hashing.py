"""Tests of pytest_lrun.tree.hashing: what the tree digest covers, ignores, stat cache, bad input."""

from __future__ import annotations

import builtins
import errno
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash

from pytest_lrun.core.errors import ArchiveError, HashError
from pytest_lrun.tree.archive import EMPTY_DIR_MTIME, PACK_MTIME, pack
from pytest_lrun.tree.hashing import CHUNK_SIZE, hash_dir
from pytest_lrun.tree.ignores import DEFAULT_IGNORES
from pytest_lrun.tree.snapshot import Snapshot, snapshot
from pytest_lrun.tree.walk import Entry, iter_files

# The digest of the tree built by make_known_tree(). It must not change between
# machines or releases: if it does, every cached run on every machine is orphaned.
KNOWN_DIGEST = "abd24236fa55e7bbeb758d1bc6a1544d"


def write(path: Path, content: bytes | str = b"", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


def make_known_tree(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write(root / "a.txt", "hello\n")
    write(root / "bin" / "run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    (root / "empty").mkdir()
    os.symlink("a.txt", root / "link")
    write(root / "sub" / "deep" / "data.bin", bytes(range(256)))
    return root


def make_base_tree(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write(root / "test_a.py", "def test_a():\n    assert True\n")
    write(root / "pkg" / "helper.py", "X = 1\n")
    write(root / "pkg" / "script.sh", "#!/bin/sh\n")
    os.symlink("pkg/helper.py", root / "alias.py")
    return root


def settle(root: Path) -> None:
    """Wait until files just written are old enough for the stat cache to trust them."""
    probe = write(root.parent / f".probe-{root.name}", "x")
    coarse = probe.stat().st_ctime_ns % 1_000_000_000 == 0
    probe.unlink()
    time.sleep(2.3 if coarse else 0.25)


class OpenSpy:
    """Records every file below ``root`` opened with os.open or open(), by its absolute path.

    The walk opens directories (O_DIRECTORY) to list them and opens files relative to
    them (``dir_fd``): the spy leaves out the first and resolves the second.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        self.root = str(root)
        self.opened: list[str] = []
        dirs: dict[int, str] = {}
        real_os_open, real_open = os.open, builtins.open

        def os_open(path: Any, flags: int, *args: Any, dir_fd: int | None = None, **kwargs: Any) -> int:
            where = os.path.join(dirs[dir_fd], path) if dir_fd is not None else path
            fd = real_os_open(path, flags, *args, dir_fd=dir_fd, **kwargs)
            if flags & os.O_DIRECTORY:
                dirs[fd] = os.path.abspath(where)
            else:
                self._record(where)
            return fd

        def open_(file: Any, *args: Any, **kwargs: Any) -> Any:
            self._record(file)
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", open_)

    def _record(self, path: Any) -> None:
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(self.root + os.sep):
            self.opened.append(os.fspath(path))


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_file()) if cache.exists() else []


# --- the digest -------------------------------------------------------------


def test_known_tree_has_known_digest(tmp_path: Path) -> None:
    assert hash_dir(make_known_tree(tmp_path / "t")) == KNOWN_DIGEST


def test_digest_follows_the_documented_stream_format(tmp_path: Path) -> None:
    # An independent re-implementation of the format in the module docstring, over a
    # file larger than several read chunks, guards both the format and the chunking.
    root = tmp_path / "t"
    big = bytes(range(251)) * (CHUNK_SIZE * 5 // 2 // 251)
    write(root / "big.bin", big, mode=0o700)
    write(root / "d" / "small.txt", "x")
    os.symlink("../big.bin", root / "d" / "up")

    def u64(n: int) -> bytes:
        return n.to_bytes(8, "little")

    stream = (
        b"pytest-lrun tree v1\0"
        + b"f" + u64(7) + b"big.bin" + b"x" + xxhash.xxh3_128_digest(big)
        + b"d" + u64(1) + b"d"
        + b"f" + u64(11) + b"d/small.txt" + b"-" + xxhash.xxh3_128_digest(b"x")
        + b"l" + u64(4) + b"d/up" + u64(10) + b"../big.bin"
    )  # fmt: skip
    assert hash_dir(root) == xxhash.xxh3_128_hexdigest(stream)


def test_same_tree_built_in_another_order_or_place_has_the_same_digest(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "elsewhere" / "two"
    names = [f"d{i % 3}/f{i}.txt" for i in range(12)] + ["a-b", "a/b", "a.b", "A"]
    for name in names:
        write(one / name, name)
    for name in reversed(names):
        write(two / name, name)
    assert hash_dir(one) == hash_dir(two)


def test_digest_does_not_depend_on_directory_listing_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_base_tree(tmp_path / "t")
    for i in range(20):
        write(root / "many" / f"{i:02d}.txt", str(i))
    expected = hash_dir(root)
    real_scandir = os.scandir
    calls: list[str] = []

    class ReversedScandir:
        def __init__(self, path: str) -> None:
            calls.append(path)
            with real_scandir(path) as it:
                self.entries = list(it)[::-1]

        def __enter__(self) -> Iterator[os.DirEntry[str]]:
            return iter(self.entries)

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(os, "scandir", ReversedScandir)
    assert hash_dir(root) == expected
    assert calls, "the walk did not go through os.scandir"


def test_digest_is_hex_xxh3_128(tmp_path: Path) -> None:
    digest = hash_dir(make_base_tree(tmp_path / "t"))
    assert len(digest) == 32
    int(digest, 16)


def _rename(root: Path) -> None:
    (root / "test_a.py").rename(root / "test_b.py")


def _move_to_subdir(root: Path) -> None:
    (root / "test_a.py").rename(root / "pkg" / "test_a.py")


def _edit_content(root: Path) -> None:
    write(root / "pkg" / "helper.py", "X = 2\n")


def _make_executable(root: Path) -> None:
    (root / "pkg" / "helper.py").chmod(0o744)


def _file_to_symlink(root: Path) -> None:
    (root / "test_a.py").unlink()
    os.symlink("def test_a():\n    assert True\n", root / "test_a.py")


def _file_to_dir(root: Path) -> None:
    (root / "pkg" / "script.sh").unlink()
    (root / "pkg" / "script.sh").mkdir()


def _retarget_symlink(root: Path) -> None:
    (root / "alias.py").unlink()
    os.symlink("pkg/script.sh", root / "alias.py")


def _add_empty_dir(root: Path) -> None:
    (root / "pkg" / "empty").mkdir()


def _add_empty_file(root: Path) -> None:
    write(root / "pkg" / "__init__.py")


def _delete_file(root: Path) -> None:
    (root / "pkg" / "helper.py").unlink()


COVERED: list[Callable[[Path], None]] = [
    _rename,
    _move_to_subdir,
    _edit_content,
    _make_executable,
    _file_to_symlink,
    _file_to_dir,
    _retarget_symlink,
    _add_empty_dir,
    _add_empty_file,
    _delete_file,
]


@pytest.mark.parametrize("change", COVERED, ids=lambda f: f.__name__.strip("_"))
def test_each_covered_attribute_changes_the_digest(tmp_path: Path, change: Callable[[Path], None]) -> None:
    root = make_base_tree(tmp_path / "t")
    before = hash_dir(root)
    change(root)
    assert hash_dir(root) != before


def _touch_mtime(root: Path) -> None:
    os.utime(root / "test_a.py", ns=(1, 1))
    os.utime(root / "pkg", ns=(2, 2))


def _group_write(root: Path) -> None:
    (root / "test_a.py").chmod(0o664)


def _other_exec_only(root: Path) -> None:
    (root / "test_a.py").chmod(0o645)


def _read_only(root: Path) -> None:
    (root / "test_a.py").chmod(0o400)


def _dir_mode(root: Path) -> None:
    (root / "pkg").chmod(0o700)


def _rewrite_same_content(root: Path) -> None:
    path = root / "pkg" / "helper.py"
    content = path.read_bytes()
    path.unlink()
    write(path, content)


@pytest.mark.parametrize(
    "change",
    [_touch_mtime, _group_write, _other_exec_only, _read_only, _dir_mode, _rewrite_same_content],
    ids=lambda f: f.__name__.strip("_"),
)
def test_uncovered_attributes_leave_the_digest_alone(tmp_path: Path, change: Callable[[Path], None]) -> None:
    root = make_base_tree(tmp_path / "t")
    before = hash_dir(root)
    change(root)
    assert hash_dir(root) == before


def test_root_may_be_relative_or_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_base_tree(tmp_path / "t")
    expected = hash_dir(str(root))
    monkeypatch.chdir(tmp_path)
    assert hash_dir("t") == hash_dir(Path("t")) == expected


# --- what is walked ---------------------------------------------------------


def test_iter_files_yields_what_is_hashed_in_stream_order(tmp_path: Path) -> None:
    root = make_known_tree(tmp_path / "t")
    write(root / "__pycache__" / "a.cpython-311.pyc", "junk")
    got = [(e.relpath, e.kind, e.executable, e.size, e.link_target) for e in iter_files(root)]
    assert got == [
        ("a.txt", "file", False, 6, None),
        ("bin", "dir", False, 0, None),
        ("bin/run.sh", "file", True, 18, None),
        ("empty", "dir", False, 0, None),
        ("link", "symlink", False, 0, "a.txt"),
        ("sub", "dir", False, 0, None),
        ("sub/deep", "dir", False, 0, None),
        ("sub/deep/data.bin", "file", False, 256, None),
    ]
    assert all(isinstance(e, Entry) and e.abspath == str(root / e.relpath) for e in iter_files(root))


def test_a_directory_comes_before_its_contents_and_after_lesser_names(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for name in ["a/b", "a-c", "a.d", "a0"]:
        write(root / name)
    assert [e.relpath for e in iter_files(root)] == ["a-c", "a.d", "a", "a/b", "a0"]


def test_order_is_by_file_system_bytes(tmp_path: Path) -> None:
    # "\uff01" is b"\xef\xbc\x81"; a raw b"\xf0" name decodes to "\udcf0", which sorts
    # first as str but last as bytes. Bytes are what every machine agrees on.
    root = tmp_path / "t"
    root.mkdir()
    try:
        for name in (b"\xf0", "\uff01".encode()):
            (Path(os.fsdecode(bytes(root) + b"/" + name))).write_bytes(name)
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    assert [os.fsencode(e.relpath) for e in iter_files(root)] == ["\uff01".encode(), b"\xf0"]


@pytest.mark.parametrize(
    "ignored",
    [
        "__pycache__/mod.cpython-311.pyc",
        "pkg/__pycache__/helper.cpython-311.pyc",
        "stale.pyc",
        "pkg/stale.pyc",
        ".pytest_cache/v/cache/lastfailed",
        ".git/HEAD",
        "pkg/.git/config",
        ".lrun/state.json",
    ],
)
def test_default_ignores_do_not_change_the_digest(tmp_path: Path, ignored: str) -> None:
    root = make_base_tree(tmp_path / "t")
    before, shipped = hash_dir(root), [e.relpath for e in iter_files(root)]
    write(root / ignored, "ignored")
    assert hash_dir(root) == before
    assert [e.relpath for e in iter_files(root)] == shipped


def test_default_ignores_constant() -> None:
    assert set(DEFAULT_IGNORES) == {"__pycache__/", "*.pyc", ".pytest_cache/", ".git/", ".lrun/"}


def test_lrunignore_patterns_and_negation(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    write(root / ".lrunignore", "# build output\n*.log\n!keep.log\nbuild/\n/top-only.txt\n")
    before = hash_dir(root)
    for ignored in ["x.log", "pkg/y.log", "build/out.bin", "pkg/build/out.bin", "top-only.txt"]:
        write(root / ignored, "ignored")
        assert hash_dir(root) == before, ignored
    write(root / "pkg" / "top-only.txt", "not at the top: kept")
    after = hash_dir(root)
    assert after != before
    write(root / "keep.log", "re-included by !keep.log")
    assert hash_dir(root) != after
    shipped = {e.relpath for e in iter_files(root)}
    assert {"keep.log", "pkg/top-only.txt", ".lrunignore"} <= shipped
    assert not {"x.log", "pkg/y.log", "build", "top-only.txt"} & shipped


def test_directory_pattern_does_not_ignore_a_file_of_that_name(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    write(root / ".lrunignore", "build/\n")
    before = hash_dir(root)
    write(root / "build", "a file, not a directory")
    assert hash_dir(root) != before


def test_lrunignore_negation_can_reinclude_a_default(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    write(root / ".lrunignore", "!*.pyc\n")
    before = hash_dir(root)
    write(root / "fixture.pyc", "needed by a test")
    assert hash_dir(root) != before


def test_lrunignore_is_itself_hashed_and_cannot_ignore_itself(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    write(root / ".lrunignore", "*.log\n")
    before = hash_dir(root)
    write(root / ".lrunignore", "*.log\n.lrunignore\n")
    assert hash_dir(root) != before
    assert ".lrunignore" in {e.relpath for e in iter_files(root)}


def test_lrunignore_in_a_subdirectory_is_an_ordinary_file(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    write(root / "pkg" / ".lrunignore", "*.py\n")
    assert "pkg/helper.py" in {e.relpath for e in iter_files(root)}


def test_ignored_special_files_are_not_refused(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    write(root / ".lrunignore", "*.fifo\n")
    before = hash_dir(root)
    os.mkfifo(root / "pipe.fifo")
    (root / "__pycache__").mkdir()
    os.mkfifo(root / "__pycache__" / "pipe")
    assert hash_dir(root) == before


# --- symlinks ---------------------------------------------------------------


def test_symlink_to_root_is_hashed_as_its_text(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    os.symlink("/", root / "slash")
    digest = hash_dir(root)
    [entry] = [e for e in iter_files(root) if e.relpath.startswith("slash")]
    assert (entry.kind, entry.link_target) == ("symlink", "/")
    (root / "slash").unlink()
    os.symlink("/tmp", root / "slash")
    assert hash_dir(root) != digest


def test_symlink_to_a_directory_is_not_descended(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "x.txt", "x")
    root = make_base_tree(tmp_path / "t")
    os.symlink(outside, root / "out")
    os.symlink("pkg", root / "pkg-link")
    before = hash_dir(root)
    write(outside / "y.txt", "new file outside the tree")
    assert hash_dir(root) == before
    relpaths = {e.relpath for e in iter_files(root)}
    assert {"out", "pkg-link"} <= relpaths
    assert not any(p.startswith(("out/", "pkg-link/")) for p in relpaths)


def test_dangling_symlink_is_fine(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    os.symlink("does/not/exist", root / "dangling")
    assert len(hash_dir(root)) == 32


# --- bad input --------------------------------------------------------------


def test_missing_root_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(HashError) as err:
        hash_dir(missing)
    assert err.value.path == str(missing)
    assert str(missing) in str(err.value)


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "file.txt", "x")
    with pytest.raises(HashError, match="not a directory") as err:
        hash_dir(path)
    assert err.value.path == str(path)
    with pytest.raises(HashError):
        iter_files(path)


def test_lrunignore_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    (root / ".lrunignore").mkdir()
    with pytest.raises(HashError, match="regular file") as err:
        hash_dir(root)
    assert err.value.path == str(root / ".lrunignore")


def test_lrunignore_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    write(root / ".lrunignore", b"\xff\xfe*.log\n")
    with pytest.raises(HashError, match="UTF-8"):
        hash_dir(root)


def test_lrunignore_with_an_invalid_pattern_is_refused_naming_the_line(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    write(root / ".lrunignore", "*.log\nfoo\\\n")
    with pytest.raises(HashError, match=r"line 2: invalid pattern 'foo\\\\'") as err:
        hash_dir(root)
    assert err.value.path == str(root / ".lrunignore")


def test_failed_hash_writes_no_cache(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    settle(root)
    hash_dir(root, cache_dir=cache)
    [cache_file] = cache_files(cache)
    before = cache_file.read_bytes()
    write(root / "pkg" / "helper.py", "X = 3\n")  # would change the cache...
    os.mkfifo(root / "zz-pipe")  # ...but the walk fails at the end of the tree
    with pytest.raises(HashError):
        hash_dir(root, cache_dir=cache)
    assert cache_files(cache) == [cache_file]
    assert cache_file.read_bytes() == before

    fresh = tmp_path / "fresh-cache"
    with pytest.raises(HashError):
        hash_dir(root, cache_dir=fresh)
    assert cache_files(fresh) == []


# --- stat cache -------------------------------------------------------------


def test_warm_rehash_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_base_tree(tmp_path / "t")
    for i in range(50):
        write(root / "many" / f"test_{i}.py", f"# {i}\n" * i)
    cache = tmp_path / "cache"
    settle(root)
    cold = hash_dir(root, cache_dir=cache)
    spy = OpenSpy(monkeypatch, root)
    assert hash_dir(root, cache_dir=cache) == cold
    assert spy.opened == []


def test_cold_hash_does_read_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The spy of the warm test can see reads: it sees each file once on a cold hash.
    root = make_base_tree(tmp_path / "t")
    spy = OpenSpy(monkeypatch, root)
    hash_dir(root, cache_dir=tmp_path / "cache")
    assert sorted(spy.opened) == sorted(
        str(root / p) for p in ["test_a.py", "pkg/helper.py", "pkg/script.sh"]
    )


def test_a_cold_hash_reads_each_small_file_in_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Per-file cost is what a cold hash of many small files pays: a second read to find
    # the end of each file was a quarter of its system calls.
    root = make_base_tree(tmp_path / "t")
    write(root / "empty.txt")
    write(root / "almost_a_chunk.bin", b"x" * (CHUNK_SIZE - 1))
    reads: list[int] = []
    for name in ("read", "readv"):
        real = getattr(os, name)

        def counted(fd: int, *args: Any, _real: Any = real) -> Any:
            reads.append(fd)
            return _real(fd, *args)

        monkeypatch.setattr(os, name, counted)
    hash_dir(root)
    assert len(reads) == 5  # test_a.py, helper.py, script.sh, empty.txt, almost_a_chunk.bin


def _short_reads(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Every os.read returns half of what it read (and puts the rest back), as a network file system may."""
    real_read = os.read

    def half(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        keep = len(data) // 2
        os.lseek(fd, keep - len(data), os.SEEK_CUR)
        return data[:keep]

    monkeypatch.setattr(os, "read", half)


def _grows_after_fstat(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """A file grows between the fstat that gives its size and the read, as a log being written does."""
    real_fstat = os.fstat
    target = root / "sub" / "deep" / "data.bin"

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if st.st_ino == target.stat().st_ino:
            with open(target, "ab") as f:
                f.write(b"more")
        return st

    monkeypatch.setattr(os, "fstat", fstat)


@pytest.mark.parametrize("interfere", [_short_reads, _grows_after_fstat])
def test_a_file_read_in_pieces_is_hashed_to_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interfere: Callable[[pytest.MonkeyPatch, Path], None]
) -> None:
    root = make_known_tree(tmp_path / "t")
    with monkeypatch.context() as m:
        interfere(m, root)
        digest = hash_dir(root)
    assert digest == hash_dir(root)  # what is on disk now, read the usual way


def test_cache_notices_an_edit_that_keeps_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_base_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    target = root / "pkg" / "helper.py"
    settle(root)
    before = hash_dir(root, cache_dir=cache)
    with monkeypatch.context() as m:  # the cache really holds the file
        spy = OpenSpy(m, root)
        assert hash_dir(root, cache_dir=cache) == before
        assert spy.opened == []
    old = target.stat()
    target.write_bytes(b"X = 9\n")  # same size
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    after = hash_dir(root, cache_dir=cache)
    assert after != before
    assert after == hash_dir(root)


def test_cache_notices_an_edit_right_after_a_hash(tmp_path: Path) -> None:
    # No settling: the edit may fall within the file system's time-stamp granularity.
    root = make_base_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    target = root / "pkg" / "helper.py"
    before = hash_dir(root, cache_dir=cache)
    old = target.stat()
    target.write_bytes(b"X = 9\n")
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert hash_dir(root, cache_dir=cache) != before


def test_file_changed_just_before_a_hash_is_not_trusted_by_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A same-size rewrite within the file system's time-stamp granularity could keep
    # every stat field, so a file that changed just before a hash is read again next time.
    root = tmp_path / "t"
    fresh = write(root / "fresh.py", "X = 1\n")
    cache = tmp_path / "cache"
    if time.time_ns() - fresh.stat().st_ctime_ns > 50_000_000:
        pytest.skip("the machine stalled between writing and hashing")
    hash_dir(root, cache_dir=cache)
    spy = OpenSpy(monkeypatch, root)
    hash_dir(root, cache_dir=cache)
    assert spy.opened == [str(fresh)]


def test_cache_notices_a_file_replaced_by_rename(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    target = root / "pkg" / "helper.py"
    settle(root)
    before = hash_dir(root, cache_dir=cache)
    old = target.stat()
    replacement = write(root / "tmp-edit", b"X = 7\n")
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    replacement.replace(target)
    assert hash_dir(root, cache_dir=cache) == hash_dir(root) != before


def test_cached_digest_equals_uncached_digest(tmp_path: Path) -> None:
    roots = {change: make_base_tree(tmp_path / change.__name__) for change in COVERED}
    cache = tmp_path / "cache"
    settle(roots[_rename])
    for change, root in roots.items():
        assert hash_dir(root, cache_dir=cache) == hash_dir(root), change.__name__
        change(root)
        assert hash_dir(root, cache_dir=cache) == hash_dir(root), change.__name__
        assert hash_dir(root, cache_dir=cache) == hash_dir(root), change.__name__


def _garbage(data: bytes) -> bytes:
    return b"not a cache file at all\n" * 10


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flipped(data: bytes) -> bytes:
    return data[:-20] + bytes([data[-20] ^ 0x01]) + data[-19:]


def _empty(data: bytes) -> bytes:
    return b""


def test_corrupt_cache_file_is_ignored_and_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_base_tree(tmp_path / "t")
    settle(root)
    for corrupt in (_garbage, _truncated, _flipped, _empty):
        cache = tmp_path / corrupt.__name__
        expected = hash_dir(root, cache_dir=cache)
        [cache_file] = cache_files(cache)
        cache_file.write_bytes(corrupt(cache_file.read_bytes()))
        assert hash_dir(root, cache_dir=cache) == expected, corrupt.__name__
        with monkeypatch.context() as m:  # rebuilt: the next hash reads nothing
            spy = OpenSpy(m, root)
            assert hash_dir(root, cache_dir=cache) == expected, corrupt.__name__
            assert spy.opened == [], corrupt.__name__


def test_cache_file_of_another_tree_is_ignored(tmp_path: Path) -> None:
    one = make_base_tree(tmp_path / "one")
    two = make_base_tree(tmp_path / "two")
    write(two / "pkg" / "helper.py", "X = 5\n")  # same size, other content
    cache = tmp_path / "cache"
    settle(two)
    hash_dir(one, cache_dir=cache)
    [one_cache] = cache_files(cache)
    name_of_two = xxhash.xxh64_hexdigest(os.fsencode(str(two))) + one_cache.suffix
    one_cache.rename(cache / name_of_two)  # as if the two roots' names collided
    assert hash_dir(two, cache_dir=cache) == hash_dir(two)


def test_one_cache_file_per_tree_and_no_temp_files_left(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    roots = [make_base_tree(tmp_path / name) for name in ("one", "two")]
    settle(roots[0])
    for root in roots:
        hash_dir(root, cache_dir=cache)
        hash_dir(root, cache_dir=cache)
    assert len(cache_files(cache)) == 2
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_unusable_cache_dir_does_not_fail_the_hash(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    not_a_dir = write(tmp_path / "cache", "a file where the cache dir should be")
    assert hash_dir(root, cache_dir=not_a_dir) == hash_dir(root)


def test_cache_keeps_large_files_streaming(tmp_path: Path) -> None:
    root = tmp_path / "t"
    write(root / "big.bin", os.urandom(3 * CHUNK_SIZE + 17))
    cache = tmp_path / "cache"
    settle(root)
    assert hash_dir(root, cache_dir=cache) == hash_dir(root, cache_dir=cache) == hash_dir(root)


# --- snapshot: one walk, one read, what is shipped is what was hashed ------------


def shipped(snap: Snapshot) -> dict[str, tuple[str, int, bytes | str]]:
    """Each member of a snapshot's archive: kind, mode, and content or link target."""
    found: dict[str, tuple[str, int, bytes | str]] = {}
    with tarfile.open(fileobj=snap.archive) as tar:
        for m in tar:
            data = tar.extractfile(m) if m.isreg() else None
            kind = "file" if m.isreg() else "dir" if m.isdir() else "symlink"
            # An empty output dir (0o777) has a time of its own: a stat tells whether it was written to.
            shipped_empty = m.isdir() and m.mode == 0o777
            assert (m.uid, m.gid, m.mtime) == (0, 0, EMPTY_DIR_MTIME if shipped_empty else PACK_MTIME)
            found[m.name] = (kind, m.mode, data.read() if data is not None else m.linkname)
    return found


def test_snapshot_digest_is_the_hash_dir_digest(tmp_path: Path) -> None:
    # Keys stored before the snapshot existed stay valid: same tree, same digest.
    with snapshot(make_known_tree(tmp_path / "t")) as snap:
        assert snap.digest == KNOWN_DIGEST
    root = make_base_tree(tmp_path / "b")
    write(root / "__pycache__" / "x.pyc", b"ignored")
    write(root / ".lrunignore", "*.log\n")
    write(root / "out.log", "ignored too")
    with snapshot(root) as snap:
        assert snap.digest == hash_dir(root)


def test_snapshot_ships_the_tree_under_the_prefix(tmp_path: Path) -> None:
    root = make_known_tree(tmp_path / "t")
    write(root / "__pycache__" / "x.pyc", b"ignored")
    with snapshot(root, prefix="lrun/work", extra_dirs=["lrun/out"]) as snap:
        members = shipped(snap)
    assert list(members) == [
        "lrun",
        "lrun/out",
        "lrun/work",
        "lrun/work/a.txt",
        "lrun/work/bin",
        "lrun/work/bin/run.sh",
        "lrun/work/empty",
        "lrun/work/link",
        "lrun/work/sub",
        "lrun/work/sub/deep",
        "lrun/work/sub/deep/data.bin",
    ]
    assert members["lrun/out"] == ("dir", 0o777, "")
    assert members["lrun/work/a.txt"] == ("file", 0o644, b"hello\n")
    assert members["lrun/work/bin/run.sh"] == ("file", 0o755, b"#!/bin/sh\necho hi\n")
    assert members["lrun/work/link"] == ("symlink", 0o777, "a.txt")
    assert members["lrun/work/sub/deep/data.bin"] == ("file", 0o644, bytes(range(256)))


def test_snapshot_ships_what_pack_ships(tmp_path: Path) -> None:
    root = make_known_tree(tmp_path / "t")
    write(root / "big.bin", os.urandom(3 * CHUNK_SIZE + 17))
    relpaths = [e.relpath for e in iter_files(root)]
    with snapshot(root, prefix="w") as snap, pack(root, relpaths, prefix="w") as packed:
        assert shipped(snap) == shipped(Snapshot("", packed))


def test_the_mode_shipped_is_the_bit_hashed(tmp_path: Path) -> None:
    # Only the owner's exec bit is hashed; a group-exec file must not ship as 0o755
    # under the digest of a tree where it is 0o644.
    root = tmp_path / "t"
    write(root / "tool", "x", mode=0o654)
    with snapshot(root) as snap:
        assert shipped(snap)["tool"][1] == 0o644
        write(tmp_path / "u" / "tool", "x", mode=0o644)
        assert snap.digest == hash_dir(tmp_path / "u")


def test_snapshot_reads_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_base_tree(tmp_path / "t")
    spy = OpenSpy(monkeypatch, root)
    with snapshot(root, cache_dir=tmp_path / "cache"):
        pass
    assert sorted(spy.opened) == sorted(
        str(root / p) for p in ["test_a.py", "pkg/helper.py", "pkg/script.sh"]
    )


def test_snapshot_leaves_the_stat_cache_warm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_base_tree(tmp_path / "t")
    cache = tmp_path / "cache"
    settle(root)
    with snapshot(root, cache_dir=cache) as snap:
        digest = snap.digest
    spy = OpenSpy(monkeypatch, root)
    assert hash_dir(root, cache_dir=cache) == digest
    assert spy.opened == []


def test_snapshot_refuses_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(HashError, match="no such directory"):
        snapshot(tmp_path / "missing")


def test_a_spool_that_cannot_be_written_is_an_archive_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_base_tree(tmp_path / "t")

    def full(self: object, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "write", full)
    with pytest.raises(ArchiveError, match="No space left on device") as excinfo:
        snapshot(root)
    assert excinfo.value.code == "archive_invalid"
