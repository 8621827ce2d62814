"""A small suite that passes inside the container (with one skip and one xfail)."""

import sys

import pytest


def test_addition():
    assert 1 + 1 == 2


@pytest.mark.parametrize("n", [1, 2, 3])
def test_square_is_positive(n):
    assert n * n > 0


class TestStrings:
    def test_upper(self):
        assert "lrun".upper() == "LRUN"

    def test_prints(self):
        print("hello from", sys.platform)


@pytest.mark.skip(reason="shows how skips come back")
def test_skipped():
    raise AssertionError("never runs")


@pytest.mark.xfail(reason="known bug, tracked")
def test_known_bug():
    assert 0.1 + 0.2 == 0.3
