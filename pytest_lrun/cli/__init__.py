"""The ``lrun`` command line (also ``python -m pytest_lrun``): look at, follow, cancel and clean up runs.

This module owns argument parsing, output formats and exit statuses; the work is
done by the store (:mod:`pytest_lrun.store`), recovery
(:mod:`pytest_lrun.run.recovery`), batch (:mod:`pytest_lrun.cli.batch`) and follow
(:mod:`pytest_lrun.cli.follow`) modules; text is shown by :mod:`pytest_lrun.cli.output`.

Commands::

    lrun runs [--machine M] [--status S] [--batch B] [--json]
    lrun show ID [--full] [--json]
    lrun logs ID [--follow]
    lrun cancel ID [--json]
    lrun batch ID [--json]
    lrun machines [--json]
    lrun images [--machine M] [--json]
    lrun gc [--max-bytes SIZE] [--images [--image-max-age SECONDS]] [--json]
    lrun reap [--age SECONDS] [--machine M] [--json]

Global options (before or after the command): ``--state-dir`` (default
``$LRUN_STATE_DIR``, else ``~/.lrun``), ``--store URL`` (default ``$LRUN_STORE``,
else the file store in the state dir), ``--project DIR`` (where the
``pyproject.toml`` with ``[tool.lrun.machines.*]`` is, or the file itself; default:
``$LRUN_CONFIG``, else the nearest one upward from the current directory, found by
:func:`~pytest_lrun.config.machines.find_machine_file` as the plugin finds it) and
``--connect-timeout`` (default
``$LRUN_CONNECT_TIMEOUT``, else :data:`~pytest_lrun.config.settings.DEFAULT_CONNECT_TIMEOUT`).

Output contract: with ``--json`` stdout holds one JSON object, an envelope
whose ``schema_version`` (:data:`JSON_SCHEMA_VERSION`, now 1) changes only when
a shape changes incompatibly; the golden files under ``tests/golden/`` pin every
shape. The other members, per command::

    runs       {"schema_version": 1, "runs": [RUN, ...]}
    show       {"schema_version": 1, "run": RUN}
    cancel     {"schema_version": 1, "run": RUN}            (the record after cancelling)
    batch      {"schema_version": 1, "batch": BATCH, "rows": [ROW, ...],
                "totals": {"passed", "failed", "skipped"}}
    machines   {"schema_version": 1, "machines": [{"name", "url", "source", "reachable", "error",
                                                  "tags", "slots", "in_use", "free", "runs",
                                                  "active_run_id"}, ...]}
    images     {"schema_version": 1, "images": [IMAGE, ...], "skipped": [{"machine", "error"}, ...]}
    gc         {"schema_version": 1, "reconcile": {...}, "gc": {...}}
               with --images also "images": {"max_age", "removed": [IMAGE, ...], "in_use": [IMAGE, ...],
                                             "skipped": [{"machine", "error"}, ...]}
    reap       {"schema_version": 1, "removed": [...], "skipped": [{"machine", "error"}, ...]}
    any error  {"schema_version": 1, "error": {"code": ..., "message": ..., ...}}

An IMAGE is an image pytest-lrun built (a :class:`~pytest_lrun.run.images.BuiltImage`):
``machine``, ``tag``, ``digest``, ``image_id``, ``size`` (bytes), ``created``, ``context``
and ``last_used`` (the newest run's creation; ``null`` when no run used it).
RUN and BATCH are exactly the stored records (:meth:`Run.to_dict
<pytest_lrun.store.records.Run.to_dict>`, :meth:`Batch.to_dict <pytest_lrun.store.records.Batch.to_dict>`);
a ROW is :func:`pytest_lrun.cli.batch.rows`' dict (``run_id`` ``null`` for an entry
no job has started). Times are RFC 3339 UTC strings to the millisecond
(``"2026-11-25T14:30:12.415Z"``); durations and ages are numbers of seconds.
Strings that are not valid Unicode (file names that are not UTF-8) are
``\\udcXX`` escapes in JSON and backslash escapes in text output.

Without ``--json`` an error is one line ``lrun: error: <message>`` on stderr.
Warnings (a corrupt record moved aside, say) are ``lrun: warning: <message>``
lines on stderr, printed once at the end whatever the output format.
Exit statuses: 0 success, 1 other errors, 2 bad input (and usage errors), 3 not
found, 4 busy, 5 engine errors (:mod:`pytest_lrun.core.errors`), 130 Ctrl-C. ``lrun
batch`` follows the batch it shows (with ``--json`` too): 0 completed,
:data:`EXIT_BATCH_FAILED` failed (or timeout, interrupted),
:data:`EXIT_BATCH_INCOMPLETE` incomplete, :data:`EXIT_BATCH_UNFINISHED` pending or running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_lrun import __version__
from pytest_lrun.cli.follow import Tail, follow
from pytest_lrun.cli.output import age, binary_stdout, say, shown_dir, when
from pytest_lrun.config.settings import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IMAGE_MAX_AGE,
    DEFAULT_REAP_AGE,
    DEFAULT_STATE_MAX_BYTES,
    OPTIONS,
    Settings,
    flag_type,
    resolve,
)
from pytest_lrun.config.values import MIB
from pytest_lrun.core.errors import EXIT_ERROR, LogNotFound, LrunError
from pytest_lrun.core.text import format_table, one_line
from pytest_lrun.core.times import rfc3339
from pytest_lrun.store import BatchStatus, Run, RunStore, Status, open_store

if TYPE_CHECKING:
    from pytest_lrun.config.machines import Machine, MachineResolver
    from pytest_lrun.engine import Engine
    from pytest_lrun.engine.pool import EnginePool
    from pytest_lrun.run.dispatch import Dispatcher
    from pytest_lrun.run.images import BuiltImage

__all__ = ["JSON_SCHEMA_VERSION", "build_parser", "main"]

#: ``schema_version`` of every ``--json`` envelope; raised when a shape changes incompatibly.
JSON_SCHEMA_VERSION = 1

EXIT_INTERRUPTED = 130

_OPTION = {option.name: option for option in OPTIONS}


# --- context: settings, store, machines and engines, made on first use -------------


class _Context:
    """What a command needs, built lazily so that ``lrun runs`` never reads pyproject or dials an engine."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings: Settings = resolve(
            {
                "state_dir": args.state_dir,
                "store": args.store,
                "connect_timeout": args.connect_timeout,
                "state_max_bytes": getattr(args, "max_bytes", None),
                "reap_age": getattr(args, "age", None),
                "image_max_age": getattr(args, "image_max_age", None),
            },
            lambda _key: None,
        )
        self._store: RunStore | None = None
        self._scratch: str | None = None  # the empty state dir a read of a missing one uses
        self._resolver: MachineResolver | None = None
        self._pool: EnginePool | None = None
        self.skipped: list[dict[str, Any]] = []  # machines a command went without: {"machine", "error"}

    @property
    def store(self) -> RunStore:
        if self._store is None:
            state_dir = self.settings.resolved_state_dir()
            reads_only = getattr(self.args, "reads_only", False)
            if reads_only and self.settings.store is None and not state_dir.is_dir():
                # A command that only reads never makes a state dir: one that nothing has made reads
                # as an empty one (no runs, no such run), from a folder of its own removed at close.
                self._scratch = tempfile.mkdtemp(prefix="lrun-empty-")
                state_dir = Path(self._scratch)
            self._store = open_store(state_dir, self.settings.store, waits=self.settings.store_waits)
        return self._store

    @property
    def resolver(self) -> MachineResolver:
        if self._resolver is None:
            from pytest_lrun.config.machines import machine_resolver

            project = self.args.project
            if project is not None:
                self._resolver = machine_resolver(project, source="--project")
            else:
                self._resolver = machine_resolver(self.settings.config, source="LRUN_CONFIG")
        return self._resolver

    def connect(self, machine: Machine) -> Engine:
        """A new engine client for ``machine`` that answered a ping (the one way this module dials)."""
        from pytest_lrun.engine.docker import connect

        return connect(machine, connect_timeout=self.settings.connect_timeout)

    @property
    def pool(self) -> EnginePool:
        if self._pool is None:
            from pytest_lrun.engine.pool import EnginePool

            self._pool = EnginePool(self.connect)
        return self._pool

    def engine(self, machine: str) -> Engine:
        """The connected engine of ``machine`` (shared; closed with the context)."""
        return self.pool.get(self.resolver.resolve(machine))

    def dispatcher(self) -> Dispatcher:
        from pytest_lrun.run.dispatch import Dispatcher

        return Dispatcher(self.store, self.pool, log_max_bytes=self.settings.log_max_bytes)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._store is not None:
            self._store.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


