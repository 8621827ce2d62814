"""Fixtures for tests against real engines: a project with two machines, and clean-up by label."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from lrun_support import PYTHON_IMAGE, lrun_containers, resolver_for

from pytest_lrun.config.machines import Machine
from pytest_lrun.engine.pool import EnginePool
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.store import RunStore
from pytest_lrun.store.files import FileStore


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.docker)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def project(
    pytester: pytest.Pytester, engines: list[str], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A pytester project whose pyproject names machines m1 and m2 (the two test engines)."""
    pytester.makepyprojecttoml(
        textwrap.dedent(
            f"""
            [tool.lrun.machines.m1]
            host = "{engines[0]}"
            image = "{PYTHON_IMAGE}"

            [tool.lrun.machines.m2]
            host = "{engines[1]}"
            image = "{PYTHON_IMAGE}"
            """
        )
    )
    monkeypatch.setenv("LRUN_STATE_DIR", str(state_dir))
    return pytester.path


@pytest.fixture(autouse=True)
def _remove_test_containers(engines: list[str], state_dir: Path) -> Iterator[None]:
    """Remove every container of a run recorded in this test's state dir."""
    yield
    runs = state_dir / "runs"
    lrun_containers(engines, {p.name for p in runs.iterdir()} if runs.is_dir() else set(), remove=True)


@pytest.fixture
def store(state_dir: Path) -> RunStore:
    return FileStore(state_dir)


@pytest.fixture
def pool() -> Iterator[EnginePool]:
    pool = EnginePool(connect_timeout=10)
    yield pool
    pool.close()


@pytest.fixture
def dispatcher(store: RunStore, pool: EnginePool) -> Dispatcher:
    return Dispatcher(store, pool)


@pytest.fixture
def m1(project: Path) -> Machine:
    return resolver_for(project).resolve("m1")


@pytest.fixture
def api(engines: list[str]) -> Iterator[Any]:
    client = docker.APIClient(base_url=engines[0], timeout=30, version="auto")
    yield client
    client.close()


@pytest.fixture
def tls_engine() -> tuple[str, Path]:
    """The TLS endpoint of the second engine and its certificates (``scripts/provision.sh``)."""
    url, tls_dir = os.environ.get("LRUN_TEST_TLS_ENGINE"), os.environ.get("LRUN_TEST_TLS_DIR")
    if not url or not tls_dir:
        message = 'LRUN_TEST_TLS_ENGINE/LRUN_TEST_TLS_DIR unset: eval "$(scripts/provision.sh)" first'
        if os.environ.get("LRUN_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return url, Path(tls_dir)
