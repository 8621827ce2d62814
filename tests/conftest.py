"""Shared test set-up: the real Docker Engines and the real PostgreSQL the tests run against.

The engines come from ``LRUN_TEST_ENGINES`` (comma separated URLs, as printed by
``scripts/provision.sh``; ``LRUN_TEST_TLS_ENGINE`` and ``LRUN_TEST_TLS_DIR`` name the
TLS endpoint). The database comes from ``LRUN_TEST_POSTGRES`` (a ``postgresql://``
URL with the password of the role ``lrun``, which may create databases), and
``scripts/pg.sh`` stops and starts the cluster behind it (fault tests).

Tests marked ``docker`` skip when no engine answers, tests marked ``postgres``
when the database does not, except with ``LRUN_REQUIRE_DOCKER=1`` and
``LRUN_REQUIRE_POSTGRES=1`` (set by ``scripts/test.sh``, which ``.ci/run`` runs),
where they fail instead: CI must never pass by skipping its real-service tests.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import pytest
from lrun_procs import StoreSpec
from lrun_support import BUSYBOX_IMAGE, PYTHON_IMAGE, engine_urls
from reapi_workers import ReapiService

PG_SH = Path(__file__).parents[1] / "scripts" / "pg.sh"

# Each marker and the fixture that skips (or fails) its tests when the service is missing.
_MARKER_FIXTURES = {"docker": "engines", "postgres": "postgres_url", "reapi": "reapi_service"}


def _missing(message: str, require_variable: str) -> NoReturn:
    """Skip the test, or fail it when ``require_variable`` is 1 (CI: the service must be there)."""
    if os.environ.get(require_variable) == "1":
        pytest.fail(message)
    pytest.skip(message)


def _probe(url: str) -> str | None:
    """None when the engine at ``url`` answers and has the test images, else why not."""
    import docker

    try:
        client = docker.APIClient(base_url=url, timeout=5, version="auto")
    except Exception as e:
        return f"{url}: {e}"
    try:
        client.ping()
        for image in (PYTHON_IMAGE, BUSYBOX_IMAGE):
            client.inspect_image(image)
    except Exception as e:
        return f"{url}: {e}"
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def engines() -> list[str]:
    """The URLs of the two test engines, checked to answer (see module docstring)."""
    urls = engine_urls()
    problems = [p for p in (_probe(u) for u in urls) if p]
    if len(urls) < 2:
        problems.append(f"LRUN_TEST_ENGINES names {len(urls)} engine(s); the tests need two")
    if problems:
        message = "no usable Docker Engine (run scripts/provision.sh): " + "; ".join(problems)
        _missing(message, "LRUN_REQUIRE_DOCKER")
    return urls


def _where(url: str) -> str:
    """``url`` without its user and password, for messages."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}{parts.path}"


