"""The ``lrun`` argument parser: the global options, and one subparser per command with its handler.

:func:`build_parser` makes the tree; each ``_add_*`` function below adds one command
(its options and its handler from :mod:`pytest_lrun.cli.commands`). The global options
(``--state-dir``, ``--store``, ``--project``, ``--connect-timeout``) go before or after
the command; their values are parsed as the settings parse them
(:func:`~pytest_lrun.config.settings.flag_type`), so ``lrun`` and the plugin accept the
same spellings.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_lrun import __version__
from pytest_lrun.cli.commands import (
    EXIT_BATCH_FAILED,
    EXIT_BATCH_INCOMPLETE,
    EXIT_BATCH_UNFINISHED,
    SHOWN_NODEIDS,
    cmd_batch,
    cmd_cancel,
    cmd_gc,
    cmd_images,
    cmd_logs,
    cmd_machines,
    cmd_reap,
    cmd_runs,
    cmd_show,
)
from pytest_lrun.cli.context import Context
from pytest_lrun.cli.flaky import cmd_flaky
from pytest_lrun.cli.worker import cmd_worker
from pytest_lrun.config.settings import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IMAGE_MAX_AGE,
    DEFAULT_REAP_AGE,
    DEFAULT_STATE_MAX_BYTES,
    OPTIONS,
    flag_type,
)
from pytest_lrun.config.values import MIB
from pytest_lrun.store import Status

__all__ = ["build_parser"]

_OPTION = {option.name: option for option in OPTIONS}


def build_parser() -> argparse.ArgumentParser:
    """The whole ``lrun`` parser; a command's namespace carries its handler as ``func``."""
    parser = argparse.ArgumentParser(
        prog="lrun",
        description="Look at, follow, cancel and clean up pytest-lrun runs.",
        epilog="exit status: 0 ok, 1 error, 2 bad input, 3 not found, 4 busy, 5 engine error; "
        f"lrun batch: {EXIT_BATCH_FAILED} the batch failed, {EXIT_BATCH_INCOMPLETE} incomplete, "
        f"{EXIT_BATCH_UNFINISHED} pending or running",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, suppress=False)
    commands = _Commands(parser)
    for add in _ADDERS:  # in this order in the help
        add(commands)
    return parser


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--state-dir",
        type=flag_type(_OPTION["state_dir"]),
        default=default,
        metavar="DIR",
        help="the state directory (default: $LRUN_STATE_DIR, else ~/.lrun)",
    )
    parser.add_argument(
        "--store",
        type=flag_type(_OPTION["store"]),
        default=default,
        metavar="URL",
        help="a postgresql:// store shared by CI runners (default: $LRUN_STORE, else the file store "
        "in the state dir)",
    )
    parser.add_argument(
        "--project",
        type=Path,
        default=default,
        metavar="DIR",
        help="the file with [tool.lrun.machines.*], or the directory of its pyproject.toml "
        "(default: $LRUN_CONFIG, else the nearest pyproject.toml upward)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=flag_type(_OPTION["connect_timeout"]),
        default=default,
        metavar="SECONDS",
        help=f"seconds to wait for an engine to answer (default: $LRUN_CONNECT_TIMEOUT, "
        f"else {DEFAULT_CONNECT_TIMEOUT:g})",
    )


