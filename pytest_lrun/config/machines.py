"""Machine names to Docker Engine connection settings.

This module owns the meaning of a machine name: it reads the
``[tool.lrun.machines.NAME]`` tables of a project's ``pyproject.toml``, the
Docker CLI's contexts and the ``DOCKER_*`` environment, and turns a name into a
frozen :class:`Machine` record (engine URL, TLS material, container defaults).
It never talks to an engine and never imports ``docker``; ``engine.py`` turns a
:class:`Machine` into a client.

A name resolves to the first of, in this order:

1. ``[tool.lrun.machines.NAME]`` in the project's ``pyproject.toml``
   (source ``"config"``); a table named ``local`` overrides the environment engine.
   The file is found by :func:`find_machine_file`, for the plugin and the ``lrun``
   command line alike: the one named (``--lrun-config``, ``LRUN_CONFIG``, ``lrun
   --project``), else the nearest ``pyproject.toml`` from the current directory
   upward (never pytest's rootdir, which a suite's own ``setup.cfg`` or ``tox.ini`` moves);
2. the Docker context ``NAME`` under ``$DOCKER_CONFIG/contexts`` (default
   ``~/.docker``), laid out as ``docker context create`` writes it
   (source ``"context"``); ``default`` is never looked up as a context;
3. for ``local`` and ``default`` only: the engine the environment names,
   ``DOCKER_HOST`` or ``unix:///var/run/docker.sock``, with TLS from
   ``DOCKER_TLS_VERIFY`` / ``DOCKER_TLS`` / ``DOCKER_CERT_PATH``
   (source ``"environment"``).

Any other name raises :class:`~pytest_lrun.core.errors.UnknownMachine` listing the
known names and naming the file the tables were read from (or where none was
found). ``tag:NAME`` (:meth:`MachineResolver.resolve_all`) names every machine
table whose ``tags`` carry NAME, in table order; a table's ``slots`` says how many
runs its engine takes at once (default 1), its ``pids_limit`` how many processes a
run's container may hold (default 4096). The image of a run is chosen by :func:`resolve_image`: plan entry,
then ``--lrun-image`` or ``--lrun-build``, then the machine table. Each of them names an image or a
build (a :class:`~pytest_lrun.config.builds.Build`: ``build = "CONTEXT"`` with optional ``dockerfile``,
``build_args`` and ``target``), never both.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

from pytest_lrun.config.builds import Build, make_build
from pytest_lrun.config.values import (
    ENV_NAMES_EXPECTED,
    SIZE_SPELLINGS,
    check_seconds,
    env_names_of,
    parse_size,
)
from pytest_lrun.core.errors import ConfigError, ImageNotSet, UnknownMachine
from pytest_lrun.core.text import printable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "BUILD_KEYS",
    "DEFAULT_DOCKER_HOST",
    "DEFAULT_PIDS_LIMIT",
    "ENVIRONMENT_NAMES",
    "PULL_POLICIES",
    "TAG_PREFIX",
    "ImageSource",
    "KnownNames",
    "Machine",
    "MachineResolver",
    "MachineSource",
    "PullPolicy",
    "TLSConfig",
    "context_meta_path",
    "context_tls_dir",
    "find_machine_file",
    "load_machine_tables",
    "machine_resolver",
    "resolve_image",
]

MachineSource = Literal["config", "context", "environment"]
PullPolicy = Literal["never", "missing", "always"]

PULL_POLICIES: tuple[PullPolicy, ...] = ("never", "missing", "always")
_PULL_BY_NAME: dict[str, PullPolicy] = {policy: policy for policy in PULL_POLICIES}
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# Names that fall back to the engine of the environment when nothing else defines them.
ENVIRONMENT_NAMES: tuple[str, ...] = ("local", "default")
HOST_SCHEMES = ("unix", "tcp", "ssh")

_SOURCE_LABELS: dict[str, str] = {
    "config": "pyproject.toml",
    "context": "Docker context",
    "environment": "environment",
}
# The engine counts CPUs in int64 nano-CPUs.
_MAX_CPUS = (2**63 - 1) // 10**9
_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
#: A machine table's (and a plan entry's) keys of a build, ``build`` first.
BUILD_KEYS: tuple[str, ...] = ("build", "dockerfile", "build_args", "target")
_TLS_KEYS = ("tls_verify", "tls_ca_cert", "tls_client_cert", "tls_client_key")
_TABLE_KEYS = (
    "host",
    "image",
    "cpus",
    "memory",
    "network",
    "env",
    "timeout",
    "pull",
    "workdir",
    "tags",
    "slots",
    "pids_limit",
    *BUILD_KEYS,
    "secret_env",
    *_TLS_KEYS,
)
TAG_PREFIX = "tag:"
_TAG_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# One engine running more runs at once than this is a typo, not a fleet.
_MAX_SLOTS = 1024
#: Processes (and threads) a run's container may hold at once unless its table says otherwise:
#: room for a parallel test run, and a fork bomb ends there instead of on the engine's host.
DEFAULT_PIDS_LIMIT = 4096
# Fewer than this and a Python interpreter with a few workers cannot start; above it is the
# kernel's own ceiling (pid_max at most 2**22).
_PIDS_LIMIT_RANGE = (16, 2**22)


# --- records ---------------------------------------------------------------


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings for a ``tcp://`` engine; paths are absolute strings, ``None`` when absent."""

    ca_cert: str | None
    client_cert: str | None
    client_key: str | None
    verify: bool


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


