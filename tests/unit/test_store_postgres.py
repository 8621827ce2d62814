"""The PostgreSQL store against the real test database: what only this backend has.

The backend-agnostic contract is ``test_store_contract.py``; here are the
database's own guards (schema, index, trigger, advisory locks, sessions), its
faults (wrong logins, an unreachable server, a restart) and the results shared
between runners. Every test gets an empty database of its own (``fresh_database``).
Child processes are forked (so their bodies may live here), started behind
barriers and events, every wait bounded, and always reaped.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
import pytest
from lrun_procs import WAIT_S, reap_processes
from lrun_support import free_port

from pytest_lrun.config.plan import Plan, PlanEntry
from pytest_lrun.config.settings import StoreWaits, resolve
from pytest_lrun.core.errors import (
    BatchPlanMismatch,
    ConfigError,
    CorruptRecord,
    RunNotFound,
    StoreError,
    StoreLocked,
    StoreSchemaTooNew,
    StoreUnreachable,
    TerminalRunError,
)
from pytest_lrun.store import BatchStatus, Decision, Run, Status, open_store, pg_sql
from pytest_lrun.store.outcomes import MAX_KEPT, InnerOutcome
from pytest_lrun.store.pg_db import SCHEMA_VERSION, _Watchdog
from pytest_lrun.store.pg_results import CHUNK_BYTES
from pytest_lrun.store.postgres import PostgresStore

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

CTX = multiprocessing.get_context(
    "fork"
)  # bodies defined here; a child never touches the parent's connections
FREED_WITHIN_S = 5.0


@pytest.fixture
def url(fresh_database: str) -> str:
    return fresh_database


@pytest.fixture
def store(url: str, tmp_path: Path) -> Iterator[PostgresStore]:
    with PostgresStore(url, tmp_path / "state") as opened:
        yield opened


@pytest.fixture
def peer(url: str, tmp_path: Path) -> Iterator[PostgresStore]:
    """Another runner of the same database: a state dir of its own."""
    with PostgresStore(url, tmp_path / "peer") as opened:
        yield opened


def sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run ``query`` on a raw connection of its own, as a client that bypasses the store would."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def create(store: PostgresStore, machine: str = "m", key: str = "k") -> Run:
    run, decision = store.prepare(machine, key, lambda: Run(test_dir=f"/src/{key}"))
    assert decision is Decision.CREATED
    return run


def eventually(check: Callable[[], bool], within: float = FREED_WITHIN_S) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def with_url(
    url: str, *, password: str | None = None, port: int | None = None, path: str | None = None
) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password if password is not None else parts.password}@{parts.hostname}"
    return parts._replace(netloc=f"{netloc}:{port or parts.port}", path=path or parts.path).geturl()


# --- opening ---------------------------------------------------------------------


def test_open_store_gives_the_database_the_waits_of_the_settings(url: str, tmp_path: Path) -> None:
    waits = resolve({}, lambda _key: None, {"LRUN_STORE": url, "LRUN_STORE_LOCK_TIMEOUT": "3"}).store_waits
    opened = open_store(tmp_path / "state", url, waits=waits)
    try:
        assert isinstance(opened, PostgresStore)
        assert (opened.db.waits, opened.db.lock_timeout) == (waits, 3.0)
    finally:
        opened.close()
    default = open_store(tmp_path / "state", url)  # no waits given: the options' defaults
    try:
        assert isinstance(default, PostgresStore)
        assert (default.db.waits, default.db.lock_timeout) == (StoreWaits(), StoreWaits().lock_timeout)
    finally:
        default.close()


# --- schema ----------------------------------------------------------------------


def _open_store(url: str, state_dir: str, barrier: Any, results: Any) -> None:
    try:
        barrier.wait(WAIT_S)
        with PostgresStore(url, Path(state_dir)) as store:
            results.put(("ok", store.store_id))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def test_schema_is_made_once_even_by_racing_processes(url: str, tmp_path: Path) -> None:
    barrier = CTX.Barrier(6)
    results = CTX.Queue()
    procs = [
        CTX.Process(target=_open_store, args=(url, str(tmp_path / f"s{i}"), barrier, results), daemon=True)
        for i in range(6)
    ]
    try:
        for proc in procs:
            proc.start()
        got = [results.get(timeout=WAIT_S) for _ in procs]
    finally:
        reap_processes(procs)
    assert [kind for kind, _ in got] == ["ok"] * 6, got
    assert len({store_id for _, store_id in got}) == 1  # one schema, one store id for every runner
    with PostgresStore(url, tmp_path / "again") as again:
        assert again.store_id == got[0][1]
    assert sql(url, "SELECT version FROM lrun_schema") == [(SCHEMA_VERSION,)]


def test_a_version_1_store_is_upgraded_in_place_and_then_shares_events(url: str, tmp_path: Path) -> None:
    with psycopg.connect(url, autocommit=True) as conn:  # a store made by pytest-lrun 0.1
        conn.execute(pg_sql.CREATE_SCHEMA_TABLE)
        conn.execute(pg_sql.INSERT_SCHEMA, (1, "made-by-v1"))
        for statement in pg_sql.MIGRATIONS[1]:
            conn.execute(statement)
    with PostgresStore(url, tmp_path / "state") as store, PostgresStore(url, tmp_path / "peer") as peer:
        assert store.store_id == "made-by-v1"  # the same store, its runs kept
        run = store.end(create(store), Status.COMPLETED)
        written = _write_result(store, run)
        store.save_result(run)
        peer.load_result(run)
        assert _contents(peer, run) == written
    assert sql(url, "SELECT version FROM lrun_schema") == [(SCHEMA_VERSION,)]


def test_a_newer_schema_is_refused(url: str, tmp_path: Path) -> None:
    PostgresStore(url, tmp_path / "state").close()
    sql(url, "UPDATE lrun_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreSchemaTooNew) as info:
        PostgresStore(url, tmp_path / "state")
    assert (info.value.found, info.value.known) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert "upgrade pytest-lrun" in str(info.value)


# --- the database's own guards ----------------------------------------------------


def test_the_database_refuses_a_second_live_run_and_any_rewrite_of_a_terminal_one(
    store: PostgresStore, url: str
) -> None:
    run = create(store)
    with pytest.raises(psycopg.errors.UniqueViolation):
        sql(
            url,
            "INSERT INTO lrun_runs (id, machine, key, status, record) VALUES (%s, %s, %s, %s, %s)",
            ("20250101T000000-00000000", "m", "other", "running", "{}"),
        )
    ended = store.end(run, Status.COMPLETED)
    for rewrite in ("UPDATE lrun_runs SET status = 'pending'", "UPDATE lrun_runs SET record = '{}'"):
        with pytest.raises(psycopg.Error, match="a terminal run is final") as info:
            sql(url, rewrite + " WHERE id = %s", (run.id,))
        assert info.value.sqlstate == "LR001"
    with pytest.raises(TerminalRunError):
        store.end(ended, Status.FAILED)
    with pytest.raises(TerminalRunError):
        store.update(run)
    assert store.get(run.id) == ended
    assert store.check() == []


def test_prepare_creates_reuses_and_finds_busy(store: PostgresStore, peer: PostgresStore) -> None:
    run = create(store, "m", "k")
    assert store.get(run.id) == run
    assert (run.machine, run.key, run.test_dir_hash, run.status) == ("m", "k", "k", Status.PENDING)
    assert run.owner is not None and run.owner["pid"] == os.getpid()
    assert {"backend_pid", "backend_start"} <= run.owner.keys()
    assert peer.prepare("m", "k", lambda: Run(test_dir="/x")) == (run, Decision.REUSE)
    assert peer.prepare("m", "other", lambda: Run(test_dir="/x")) == (run, Decision.BUSY)
    assert peer.prepare("m2", "other", lambda: Run(test_dir="/x"))[1] is Decision.CREATED


def test_wait_retries_a_busy_machine_until_it_frees(store: PostgresStore, peer: PostgresStore) -> None:
    run = create(store, "m", "k1")
    started = time.monotonic()
    assert peer.prepare("m", "k2", lambda: Run(test_dir="/x"), wait=0.3)[1] is Decision.BUSY
    assert time.monotonic() - started >= 0.3
    ender = threading.Timer(0.3, lambda: store.end(run, Status.COMPLETED))
    ender.start()
    try:
        created, decision = peer.prepare("m", "k2", lambda: Run(test_dir="/x"), wait=WAIT_S)
    finally:
        ender.join(WAIT_S)
    assert decision is Decision.CREATED and created.key == "k2"


def test_a_stuck_row_lock_times_out(url: str, tmp_path: Path) -> None:
    # prepare takes no lock (the one-live-run index decides); ending a run locks its row.
    with psycopg.connect(url) as holder, PostgresStore(url, tmp_path / "s", lock_timeout=0.2) as store:
        run = create(store)
        holder.execute("SELECT 1 FROM lrun_runs WHERE id = %s FOR UPDATE", (run.id,))
        with pytest.raises(StoreLocked) as info:
            store.end(run, Status.COMPLETED)
        assert info.value.what == f"run {run.id}"
        holder.rollback()
        assert store.end(run, Status.COMPLETED).status is Status.COMPLETED


# --- owners (races, SIGKILL and owner liveness are in test_store_contract.py) --------------


def test_an_adopter_becomes_the_owner(store: PostgresStore, peer: PostgresStore) -> None:
    run = create(store)
    store.close()  # the creator's session ends
    assert eventually(lambda: not peer.owner_alive(run))
    peer.update(dataclasses.replace(run, owner={"host": socket.gethostname(), "pid": os.getpid()}))
    adopted = peer.get(run.id)
    assert adopted.owner is not None and adopted.owner["backend_pid"] == peer.db.backend["backend_pid"]
    assert peer.owner_alive(adopted)
    assert peer.end(adopted, Status.COMPLETED) == peer.get(run.id)


# --- faults: logins, outages -------------------------------------------------------


@pytest.mark.parametrize(
    "fault", ["wrong-password", "wrong-password-in-query", "closed-port", "missing-database"]
)
def test_an_unreachable_store_says_where_and_why_and_never_the_password(
    url: str, tmp_path: Path, fault: str
) -> None:
    wrong = "Wr0ng-S3cret-value"
    real = urlsplit(url).password
    assert real
    target = {
        "wrong-password": with_url(url, password=wrong),
        "closed-port": with_url(url, port=free_port()),
        "missing-database": with_url(url, path="/lrun_no_such_database"),
        "wrong-password-in-query": urlsplit(with_url(url, password=""))
        ._replace(query=urlencode([*parse_qsl(urlsplit(url).query), ("password", wrong)]))
        .geturl()
        .replace("lrun:@", "lrun@"),
    }[fault]
    with pytest.raises(StoreUnreachable) as info:
        PostgresStore(target, tmp_path / "state", connect_timeout=5)
    error = info.value
    expected = {
        "wrong-password": "password authentication failed",
        "wrong-password-in-query": "password authentication failed",
        "closed-port": "refused",
        "missing-database": 'database "lrun_no_such_database" does not exist',
    }[fault]
    assert expected in error.reason
    assert "127.0.0.1" in str(error) and error.code == "store_unreachable"
    shown = " ".join((str(error), repr(error), json.dumps(error.to_dict()), error.location))
    assert wrong not in shown and real not in shown
    assert "***" in error.location


def test_pgpassword_is_read_and_never_shown(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = urlsplit(url).password
    assert real
    bare = urlsplit(url)._replace(netloc=f"lrun@{urlsplit(url).hostname}:{urlsplit(url).port}").geturl()
    monkeypatch.setenv("PGPASSWORD", real)
    with PostgresStore(bare, tmp_path / "state") as store:
        create(store)
    monkeypatch.setenv("PGPASSWORD", "Wr0ng-S3cret-value")
    with pytest.raises(StoreUnreachable) as info:
        PostgresStore(bare, tmp_path / "state")
    assert "Wr0ng-S3cret-value" not in str(info.value)


def test_a_bad_state_dir_or_url_is_a_config_error(url: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        PostgresStore(url, tmp_path / "file")
    with pytest.raises(ConfigError, match='invalid URI query parameter: "bogus"') as info:
        PostgresStore(url + "?bogus=1", tmp_path / "state")
    assert str(urlsplit(url).password) not in str(info.value)


def test_a_database_restart_is_an_outage_then_the_store_works_again(
    store: PostgresStore, postgres_server: Any
) -> None:
    run = create(store)
    postgres_server.restart()
    assert store.get(run.id) == run  # the connection that died while idle is replaced
    postgres_server.stop()
    with pytest.raises(StoreUnreachable) as info:
        store.get(run.id)
    assert "***" in info.value.location
    postgres_server.start()
    assert store.end(store.get(run.id), Status.COMPLETED).status is Status.COMPLETED


# --- results shared between runners --------------------------------------------------


def _write_result(store: PostgresStore, run: Run) -> dict[str, bytes]:
    files = store.files(run.id)
    files.dir.mkdir(parents=True, exist_ok=True)
    files.junit.write_bytes(b"<testsuites/>")
    files.logs.write_bytes(os.urandom(2 * CHUNK_BYTES + 17))  # three chunks
    files.events.write_bytes(b'{"e": "finish", "n": 1, "exitstatus": 0, "counts": {}, "interrupt": null}\n')
    (files.artifacts / "sub").mkdir(parents=True)
    (files.artifacts / "sub" / "report.txt").write_text("report")
    (files.artifacts / "tool").write_bytes(b"#!/bin/sh\n")
    (files.artifacts / "tool").chmod(0o755)
    (files.artifacts / "link").symlink_to("sub/report.txt")
    return _contents(store, run)


def _contents(store: PostgresStore, run: Run) -> dict[str, bytes]:
    files = store.files(run.id)
    found = {
        "junit": files.junit.read_bytes(),
        "logs": files.logs.read_bytes(),
        "events": files.events.read_bytes(),
    }
    for path in sorted(files.artifacts.rglob("*")):
        rel = path.relative_to(files.artifacts).as_posix()
        found[rel] = (
            os.readlink(path).encode() if path.is_symlink() else path.read_bytes() if path.is_file() else b"/"
        )
    found["tool mode"] = oct((files.artifacts / "tool").stat().st_mode & 0o111).encode()
    return found


def test_a_result_saved_by_one_runner_is_loaded_by_another(
    store: PostgresStore, peer: PostgresStore, url: str, tmp_path: Path
) -> None:
    run = store.end(create(store), Status.COMPLETED)
    written = _write_result(store, run)
    store.save_result(run)
    assert not peer.files(run.id).dir.exists()
    peer.load_result(run)
    assert _contents(peer, run) == written
    peer.load_result(run)  # present: nothing to fetch
    assert _contents(peer, run) == written

    sql(url, "UPDATE lrun_result_chunks SET data = %s WHERE part = 'logs' AND seq = 1", (b"x" * CHUNK_BYTES,))
    with PostgresStore(url, tmp_path / "third") as third:
        with pytest.raises(StoreError, match=f"the stored logs of run {run.id} is corrupt"):
            third.load_result(run)
        assert not third.files(run.id).logs.exists()
        assert [p.name for p in third.files(run.id).dir.iterdir() if p.name.endswith(".tmp")] == []


def test_evict_keeps_the_shared_record_and_delete_removes_everything(store: PostgresStore, url: str) -> None:
    run = create(store)
    for drop in (store.evict, store.delete):
        with pytest.raises(TerminalRunError):
            drop(run.id)
    run = store.end(run, Status.COMPLETED)
    written = _write_result(store, run)
    store.save_result(run)
    store.evict(run.id)
    assert not store.files(run.id).dir.exists() and store.get(run.id) == run
    store.load_result(run)
    assert _contents(store, run) == written
    store.delete(run.id)
    with pytest.raises(RunNotFound):
        store.get(run.id)
    assert not store.files(run.id).dir.exists()
    assert sql(url, "SELECT count(*) FROM lrun_result_chunks") == [(0,)]


def test_prune_keeps_saved_results_under_the_cap_oldest_first_and_never_a_live_run(
    store: PostgresStore, url: str
) -> None:
    old = store.end(create(store, machine="m1"), Status.COMPLETED)
    _write_result(store, old)
    store.save_result(old)
    new = store.end(create(store, machine="m2"), Status.FAILED)
    _write_result(store, new)
    store.save_result(new)
    live = create(store, machine="m3")
    one_result = sum(
        size for (size,) in sql(url, "SELECT size FROM lrun_result_parts WHERE run_id = %s", (new.id,))
    )

    assert store.prune(max_bytes=10 * one_result) == []  # within the cap: nothing goes
    assert store.prune(max_bytes=one_result) == [old.id]
    with pytest.raises(RunNotFound):
        store.get(old.id)
    assert store.get(new.id) == new and store.get(live.id) == live
    assert store.prune(max_bytes=0) == [new.id]
    assert store.get(live.id) == live  # a live run has no saved result and is never pruned


# --- records ------------------------------------------------------------------------


def test_names_with_surrogates_nul_and_backslashes_round_trip_and_stay_distinct(store: PostgresStore) -> None:
    machines = ["m\udc80", "m\\udc80", "m\\u005cudc80", "m\x00", "m\\"]
    runs = [
        store.prepare(machine, "key\udcff", lambda: Run(test_dir="/src/\udcff"))[0] for machine in machines
    ]
    assert [run.id for run in runs] == [store.get(run.id).id for run in runs]
    assert len({run.id for run in runs}) == len(machines)  # no two names share the one-live-run slot
    for machine, run in zip(machines, runs, strict=True):
        assert store.get(run.id) == run
        assert store.list(machine=machine) == [run] == store.active(machine)
        store.end(run, Status.COMPLETED)
        assert store.last_completed(machine, "key\udcff") == store.get(run.id)
    assert store.check() == []


def test_a_record_that_does_not_parse_is_reported_then_moved_aside(store: PostgresStore, url: str) -> None:
    run = create(store)
    sql(url, "UPDATE lrun_runs SET record = '{not json' WHERE id = %s", (run.id,))
    assert [problem.split(":")[0] for problem in store.check()] == [f"run {run.id} is not a valid run record"]
    with pytest.raises(CorruptRecord):
        store.get(run.id)
    assert store.problems and store.problems[0].reason
    assert sql(url, "SELECT kind, id, record FROM lrun_corrupt") == [("run", run.id, "{not json")]
    assert store.check() == [] and store.list() == []
    create(store, "m", "other")  # its machine is free again


def test_sweep_removes_this_hosts_leftovers(store: PostgresStore) -> None:
    kept = store.end(create(store), Status.COMPLETED)
    store.files(kept.id).dir.mkdir()
    orphan = store.files("20250101T000000-0000beef").dir
    orphan.mkdir()
    tmp = store.files(kept.id).dir / ".logs.txt.abc.tmp"
    tmp.write_text("half")
    assert store.sweep().removed == []  # younger than the grace period
    removed = store.sweep(grace=0).removed
    assert sorted(removed) == sorted([f"runs/{orphan.name}", f"runs/{kept.id}/{tmp.name}"])
    assert store.files(kept.id).dir.is_dir()


# --- batches --------------------------------------------------------------------------


def plan_of(root: Path, names: list[str], digest: str = "d1") -> Plan:
    entries = tuple(PlanEntry(name=name, dir=root, machine="m1") for name in names)
    return Plan(path=root / "plan.toml", digest=digest, entries=entries)


def test_two_runners_join_one_batch(store: PostgresStore, peer: PostgresStore, tmp_path: Path) -> None:
    plan = plan_of(tmp_path, ["a", "b", "c"])
    batch = store.batches.open(plan, "ci-1")
    assert peer.batches.open(plan, "ci-1") == batch
    with pytest.raises(BatchPlanMismatch):
        peer.batches.open(plan_of(tmp_path, ["a"], digest="d2"), "ci-1")
    first, second = create(store, "m1"), create(peer, "m2")
    store.batches.record("ci-1", "a", first.id)
    peer.batches.record("ci-1", "b", second.id)
    peer.batches.record("ci-1", "c", second.id)  # one run attached to two entries
    assert store.batches.get("ci-1").entries == {"a": first.id, "b": second.id, "c": second.id}
    assert store.batches.refresh("ci-1").status is BatchStatus.PENDING
    store.end(first, Status.COMPLETED)
    assert peer.batches.refresh("ci-1").status is BatchStatus.RUNNING
    peer.end(second, Status.COMPLETED)
    assert store.batches.refresh("ci-1").status is BatchStatus.COMPLETED
    assert [b.id for b in peer.batches.list()] == ["ci-1"]
    fresh = store.batches.open(plan)
    assert fresh.id.startswith("b-") and [b.id for b in peer.batches.list()] == ["ci-1", fresh.id]


# --- bounded waits ------------------------------------------------------------------------------------


def test_the_store_waits_reach_every_connection(url: str, tmp_path: Path) -> None:
    waits = StoreWaits(statement_timeout=12.0, lock_timeout=3.0, idle_timeout=34.0, keepalive=5.0)
    store = PostgresStore(url, tmp_path / "state", lock_timeout=waits.lock_timeout, waits=waits)
    try:
        shown = store.db.atomic(
            lambda cur: cur.execute(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
                " current_setting('idle_in_transaction_session_timeout')"
            ).fetchone()
        )
        assert shown == ("12s", "3s", "34s")
        assert store.db.answer_timeout == 17.0
        with store.db.spare() as conn:  # watch locks wait as long as their holder watches
            assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
            params = conn.info.get_parameters()
            assert (params["keepalives"], params["keepalives_idle"], params["keepalives_count"]) == (
                "1",
                "5",
                "3",
            )
            assert params["tcp_user_timeout"] == "20000"
    finally:
        store.close()
    # Keepalive parameters of the URL win over the setting.
    own = PostgresStore(
        f"{url}{'&' if '?' in url else '?'}keepalives_idle=7", tmp_path / "state", waits=waits
    )
    try:
        with own.db.spare() as conn:
            assert conn.info.get_parameters()["keepalives_idle"] == "7"
    finally:
        own.close()


def test_the_watchdog_cuts_a_connection_that_outlives_its_bound() -> None:
    """A blocked read on the connection's socket returns at once when its bound passes; one that
    is answered in time is left alone."""
    near, far = socket.socketpair()

    class Conn:
        def fileno(self) -> int:
            return near.fileno()

    dog = _Watchdog()
    try:
        with dog.bound(Conn(), 5.0) as cut:  # type: ignore[arg-type]
            far.sendall(b"x")
            assert near.recv(1) == b"x"
        assert not cut()
        started = time.monotonic()
        with dog.bound(Conn(), 0.3) as cut:  # type: ignore[arg-type]
            assert near.recv(1) == b""  # the server "hung up": the cut, not an answer
            assert cut()
        assert 0.25 < time.monotonic() - started < 5
    finally:
        dog.close()
        near.close()
        far.close()


def test_the_outcomes_table_keeps_the_newest_per_key_and_test(store: PostgresStore, url: str) -> None:
    def seen(run_id: str, at: float, key: str = "k1") -> InnerOutcome:
        return InnerOutcome(key, "suite", "t.py::b", run_id, "m1", "passed", at)

    store.save_outcomes(
        [seen(f"r{i:02}", float(i)) for i in range(MAX_KEPT + 5)] + [seen("other", 0.0, "k2")]
    )
    store.save_outcomes([seen("newest", 100.0)])
    kept = sql(url, "SELECT key, run_id FROM lrun_outcomes ORDER BY key, at")
    assert len([row for row in kept if row[0] == "k1"]) == MAX_KEPT  # rows, not only what is read
    assert kept[MAX_KEPT - 1] == ("k1", "newest") and ("k2", "other") in kept
