"""The PostgreSQL of scripts/provision.sh, as the fixtures of tests/conftest.py hand it out.

Password logins only, a fresh database per test that is gone afterwards, and a
server that fault tests can take away and bring back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]


def _answers(url: str) -> bool:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


def test_the_url_logs_in_with_its_password(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("lrun", "lrun_test")
        assert conn.pgconn.used_password, "the server let lrun in without asking for the password"


def test_a_wrong_password_is_refused_by_the_server(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    wrong = parts._replace(netloc=f"lrun:not-the-password@{parts.hostname}:{parts.port}").geturl()
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "lrun"'):
        psycopg.connect(wrong, connect_timeout=5)


@pytest.fixture
def dropped_after(postgres_url: str) -> Iterator[list[tuple[str, psycopg.Connection[Any]]]]:
    """Set up before ``fresh_database`` (listed first), so it checks after that one's teardown:
    every (database URL, session left open) appended is gone, the session ended by the forced drop."""
    held: list[tuple[str, psycopg.Connection[Any]]] = []
    yield held
    for url, session in held:
        try:
            with psycopg.connect(postgres_url, connect_timeout=5) as conn:
                name = urlsplit(url).path.lstrip("/")
                row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone()
                assert row == (0,), f"database {name} is still there after the test"
            with pytest.raises(psycopg.OperationalError):
                session.execute("SELECT 1")
        finally:
            session.close()


def test_fresh_database_is_empty_writable_and_dropped_after_the_test(
    dropped_after: list[tuple[str, psycopg.Connection[Any]]], fresh_database: str, postgres_url: str
) -> None:
    name = urlsplit(fresh_database).path.lstrip("/")
    assert name != urlsplit(postgres_url).path.lstrip("/")
    session = psycopg.connect(fresh_database, connect_timeout=5)
    dropped_after.append((fresh_database, session))  # left open: the drop must end it
    assert session.execute("SELECT current_user, current_database()").fetchone() == ("lrun", name)
    user_tables = session.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    ).fetchone()
    assert user_tables == (0,)
    # The store creates its schema on first use, so lrun must be able to.
    session.execute("CREATE TABLE runs (id text PRIMARY KEY)")
    session.commit()


def test_a_stopped_database_refuses_connections_until_started(
    postgres_server: Any, postgres_url: str
) -> None:
    session = psycopg.connect(postgres_url, connect_timeout=5)
    try:
        postgres_server.stop()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres_url, connect_timeout=5)
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
    finally:
        session.close()
    postgres_server.start()
    assert _answers(postgres_url)


def test_restart_ends_sessions_and_the_database_answers_again_within_a_bounded_wait(
    restart_postgres: Any, postgres_url: str
) -> None:
    session = psycopg.connect(postgres_url, connect_timeout=5)
    try:
        started = time.monotonic()
        restart_postgres()
        took = time.monotonic() - started
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
    finally:
        session.close()
    assert _answers(postgres_url)
    assert took < 60, f"the restart took {took:.1f} s"


@pytest.fixture
def running_after(postgres_url: str) -> Iterator[None]:
    """Set up before ``postgres_server`` (listed first): after the test, the database answers."""
    yield
    assert _answers(postgres_url), "a test that stopped the database left it stopped"


def test_a_test_that_stops_the_database_leaves_it_running(running_after: None, postgres_server: Any) -> None:
    postgres_server.stop()
