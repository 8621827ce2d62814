"""Hostile state dirs: wrong file types where records go, a read-only mount, two gc's at once.

Each entry that is not what it should be (a folder or a fifo where a record goes) is
quarantined like a corrupt record and never opened blocking; a state dir that cannot
be changed is still listed; two ``lrun gc`` processes evicting the same runs both end well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun.core.errors import CorruptRecord
from pytest_lrun.core.layout import machine_key
from pytest_lrun.core.reserve import claim, full
from pytest_lrun.run.gc import gc
from pytest_lrun.store import Decision, Run, Status
from pytest_lrun.store.files import FileStore


def finished(store: FileStore, test_dir: str = "/src/a", size: int = 0, files: int = 0) -> Run:
    """A completed run, with ``files`` artifacts of ``size`` bytes each in its folder."""
    run = store.insert(
        Run(test_dir=test_dir, machine="m", key=test_dir, status=Status.COMPLETED, exit_code=0)
    )
    artifacts = store.files(run.id).dir / "artifacts"
    artifacts.mkdir()
    for i in range(files):
        (artifacts / f"f{i}").write_bytes(b"x" * size)
    return run


def live(store: FileStore, key: str = "k", slots: int = 1) -> Run:
    run, decision = store.prepare("m", key, lambda: Run(test_dir=f"/src/{key}"), slots=slots)
    assert decision is Decision.CREATED
    return run


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "state", durable=False)


# --- wrong file types ----------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_run_record_of_the_wrong_type_is_quarantined_and_never_blocks(store: FileStore, kind: str) -> None:
    good = finished(store, "/src/good")
    bad = finished(store, "/src/bad")
    record = store.files(bad.id).record
    record.unlink()
    if kind == "directory":
        record.mkdir()
    else:
        os.mkfifo(record)
    assert store.check() == [
        f"runs/{bad.id}/run.json is not a valid run record: run.json is a {kind}, not a regular file"
    ]

    started = time.monotonic()
    assert [run.id for run in store.list()] == [good.id]
    assert time.monotonic() - started < 5
    (problem,) = store.problems
    assert problem.path == str(record) and "not a regular file" in problem.reason
    assert Path(problem.moved_to).parent == store.corrupt_dir and not os.path.lexists(record)
    assert store.check() == []
    # The folder left without a record goes with the next sweep, like a corrupt record's.
    assert store.sweep(grace=0).removed == [f"runs/{bad.id}"]


def test_lrun_runs_lists_around_a_run_record_that_is_a_directory(store: FileStore) -> None:
    good = finished(store, "/src/good")
    bad = finished(store, "/src/bad")
    record = store.files(bad.id).record
    record.unlink()
    record.mkdir()
    done = lrun(store, "runs", "--json")
    assert done.returncode == 0, done.stderr
    assert [run["id"] for run in json.loads(done.stdout)["runs"]] == [good.id]
    assert "not a regular file" in done.stderr


@pytest.mark.parametrize("kind", ["directory", "fifo"])
@pytest.mark.timeout(20)
def test_an_index_of_the_wrong_type_is_rebuilt_and_placement_goes_on(store: FileStore, kind: str) -> None:
    first = live(store, "k1")
    index = store.active_dir / f"{machine_key('m')}.json"
    index.unlink()
    if kind == "directory":
        index.mkdir()
    else:
        os.mkfifo(index)
    assert store.check() == [
        f"active/{machine_key('m')}.json does not parse: the index is a {kind}, not a regular file"
    ]
    run, decision = store.prepare("m", "k1", lambda: Run(test_dir="/src/k1"))
    assert (run.id, decision) == (first.id, Decision.REUSE)  # rebuilt from the records
    assert [p.path for p in store.problems] == [str(index)]
    assert index.is_file() and store.check() == []


@pytest.mark.timeout(20)
def test_other_state_files_of_the_wrong_type_are_moved_aside(store: FileStore) -> None:
    """A completed pointer, a line of waiters, a durations file and a batch record: none blocks or breaks."""
    run = live(store, "k")
    pointer = store._completed_path(machine_key("m"), "k")
    pointer.mkdir()  # where the update of a completed run writes its pointer
    run.status, run.exit_code = Status.COMPLETED, 0
    store.update(run)
    assert store.last_completed("m", "k") == store.get(run.id)

    line = store.state_dir / "queue" / f"{machine_key('m')}.json"
    line.parent.mkdir(exist_ok=True)
    os.mkfifo(line)
    live(store, "k2")
    store.save_durations("suite", {"t": 1.0})
    durations = next((store.state_dir / "durations").glob("*.json"))
    durations.unlink()
    os.mkfifo(durations)
    assert store.durations("suite") == {}
    store.save_durations("suite", {"t": 2.0})
    assert store.durations("suite") == {"t": 2.0}

    (store.batches.batches_dir / "b-1.json").mkdir()
    assert store.batches.list() == []
    assert [Path(p.path) for p in store.problems] == [
        pointer,
        line,
        durations,
        store.batches.batches_dir / "b-1.json",
    ]
    assert all(Path(p.moved_to).parent == store.corrupt_dir for p in store.problems)


# --- a read-only state dir ---------------------------------------------------------


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs (a test may remount it read-only: root ignores file modes, not a read-only mount)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def remount_read_only(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    with pytest.raises(OSError):
        (mount / "probe").write_text("")


def test_a_read_only_state_dir_with_a_corrupt_record_lists_the_rest(small_mount: Path) -> None:
    writer = FileStore(small_mount / "state", durable=False)
    good = [finished(writer, f"/src/{name}") for name in ("a", "b")]
    bad = finished(writer, "/src/bad")
    writer.files(bad.id).record.write_text("{not json")
    folder = writer.files(bad.id).dir
    remount_read_only(small_mount)

    reader = FileStore(small_mount / "state", durable=False)
    assert {run.id for run in reader.list()} == {run.id for run in good}  # ids break ties of one ms
    (problem,) = reader.problems
    assert problem.path == str(folder / "run.json") and problem.moved_to == ""
    assert "Read-only file system" in problem.reason and "left in place" in str(problem)
    with pytest.raises(CorruptRecord):
        reader.get(bad.id)
    assert reader.get(good[0].id) == good[0]

    done = lrun(reader, "runs", "--json")
    assert done.returncode == 0, done.stderr
    assert {run["id"] for run in json.loads(done.stdout)["runs"]} == {run.id for run in good}
    assert f"corrupt state file {folder / 'run.json'}" in done.stderr and "left in place" in done.stderr
    assert (folder / "run.json").read_text() == "{not json"  # nothing changed


# --- a disk that fills during end() ------------------------------------------------------


def fill_up(mount: Path) -> None:
    """Take every free block of the file system at ``mount``."""
    with open(mount / "filler", "wb", buffering=0) as f:
        for chunk in (1 << 16, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert full(exc), exc


def test_a_disk_that_fills_during_end_leaves_a_clean_store(
    small_mount: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The reserve given back (one page) holds the terminal record's new copy, the old record's page
    the cached-result pointer, and nothing is left for the index's new copy: the end finishes (no
    error), the index is rewritten in place, and check() finds nothing, before and after the next run."""
    status = Status.COMPLETED
    store = FileStore(small_mount / "state")  # durable, as a session's
    first = live(store, "k1", slots=2)
    run = live(store, "k2", slots=2)
    claim(store.files(run.id).reserve, 4096, store.state_dir)  # one page: the record's temporary copy
    fill_up(small_mount)

    ended = store.end(run, status, error_code=None)

    assert store.get(run.id) == ended and ended.status is status
    assert [live_run.id for live_run in store.active()] == [first.id]
    assert store.check() == []
    assert "rewritten in place" in caplog.text
    (small_mount / "filler").unlink()
    assert store.end(first, Status.FAILED).status is Status.FAILED
    assert store.active() == [] and store.check() == []
    again = live(store, "k2")
    assert again.id not in (run.id, first.id)