@dataclass(frozen=True)
class Machine:
    """A named Docker Engine and the container defaults of runs on it.

    ``host`` is a Docker URL (``unix://``, ``tcp://``, ``ssh://``); ``source`` says
    where the definition came from. ``memory`` is a byte count. ``env`` is stored
    as a read-only mapping, so the record stays hashable.
    """

    name: str
    host: str
    source: MachineSource
    tls: TLSConfig | None = None
    image: str | None = None
    build: Build | None = None  # instead of an image: built on the engine before its first run
    cpus: float | None = None
    memory: int | None = None  # bytes, parsed from the table's size text
    network: str = "none"
    env: Mapping[str, str] = field(default_factory=FrozenEnv)
    secret_env: tuple[str, ...] = ()  # host env vars passed in as secrets (``--lrun-secret-env``)
    timeout: float | None = None
    pull: PullPolicy = "missing"
    workdir: str = "/lrun/work"
    tags: tuple[str, ...] = ()
    slots: int = 1
    pids_limit: int = DEFAULT_PIDS_LIMIT  # processes and threads in a run's container at once

    def __post_init__(self) -> None:
        if not isinstance(self.env, FrozenEnv):
            object.__setattr__(self, "env", FrozenEnv(self.env))

    def describe(self) -> str:
        """A short human description, e.g. ``m1 (unix:///var/run/docker.sock, from pyproject.toml)``."""
        tls = ", TLS" if self.tls is not None else ""
        return f"{self.name} ({self.host}{tls}, from {_SOURCE_LABELS.get(self.source, self.source)})"


# --- pyproject.toml ----------------------------------------------------------


def _table_header(name: str) -> str:
    key = name if _BARE_KEY_RE.match(name) else json.dumps(name)
    return f"[tool.lrun.machines.{key}]"


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if isinstance(value, (datetime, date, time)):
        return "date/time"
    return type(value).__name__


