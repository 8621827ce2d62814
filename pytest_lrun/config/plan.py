"""Plan files: parsing, validation, matrix expansion, selection.

A plan is a TOML file whose entries each dispatch one test directory to one
machine. This module owns its format and turns a file into a frozen
:class:`Plan`; it never talks to an engine and never touches the state directory.

Format::

    [[entry]]
    name = "passing-m1"              # required, unique in the plan
    dir = "passing"                  # required; relative to the plan file's directory
    machine = "m1"                   # required
    image = "lrun-python:bookworm"   # optional; or a build, built on each machine before its first run:
    # build = "docker/test"          #   a context folder, relative to the plan file's directory
    # dockerfile = "Dockerfile"      #   optional, a path in the context
    # build_args = { PY = "3.11" }   #   optional, a table of strings
    # target = "test"                #   optional, a build stage
    command = "python3 -m pytest -q" # optional: a string (shell words) or a list of strings
    env = { FOO = "bar" }            # optional: a table of strings
    secret_env = ["TOKEN"]           # optional: host env vars passed in as secrets (masked, not in the key)
    timeout = 60                     # optional: seconds > 0
    artifacts = ["/lrun/artifacts"]  # optional: absolute container paths

    [matrix]                         # optional: one entry per dir and machine, named "<dir>@<machine>"
    dirs = ["passing", "failing"]
    machines = ["m1", "m2"]
    # image (or build), command, env, timeout and artifacts, when given, apply to every expanded entry

Entries keep plan order: the ``[[entry]]`` tables as written, then the matrix
expansion (for each dir in ``dirs``, each machine in ``machines``).

Everything is checked before anything runs: a plan that is not there, not UTF-8,
not TOML (nested too deeply included), has unknown keys, missing or mistyped
fields, directories that do not exist or cannot be used (a name too long for the
file system), a plan or directory path that is not valid UTF-8, duplicate names
or (when the caller knows them) unknown machines, or no entries at all raises
:class:`~pytest_lrun.core.errors.PlanError`, whose message names the file, the entry
and the field. Entry names may not contain commas or control
characters, nor start or end with whitespace, because ``--lrun-plan-entry`` is
a comma separated list in ini files and the environment.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from pytest_lrun.config.builds import Build
from pytest_lrun.config.tables import BUILD_KEYS, FrozenEnv, TableReader, parse_toml
from pytest_lrun.config.values import check_seconds, parse_command
from pytest_lrun.core.errors import PlanError
from pytest_lrun.core.fsutil import NotAFile, read_regular
from pytest_lrun.core.text import printable, shown_toml

__all__ = ["ENTRY_FIELDS", "MATRIX_FIELDS", "Plan", "PlanEntry", "load_plan", "select"]

#: Options an ``[[entry]]`` and the ``[matrix]`` share.
_SHARED_FIELDS = ("image", *BUILD_KEYS, "command", "env", "secret_env", "timeout", "artifacts")
#: Keys allowed in an ``[[entry]]`` table.
ENTRY_FIELDS = ("name", "dir", "machine", *_SHARED_FIELDS)
#: Keys allowed in the ``[matrix]`` table.
MATRIX_FIELDS = ("dirs", "machines", *_SHARED_FIELDS)
_TOP_LEVEL = ("entry", "matrix")
_SHOWN_MAX = 60


@dataclass(frozen=True)
class PlanEntry:
    """One directory on one machine, as the plan states it (``None``: use the usual defaults)."""

    name: str
    dir: Path  # absolute, symlinks resolved
    machine: str
    image: str | None = None
    build: Build | None = None
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=FrozenEnv)
    secret_env: tuple[str, ...] = ()
    timeout: float | None = None
    artifacts: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Plan:
    """A validated plan file: ``digest`` is the xxh3-128 hex digest of the file's bytes.

    A shard batch's plan has no file: ``path`` is the directory, ``collected`` the inner
    node ids its shards were dealt from (in collection order), and ``digest`` covers them.
    """

    path: Path  # absolute, symlinks resolved
    digest: str
    entries: tuple[PlanEntry, ...]
    collected: tuple[str, ...] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The entry names, in plan order."""
        return tuple(entry.name for entry in self.entries)


# --- loading ---------------------------------------------------------------