# --- two gc's at once ---------------------------------------------------------------


def lrun(store: FileStore, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_lrun", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LRUN_STATE_DIR": str(store.state_dir), **(env or {})},
    )


def test_a_run_evicted_by_another_gc_during_the_sweep_is_no_error(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other gc evicts a run (for real, through a store of its own) just before this sweep
    lists its folder: the window a loop of two gc processes hits once in a while."""
    runs = [finished(store, f"/src/{i}", size=10, files=1) for i in range(3)]
    other = FileStore(store.state_dir, durable=False)
    victim = store.files(runs[1].id).dir
    listdir = os.listdir

    def evicted_first(path: Any = ".") -> list[str]:
        if os.fspath(path) == str(victim) and victim.exists():
            other.evict(runs[1].id)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", evicted_first)
    report = gc(store, max_bytes=1 << 30)
    assert not victim.exists() and report.problems == [] and report.swept.problems == []
    assert {run.id for run in store.list()} == {runs[0].id, runs[2].id}


# A loop of `lrun gc` in one process (a fresh process per gc would spend its time starting up).
GC_LOOP = """
import sys, time
from pytest_lrun.cli import main
deadline = time.monotonic() + float(sys.argv[1])
rounds = 0
while time.monotonic() < deadline:
    rounds += 1
    status = main(["gc"])
    if status != 0:
        sys.exit(f"lrun gc exited {status} in round {rounds}")
print(rounds)
"""


@pytest.mark.timeout(300)
def test_two_gc_loops_evicting_the_same_runs_never_fail(store: FileStore) -> None:
    """Two processes run ``lrun gc`` over and over while runs are added and evicted: each gc
    exits 0 (a run folder another gc evicts between a check and its listing is no error)."""
    seconds = 10.0
    env = {**os.environ, "LRUN_STATE_DIR": str(store.state_dir), "LRUN_STATE_MAX_BYTES": "256KiB"}
    loops = [
        subprocess.Popen(
            [sys.executable, "-c", GC_LOOP, str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    added = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and all(loop.poll() is None for loop in loops):
            for _ in range(20):
                finished(store, f"/src/{added}", size=4096, files=3)
                added += 1
            time.sleep(0.005)
        results = [(loop.returncode, *loop.communicate(timeout=120)) for loop in loops]
    finally:
        for loop in loops:
            if loop.poll() is None:
                loop.kill()
                loop.wait()
    for loop, (_, out, err) in zip(loops, results, strict=True):
        assert loop.returncode == 0, err[-3000:]
        assert int(out.split()[-1]) > 1  # each looped
    assert len(FileStore(store.state_dir).list()) < added / 2  # runs were evicted meanwhile
    assert store.check() == []