class _Collect(logging.Handler):
    """Keeps the package's log records (corrupt records moved aside, an index rebuilt) for the end."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _warnings_at_exit() -> Iterator[list[LrunError]]:
    """Print the package's warnings once, at the end, as ``lrun: warning: ...`` lines on stderr.

    Yields a list for the error the command ends with: a warning about that very
    error (``lrun show`` of a corrupt record) is not repeated.
    """
    logger = logging.getLogger("pytest_lrun")
    handler = _Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # else Python's last-resort handler prints each one bare, at once
    printed: list[LrunError] = []
    try:
        yield printed
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        for record in handler.records:
            args = record.args if isinstance(record.args, tuple) else ()
            if not any(arg is err for arg in args for err in printed):
                say(f"lrun: warning: {record.getMessage()}", err=True)


# --- JSON output ------------------------------------------------------------------------


def _print_json(**members: Any) -> None:
    """Print the ``--json`` envelope: ``schema_version`` and ``members`` (ASCII: escapes never fail)."""
    json.dump({"schema_version": JSON_SCHEMA_VERSION, **members}, sys.stdout, indent=2, ensure_ascii=True)
    sys.stdout.write("\n")


# --- runs, show ---------------------------------------------------------------------------


def _cmd_runs(ctx: _Context) -> int:
    args = ctx.args
    runs = ctx.store.list(machine=args.machine, status=args.status, batch_id=args.batch)
    if args.json:
        _print_json(runs=[run.to_dict() for run in runs])
        return 0
    if not runs:
        say("no runs")
        return 0
    now = time.time()
    rows = [["ID", "MACHINE", "STATUS", "EXIT", "DIR", "AGE"]]
    for run in runs:
        exit_code = "-" if run.exit_code is None else str(run.exit_code)
        rows.append(
            [
                run.id,
                run.machine,
                run.status.value,
                exit_code,
                shown_dir(run.test_dir),
                age(run.created_at, now),
            ]
        )
    for line in format_table(rows):
        say(line)
    return 0


#: How many node ids of a run's command ``lrun show`` prints before "... N more" (``--full``: all).
SHOWN_NODEIDS = 3


def shown_command(words: Sequence[str], *, full: bool = False) -> str:
    """A run's command as shell words; a shard's long list of node ids (words with ``::``) is cut to
    its first :data:`SHOWN_NODEIDS` and a count of the rest, unless ``full``."""
    nodeids = [i for i, word in enumerate(words) if "::" in word]
    if full or len(nodeids) <= SHOWN_NODEIDS:
        return shlex.join(words)
    last_shown = nodeids[SHOWN_NODEIDS - 1]
    hidden = set(nodeids[SHOWN_NODEIDS:])
    parts: list[str] = []
    for i, word in enumerate(words):
        if i not in hidden:
            parts.append(shlex.quote(word))
        if i == last_shown:
            parts.append(f"... {len(hidden):,} more node ids (lrun show --full)")
    return " ".join(parts)


def _cmd_show(ctx: _Context) -> int:
    run = ctx.store.get(ctx.args.id)
    data = run.to_dict()
    if ctx.args.json:
        _print_json(run=data)
        return 0
    now = time.time()
    width = max(len(key) for key in data)
    for key, value in data.items():
        if key in ("created_at", "started_at", "ended_at"):
            shown = when(getattr(run, key), now)
        elif value is None:
            shown = "-"
        elif key == "command":
            shown = shown_command(value, full=ctx.args.full)
        elif key == "artifacts":
            shown = ", ".join(value)
        elif key == "owner":
            shown = ", ".join(f"{k}={v}" for k, v in value.items())
        else:
            shown = str(value)
        say(f"{key.ljust(width)}  {shown}")
    return 0


# --- logs ------------------------------------------------------------------------------------


#: How long after a run ended ``lrun logs`` waits for its runner to share its log with the store
#: (the runner ends the run first, then saves its result).
SHARE_GRACE_S = 10.0


def _cmd_logs(ctx: _Context) -> int:
    store = ctx.store
    run = store.get(ctx.args.id)
    path = store.files(run.id).logs
    out = binary_stdout()
    tail = Tail(path)
    if ctx.args.follow and not run.status.is_terminal:
        follow(ctx, run, tail, out)
        run = store.get(run.id)
    _fetch_log(store, run, path)
    out.write(tail.read(final=True))
    out.flush()
    return 0


def _fetch_log(store: RunStore, run: Run, path: Path) -> None:
    """Make ``path`` hold the log of ``run`` when this host lacks it: a shared store keeps the
    result (the log among it) of every run that ended, whichever runner ran it.

    A run that never started a container has no log anywhere (nothing to print).

    :raises LogNotFound: the run ran elsewhere and the store holds no copy of its log (a file store
        never does; a shared one gets it when the run ends)
    """
    if path.exists() or run.logs_path is None:
        return
    here = run.logs_path == str(path)  # this host ran it (a live run's log may not be there yet)
    host = (run.owner or {}).get("host", "?")
    where = f"the runner that ran it (host {host}) wrote it to {run.logs_path}"
    if not run.status.is_terminal:
        if here:
            return
        raise LogNotFound(
            run.id,
            f"{where}; the run is {run.status.value}, and its log reaches the store when it ends: "
            f"follow it with lrun logs --follow {run.id}",
        )
    while True:
        store.load_result(run, ("logs",))  # a shared store's copy (this host's may have been evicted)
        if path.exists() or here:
            return
        if time.time() - (run.ended_at or 0.0) > SHARE_GRACE_S:
            break
        time.sleep(0.2)  # just ended: its runner may be saving the result now
    raise LogNotFound(
        run.id,
        f"{where}, and the store {store.location} holds no copy (a shared --lrun-store keeps each run's "
        "log once it ended, unless its runner could not save it; a file store keeps none)",
    )


# --- cancel ------------------------------------------------------------------------------------


def _cmd_cancel(ctx: _Context) -> int:
    from pytest_lrun.run.recovery import cancel

    run = cancel(ctx.store, ctx.args.id, ctx.engine, grace=ctx.settings.stop_grace)
    if ctx.args.json:
        _print_json(run=run.to_dict())
    else:
        container = f", container {run.container_id[:12]} removed" if run.container_id else ""
        say(f"cancelled run {run.id} on {run.machine}{container}")
    return 0


# --- batch ----------------------------------------------------------------------------------------


#: ``lrun batch``'s exit status follows the batch (0: completed): it failed (failed, timeout or
#: interrupted) ...
EXIT_BATCH_FAILED = 6
#: ... every run a job started ended well, but some planned entries no job took ...
EXIT_BATCH_INCOMPLETE = 7
#: ... or it is still pending or running.
EXIT_BATCH_UNFINISHED = 8


def batch_exit(status: BatchStatus) -> int:
    """The exit status of ``lrun batch`` for a batch in ``status``."""
    if status is BatchStatus.COMPLETED:
        return 0
    if status is BatchStatus.INCOMPLETE:
        return EXIT_BATCH_INCOMPLETE
    return EXIT_BATCH_FAILED if status.is_terminal else EXIT_BATCH_UNFINISHED


def _cmd_batch(ctx: _Context) -> int:
    from pytest_lrun.cli.batch import COUNTS, rows, totals

    store = ctx.store
    batch = store.batches.refresh(ctx.args.id)
    entries = rows(batch, store)
    summed = totals(entries)
    if ctx.args.json:
        _print_json(batch=batch.to_dict(), rows=entries, totals=summed)
        return batch_exit(batch.status)
    untaken = [row["entry"] for row in entries if row["run_id"] is None]
    why = ""
    if batch.status is BatchStatus.INCOMPLETE:
        why = f", {len(untaken)} of {len(entries)} entries no job took: {', '.join(untaken)}"
    say(f"batch {batch.id}: {batch.status.value}{why} (plan {batch.plan})")
    if not entries:
        say("no entries")
        return batch_exit(batch.status)
    counts = [key.upper() for key in COUNTS]
    table = [["ENTRY", "MACHINE", "STATUS", "EXIT", "DURATION", *counts, "RUN", "DIR"]]
    for row in entries:
        table.append(
            [
                row["entry"],
                row["machine"] or "-",
                row["status"],
                "-" if row["exit_code"] is None else str(row["exit_code"]),
                "-" if row["duration"] is None else f"{row['duration']:.1f}s",
                *("-" if row[key] is None else str(row[key]) for key in COUNTS),
                row["run_id"] or "-",  # an entry no job has started yet has no run
                shown_dir(row["test_dir"]) if row["test_dir"] else "-",
            ]
        )
    table.append(["total", "", "", "", "", *(str(summed[key]) for key in COUNTS), "", ""])
    for line in format_table(table):
        say(line)
    return batch_exit(batch.status)


# --- machines ---------------------------------------------------------------------------------------


def _check_machine(ctx: _Context, name: str) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "url": None, "source": None, "reachable": False, "error": None}
    row.update(tags=[], slots=1)
    try:
        machine = ctx.resolver.resolve(name)
        row.update(url=machine.host, source=machine.source, tags=list(machine.tags), slots=machine.slots)
        ctx.connect(machine).close()  # not the shared pool: machines are pinged in parallel
    except LrunError as e:
        row["error"] = e.to_dict()
        return row
    row["reachable"] = True
    return row


def _cmd_machines(ctx: _Context) -> int:
    names = ctx.resolver.known()
    active: dict[str, list[str]] = {}
    for run in ctx.store.active():
        active.setdefault(run.machine, []).append(run.id)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names))), thread_name_prefix="lrun-ping") as pool:
        found = list(pool.map(lambda name: _check_machine(ctx, name), names))
    for row in found:
        runs = active.get(row["name"], [])
        row.update(in_use=len(runs), free=max(0, row["slots"] - len(runs)), runs=runs)
        row["active_run_id"] = runs[0] if runs else None
    if ctx.args.json:
        _print_json(machines=found)
        return 0
    table = [["NAME", "URL", "SOURCE", "TAGS", "SLOTS", "RUNS", "REACHABLE"]]
    for row in found:
        error = row["error"]
        why = (error.get("reason") or error["message"]) if error else ""
        reachable = "yes" if row["reachable"] else f"no: {one_line(str(why))}"
        slots = f"{row['in_use']}/{row['slots']}"
        table.append(
            [
                row["name"],
                row["url"] or "-",
                row["source"] or "-",
                ",".join(row["tags"]) or "-",
                slots,
                " ".join(row["runs"]) or "-",
                reachable,
            ]
        )
    for line in format_table(table):
        say(line)
    return 0


# --- gc, reap ------------------------------------------------------------------------------------------


def _each_engine(ctx: _Context, explicit: str | None) -> Iterator[tuple[Engine, list[str]]]:
    """Each engine once, with the names it is known by: machine ``explicit``'s, else every known one's.

    A machine table's name comes before ``local``/``default`` for the same engine. A
    machine that does not answer is skipped with a warning (``explicit``: its error is
    raised); ``ctx.skipped`` collects them for ``--json``.
    """
    from pytest_lrun.config.machines import ENVIRONMENT_NAMES

    names = [explicit] if explicit is not None else ctx.resolver.known()
    by_url: dict[str, list[str]] = {}
    for name in sorted(names, key=lambda name: name in ENVIRONMENT_NAMES):
        try:
            by_url.setdefault(ctx.resolver.resolve(name).host, []).append(name)
        except LrunError as e:
            _skip(ctx, name, e, explicit)
    for same in by_url.values():
        try:
            engine = ctx.engine(same[0])
        except LrunError as e:
            _skip(ctx, same[0], e, explicit)
            continue
        yield engine, same


def _skip(ctx: _Context, name: str, e: LrunError, explicit: str | None) -> None:
    if explicit is not None:
        raise e
    ctx.skipped.append({"machine": name, "error": e.to_dict()})
    if not ctx.args.json:
        say(f"lrun: skipping machine {name}: {one_line(str(e))}", err=True)


def _image_json(image: BuiltImage) -> dict[str, Any]:
    return {
        "machine": image.machine,
        "tag": image.tag,
        "digest": image.digest,
        "image_id": image.image_id,
        "size": image.size,
        "created": rfc3339(image.created),
        "context": image.context,
        "last_used": rfc3339(image.last_used) if image.last_used is not None else None,
    }


def _image_rows(images: list[BuiltImage], now: float) -> list[list[str]]:
    table = [["MACHINE", "TAG", "IMAGE", "SIZE", "AGE", "LAST USED", "CONTEXT"]]
    for image in images:
        table.append(
            [
                image.machine,
                image.tag,
                image.image_id.removeprefix("sha256:")[:12],
                f"{image.size / MIB:.1f}MiB",
                age(image.created, now),
                f"{age(image.last_used, now)} ago" if image.last_used is not None else "never",
                image.context or "-",
            ]
        )
    return table


def _cmd_images(ctx: _Context) -> int:
    from pytest_lrun.run.images import built_images

    images = [
        image
        for engine, names in _each_engine(ctx, ctx.args.machine)
        for image in built_images(ctx.store, engine, names)
    ]
    if ctx.args.json:
        _print_json(images=[_image_json(image) for image in images], skipped=ctx.skipped)
        return 0
    for line in format_table(_image_rows(images, time.time())):
        say(line)
    return 0


def _gc_images(ctx: _Context) -> dict[str, Any]:
    from pytest_lrun.run.images import gc_images

    max_age = ctx.settings.image_max_age
    removed: list[BuiltImage] = []
    in_use: list[BuiltImage] = []
    for engine, names in _each_engine(ctx, None):
        swept = gc_images(ctx.store, engine, names, max_age=max_age)
        removed += swept.removed
        in_use += swept.in_use
    if not ctx.args.json:
        for image in removed:
            say(f"removed image {image.tag} on {image.machine} ({image.size / MIB:.1f}MiB)")
        for image in in_use:
            say(f"kept image {image.tag} on {image.machine}: a run or container still uses it")
        say(f"removed {len(removed)} built image(s) unused for {max_age:g}s")
    return {
        "max_age": max_age,
        "removed": [_image_json(image) for image in removed],
        "in_use": [_image_json(image) for image in in_use],
        "skipped": ctx.skipped,
    }


def _cmd_gc(ctx: _Context) -> int:
    from pytest_lrun.run.recovery import gc, reconcile

    store = ctx.store
    reconciled = reconcile(store, ctx.dispatcher(), ctx.engine)
    collected = gc(
        store, max_bytes=ctx.settings.state_max_bytes, store_max_bytes=ctx.settings.store_max_bytes
    )
    images = _gc_images(ctx) if ctx.args.images else None
    if ctx.args.json:
        _print_json(
            reconcile=reconciled.to_dict(), gc=collected.to_dict(), **({"images": images} if images else {})
        )
    else:
        for line in reconciled.lines():
            say(line)
        say(
            f"state dir {store.state_dir}: {collected.size_before} -> {collected.size_after} bytes "
            f"(cap {collected.max_bytes}); deleted {len(collected.deleted)} terminal run(s), "
            f"freed {collected.freed_bytes} bytes"
        )
    if not collected.cap_met:
        say(
            f"lrun: warning: the state dir stays over its cap ({collected.size_after} > "
            f"{collected.max_bytes} bytes): what is left belongs to live runs or is not run data",
            err=True,
        )
    return 0


def _cmd_reap(ctx: _Context) -> int:
    from pytest_lrun.run.recovery import reap

    args = ctx.args
    removed: list[dict[str, Any]] = []
    for engine, _names in _each_engine(ctx, args.machine):
        removed.extend(c.to_dict() for c in reap(ctx.store, engine, max_age=ctx.settings.reap_age))
    if args.json:
        _print_json(removed=removed, skipped=ctx.skipped)
        return 0
    for item in removed:
        container = item["container_id"][:12]
        say(f"removed container {container} on {item['machine']} (run {item['run_id']}: {item['reason']})")
    say(f"reaped {len(removed)} container(s) older than {ctx.settings.reap_age:g}s")
    return 0


# --- parser and main --------------------------------------------------------------------------------------


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrun",
        description="Look at, follow, cancel and clean up pytest-lrun runs.",
        epilog="exit status: 0 ok, 1 error, 2 bad input, 3 not found, 4 busy, 5 engine error; "
        f"lrun batch: {EXIT_BATCH_FAILED} the batch failed, {EXIT_BATCH_INCOMPLETE} incomplete, "
        f"{EXIT_BATCH_UNFINISHED} pending or running",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    with_json = argparse.ArgumentParser(add_help=False, parents=[common])
    with_json.add_argument("--json", action="store_true", help="print JSON (the documented contract)")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str,
        func: Callable[[_Context], int],
        help: str,
        *,
        json_flag: bool = True,
        reads_only: bool = False,
    ) -> Any:
        sub = commands.add_parser(
            name, help=help, description=help, parents=[with_json if json_flag else common]
        )
        sub.set_defaults(func=func, reads_only=reads_only)
        return sub

    runs = command("runs", _cmd_runs, "list stored runs, oldest first", reads_only=True)
    runs.add_argument("--machine", metavar="M", help="only runs on this machine")
    runs.add_argument("--status", choices=[s.value for s in Status], help="only runs with this status")
    runs.add_argument("--batch", metavar="B", help="only runs of this batch")

    show = command("show", _cmd_show, "show one run's record", reads_only=True)
    show.add_argument("id", metavar="ID")
    show.add_argument(
        "--full",
        action="store_true",
        help=f"the whole command (a shard's node ids past the first {SHOWN_NODEIDS} are counted otherwise)",
    )

    logs = command("logs", _cmd_logs, "print a run's log", json_flag=False, reads_only=True)
    logs.add_argument("id", metavar="ID")
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing new output until the run ends (watching the run if no process does)",
    )

    cancel = command("cancel", _cmd_cancel, "kill a live run's container and mark the run interrupted")
    cancel.add_argument("id", metavar="ID")

    batch = command(
        "batch",
        _cmd_batch,
        "show a batch: its status, one row per entry with its inner-test counts, and their totals; "
        f"exits 0 when it completed, {EXIT_BATCH_FAILED} when it failed, {EXIT_BATCH_INCOMPLETE} while "
        f"incomplete, {EXIT_BATCH_UNFINISHED} while pending or running",
        reads_only=True,
    )
    batch.add_argument("id", metavar="ID")

    command(
        "machines",
        _cmd_machines,
        "list known machines, whether their engines answer, their active run",
        reads_only=True,
    )

    images = command(
        "images", _cmd_images, "list the images pytest-lrun built, per machine, with their last use"
    )
    images.add_argument("--machine", metavar="M", help="only this machine (default: every known machine)")

    gc = command("gc", _cmd_gc, "settle runs nobody watches, then delete old terminal runs over the size cap")
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

    reap = command("reap", _cmd_reap, "remove old labelled containers of terminal or unknown runs")
    reap.add_argument(
        "--age",
        type=flag_type(_OPTION["reap_age"]),
        metavar="SECONDS",
        help=f"minimum container age (default: $LRUN_REAP_AGE, else {DEFAULT_REAP_AGE:g})",
    )
    reap.add_argument("--machine", metavar="M", help="only this machine (default: every known machine)")
    return parser


def _fail(err: LrunError, as_json: bool) -> int:
    if as_json:
        _print_json(error=err.to_dict())
    else:
        say(f"lrun: error: {one_line(str(err)) or err.code}", err=True)
    return err.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lrun`` command line; returns the exit status (usage errors exit 2 via SystemExit)."""
    args = build_parser().parse_args(argv)
    with _warnings_at_exit() as printed:
        return _run(args, printed)


def _run(args: argparse.Namespace, printed: list[LrunError]) -> int:
    as_json = bool(getattr(args, "json", False))
    ctx: _Context | None = None
    try:
        ctx = _Context(args)
        status: int = args.func(ctx)
        return status
    except LrunError as e:
        printed.append(e)
        return _fail(e, as_json)
    except BrokenPipeError:
        # The reader went away (`lrun runs | head`): stop quietly, and keep Python's exit flush quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(LrunError(f"{where}{e.strerror or e}"), as_json)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if ctx is not None:
            ctx.close()