class _Commands:
    """The subparsers of ``lrun``: each takes the global options again (after the command), and
    ``--json`` unless it prints raw output."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.common = argparse.ArgumentParser(add_help=False)
        _global_options(self.common, suppress=True)
        self.with_json = argparse.ArgumentParser(add_help=False, parents=[self.common])
        self.with_json.add_argument(
            "--json", action="store_true", help="print JSON (the documented contract)"
        )
        self.subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        self,
        name: str,
        func: Callable[[Context], int],
        help: str,
        *,
        json_flag: bool = True,
        reads_only: bool = False,
    ) -> argparse.ArgumentParser:
        """Command ``name``, handled by ``func``; ``reads_only``: it never makes a state dir."""
        sub = self.subparsers.add_parser(
            name, help=help, description=help, parents=[self.with_json if json_flag else self.common]
        )
        sub.set_defaults(func=func, reads_only=reads_only)
        return sub


def _add_runs(commands: _Commands) -> None:
    runs = commands.add("runs", cmd_runs, "list stored runs, oldest first", reads_only=True)
    runs.add_argument("--machine", metavar="M", help="only runs on this machine")
    runs.add_argument("--status", choices=[s.value for s in Status], help="only runs with this status")
    runs.add_argument("--batch", metavar="B", help="only runs of this batch")


def _add_show(commands: _Commands) -> None:
    show = commands.add("show", cmd_show, "show one run's record", reads_only=True)
    show.add_argument("id", metavar="ID")
    show.add_argument(
        "--full",
        action="store_true",
        help=f"the whole command (a shard's node ids past the first {SHOWN_NODEIDS} are counted otherwise)",
    )


def _add_logs(commands: _Commands) -> None:
    logs = commands.add("logs", cmd_logs, "print a run's log", json_flag=False, reads_only=True)
    logs.add_argument("id", metavar="ID")
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing new output until the run ends (watching the run if no process does)",
    )


def _add_cancel(commands: _Commands) -> None:
    cancel = commands.add("cancel", cmd_cancel, "kill a live run's container and mark the run interrupted")
    cancel.add_argument("id", metavar="ID")


def _add_batch(commands: _Commands) -> None:
    batch = commands.add(
        "batch",
        cmd_batch,
        "show a batch: its status, one row per entry with its inner-test counts, and their totals; "
        f"exits 0 when it completed, {EXIT_BATCH_FAILED} when it failed, {EXIT_BATCH_INCOMPLETE} while "
        f"incomplete, {EXIT_BATCH_UNFINISHED} while pending or running",
        reads_only=True,
    )
    batch.add_argument("id", metavar="ID")


def _add_machines(commands: _Commands) -> None:
    commands.add(
        "machines",
        cmd_machines,
        "list known machines, whether their engines answer, their active run",
        reads_only=True,
    )


def _add_images(commands: _Commands) -> None:
    images = commands.add(
        "images", cmd_images, "list the images pytest-lrun built, per machine, with their last use"
    )
    images.add_argument("--machine", metavar="M", help="only this machine (default: every known machine)")


def _add_gc(commands: _Commands) -> None:
    gc = commands.add(
        "gc", cmd_gc, "settle runs nobody watches, then delete old terminal runs over the size cap"
    )
    gc.add_argument(
        "--max-bytes",
        type=flag_type(_OPTION["state_max_bytes"]),
        metavar="SIZE",
        help="size cap of the state dir "
        f"(default: $LRUN_STATE_MAX_BYTES, else {DEFAULT_STATE_MAX_BYTES // MIB}MiB)",
    )
    gc.add_argument(
        "--images",
        action="store_true",
        help="also remove the images pytest-lrun built that no run has used for --image-max-age",
    )
    gc.add_argument(
        "--image-max-age",
        type=flag_type(_OPTION["image_max_age"]),
        metavar="SECONDS",
        help=f"with --images (default: $LRUN_IMAGE_MAX_AGE, else {DEFAULT_IMAGE_MAX_AGE:g})",
    )


def _add_reap(commands: _Commands) -> None:
    reap = commands.add("reap", cmd_reap, "remove old labelled containers of terminal or unknown runs")
    reap.add_argument(
        "--age",
        type=flag_type(_OPTION["reap_age"]),
        metavar="SECONDS",
        help=f"minimum container age (default: $LRUN_REAP_AGE, else {DEFAULT_REAP_AGE:g})",
    )
    reap.add_argument("--machine", metavar="M", help="only this machine (default: every known machine)")


def _add_worker(commands: _Commands) -> None:
    worker = commands.add(
        "worker",
        cmd_worker,
        "run a Remote Execution API service's actions in containers on a Docker machine (a bot)",
        json_flag=False,
    )
    worker.add_argument(
        "--remote",
        required=True,
        metavar="NAME|URL",
        help="the service: a remote machine, or grpc://HOST:PORT",
    )
    worker.add_argument("--instance", metavar="NAME", help="the service's instance, with a --remote URL")
    worker.add_argument(
        "--logstream",
        metavar="URL",
        help="where the actions' live output streams are written, with a --remote URL (default: the service)",
    )
    worker.add_argument(
        "--machine", required=True, metavar="M", help="the Docker machine that runs the actions"
    )
    worker.add_argument(
        "--slots", type=int, metavar="N", help="actions at once (default: the machine's slots)"
    )
    worker.add_argument(
        "--property",
        action="append",
        metavar="KEY=VALUE",
        help="a device property the service matches actions against (repeatable)",
    )
    worker.add_argument("--bot-id", metavar="ID", help="the bot's id (default: lrun- and a random suffix)")


def _add_flaky(commands: _Commands) -> None:
    flaky = commands.add(
        "flaky",
        cmd_flaky,
        "list inner tests whose outcome differed between runs of one key, and the quarantine list; "
        "or put a test on that list (quarantine) or take it off (release)",
        reads_only=True,
    )
    flaky.add_argument(
        "action", nargs="?", choices=["quarantine", "release"], help="edit the quarantine list"
    )
    flaky.add_argument("nodeid", nargs="?", metavar="NODEID", help="the test, as the terminal names it")


_ADDERS: tuple[Callable[[_Commands], None], ...] = (
    _add_runs,
    _add_show,
    _add_logs,
    _add_cancel,
    _add_batch,
    _add_machines,
    _add_images,
    _add_gc,
    _add_reap,
    _add_worker,
    _add_flaky,
)
