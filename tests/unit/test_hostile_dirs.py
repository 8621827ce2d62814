"""Hostile test directories: what hash_dir and snapshot do with trees a user should not have made.

One test per case (issue 12, "Hostile and bad input"): symlinks out of the tree,
fifos, sockets and devices, unreadable files and folders, names that are not UTF-8,
files that change while they are read. Each ends in a HashError naming the path and
what is wrong, or in the handling the hashing docstring documents; none may hang.
The 100k-file case is too slow for a unit test: ``python bench/hash.py`` hashes,
snapshots and re-hashes such a tree.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from unit.test_hashing import OpenSpy, cache_files, make_base_tree, settle, write

from pytest_lrun.core.errors import ArchiveError, HashError
from pytest_lrun.core.text import printable
from pytest_lrun.tree.archive import pack
from pytest_lrun.tree.extract import safe_extract
from pytest_lrun.tree.hashing import CHUNK_SIZE, hash_dir
from pytest_lrun.tree.snapshot import snapshot
from pytest_lrun.tree.walk import iter_files

# A fifo opened for reading without O_NONBLOCK waits for a writer for ever: a test
# that hangs instead of failing is what these tests guard against.
pytestmark = pytest.mark.timeout(30)


def members(root: Path) -> dict[str, tarfile.TarInfo]:
    with snapshot(root) as snap, tarfile.open(fileobj=snap.archive) as tar:
        return {m.name: m for m in tar}


def refuse_opening(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    """Each os.open of ``victim`` (by path or relative to a folder's fd) fails with EACCES.

    What chmod 000 does to anyone but root, who reads and lists whatever the mode says.
    """
    real_open, target = os.open, os.stat(victim, follow_symlinks=False)

    def refusing(path: Any, flags: int, *args: Any, dir_fd: int | None = None, **kwargs: Any) -> int:
        try:
            st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_open(path, flags, *args, dir_fd=dir_fd, **kwargs)

    monkeypatch.setattr(os, "open", refusing)


def refused(root: Path, cache: Path | None = None) -> Iterator[HashError]:
    """The HashError that hash_dir, snapshot and iter_files each raise for ``root``."""
    for attempt in (
        lambda: hash_dir(root, cache_dir=cache),
        lambda: snapshot(root, cache_dir=cache).close(),
        lambda: list(iter_files(root)),
    ):
        with pytest.raises(HashError) as err:
            attempt()
        yield err.value


# --- symlinks ----------------------------------------------------------------


def test_symlinks_out_of_the_tree_are_hashed_and_shipped_as_their_text(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "outside the tree")
    root = make_base_tree(tmp_path / "t")
    os.symlink(outside, root / "abs-dir")
    os.symlink(outside / "secret.txt", root / "abs-file")
    os.symlink("../outside", root / "rel-dir")
    before = hash_dir(root)

    write(outside / "secret.txt", "changed outside the tree")
    write(outside / "new.txt", "added outside the tree")
    assert hash_dir(root) == before
    shipped = members(root)
    links = {name: (m.issym(), m.linkname) for name, m in shipped.items() if name.startswith(("abs", "rel"))}
    assert links == {
        "abs-dir": (True, str(outside)),
        "abs-file": (True, str(outside / "secret.txt")),
        "rel-dir": (True, "../outside"),
    }
    assert not any("secret" in name or "new.txt" in name for name in shipped)


def test_a_folder_swapped_for_a_symlink_mid_walk_is_refused_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "outside the tree")
    root = make_base_tree(tmp_path / "t")
    pkg = root / "pkg"
    real_open = os.open

    def swap_then_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) == str(pkg) and pkg.is_dir() and not pkg.is_symlink():
            pkg.rename(tmp_path / "moved-away")
            os.symlink(outside, pkg)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swap_then_open)
    with pytest.raises(HashError) as err:
        hash_dir(root)
    assert err.value.path == str(pkg)
    assert err.value.reason == "changed while hashing: no longer a directory"


# --- fifos, sockets, devices ----------------------------------------------------


def test_a_fifo_is_refused_naming_it_and_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_base_tree(tmp_path / "t")
    fifo = root / "pkg" / "pipe"
    os.mkfifo(fifo)
    spy = OpenSpy(monkeypatch, root)
    for err in refused(root, tmp_path / "cache"):
        assert (err.path, err.reason) == (str(fifo), "unsupported file type (a fifo)")
        assert str(err) == f"cannot hash {fifo}: unsupported file type (a fifo)"
    assert str(fifo) not in spy.opened
    assert cache_files(tmp_path / "cache") == []


def test_an_ignore_file_that_is_a_fifo_is_refused_and_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_base_tree(tmp_path / "t")
    os.mkfifo(root / ".lrunignore")
    spy = OpenSpy(monkeypatch, root)
    for err in refused(root):
        assert (err.path, err.reason) == (str(root / ".lrunignore"), ".lrunignore must be a regular file")
    assert spy.opened == []


def _fifo(path: Path, outside: Path) -> None:
    os.mkfifo(path)


def _symlink_out(path: Path, outside: Path) -> None:
    os.symlink(outside, path)


@pytest.mark.parametrize(
    ("swap", "says"),
    [
        (_fifo, "changed while hashing: no longer a regular file"),
        (_symlink_out, "changed while hashing: now a symlink"),
    ],
)
def test_a_file_swapped_after_the_listing_is_refused_without_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: Callable[[Path, Path], None], says: str
) -> None:
    outside = write(tmp_path / "outside.txt", "outside the tree")
    root = make_base_tree(tmp_path / "t")
    victim = root / "test_a.py"
    real_open = os.open

    def swap_then_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fsdecode(path) in (victim.name, str(victim)) and stat.S_ISREG(victim.lstat().st_mode):
            victim.unlink()
            swap(victim, outside)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swap_then_open)
    for attempt in (hash_dir, snapshot):
        with pytest.raises(HashError) as err:
            attempt(root)
        assert (err.value.path, err.value.reason) == (str(victim), says)
        victim.unlink()
        write(victim, "def test_a():\n    assert True\n")


def test_pack_refuses_a_file_swapped_for_a_fifo_without_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pack (the artifacts of a run, for the shared store) lists its paths itself.
    root = make_base_tree(tmp_path / "t")
    victim = root / "test_a.py"
    real_open = os.open

    def swap_then_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) == str(victim) and stat.S_ISREG(victim.lstat().st_mode):
            victim.unlink()
            os.mkfifo(victim)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swap_then_open)
    with pytest.raises(ArchiveError, match="changed type while packing") as err:
        pack(root, ["test_a.py"])
    assert err.value.code == "archive_invalid"
    assert str(victim) in str(err.value)


def test_a_socket_is_refused_naming_it(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    path = root / "s"
    if len(str(path)) > 100:
        pytest.skip("tmp path too long for a unix socket")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        for err in refused(root):
            assert (err.path, err.reason) == (str(path), "unsupported file type (a socket)")


def test_a_device_node_is_refused_naming_it(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    path = root / "null"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("this user may not make device nodes")
    for err in refused(root):
        assert (err.path, err.reason) == (str(path), "unsupported file type (a device)")


# --- unreadable entries -----------------------------------------------------------


def test_an_unreadable_file_is_refused_naming_it_and_nothing_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_base_tree(tmp_path / "t")
    secret = write(root / "pkg" / "secret.txt", "x", mode=0o000)
    refuse_opening(monkeypatch, secret)
    cache = tmp_path / "cache"
    for err in itertools.islice(refused(root, cache), 2):  # iter_files lists, it does not read
        assert (err.path, err.reason) == (str(secret), "Permission denied")
    assert cache_files(cache) == []


def test_an_unreadable_folder_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_base_tree(tmp_path / "t")
    (root / "pkg").chmod(0o000)
    try:
        if os.geteuid() == 0:
            refuse_opening(monkeypatch, root / "pkg")
        for err in refused(root):
            assert (err.path, err.reason) == (str(root / "pkg"), "Permission denied")
    finally:
        (root / "pkg").chmod(0o755)


# --- names that are not UTF-8 -----------------------------------------------------


def test_names_that_are_not_utf8_hash_ship_and_come_back_byte_for_byte(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(raw)
    os.mkdir(raw + b"/\xfd")
    with open(raw + b"/\xfe.py", "wb") as f:
        f.write(b"x = 1\n")
    os.symlink(b"\xfe.py", raw + b"/link\xfc")
    root = Path(os.fsdecode(raw))
    cache = tmp_path / "cache"
    digest = hash_dir(root, cache_dir=cache)
    with snapshot(root, prefix="w", cache_dir=cache) as snap:
        assert snap.digest == digest
        result = safe_extract(iter(lambda: snap.archive.read(65536), b""), tmp_path / "out")
    assert result.refused == []
    assert sorted(os.listdir(os.fsencode(tmp_path / "out" / "w"))) == [b"link\xfc", b"\xfd", b"\xfe.py"]
    assert os.readlink(os.fsencode(tmp_path / "out" / "w") + b"/link\xfc") == b"\xfe.py"
    assert hash_dir(tmp_path / "out" / "w") == digest


def test_an_error_about_a_name_that_is_not_utf8_names_it_printably(tmp_path: Path) -> None:
    root = make_base_tree(tmp_path / "t")
    raw = os.fsencode(root) + b"/pipe\xff"
    os.mkfifo(raw)
    with pytest.raises(HashError) as err:
        hash_dir(root)
    assert os.fsencode(err.value.path) == raw  # the exact file, as the file system spells it
    shown = printable(str(err.value))
    assert shown == f"cannot hash {root}/pipe\\udcff: unsupported file type (a fifo)"
    shown.encode("utf-8")  # what a terminal or a run record can hold


# --- files that change while they are read ------------------------------------------


def change_on_first_read(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Run ``change`` right after the first read of file content, as an editor saving mid-read would."""
    real_read = os.read
    pending = [change]

    def read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if pending:
            pending.pop()()
        return data

    monkeypatch.setattr(os, "read", read)


def _shrink(path: Path) -> None:
    os.truncate(path, CHUNK_SIZE + 10)


def _grow(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"more")


def _rewrite_in_place(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"X" * 10)
    later = path.stat().st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(later, later))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (_shrink, f"it ended after {CHUNK_SIZE + 10} of its {3 * CHUNK_SIZE} bytes"),
        (_grow, f"it grew past its {3 * CHUNK_SIZE} bytes"),
        (_rewrite_in_place, "its size, mtime or ctime moved"),
    ],
)
def test_a_file_changed_while_being_read_fails_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None], says: str
) -> None:
    root = make_base_tree(tmp_path / "t")
    big = write(root / "big.bin", b"a" * (3 * CHUNK_SIZE))
    cache = tmp_path / "cache"
    change_on_first_read(monkeypatch, lambda: change(big))
    with pytest.raises(HashError) as excinfo:
        snapshot(root, cache_dir=cache)
    assert excinfo.value.code == "hash_failed"
    assert excinfo.value.path == str(big)
    assert excinfo.value.reason == f"changed while being read: {says}"
    assert cache_files(cache) == []


def test_a_file_changed_while_hash_dir_reads_it_is_read_again_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hash_dir (the reuse lookup) digests what it read; what it keeps in the stat cache
    # cannot vouch for the changed file, so the next hash reads the file again.
    root = make_base_tree(tmp_path / "t")
    big = write(root / "big.bin", b"a" * (3 * CHUNK_SIZE))
    cache = tmp_path / "cache"
    settle(root)
    with monkeypatch.context() as m:
        change_on_first_read(m, lambda: _rewrite_in_place(big))
        hash_dir(root, cache_dir=cache)
    assert hash_dir(root, cache_dir=cache) == hash_dir(root)
    with snapshot(root) as snap:
        assert snap.digest == hash_dir(root, cache_dir=cache)
