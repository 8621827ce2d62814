"""Shared test set-up: the real Docker Engines the `docker` tests run against.

The engines come from ``LRUN_TEST_ENGINES`` (comma separated URLs, as printed by
``scripts/provision.sh``; ``LRUN_TEST_TLS_ENGINE`` and ``LRUN_TEST_TLS_DIR`` name the
TLS endpoint). Tests marked ``docker`` skip when no engine answers, except with
``LRUN_REQUIRE_DOCKER=1`` (set by ``.ci/run``), where a missing engine fails them:
CI must never pass by skipping its real-engine tests.
"""

from __future__ import annotations

import os

import pytest
from lrun_support import BUSYBOX_IMAGE, PYTHON_IMAGE, engine_urls


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
        if os.environ.get("LRUN_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return urls


@pytest.fixture(autouse=True)
def _docker_marker_needs_engines(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("docker") is not None:
        request.getfixturevalue("engines")
