"""Every pytest-lrun setting, and the one function that resolves them.

Each :class:`Option` is declared once here and becomes a ``--lrun-*`` flag, an
ini key (``[tool.pytest.ini_options]``, pytest.ini, ...) and an ``LRUN_*``
environment variable, all sharing one help text. :func:`resolve` applies the
documented precedence, lowest first::

    built-in default < ini key < LRUN_* environment variable < --lrun-* flag

and returns a frozen :class:`Settings`. Every bad value's error names where it
came from (flag, ini key or variable).
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_COMMAND = (
    "python3",
    "-m",
    "pytest",
    "-q",
    "-p",
    "no:cacheprovider",
    "-o",
    "junit_logging=all",
    # xunit1 records each test's file and line: exact nodeids and locations on the host.
    "-o",
    "junit_family=xunit1",
    "--junitxml=/lrun/out/junit.xml",
)
DEFAULT_ARTIFACTS = ("/lrun/artifacts",)
MIB = 1024 * 1024


def parse_seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def parse_size(text: str) -> int:
    """Bytes from ``1048576``, ``512k``, ``16m``/``16MiB`` or ``1g``."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 1024, "m": MIB, "g": 1024 * MIB}
    factor = units.get(raw[-1:], 1)
    number = raw[:-1] if raw[-1:] in units else raw
    value = int(float(number) * factor)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.replace("\n", ",").split(",") if part.strip())


def parse_command(text: str) -> tuple[str, ...]:
    words = tuple(shlex.split(text))
    if not words:
        raise ValueError("the command is empty")
    return words


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


