"""The README cannot drift from the code: every option, variable and error code is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_lrun.config.settings import OPTIONS
from pytest_lrun.core import errors

README = (Path(__file__).parents[2] / "README.md").read_text()


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_every_option_is_documented(option: object) -> None:
    for spelling in (option.flag, option.ini, option.env):  # type: ignore[attr-defined]
        assert f"`{spelling}" in README, f"{spelling} is missing from README.md"


def _codes() -> list[str]:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.LrunError)]
    return sorted({c.code for c in classes})


@pytest.mark.parametrize("code", _codes())
def test_every_error_code_is_documented(code: str) -> None:
    assert f"`{code}`" in README, f"error code {code} is missing from README.md"


def test_the_readme_quick_start_is_what_the_demo_runs() -> None:
    demo = (Path(__file__).parents[2] / "scripts" / "demo.sh").read_text().replace("\\\n", " ")
    (line,) = [line for line in demo.splitlines() if "-m pytest" in line]
    command = "pytest " + " ".join(line.split("-m pytest", 1)[1].replace('"$@"', "").split())
    assert f"`{command}`" in README, f"README.md does not show the demo's command: {command}"


def test_every_run_error_code_is_documented() -> None:
    for code in errors.RUN_CODES:
        assert f"`{code}`" in README, f"error code {code} is missing from README.md"