def load_plan(path: str | os.PathLike[str], *, known_machines: Collection[str] | None = None) -> Plan:
    """Read and validate the plan file at ``path`` (see the module docstring for the format).

    :param known_machines: when given, every entry's machine must be one of these
    :raises PlanError: the file is missing, unreadable, not TOML or not a valid plan
    """
    shown = printable(os.fspath(path))
    raw = _read(Path(path), shown)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PlanError(shown, f"not UTF-8 text: {e}") from None
    try:
        data = parse_toml(text)
    except ValueError as e:
        raise PlanError(shown, f"invalid TOML: {e}") from None
    absolute = Path(path).resolve()
    if printable(str(absolute)) != str(absolute):
        raise PlanError(shown, f"the plan's path {printable(str(absolute))} is not valid UTF-8")
    parser = _Parser(shown, absolute.parent)
    entries = parser.parse(data)
    if known_machines is not None:
        parser.check_machines(entries, known_machines)
    return Plan(path=absolute, digest=xxhash.xxh3_128_hexdigest(raw), entries=tuple(entries))


def _read(path: Path, shown: str) -> bytes:
    """The plan's bytes, read like the ignore files: no symlink followed, no wait on a fifo."""
    try:
        return read_regular(path)
    except FileNotFoundError:
        raise PlanError(shown, "no such file") from None
    except NotAFile as e:
        raise PlanError(shown, f"is {e.kind}, not a plan file") from None
    except OSError as e:
        raise PlanError(shown, f"cannot read the plan: {e.strerror or e}") from None


def _shown(value: object) -> str:
    """A value as the plan's errors quote it: TOML-like, shortened."""
    return shown_toml(value, limit=_SHOWN_MAX)


