"""Settings: one size parser, finite seconds, and every default declared once."""

from __future__ import annotations

import dataclasses
import inspect
import pickle

import pytest

from pytest_lrun.config.settings import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_STORE_IDLE_TIMEOUT,
    DEFAULT_STORE_KEEPALIVE,
    DEFAULT_STORE_LOCK_TIMEOUT,
    DEFAULT_STORE_STATEMENT_TIMEOUT,
    OPTIONS,
    Settings,
    StoreWaits,
    resolve,
)
from pytest_lrun.config.values import parse_positive_seconds, parse_seconds, parse_size
from pytest_lrun.core.errors import ConfigError
from pytest_lrun.engine import docker as engine

K, M, G = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("512k", 512 * K),
        ("512kb", 512 * K),
        ("512KiB", 512 * K),
        ("16m", 16 * M),
        ("16MiB", 16 * M),
        ("512mb", 512 * M),
        ("1g", G),
        ("1.5g", 1536 * M),
        ("1.5G", 1536 * M),
        ("1024b", 1024),
        (" 2g ", 2 * G),
    ],
)
def test_size_spellings(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nan", "expected a size: a byte count (1048576) or a number with a unit k, m or g"),
        ("inf", "expected a size: a byte count"),
        ("-1g", "expected a size: a byte count"),
        ("1e400", "expected a size: a byte count"),
        ("2 GB", "expected a size: a byte count"),
        ("1ib", "expected a size: a byte count"),
        ("", "expected a size: a byte count"),
        ("0", "expected a size of at least one byte"),
        ("0.1b", "expected a size of at least one byte"),
        # Sizes past the engine's int64; float parsing made the longest of these inf.
        ("9223372036854775808", "expected at most 9223372036854775807 bytes"),
        ("9" * 400, "expected at most 9223372036854775807 bytes"),
    ],
)
def test_bad_sizes_say_what_is_accepted(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert reason in str(info.value)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400", "-1"])
def test_seconds_are_finite_and_not_negative(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number of seconds, 0 or more"):
        parse_seconds(text)
    with pytest.raises(ValueError, match="expected a positive number of seconds"):
        parse_positive_seconds(text)


def test_zero_seconds_means_at_once_only_where_that_makes_sense() -> None:
    assert parse_seconds("0") == 0.0
    with pytest.raises(ValueError, match="expected a positive number of seconds"):
        parse_positive_seconds("0")


def test_seconds_that_would_overflow_a_wait_are_refused() -> None:
    assert parse_seconds("1e9") == 1e9
    with pytest.raises(ValueError, match=r"expected at most 1e\+09 seconds"):
        parse_seconds("1e10")


def test_text_that_is_not_a_number() -> None:
    with pytest.raises(ValueError, match="expected a number of seconds"):
        parse_seconds("soon")


@pytest.mark.parametrize(
    ("env", "value", "reason"),
    [
        ("LRUN_TIMEOUT", "nan", "expected a positive number of seconds"),
        ("LRUN_TIMEOUT", "inf", "expected a positive number of seconds"),
        ("LRUN_TIMEOUT", "0", "expected a positive number of seconds"),
        ("LRUN_REAP_AGE", "nan", "expected a number of seconds, 0 or more"),
        ("LRUN_BUSY_WAIT", "inf", "expected a number of seconds, 0 or more"),
        ("LRUN_CONNECT_TIMEOUT", "0", "expected a positive number of seconds"),
        ("LRUN_STATE_MAX_BYTES", "1e400", "expected a size"),
        ("LRUN_LOG_MAX_BYTES", "nan", "expected a size"),
    ],
)
def test_bad_environment_values_name_the_variable(env: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}, lambda _key: None, {env: value})
    assert info.value.source == f"environment variable {env}"
    assert info.value.reason.startswith(f"invalid value {value!r}: {reason}")


def test_bad_ini_values_name_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}, lambda key: "nan" if key == "lrun_reap_age" else None, {})
    assert info.value.source == "ini option lrun_reap_age"


def test_defaults_come_from_the_option_table_only() -> None:
    # Settings declares no default of its own: the option table is the one place.
    fields = dataclasses.fields(Settings)
    assert [f.name for f in fields] == [option.name for option in OPTIONS]
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)
    settings = resolve({}, lambda _key: None, {})
    assert {option.name: getattr(settings, option.name) for option in OPTIONS} == {
        option.name: option.default for option in OPTIONS
    }


def test_the_engine_uses_the_settings_connect_timeout() -> None:
    for function in (engine.connect, engine.DockerEngine.__init__):
        assert inspect.signature(function).parameters["connect_timeout"].default is DEFAULT_CONNECT_TIMEOUT


def test_the_settings_carry_the_store_waits_from_every_source() -> None:
    """ini < env < CLI, as every option; the URL is the plain string every reader sees, pickles included."""
    settings = resolve(
        {"store_lock_timeout": 7.0},
        lambda key: "3" if key == "lrun_store_keepalive" else None,
        {
            "LRUN_STORE": "postgresql://h/db",
            "LRUN_STORE_STATEMENT_TIMEOUT": "0",
            "LRUN_STORE_IDLE_TIMEOUT": "9",
        },
    )
    assert type(settings.store) is str and settings.store == "postgresql://h/db"
    waits = StoreWaits(statement_timeout=0.0, lock_timeout=7.0, idle_timeout=9.0, keepalive=3.0)
    assert settings.store_waits == waits
    copy = pickle.loads(pickle.dumps(settings))
    assert (copy.store, copy.store_waits) == ("postgresql://h/db", waits)
    assert resolve({}, lambda _key: None, {}).store is None  # the file store has no URL
    default = StoreWaits()
    assert (default.statement_timeout, default.lock_timeout, default.idle_timeout, default.keepalive) == (
        DEFAULT_STORE_STATEMENT_TIMEOUT,
        DEFAULT_STORE_LOCK_TIMEOUT,
        DEFAULT_STORE_IDLE_TIMEOUT,
        DEFAULT_STORE_KEEPALIVE,
    )