def _probe_postgres(url: str) -> str | None:
    """None when the database at ``url`` takes its login and a query, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        return f"{_where(url)}: {e}"
    return None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """``LRUN_TEST_POSTGRES``, checked to log in and answer (see module docstring)."""
    url = os.environ.get("LRUN_TEST_POSTGRES", "")
    problem = _probe_postgres(url) if url else "LRUN_TEST_POSTGRES is unset"
    if problem:
        _missing(f"no usable PostgreSQL (run scripts/provision.sh): {problem}", "LRUN_REQUIRE_POSTGRES")
    return url


@pytest.fixture(scope="session")
def reapi_service() -> ReapiService:
    """``LRUN_TEST_REAPI`` and its instance (the test BuildGrid), checked to answer GetCapabilities,
    and ``LRUN_TEST_LOGSTREAM``, the LogStream service beside it."""
    service = ReapiService(
        os.environ.get("LRUN_TEST_REAPI", ""),
        os.environ.get("LRUN_TEST_REAPI_INSTANCE", ""),
        os.environ.get("LRUN_TEST_LOGSTREAM", ""),
    )
    problem = (
        "LRUN_TEST_REAPI is unset"
        if not service.url
        else "LRUN_TEST_LOGSTREAM is unset"
        if not service.logstream
        else service.problem()
    )
    if problem:
        _missing(
            f"no usable Remote Execution API service (run scripts/provision.sh): {problem}",
            "LRUN_REQUIRE_REAPI",
        )
    return service


@pytest.fixture(params=["files", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    """Where a test's records live, once per store: a state dir, or a fresh database of the
    test's own (and a state dir for this host's run files)."""
    state_dir = str(tmp_path / "state")
    if request.param == "files":
        return StoreSpec("files", state_dir)
    return StoreSpec("postgres", state_dir, request.getfixturevalue("fresh_database"))


@pytest.fixture
def fresh_database(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty database of its own (owner ``lrun``), dropped after the test.

    The drop is forced (PostgreSQL 13 or later), so sessions the test left open do not keep it.
    """
    import psycopg
    from psycopg import sql

    name = f"lrun_test_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield urlsplit(postgres_url)._replace(path=f"/{name}").geturl()
    drop = sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
    for attempt in range(10):
        try:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(drop)
            return
        except psycopg.errors.InsufficientPrivilege:
            # An autovacuum worker in it, on a cluster provisioned before lrun had pg_signal_backend.
            if attempt == 9:
                raise
            time.sleep(0.5)


class PostgresServer:
    """The cluster behind ``LRUN_TEST_POSTGRES``, stopped and started with ``scripts/pg.sh``.

    Whatever the test does, the server runs again before any fixture is torn down:
    the first stop or restart schedules a start as the test's last finalizer.
    """

    def __init__(self, url: str, item: pytest.Item) -> None:
        self.url = url
        self._item = item
        self._guarded = False

    def stop(self) -> None:
        """Fast shutdown: sessions are ended; returns once the server is down."""
        self._guard()
        self._pg_sh("stop")

    def start(self) -> None:
        """Start the server (if it is down); returns once the URL logs in and answers."""
        self._pg_sh("start")
        problem = _probe_postgres(self.url)
        if problem:
            pytest.fail(f"scripts/pg.sh start returned, but the database does not answer: {problem}")

    def restart(self) -> None:
        """Stop, then start: every session is ended, and the URL answers again on return."""
        self._guard()
        self._pg_sh("stop")
        self.start()

    def _guard(self) -> None:
        # Added now, after every fixture's teardown was scheduled, so it runs before them.
        if not self._guarded:
            self._item.addfinalizer(self.start)
            self._guarded = True

    def _pg_sh(self, action: str) -> None:
        done = subprocess.run([str(PG_SH), action], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            pytest.fail(f"scripts/pg.sh {action} exited {done.returncode}: {done.stderr.strip()}")


@pytest.fixture
def postgres_server(postgres_url: str, request: pytest.FixtureRequest) -> PostgresServer:
    """Stop, start and restart the test database (fault tests); it runs again after the test."""
    port = int(os.environ.get("LRUN_POSTGRES_PORT", "55432"))
    if urlsplit(postgres_url).port != port:
        _missing(
            f"LRUN_TEST_POSTGRES ({_where(postgres_url)}) is not the cluster scripts/pg.sh controls "
            f"(port {port}, LRUN_POSTGRES_PORT)",
            "LRUN_REQUIRE_POSTGRES",
        )
    assert isinstance(request.node, pytest.Item)
    return PostgresServer(postgres_url, request.node)


@pytest.fixture
def restart_postgres(postgres_server: PostgresServer) -> Callable[[], None]:
    """``restart_postgres()`` restarts the test database: sessions end, new ones work on return."""
    return postgres_server.restart


@pytest.fixture(autouse=True)
def _markers_need_their_services(request: pytest.FixtureRequest) -> None:
    for marker, fixture in _MARKER_FIXTURES.items():
        if request.node.get_closest_marker(marker) is not None:
            request.getfixturevalue(fixture)
