"""The README cannot drift from the code: every option, variable and error code is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_lrun import errors
from pytest_lrun.settings import OPTIONS

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
