"""The plugin tests' project: machines with no engine behind them, a test directory and a state dir."""

from __future__ import annotations

import pytest

from pytest_lrun.config.settings import OPTIONS

MACHINES = """
[tool.lrun.machines.m1]
host = "tcp://127.0.0.1:1"
image = "img:1"

[tool.lrun.machines.m2]
host = "tcp://127.0.0.1:1"
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Machines m1 and m2 (nothing answers at their address), a directory `suite` with one test,
    the state dir under the project, and no ``LRUN_*`` variable from the caller's environment."""
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)
    monkeypatch.setenv("LRUN_STATE_DIR", str(pytester.path / "state"))
    pytester.makepyprojecttoml(MACHINES)
    pytester.mkdir("suite")
    pytester.path.joinpath("suite", "test_inner.py").write_text("def test_inner():\n    pass\n")
    return pytester
