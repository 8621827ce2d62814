"""One TOML table of a config file, read key by key: a machine table, a plan entry, the plan's ``[matrix]``.

This module owns what machine tables (:mod:`pytest_lrun.config.machines`) and plans
(:mod:`pytest_lrun.config.plan`) read alike:

* :func:`parse_toml`, a document parsed (the one place that imports ``tomllib``);
* :class:`TableReader`, typed access to one table whose every error names the file,
  table and key: strings, numbers, seconds, sizes, booleans, files, variable names,
  and the one build reader (:meth:`TableReader.build`, with the keys
  :data:`BUILD_KEYS`). Each format subclasses it to say where a key is (``error``,
  ``origin``), how its messages quote a bad value (``found``) and how it checks a
  string and a table of strings;
* :class:`FrozenEnv`, the read-only mapping a table of strings is kept as;
* :func:`toml_type`, the TOML name of a value's type, for messages.
"""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from pytest_lrun.config.builds import Build, make_build
from pytest_lrun.config.values import (
    ENV_NAMES_EXPECTED,
    SIZE_SPELLINGS,
    check_seconds,
    env_names_of,
    parse_size,
)
from pytest_lrun.core.errors import LrunError
from pytest_lrun.core.text import printable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["BUILD_KEYS", "FrozenEnv", "TableReader", "parse_toml", "toml_type"]

#: A machine table's (and a plan entry's) keys of a build, ``build`` first.
BUILD_KEYS: tuple[str, ...] = ("build", "dockerfile", "build_args", "target")


class FrozenEnv(Mapping[str, str]):
    """A read-only, hashable, picklable ``str -> str`` mapping: keeps machines and plan entries frozen."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._data: dict[str, str] = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenEnv({self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenEnv, (self._data,))


def parse_toml(text: str) -> dict[str, Any]:
    """``text`` as a TOML document.

    :raises ValueError: it is not TOML, saying why (``nested too deeply`` past what the parser descends)
    """
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(str(e)) from None
    except RecursionError:
        # The TOML parser recurses once per level of nested arrays and inline tables.
        raise ValueError("nested too deeply") from None
    return document


# Checked in this order: a bool is an int too.
_TOML_TYPES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (dict, "table"),
    (list, "array"),
    ((datetime, date, time), "date/time"),
)


def toml_type(value: object) -> str:
    """The TOML name of ``value``'s type (``"integer"``, ``"array"``, ...), for an error message."""
    for kind, name in _TOML_TYPES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


class TableReader(ABC):
    """Typed access to one TOML ``table``; relative paths in it are relative to ``base_dir``."""

    def __init__(self, table: Mapping[str, Any], base_dir: Path) -> None:
        self.table = table
        self.base_dir = base_dir

    @abstractmethod
    def error(self, key: str, reason: str) -> LrunError:
        """The error for ``key`` of this table (naming the file, the table and the key)."""

    @abstractmethod
    def origin(self, key: str) -> str:
        """Who named the value of ``key``, for a :class:`~pytest_lrun.config.builds.Build`'s messages."""

    @abstractmethod
    def found(self, value: object, *, typed: bool = True) -> str:
        """How a message quotes a bad ``value`` after what was expected: with its TOML type when
        ``typed`` (``found string 'x'``: the type is what is wrong), else as itself (``found -1``)."""

    @abstractmethod
    def string(self, key: str) -> str | None:
        """``key``'s string, or None when the table leaves it out."""

    @abstractmethod
    def string_table(self, key: str, what: str) -> Mapping[str, str] | None:
        """``key``'s table of ``NAME = "value"`` strings (``what``: what a NAME is), or None when absent."""

    def number(self, key: str, what: str, maximum: float) -> float | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected {what}, {self.found(value)}")
        if not math.isfinite(value) or value <= 0:
            raise self.error(key, f"expected {what}, {self.found(value, typed=False)}")
        if value > maximum:
            raise self.error(key, f"expected at most {maximum:g}, {self.found(value, typed=False)}")
        return float(value)

    def seconds(self, key: str) -> float | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number of seconds above zero, {self.found(value)}")
        try:
            return check_seconds(value, zero_ok=False)
        except ValueError as e:
            raise self.error(key, f"{e}, {self.found(value, typed=False)}") from None

    def size(self, key: str) -> int | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if not isinstance(value, str):
            raise self.error(key, f"expected a size string: {SIZE_SPELLINGS}; {self.found(value)}")
        try:
            return parse_size(value)
        except ValueError as e:
            raise self.error(key, f"{e}; {self.found(value, typed=False)}") from None

    def whole_number(self, key: str, low: int, high: int) -> int | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, f"expected a whole number from {low} to {high}, {self.found(value)}")
        return value

    def boolean(self, key: str) -> bool | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, {self.found(value)}")
        return value

    def file(self, key: str) -> str | None:
        value = self.string(key)
        if value is None:
            return None
        try:
            path = Path(value).expanduser()
            if not path.is_absolute():
                path = self.base_dir / path
            found = path.is_file()
        except (OSError, RuntimeError) as e:  # a name too long, ~user of no such user
            raise self.error(key, f"cannot use the path {printable(value)!r}: {e}") from None
        if not found:
            shown = self.found(value, typed=False)
            raise self.error(key, f"expected a path to an existing file, {shown} ({path} does not exist)")
        return str(path)

    def env_names(self, key: str) -> tuple[str, ...] | None:
        """``key``'s list of environment variable names (``secret_env``), or None when absent."""
        if key not in self.table:
            return None
        names = env_names_of(self.table[key])
        if names is None:
            raise self.error(key, f"{ENV_NAMES_EXPECTED}, {self.found(self.table[key])}")
        return names

    def build(self) -> Build | None:
        """The table's build (``build`` and its ``dockerfile``, ``build_args``, ``target``), if any."""
        if "build" not in self.table:
            stray = [key for key in BUILD_KEYS if key in self.table]
            if stray:
                raise self.error(stray[0], 'belongs to a build; add build = "CONTEXT FOLDER"')
            return None
        if "image" in self.table:
            raise self.error("build", "give an image or a build, not both (this table has image and build)")
        context = self.string("build")
        assert context is not None  # the table has it
        # Read before make_build: its ValueError is the build's, and each of these names its own key.
        dockerfile = self.string("dockerfile")
        args = self.string_table("build_args", "build arg")
        target = self.string("target")
        try:
            return make_build(
                context,
                base=self.base_dir,
                dockerfile=dockerfile,
                args=args,
                target=target,
                origin=self.origin("build"),
            )
        except ValueError as e:
            raise self.error("build", str(e)) from None