class _Parser:
    """Validation of one plan's TOML document; every error names file, entry and field."""

    def __init__(self, shown: str, base: Path) -> None:
        self.shown = shown
        self.base = base
        # entry name -> where it was defined ("entry #2", "the [matrix] (...)"), for duplicate errors
        self.defined: dict[str, str] = {}
        # names of the entries the matrix expanded, for machine errors
        self.from_matrix: set[str] = set()

    def error(self, reason: str, entry: str | None = None, field: str | None = None) -> PlanError:
        return PlanError(self.shown, reason, entry=entry, field=field)

    def parse(self, data: dict[str, Any]) -> list[PlanEntry]:
        for key in data:
            if key not in _TOP_LEVEL:
                raise self.error(f"unknown top-level key {key!r}; a plan has [[entry]] tables and a [matrix]")
        entries: list[PlanEntry] = []
        tables = data.get("entry", [])
        if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
            raise self.error(f"'entry' must be an array of tables ([[entry]]), got {_shown(tables)}")
        for number, table in enumerate(tables, start=1):
            entries.append(self.entry(table, number))
        if "matrix" in data:
            matrix = data["matrix"]
            if not isinstance(matrix, dict):
                raise self.error(f"'matrix' must be a table ([matrix]), got {_shown(matrix)}")
            entries.extend(self.matrix(matrix))
        if not entries:
            raise self.error("the plan has no entries: add [[entry]] tables or a [matrix]")
        return entries

    # -- tables ---------------------------------------------------------------

    def entry(self, table: dict[str, Any], number: int) -> PlanEntry:
        label = f"#{number}"
        if "name" in table:
            label = self.name(table["name"], label)
        self.unknown_keys(table, ENTRY_FIELDS, label, "")
        for required in ("name", "dir", "machine"):
            if required not in table:
                raise self.error("required field is missing", label, required)
        machine = self.text(table["machine"], label, "machine")
        entry = PlanEntry(
            name=label,
            dir=self.directory(table["dir"], label, "dir"),
            machine=machine,
            **self.options(table, label, ""),
        )
        self.claim(label, f"entry #{number}")
        return entry

    def matrix(self, table: dict[str, Any]) -> list[PlanEntry]:
        self.unknown_keys(table, MATRIX_FIELDS, None, "matrix.")
        for required in ("dirs", "machines"):
            if required not in table:
                raise self.error("required field is missing", None, f"matrix.{required}")
        dirs = self.text_list(table["dirs"], "matrix.dirs")
        machines = self.text_list(table["machines"], "matrix.machines")
        for raw in dirs:
            self.name(raw, None, "matrix.dirs")
        for machine in machines:
            self.name(machine, None, "matrix.machines")
        resolved = [self.directory(raw, None, "matrix.dirs") for raw in dirs]
        options = self.options(table, None, "matrix.")
        entries = []
        for raw_dir, test_dir in zip(dirs, resolved, strict=True):
            for machine in machines:
                name = f"{raw_dir}@{machine}"
                self.claim(name, f"the [matrix] (dir {raw_dir!r} on machine {machine!r})")
                self.from_matrix.add(name)
                entries.append(PlanEntry(name=name, dir=test_dir, machine=machine, **options))
        return entries

    def unknown_keys(
        self, table: Mapping[str, Any], allowed: Sequence[str], entry: str | None, prefix: str
    ) -> None:
        for key in table:
            if key not in allowed:
                raise self.error(
                    f"unknown field; expected one of: {', '.join(allowed)}", entry, f"{prefix}{key}"
                )

    def claim(self, name: str, where: str) -> None:
        earlier = self.defined.get(name)
        if earlier is not None:
            raise self.error(f"duplicate entry name: defined by {earlier} and by {where}", name, "name")
        self.defined[name] = where

    def check_machines(self, entries: Iterable[PlanEntry], known: Collection[str]) -> None:
        listed = ", ".join(sorted(known)) or "(none)"
        tables_from = getattr(known, "tables_from", None)  # a resolver's names say where they came from
        if tables_from:
            listed += f" ({tables_from})"
        for entry in entries:
            if entry.machine not in known:
                field = "matrix.machines" if entry.name in self.from_matrix else "machine"
                raise self.error(
                    f"unknown machine {entry.machine!r}; known machines: {listed}", entry.name, field
                )

    # -- fields ---------------------------------------------------------------

    def name(self, value: object, entry: str | None, field: str = "name") -> str:
        if not isinstance(value, str) or not value:
            raise self.error(f"expected a non-empty string, got {_shown(value)}", entry, field)
        if value != value.strip():
            raise self.error(
                f"an entry name may not start or end with whitespace: {_shown(value)}", entry, field
            )
        if "," in value or any(ord(char) < 32 or ord(char) == 127 for char in value):
            raise self.error(
                f"an entry name may not contain commas or control characters "
                f"(--lrun-plan-entry lists are comma separated): {_shown(value)}",
                entry,
                field,
            )
        return value

    def text(self, value: object, entry: str | None, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"expected a non-empty string, got {_shown(value)}", entry, field)
        if "\x00" in value:
            raise self.error("must not contain a NUL character", entry, field)
        return value

    def text_list(self, value: object, field: str) -> list[str]:
        if not isinstance(value, list) or not value:
            raise self.error(f"expected a non-empty array of strings, got {_shown(value)}", None, field)
        items = [self.text(item, None, field) for item in value]
        for item in items:
            if items.count(item) > 1:
                raise self.error(f"lists {item!r} more than once", None, field)
        return items

    def directory(self, value: object, entry: str | None, field: str) -> Path:
        raw = self.text(value, entry, field)
        try:
            path = (self.base / raw).resolve()
            exists, is_dir = path.exists(), path.is_dir()
        except OSError as e:  # e.g. ENAMETOOLONG, ELOOP, EACCES
            raise self.error(f"cannot use directory {raw!r}: {e.strerror or e}", entry, field) from None
        shown = printable(str(path))
        if not exists:
            raise self.error(f"directory {raw!r} does not exist (looked for {shown})", entry, field)
        if not is_dir:
            raise self.error(f"{raw!r} is not a directory ({shown})", entry, field)
        if shown != str(path):
            # Run records, batch records and reports hold the path as UTF-8 text.
            raise self.error(f"directory {raw!r} resolves to {shown}, which is not valid UTF-8", entry, field)
        return path

    def options(self, table: Mapping[str, Any], entry: str | None, prefix: str) -> dict[str, Any]:
        """The optional fields ``_SHARED_FIELDS`` as :class:`PlanEntry` keyword arguments."""
        options: dict[str, Any] = {}
        if "image" in table:
            image = self.text(table["image"], entry, f"{prefix}image")
            if any(char.isspace() for char in image):
                raise self.error(
                    f"an image reference has no whitespace, got {_shown(image)}", entry, f"{prefix}image"
                )
            options["image"] = image
        fields = _Fields(self, table, entry, prefix)
        build = fields.build()
        if build is not None:
            options["build"] = build
        if "command" in table:
            options["command"] = self.command(table["command"], entry, f"{prefix}command")
        if "env" in table:
            options["env"] = self.env(table["env"], entry, f"{prefix}env")
        secret_env = fields.env_names("secret_env")
        if secret_env is not None:
            options["secret_env"] = secret_env
        if "timeout" in table:
            options["timeout"] = self.timeout(table["timeout"], entry, f"{prefix}timeout")
        if "artifacts" in table:
            options["artifacts"] = self.artifacts(table["artifacts"], entry, f"{prefix}artifacts")
        return options

    def command(self, value: object, entry: str | None, field: str) -> tuple[str, ...]:
        if isinstance(value, str):
            try:
                return parse_command(value)
            except ValueError as e:
                raise self.error(f"not a valid shell command ({e}): {_shown(value)}", entry, field) from None
        if (
            isinstance(value, list)
            and value
            and all(isinstance(word, str) and "\x00" not in word for word in value)
            and value[0]
        ):
            return tuple(value)
        raise self.error(
            f"expected a command string or a non-empty array of strings, got {_shown(value)}", entry, field
        )

    def env(
        self, value: object, entry: str | None, field: str, what: str = "environment variable"
    ) -> FrozenEnv:
        if not isinstance(value, dict):
            raise self.error(f"expected a table of strings, got {_shown(value)}", entry, field)
        for key, item in value.items():
            if not key or "=" in key or "\x00" in key:
                raise self.error(f"{key!r} is not a valid {what} name", entry, field)
            if not isinstance(item, str) or "\x00" in item:
                raise self.error(f"variable {key!r}: expected a string, got {_shown(item)}", entry, field)
        return FrozenEnv(value)

    def timeout(self, value: object, entry: str | None, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"expected a positive number of seconds, got {_shown(value)}", entry, field)
        try:
            return check_seconds(value, zero_ok=False)
        except ValueError as e:
            raise self.error(f"{e}, got {_shown(value)}", entry, field) from None

    def artifacts(self, value: object, entry: str | None, field: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(
                f"expected an array of absolute container paths, got {_shown(value)}", entry, field
            )
        for item in value:
            if not isinstance(item, str) or not item.startswith("/") or "\x00" in item:
                raise self.error(f"expected an absolute container path, got {_shown(item)}", entry, field)
        return tuple(value)


class _Fields(TableReader):
    """One ``[[entry]]`` table or the ``[matrix]``, read by the rules it shares with machine tables:
    errors name the plan, the entry and the field (``prefix``: ``matrix.`` for the matrix's)."""

    def __init__(self, parser: _Parser, table: Mapping[str, Any], entry: str | None, prefix: str) -> None:
        super().__init__(table, parser.base)
        self.parser = parser
        self.entry = entry
        self.prefix = prefix

    def error(self, key: str, reason: str) -> PlanError:
        return self.parser.error(reason, self.entry, self.prefix + key)

    def origin(self, key: str) -> str:
        return f"{self.parser.shown} {self.entry or 'matrix'} {self.prefix}{key}"

    def found(self, value: object, *, typed: bool = True) -> str:
        return f"got {_shown(value)}"

    def string(self, key: str) -> str | None:
        if key not in self.table:
            return None
        return self.parser.text(self.table[key], self.entry, self.prefix + key)

    def string_table(self, key: str, what: str) -> FrozenEnv | None:
        if key not in self.table:
            return None
        return self.parser.env(self.table[key], self.entry, self.prefix + key, what)


# --- selection -------------------------------------------------------------


def select(plan: Plan, names: Sequence[str]) -> list[PlanEntry]:
    """The entries named by ``names`` (all when empty), in plan order; repeats are ignored.

    :raises PlanError: a name is not an entry of the plan (the message lists the plan's entries)
    """
    if not names:
        return list(plan.entries)
    known = set(plan.names)
    unknown = [name for name in dict.fromkeys(names) if name not in known]
    if unknown:
        listed = ", ".join(repr(name) for name in plan.names)
        missing = ", ".join(repr(name) for name in unknown)
        raise PlanError(
            str(plan.path),
            f"no entry named {missing}; the plan's entries are: {listed}",
        )
    wanted = set(names)
    return [entry for entry in plan.entries if entry.name in wanted]