@dataclass(frozen=True)
class Option:
    """One setting: its flag, ini key and env var share the name and the help text."""

    name: str
    help: str
    parse: Callable[[str], Any] = str
    default: Any = None
    flag_kind: str = "value"  # "value", "flag" (store_true) or "append"
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--lrun-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "lrun_" + self.name

    @property
    def env(self) -> str:
        return "LRUN_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option(
        "machine",
        "dispatch the given test directories to this machine (a [tool.lrun.machines] "
        "table, a Docker context, or `local`).",
        metavar="NAME",
    ),
    Option(
        "image",
        "image the runs use, unless the plan entry names one (default: the machine's image).",
        metavar="IMAGE",
    ),
    Option(
        "command",
        f"command run in the container's workdir (shell words; default: `{shlex.join(DEFAULT_COMMAND)}`).",
        parse_command,
        metavar="CMD",
    ),
    Option(
        "timeout",
        "seconds a run may take before its container is killed and the run marked "
        "timeout (default: the machine's, else 3600).",
        parse_seconds,
        metavar="SECONDS",
    ),
    Option(
        "live",
        "stream each run's output to the terminal as it comes (also on with -v).",
        parse_bool,
        False,
        "flag",
    ),
    Option(
        "keep",
        "keep containers instead of removing them: never, failed (runs that did not "
        "complete) or always (default: never).",
        _choice("never", "failed", "always"),
        "never",
        metavar="WHEN",
    ),
    Option(
        "reuse",
        "`completed` returns the stored result of the newest completed run with the same "
        "key (dir hash, image, command, env) without running anything (default: never).",
        _choice("never", "completed"),
        "never",
        metavar="WHEN",
    ),
    Option(
        "busy_wait",
        "seconds to wait for a machine busy with another directory before failing "
        "with machine_busy (default: 0, fail at once).",
        parse_seconds,
        0.0,
        metavar="SECONDS",
    ),
    Option(
        "state_dir", "where run records, logs and artifacts live (default: ~/.lrun).", Path, metavar="DIR"
    ),
    Option(
        "artifacts",
        "container paths copied out after each run, comma separated (default: /lrun/artifacts).",
        parse_list,
        DEFAULT_ARTIFACTS,
        metavar="PATHS",
    ),
    Option(
        "connect_timeout",
        "seconds to wait for a machine's engine to answer (default: 10).",
        parse_seconds,
        10.0,
        metavar="SECONDS",
    ),
    Option(
        "log_max_bytes",
        "cap of each run's log spool; the oldest output is dropped first (default: 16MiB).",
        parse_size,
        16 * MIB,
        metavar="SIZE",
    ),
    Option(
        "state_max_bytes",
        "cap of the state dir; terminal runs are deleted oldest first, never a live one (default: 50MiB).",
        parse_size,
        50 * MIB,
        metavar="SIZE",
    ),
    Option(
        "reap_age",
        "seconds after which `lrun reap` removes labelled containers of terminal or "
        "unknown runs (default: 300).",
        parse_seconds,
        300.0,
        metavar="SECONDS",
    ),
    Option("plan", "a TOML plan file whose entries are dispatched as one batch.", Path, metavar="FILE"),
    Option(
        "plan_entry",
        "run only this plan entry (repeatable; comma separated in ini and env).",
        parse_list,
        (),
        "append",
        metavar="NAME",
    ),
    Option(
        "batch_id",
        "join (or create) the batch with this id, so several CI jobs form one batch.",
        metavar="ID",
    ),
    Option(
        "detach", "start the runs, print their ids and return without waiting.", parse_bool, False, "flag"
    ),
    Option(
        "attach",
        "wait for a run or batch started earlier (e.g. with --lrun-detach) and report it.",
        metavar="ID",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one invocation (see the module docstring for precedence)."""

    machine: str | None = None
    image: str | None = None
    command: tuple[str, ...] | None = None
    timeout: float | None = None
    live: bool = False
    keep: str = "never"
    reuse: str = "never"
    busy_wait: float = 0.0
    state_dir: Path | None = None
    artifacts: tuple[str, ...] = DEFAULT_ARTIFACTS
    connect_timeout: float = 10.0
    log_max_bytes: int = 16 * MIB
    state_max_bytes: int = 50 * MIB
    reap_age: float = 300.0
    plan: Path | None = None
    plan_entry: tuple[str, ...] = ()
    batch_id: str | None = None
    detach: bool = False
    attach: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether this invocation dispatches anything at all."""
        return bool(self.machine or self.plan or self.attach)

    def resolved_state_dir(self) -> Path:
        return self.state_dir if self.state_dir is not None else Path.home() / ".lrun"


def resolve(
    cli: Mapping[str, Any],
    ini: Callable[[str], str | None],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every option: default < ini < env < CLI.

    ``cli`` maps option names to parsed flag values (None when the flag was not
    given); ``ini`` returns the raw text of an ini key or None when unset.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = option.default
        raw_ini = ini(option.ini)
        if raw_ini not in (None, ""):
            value = _parse(option, str(raw_ini), f"ini option {option.ini}")
        raw_env = environ.get(option.env)
        if raw_env not in (None, ""):
            value = _parse(option, str(raw_env), f"environment variable {option.env}")
        flag_value = cli.get(option.name)
        if flag_value not in (None, [], False):
            # A repeated flag gives one parsed list per use ("--x=a,b --x=c"): flatten them.
            value = (
                tuple(v for used in flag_value for v in used) if isinstance(flag_value, list) else flag_value
            )
        values[option.name] = value
    settings = Settings(**values)
    _check_combinations(settings)
    return settings


def _parse(option: Option, raw: str, source: str) -> Any:
    try:
        return option.parse(raw)
    except ValueError as e:
        raise ConfigError(source, f"invalid value {raw!r}: {e}") from e


def _check_combinations(settings: Settings) -> None:
    if settings.detach and settings.attach:
        raise ConfigError("--lrun-detach/--lrun-attach", "detach and attach cannot be combined")
    if settings.plan_entry and not settings.plan:
        raise ConfigError("--lrun-plan-entry", "selects entries of a plan; give --lrun-plan too")


def flag_type(option: Option) -> Callable[[str], Any]:
    """An argparse ``type=`` whose error says what was wrong (pytest shows it as a usage error)."""

    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {e}") from e

    return parse