def _found(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"found {_toml_type(value)} {text}"


PYPROJECT = "pyproject.toml"


def find_machine_file(named: Path | None, cwd: Path | None = None, *, source: str) -> Path | None:
    """The TOML file holding the ``[tool.lrun.machines.*]`` tables, absolute.

    ``named`` (the file, or a directory holding a ``pyproject.toml``; relative to ``cwd``)
    must exist; without it, the nearest ``pyproject.toml`` from ``cwd`` (default: the
    current directory) upward, or None. The plugin and the ``lrun`` command line both
    find it here.

    :param source: who named ``named`` (``--lrun-config``, ``--project``), for the error
    :raises ConfigError: ``named`` is neither such a file nor such a directory
    """
    start = (cwd or Path.cwd()).absolute()
    if named is not None:
        path = start / named.expanduser()
        if path.is_dir():
            path = path / PYPROJECT
        if not path.is_file():
            raise ConfigError(
                source, f"no {PYPROJECT} at {path}" if path.name == PYPROJECT else f"no file {path}"
            )
        return path
    for directory in (start, *start.parents):
        candidate = directory / PYPROJECT
        if candidate.is_file():
            return candidate
    return None


def machine_resolver(
    named: Path | None, cwd: Path | None = None, *, source: str = "--lrun-config"
) -> MachineResolver:
    """A resolver of the machine tables :func:`find_machine_file` finds (see its parameters)."""
    path = find_machine_file(named, cwd, source=source)
    return MachineResolver(load_machine_tables(path), path, searched_from=(cwd or Path.cwd()).absolute())


def load_machine_tables(pyproject: Path | None) -> dict[str, dict[str, Any]]:
    """The ``[tool.lrun.machines.NAME]`` tables of ``pyproject``, by name.

    A missing file (or ``None``) gives ``{}``. A file that is not valid TOML (nested too
    deeply included), or a ``machines`` entry that is not a table, raises
    :class:`ConfigError` naming the file.
    """
    if pyproject is None:
        return {}
    try:
        with open(pyproject, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(str(pyproject), f"cannot read: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(str(pyproject), f"not valid TOML: {e}") from e
    except RecursionError:
        # The TOML parser recurses once per level of nested arrays and inline tables.
        raise ConfigError(str(pyproject), "not valid TOML: nested too deeply") from None

    node: Any = data
    for depth, key in enumerate(("tool", "lrun", "machines")):
        node = node.get(key, {})
        if not isinstance(node, dict):
            where = ".".join(("tool", "lrun", "machines")[: depth + 1])
            raise ConfigError(f"{pyproject} [{where}]", f"expected a table, {_found(node)}")
    tables: dict[str, dict[str, Any]] = {}
    for name, table in node.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"{pyproject} [tool.lrun.machines] {name}",
                f"expected a machine table ({_table_header(name)} with at least `host`), {_found(table)}",
            )
        tables[name] = table
    return tables


def _host_problem(url: str) -> str | None:
    """Why ``url`` is not a Docker URL pytest-lrun can use, or ``None`` when it is."""
    expected = "expected a Docker URL (unix:///path/docker.sock, tcp://host:port or ssh://user@host)"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric port
    except ValueError as e:
        return f"{expected}, found {url!r} ({e})"
    scheme = parts.scheme.lower()
    if scheme not in HOST_SCHEMES:
        return f"{expected}, found {url!r}"
    if scheme == "unix" and (parts.netloc or not parts.path.startswith("/")):
        return f"expected unix:// followed by an absolute socket path, found {url!r}"
    if scheme in ("tcp", "ssh") and not parts.hostname:
        return f"expected a host name after {scheme}://, found {url!r}"
    if scheme == "tcp" and port == 0:
        return f"expected a port between 1 and 65535, found {url!r}"
    return None


class _TableReader:
    """Typed access to one machine table; every error names the key path."""

    def __init__(self, where: str, name: str, table: Mapping[str, Any], base_dir: Path) -> None:
        self.where = where
        self.name = name
        self.table = table
        self.base_dir = base_dir

    def source(self, key: str) -> str:
        return f"{self.where} {_table_header(self.name)} {key}"

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.source(key), reason)

    def string(self, key: str) -> str | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, {_found(value)}")
        return value

    def number(self, key: str, what: str, maximum: float) -> float | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected {what}, {_found(value)}")
        if not math.isfinite(value) or value <= 0:
            raise self.error(key, f"expected {what}, found {value!r}")
        if value > maximum:
            raise self.error(key, f"expected at most {maximum:g}, found {value!r}")
        return float(value)

    def seconds(self, key: str) -> float | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number of seconds above zero, {_found(value)}")
        try:
            return check_seconds(value, zero_ok=False)
        except ValueError as e:
            raise self.error(key, f"{e}, found {value!r}") from None

    def size(self, key: str) -> int | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if not isinstance(value, str):
            raise self.error(key, f"expected a size string: {SIZE_SPELLINGS}; {_found(value)}")
        try:
            return parse_size(value)
        except ValueError as e:
            raise self.error(key, f"{e}; found {value!r}") from None

    def whole_number(self, key: str, low: int, high: int) -> int | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(key, f"expected a whole number from {low} to {high}, {_found(value)}")
        return value

    def boolean(self, key: str) -> bool | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, {_found(value)}")
        return value

    def names_to_strings(self, key: str, what: str) -> dict[str, str] | None:
        """A table of ``NAME = "value"`` strings (``env``, ``build_args``)."""
        if key not in self.table:
            return None
        raw = self.table[key]
        if not isinstance(raw, dict):
            raise self.error(key, f'expected a table of NAME = "value" strings, {_found(raw)}')
        for var, value in raw.items():
            if not var or "=" in var:
                raise self.error(f"{key}.{var}", f"expected {what} name without '='")
            if not isinstance(value, str):
                raise self.error(f"{key}.{var}", f"expected a string (quote it), {_found(value)}")
        return dict(raw)

    def build(self) -> Build | None:
        """The table's build (``build`` and its ``dockerfile``, ``build_args``, ``target``), if any."""
        context = self.string("build")
        if context is None:
            stray = [key for key in BUILD_KEYS if key in self.table]
            if stray:
                raise self.error(stray[0], 'belongs to a build; add build = "CONTEXT FOLDER"')
            return None
        if "image" in self.table:
            raise self.error("build", "give an image or a build, not both (this table has image and build)")
        try:
            return make_build(
                context,
                base=self.base_dir,
                dockerfile=self.string("dockerfile"),
                args=self.names_to_strings("build_args", "a build arg"),
                target=self.string("target"),
                origin=self.source("build"),
            )
        except ValueError as e:
            raise self.error("build", str(e)) from None

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
            raise self.error(
                key, f"expected a path to an existing file, found {value!r} ({path} does not exist)"
            )
        return str(path)


def _machine_from_table(name: str, table: Mapping[str, Any], where: str, base_dir: Path) -> Machine:
    reader = _TableReader(where, name, table, base_dir)
    for key in table:
        if key not in _TABLE_KEYS:
            hint = difflib.get_close_matches(key, _TABLE_KEYS, n=1)
            did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
            raise reader.error(key, f"unknown key; {did_you_mean}expected one of: {', '.join(_TABLE_KEYS)}")

    host = reader.string("host")
    if host is None:
        raise reader.error(
            "host", "missing; expected a Docker URL such as tcp://host:2376 or ssh://user@host"
        )
    problem = _host_problem(host)
    if problem is not None:
        raise reader.error("host", problem)

    tls: TLSConfig | None = None
    given_tls = [key for key in _TLS_KEYS if key in table]
    if given_tls:
        if urlsplit(host).scheme.lower() != "tcp":
            raise reader.error(given_tls[0], f"TLS settings apply to tcp:// hosts only, and host is {host!r}")
        verify = reader.boolean("tls_verify")
        ca_cert = reader.file("tls_ca_cert")
        client_cert = reader.file("tls_client_cert")
        client_key = reader.file("tls_client_key")
        if (client_cert is None) != (client_key is None):
            missing, present = (
                ("tls_client_key", "tls_client_cert")
                if client_key is None
                else ("tls_client_cert", "tls_client_key")
            )
            raise reader.error(missing, f"missing; {present} is set and needs it")
        tls = TLSConfig(
            ca_cert=ca_cert,
            client_cert=client_cert,
            client_key=client_key,
            verify=True if verify is None else verify,
        )

    # Keys the table leaves out are not passed: their defaults are Machine's, declared once.
    given: dict[str, Any] = {}
    pull = reader.string("pull")
    if pull is not None:
        if pull not in _PULL_BY_NAME:
            raise reader.error("pull", f"expected one of {', '.join(PULL_POLICIES)}, found {pull!r}")
        given["pull"] = _PULL_BY_NAME[pull]

    workdir = reader.string("workdir")
    if workdir is not None:
        if not workdir.startswith("/") or workdir.rstrip("/") == "":
            raise reader.error(
                "workdir", f"expected an absolute container path other than '/', found {workdir!r}"
            )
        given["workdir"] = workdir

    network = reader.string("network")
    if network is not None:
        given["network"] = network

    if "tags" in table:
        tags = table["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) and _TAG_RE.match(t) for t in tags):
            raise reader.error("tags", f'expected a list of names such as ["linux", "big"], {_found(tags)}')
        given["tags"] = tuple(tags)
    if "secret_env" in table:
        names = env_names_of(table["secret_env"])
        if names is None:
            raise reader.error("secret_env", f"{ENV_NAMES_EXPECTED}, {_found(table['secret_env'])}")
        given["secret_env"] = names
    for key, (low, high) in (("slots", (1, _MAX_SLOTS)), ("pids_limit", _PIDS_LIMIT_RANGE)):
        whole = reader.whole_number(key, low, high)
        if whole is not None:
            given[key] = whole

    return Machine(
        name=name,
        host=host,
        source="config",
        tls=tls,
        image=reader.string("image"),
        build=reader.build(),
        cpus=reader.number("cpus", "a number of CPUs above zero", _MAX_CPUS),
        memory=reader.size("memory"),
        env=reader.names_to_strings("env", "a variable") or {},
        timeout=reader.seconds("timeout"),
        **given,
    )


# --- Docker contexts ---------------------------------------------------------


def _utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: a name from the command line may carry raw bytes as surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def context_meta_path(config_dir: Path, name: str) -> Path:
    """Where the Docker CLI keeps the metadata of context ``name``."""
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return config_dir / "contexts" / "meta" / digest / "meta.json"


def context_tls_dir(config_dir: Path, name: str) -> Path:
    """Where the Docker CLI keeps the TLS files (ca.pem, cert.pem, key.pem) of context ``name``."""
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return config_dir / "contexts" / "tls" / digest / "docker"


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


# --- the resolver ------------------------------------------------------------


class KnownNames(list[str]):
    """Machine names (or targets) a resolver knows, and where its tables came from, for errors."""

    def __init__(self, names: Iterable[str], tables_from: str) -> None:
        super().__init__(names)
        #: Which file the machine tables were read from, or where none was found (a phrase).
        self.tables_from = tables_from


class MachineResolver:
    """Resolves machine names; see the module docstring for the precedence.

    ``searched_from`` is where :func:`find_machine_file` looked upward from (errors say
    so when it found no file).
    """

    def __init__(
        self,
        tables: Mapping[str, Mapping[str, Any]],
        pyproject_path: Path | None,
        docker_config_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        *,
        searched_from: Path | None = None,
    ) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.tables: dict[str, Mapping[str, Any]] = dict(tables)
        self.pyproject_path = pyproject_path
        self.searched_from = searched_from
        if docker_config_dir is None:
            configured = self.environ.get("DOCKER_CONFIG", "")
            docker_config_dir = Path(configured or "~/.docker").expanduser()
        self.docker_config_dir = docker_config_dir

    def resolve(self, name: str) -> Machine:
        """The machine called ``name``: config table, then Docker context, then environment."""
        if name in self.tables:
            where = str(self.pyproject_path) if self.pyproject_path is not None else "pyproject.toml"
            base_dir = self.pyproject_path.parent if self.pyproject_path is not None else Path.cwd()
            table = self.tables[name]
            if not isinstance(table, Mapping):
                raise ConfigError(
                    f"{where} [tool.lrun.machines] {name}", f"expected a table, {_found(table)}"
                )
            return _machine_from_table(name, table, where, base_dir.absolute())
        if not name.isprintable() or not _utf8(name):
            # No table can name it (TOML is UTF-8), and Docker context names are UTF-8 too.
            raise UnknownMachine(printable(name), self.known(), self.tables_from)
        if name != "default":
            machine = self._from_context(name)
            if machine is not None:
                return machine
        if name in ENVIRONMENT_NAMES:
            return self._from_environment(name)
        raise UnknownMachine(name, self.known(), self.tables_from)

    def resolve_all(self, target: str) -> list[Machine]:
        """The machines ``target`` names: ``tag:NAME`` gives every table tagged NAME (in table
        order), any other name the one machine :meth:`resolve` gives.

        :raises UnknownMachine: no table carries the tag (the known tags are listed)
        """
        if not target.startswith(TAG_PREFIX):
            return [self.resolve(target)]
        tag = target[len(TAG_PREFIX) :]
        machines = [self.resolve(name) for name in self.tables]
        tagged = [machine for machine in machines if tag in machine.tags]
        if not tagged:
            raise UnknownMachine(
                printable(target),
                [t for t in self.targets() if t.startswith(TAG_PREFIX)],
                self.tables_from,
            )
        return tagged

    @property
    def tables_from(self) -> str:
        """Which file the machine tables came from, or where none was found: for every unknown-machine
        error, since a table missing from the file that was read is the usual cause."""
        if self.pyproject_path is not None:
            return f"machine tables read from {self.pyproject_path}"
        where = f" from {self.searched_from} upward" if self.searched_from is not None else ""
        return (
            f"no {PYPROJECT} with machine tables found{where}; "
            "name the file with --lrun-config or LRUN_CONFIG (lrun: --project)"
        )

    def known(self) -> KnownNames:
        """Every machine name :meth:`resolve` accepts: config tables, Docker contexts and ``local``.

        A context whose metadata cannot be read is left out here (resolving it reports why).
        """
        names = set(self.tables) | set(self._context_names()) | {"local"}
        return KnownNames(sorted(names), self.tables_from)

    def targets(self) -> KnownNames:
        """What a run may name (:meth:`resolve_all`): :meth:`known` and ``tag:NAME`` of the tables' tags."""
        names = set(self.known())
        for table in self.tables.values():  # unchecked here: resolving a table reports its problems
            tags = table.get("tags") if isinstance(table, Mapping) else None
            if isinstance(tags, list):
                names.update(f"{TAG_PREFIX}{tag}" for tag in tags if isinstance(tag, str))
        return KnownNames(sorted(names), self.tables_from)

    # --- contexts ---

    def _context_names(self) -> list[str]:
        meta_root = self.docker_config_dir / "contexts" / "meta"
        try:
            entries = sorted(meta_root.iterdir())
        except OSError:
            return []
        names: list[str] = []
        for entry in entries:
            try:
                data = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("Name"), str) and data["Name"]:
                names.append(data["Name"])
        return names

    def _from_context(self, name: str) -> Machine | None:
        meta_path = context_meta_path(self.docker_config_dir, name)
        try:
            text = meta_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(
                str(meta_path), f"cannot read Docker context {name!r}: {e.strerror or e}"
            ) from e
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(
                str(meta_path), f"Docker context {name!r} metadata is not valid JSON: {e}"
            ) from e
        endpoints = data.get("Endpoints") if isinstance(data, dict) else None
        endpoint = endpoints.get("docker") if isinstance(endpoints, dict) else None
        host = endpoint.get("Host") if isinstance(endpoint, dict) else None
        if not isinstance(host, str) or not host:
            raise ConfigError(
                str(meta_path), f"Docker context {name!r} has no docker endpoint (Endpoints.docker.Host)"
            )
        problem = _host_problem(host)
        if problem is not None:
            raise ConfigError(str(meta_path), f"Docker context {name!r}: {problem}")
        skip_verify = isinstance(endpoint, dict) and endpoint.get("SkipTLSVerify") is True

        tls: TLSConfig | None = None
        if urlsplit(host).scheme.lower() == "tcp":
            tls_dir = context_tls_dir(self.docker_config_dir, name)
            ca_cert = _existing(tls_dir / "ca.pem")
            client_cert = _existing(tls_dir / "cert.pem")
            client_key = _existing(tls_dir / "key.pem")
            # As the Docker CLI does: TLS when the context has TLS files or skips verification.
            if ca_cert or client_cert or client_key or skip_verify:
                tls = TLSConfig(ca_cert, client_cert, client_key, verify=not skip_verify)
        return Machine(name=name, host=host, source="context", tls=tls)

    # --- environment ---

    def _from_environment(self, name: str) -> Machine:
        host = self.environ.get("DOCKER_HOST", "") or DEFAULT_DOCKER_HOST
        problem = _host_problem(host)
        if problem is not None:
            raise ConfigError("environment DOCKER_HOST", problem)
        verify = self.environ.get("DOCKER_TLS_VERIFY", "") != ""
        enable = self.environ.get("DOCKER_TLS", "") != ""
        cert_path = self.environ.get("DOCKER_CERT_PATH", "")
        tls: TLSConfig | None = None
        if urlsplit(host).scheme.lower() == "tcp" and (verify or enable or cert_path):
            if cert_path:
                cert_dir = Path(cert_path).expanduser().absolute()
                if not cert_dir.is_dir():
                    raise ConfigError(
                        "environment DOCKER_CERT_PATH",
                        f"expected a directory holding ca.pem, cert.pem and key.pem, found {cert_path!r}",
                    )
            else:
                cert_dir = self.docker_config_dir
            tls = TLSConfig(
                ca_cert=_existing(cert_dir / "ca.pem"),
                client_cert=_existing(cert_dir / "cert.pem"),
                client_key=_existing(cert_dir / "key.pem"),
                verify=verify,
            )
        return Machine(name=name, host=host, source="environment", tls=tls)


#: Where a run's image comes from: an image reference, or a build of one.
ImageSource: TypeAlias = str | Build


def resolve_image(
    machine: Machine, *, entry_image: ImageSource | None, option_image: ImageSource | None
) -> ImageSource:
    """A run's image or build: the plan entry's, else the option's, else the machine table's."""
    image = entry_image or option_image or machine.image or machine.build
    if not image:
        raise ImageNotSet(machine.name)
    return image
