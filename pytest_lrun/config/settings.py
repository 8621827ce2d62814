"""Every pytest-lrun setting, and the one function that resolves them.

Each :class:`Option` is declared once here and becomes a ``--lrun-*`` flag, an
ini key (``[tool.pytest.ini_options]``, pytest.ini, ...) and an ``LRUN_*``
environment variable, all sharing one help text. :func:`resolve` applies the
documented precedence, lowest first::

    built-in default < ini key < LRUN_* environment variable < --lrun-* flag

and returns a frozen :class:`Settings`. Every bad value's error names where it
came from (flag, ini key or variable). The parsers of the values are :mod:`.values`'.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_lrun.config.shards import ShardOf, parse_shard_of
from pytest_lrun.config.values import (
    MIB,
    parse_attempts,
    parse_bool,
    parse_choice,
    parse_command,
    parse_env_names,
    parse_list,
    parse_positive_seconds,
    parse_retries,
    parse_seconds,
    parse_shard_count,
    parse_size,
    parse_store_url,
    redact_url,
)
from pytest_lrun.core.errors import ConfigError

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
# Every default the package uses is declared once, here; the option table below and the
# modules that need one (engine, dispatch, cli) name these constants.
DEFAULT_TIMEOUT = 3600.0  # a run's limit when neither the option nor its machine sets one
DEFAULT_CONNECT_TIMEOUT = 10.0
# The database store's bounded waits (--lrun-store-*): a frozen or vanished server costs seconds.
DEFAULT_STORE_STATEMENT_TIMEOUT = 60.0
DEFAULT_STORE_LOCK_TIMEOUT = 30.0
DEFAULT_STORE_IDLE_TIMEOUT = 60.0
DEFAULT_STORE_KEEPALIVE = 10.0
DEFAULT_STOP_GRACE = 10.0
DEFAULT_LOG_MAX_BYTES = 16 * MIB
DEFAULT_STATE_MAX_BYTES = 50 * MIB
DEFAULT_REAP_AGE = 300.0
DEFAULT_IMAGE_MAX_AGE = 7 * 86400.0
DEFAULT_TERMINAL_RESERVE_BYTES = MIB
DEFAULT_INFRA_RETRIES = 1
DEFAULT_FLAKY_ATTEMPTS = 1
#: ``--lrun-reuse``'s values, from never serving a stored result to serving it even for a key whose
#: runs disagreed on a test (one knob, as Bazel's ``--cache_test_results=no|auto|yes``).
REUSE_NEVER, REUSE_COMPLETED, REUSE_EVEN_FLAKY = "never", "completed", "completed-even-flaky"
DEFAULT_STORE_MAX_BYTES = 1024 * MIB


@dataclass(frozen=True)
class StoreWaits:
    """How long the database store waits for its server (the ``store_*`` options; 0: no limit)."""

    statement_timeout: float = DEFAULT_STORE_STATEMENT_TIMEOUT
    lock_timeout: float = DEFAULT_STORE_LOCK_TIMEOUT
    idle_timeout: float = DEFAULT_STORE_IDLE_TIMEOUT
    keepalive: float = DEFAULT_STORE_KEEPALIVE


@dataclass(frozen=True)
class Option:
    """One setting: its flag, ini key and env var share the name and the help text."""

    name: str
    help: str
    parse: Callable[[str], Any] = str
    default: Any = None
    flag_kind: str = "value"  # "value", "flag" (store_true) or "append"
    metavar: str | None = None
    shown: Callable[[str], str] = repr  # how a bad value appears in its error (never a password)

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
        "config",
        "the TOML file with the [tool.lrun.machines.*] tables (or a folder holding it as pyproject.toml), "
        "relative to the current directory (default: the nearest pyproject.toml from the current "
        "directory upward, as `lrun` finds it; never the rootdir a suite's own setup.cfg or tox.ini "
        "makes).",
        Path,
        metavar="FILE",
    ),
    Option(
        "image",
        "image the runs use, unless the plan entry names one (default: the machine's image).",
        metavar="IMAGE",
    ),
    Option(
        "build",
        "build the runs' image from this context folder (its Dockerfile) on each machine before its "
        "first run there, instead of --lrun-image; relative to the current directory "
        "(default: the machine's image or build).",
        Path,
        metavar="DIR",
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
        f"timeout (default: the machine's, else {DEFAULT_TIMEOUT:g}).",
        parse_positive_seconds,
        metavar="SECONDS",
    ),
    Option(
        "stop_grace",
        "seconds a stopped run (timeout, Ctrl-C, `lrun cancel`) gets after SIGINT to report its "
        f"current test before SIGKILL (default: {DEFAULT_STOP_GRACE:g}; 0: SIGKILL at once).",
        parse_seconds,
        DEFAULT_STOP_GRACE,
        metavar="SECONDS",
    ),
    Option(
        "live",
        "stream each run's output to the terminal as it comes, prefixed by machine and dir.",
        parse_bool,
        False,
        "flag",
    ),
    Option(
        "keep",
        "keep containers instead of removing them: never, failed (runs that did not "
        "complete) or always (default: never).",
        parse_choice("never", "failed", "always"),
        "never",
        metavar="WHEN",
    ),
    Option(
        "reuse",
        "`completed` returns the stored result of the newest completed run with the same "
        "key (dir hash, image, command, env) without running anything, unless runs of that key "
        "disagreed on a test (flaky); `completed-even-flaky` returns it then too (default: never).",
        parse_choice(REUSE_NEVER, REUSE_COMPLETED, REUSE_EVEN_FLAKY),
        REUSE_NEVER,
        metavar="WHEN",
    ),
    Option(
        "select",
        "where -k, -m and node ids below a dispatched directory select inner tests: "
        "`container` forwards them into the inner pytest (only the selected tests run; the "
        "selection is part of the run key), `host` runs every inner test and selects among "
        "the reports (default: container).",
        parse_choice("container", "host"),
        "container",
        metavar="WHERE",
    ),
    Option(
        "shards",
        "split each dispatched directory into N runs, balanced by the inner tests' recorded "
        "durations (round-robin without history); `auto`: the free slots of its machines "
        "(default: 1).",
        parse_shard_count,
        1,
        metavar="N",
    ),
    Option(
        "shard",
        "run only shard K of N of each directory (CI matrix jobs; a test's shard follows "
        "from its node id, so every job computes the same split).",
        parse_shard_of,
        None,
        metavar="K/N",
    ),
    Option(
        "infra_retries",
        "times a run is tried again after an infrastructure failure (the engine unreachable, the "
        "container gone or OOM-killed before any inner test, an image pull that failed); a test "
        f"that failed is never retried (default: {DEFAULT_INFRA_RETRIES}).",
        parse_retries,
        DEFAULT_INFRA_RETRIES,
        metavar="N",
    ),
    Option(
        "flaky_attempts",
        "attempts in all for an inner test that fails: after a run, only its failed tests run again, "
        "as a new run on the same machine or tag; one that then passes is reported passed and "
        f"flaky (default: {DEFAULT_FLAKY_ATTEMPTS}, no rerun).",
        parse_attempts,
        DEFAULT_FLAKY_ATTEMPTS,
        metavar="N",
    ),
    Option(
        "quarantine",
        "inner tests whose failures do not fail the session: 'store' (the store's list, kept with "
        "lrun flaky quarantine/release) or a file of node ids, one a line; they run as usual and a "
        "failure is reported as xfail (default: none).",
        str,
        metavar="store|FILE",
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
        "state_dir",
        "where this host keeps run logs, artifacts and hash caches, and, with the file store, the "
        "run records (default: ~/.lrun).",
        Path,
        metavar="DIR",
    ),
    Option(
        "store",
        "where run and batch records live: unset for the file store in the state dir, or a "
        "postgresql:// URL (libpq syntax) for one store shared by every CI runner that reaches it.",
        parse_store_url,
        metavar="URL",
        shown=lambda raw: repr(redact_url(raw)),
    ),
    Option(
        "store_statement_timeout",
        "seconds a statement of the database store may run (the server's statement_timeout); "
        "with 5 s more, the longest the client waits for any answer before it closes the connection "
        "with store_unreachable (a frozen server, a lost network); 0: no limit "
        f"(default: {DEFAULT_STORE_STATEMENT_TIMEOUT:g}).",
        parse_seconds,
        DEFAULT_STORE_STATEMENT_TIMEOUT,
        metavar="SECONDS",
    ),
    Option(
        "store_lock_timeout",
        "seconds a statement of the database store waits for a machine's or a batch's lock "
        f"(the server's lock_timeout) before store_locked (default: {DEFAULT_STORE_LOCK_TIMEOUT:g}).",
        parse_positive_seconds,
        DEFAULT_STORE_LOCK_TIMEOUT,
        metavar="SECONDS",
    ),
    Option(
        "store_idle_timeout",
        "seconds the database ends a session of the store that sits idle inside a transaction "
        "(the server's idle_in_transaction_session_timeout), so a frozen client never holds a lock; "
        f"0: no limit (default: {DEFAULT_STORE_IDLE_TIMEOUT:g}).",
        parse_seconds,
        DEFAULT_STORE_IDLE_TIMEOUT,
        metavar="SECONDS",
    ),
    Option(
        "store_keepalive",
        "seconds of silence before a connection of the database store sends a TCP keepalive probe, "
        "and between probes; 3 unanswered probes (or data unacknowledged for 4 times as long) drop the "
        f"connection, so a vanished server host is found (default: {DEFAULT_STORE_KEEPALIVE:g}).",
        parse_positive_seconds,
        DEFAULT_STORE_KEEPALIVE,
        metavar="SECONDS",
    ),
    Option(
        "secret_env",
        "pass this host environment variable into the runs as a secret: the container gets its value, "
        "the state dir, logs, reports and --json output show *** instead, and only its name is part of "
        "the run key (repeatable; comma separated in ini and env).",
        parse_env_names,
        (),
        "append",
        metavar="NAME",
    ),
    Option(
        "artifacts",
        "container paths copied out after each run, comma separated (default: /lrun/artifacts).",
        parse_list,
        DEFAULT_ARTIFACTS,
        metavar="PATHS",
    ),
    Option(
        "report_dir",
        "folder each run's log and artifacts are published to, and that every report attachment "
        "and link points to (default: lrun-report/ beside --junitxml or --html when one is given; "
        "otherwise reports point to the state dir).",
        Path,
        metavar="DIR",
    ),
    Option(
        "connect_timeout",
        f"seconds to wait for a machine's engine to answer (default: {DEFAULT_CONNECT_TIMEOUT:g}).",
        parse_positive_seconds,
        DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
    ),
    Option(
        "log_max_bytes",
        "cap of each run's log spool; the oldest output is dropped first "
        f"(default: {DEFAULT_LOG_MAX_BYTES // MIB}MiB).",
        parse_size,
        DEFAULT_LOG_MAX_BYTES,
        metavar="SIZE",
    ),
    Option(
        "terminal_reserve_bytes",
        "room each live run keeps on the state dir's file system for its final record; a new run "
        "is refused with state_full when there is less free "
        f"(default: {DEFAULT_TERMINAL_RESERVE_BYTES // MIB}MiB).",
        parse_size,
        DEFAULT_TERMINAL_RESERVE_BYTES,
        metavar="SIZE",
    ),
    Option(
        "state_max_bytes",
        "cap of the state dir; terminal runs are deleted oldest first, never a live one "
        f"(default: {DEFAULT_STATE_MAX_BYTES // MIB}MiB).",
        parse_size,
        DEFAULT_STATE_MAX_BYTES,
        metavar="SIZE",
    ),
    Option(
        "store_max_bytes",
        "cap of the results a shared store keeps for other runners; terminal runs are deleted "
        f"oldest first, never a live one (default: {DEFAULT_STORE_MAX_BYTES // MIB}MiB).",
        parse_size,
        DEFAULT_STORE_MAX_BYTES,
        metavar="SIZE",
    ),
    Option(
        "reap_age",
        "seconds after which `lrun reap` removes labelled containers of terminal or "
        f"unknown runs (default: {DEFAULT_REAP_AGE:g}).",
        parse_seconds,
        DEFAULT_REAP_AGE,
        metavar="SECONDS",
    ),
    Option(
        "image_max_age",
        "seconds after which `lrun gc --images` removes an image pytest-lrun built that no run "
        f"has used since (default: {DEFAULT_IMAGE_MAX_AGE:g}, a week).",
        parse_seconds,
        DEFAULT_IMAGE_MAX_AGE,
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
    """The resolved settings of one invocation (see the module docstring for precedence).

    One field per :class:`Option`, without defaults of its own: :func:`resolve` fills
    every field, the defaults come from :data:`OPTIONS` only.
    """

    machine: str | None
    config: Path | None
    image: str | None
    build: Path | None
    command: tuple[str, ...] | None
    timeout: float | None
    stop_grace: float
    live: bool
    keep: str
    reuse: str
    select: str
    shards: int  # 0: auto
    shard: ShardOf | None
    infra_retries: int
    flaky_attempts: int
    quarantine: str | None
    busy_wait: float
    state_dir: Path | None
    store: str | None
    store_statement_timeout: float
    store_lock_timeout: float
    store_idle_timeout: float
    store_keepalive: float
    secret_env: tuple[str, ...]
    artifacts: tuple[str, ...]
    report_dir: Path | None
    connect_timeout: float
    log_max_bytes: int
    terminal_reserve_bytes: int
    state_max_bytes: int
    store_max_bytes: int
    reap_age: float
    image_max_age: float
    plan: Path | None
    plan_entry: tuple[str, ...]
    batch_id: str | None
    detach: bool
    attach: str | None

    @property
    def enabled(self) -> bool:
        """Whether this invocation dispatches anything at all."""
        return bool(self.machine or self.plan or self.attach)

    @property
    def store_waits(self) -> StoreWaits:
        """The database store's bounded waits, from the ``store_*`` options (for ``open_store``)."""
        return StoreWaits(
            statement_timeout=self.store_statement_timeout,
            lock_timeout=self.store_lock_timeout,
            idle_timeout=self.store_idle_timeout,
            keepalive=self.store_keepalive,
        )

    def resolved_state_dir(self) -> Path:
        # Imported here: the plugin imports this module into every pytest run, and the layout
        # module brings xxhash with it.
        from pytest_lrun.core.layout import HOME_STATE_DIR

        return self.state_dir if self.state_dir is not None else Path.home() / HOME_STATE_DIR


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
        if flag_value is not None and flag_value is not False and flag_value != []:  # 0 is a value
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
        raise ConfigError(source, f"invalid value {option.shown(raw)}: {e}") from e


def _check_combinations(settings: Settings) -> None:
    if settings.image and settings.build:
        raise ConfigError("--lrun-image/--lrun-build", "give an image or a build, not both")
    if settings.detach and settings.attach:
        raise ConfigError("--lrun-detach/--lrun-attach", "detach and attach cannot be combined")
    if settings.plan_entry and not settings.plan:
        raise ConfigError("--lrun-plan-entry", "selects entries of a plan; give --lrun-plan too")
    if settings.shard is not None and settings.shards != 1:
        raise ConfigError("--lrun-shard/--lrun-shards", "a matrix job runs one shard K/N: give one of them")
    if settings.plan and (settings.shard is not None or settings.shards != 1):
        # Refused, not ignored: a CI job that sets LRUN_SHARDS for every step would otherwise
        # believe its plan sharded.
        raise ConfigError(
            "--lrun-plan/--lrun-shards",
            "plan entries run whole; shard directory arguments, or split an entry with its command",
        )


def flag_type(option: Option) -> Callable[[str], Any]:
    """An argparse ``type=`` whose error says what was wrong (pytest shows it as a usage error)."""

    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"invalid value {option.shown(text)}: {e}") from e

    return parse
