"""The ``lrun`` subcommands, one handler each: what it reads, does and prints.

Each ``cmd_*`` takes the command's :class:`~pytest_lrun.cli.context.Context` and returns
its exit status; :mod:`pytest_lrun.cli.parser` names them. ``runs``, ``show``, ``logs``
and ``batch`` read the store (``logs`` from a shared store's copy of a log another runner
wrote; following is :mod:`pytest_lrun.cli.follow`'s); ``cancel``, ``gc`` and ``reap``
call on :mod:`pytest_lrun.run.recovery`; ``machines`` pings each machine, ``images`` and
``gc --images`` list and remove what :mod:`pytest_lrun.run.images` built. ``lrun batch``
exits with the batch's outcome (:func:`batch_exit`).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_lrun.cli.context import Context
from pytest_lrun.cli.follow import Tail, follow
from pytest_lrun.cli.output import age, binary_stdout, print_json, relative_to_cwd, say, when
from pytest_lrun.config.values import MIB
from pytest_lrun.core.errors import LogNotFound, LrunError
from pytest_lrun.core.text import format_table, one_line
from pytest_lrun.core.times import rfc3339
from pytest_lrun.store import BatchStatus, Run, RunStore

if TYPE_CHECKING:
    from pytest_lrun.run.images import BuiltImage

__all__ = [
    "EXIT_BATCH_FAILED",
    "EXIT_BATCH_INCOMPLETE",
    "EXIT_BATCH_UNFINISHED",
    "SHOWN_NODEIDS",
    "cmd_batch",
    "cmd_cancel",
    "cmd_gc",
    "cmd_images",
    "cmd_logs",
    "cmd_machines",
    "cmd_reap",
    "cmd_runs",
    "cmd_show",
]


# --- runs, show ---------------------------------------------------------------------------


def cmd_runs(ctx: Context) -> int:
    args = ctx.args
    runs = ctx.store.list(machine=args.machine, status=args.status, batch_id=args.batch)
    if args.json:
        print_json(runs=[run.to_dict() for run in runs])
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
                relative_to_cwd(run.test_dir),
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


def cmd_show(ctx: Context) -> int:
    run = ctx.store.get(ctx.args.id)
    data = run.to_dict()
    if ctx.args.json:
        print_json(run=data)
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


def cmd_logs(ctx: Context) -> int:
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


def cmd_cancel(ctx: Context) -> int:
    from pytest_lrun.run.recovery import cancel

    run = cancel(ctx.store, ctx.args.id, ctx.engine, grace=ctx.settings.stop_grace)
    if ctx.args.json:
        print_json(run=run.to_dict())
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


def cmd_batch(ctx: Context) -> int:
    from pytest_lrun.cli.batch import COUNTS, rows, totals

    store = ctx.store
    batch = store.batches.refresh(ctx.args.id)
    entries = rows(batch, store)
    summed = totals(entries)
    if ctx.args.json:
        print_json(batch=batch.to_dict(), rows=entries, totals=summed)
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
                relative_to_cwd(row["test_dir"]) if row["test_dir"] else "-",
            ]
        )
    table.append(["total", "", "", "", "", *(str(summed[key]) for key in COUNTS), "", ""])
    for line in format_table(table):
        say(line)
    return batch_exit(batch.status)


# --- machines ---------------------------------------------------------------------------------------


def _check_machine(ctx: Context, name: str) -> dict[str, Any]:
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


def cmd_machines(ctx: Context) -> int:
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
        print_json(machines=found)
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


def cmd_images(ctx: Context) -> int:
    from pytest_lrun.run.images import built_images

    images = [
        image
        for engine, names in ctx.each_engine(ctx.args.machine)
        for image in built_images(ctx.store, engine, names)
    ]
    if ctx.args.json:
        print_json(images=[_image_json(image) for image in images], skipped=ctx.skipped)
        return 0
    for line in format_table(_image_rows(images, time.time())):
        say(line)
    return 0


def _gc_images(ctx: Context) -> dict[str, Any]:
    from pytest_lrun.run.images import gc_images

    max_age = ctx.settings.image_max_age
    removed: list[BuiltImage] = []
    in_use: list[BuiltImage] = []
    for engine, names in ctx.each_engine(None):
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


def cmd_gc(ctx: Context) -> int:
    from pytest_lrun.run.gc import gc
    from pytest_lrun.run.recovery import reconcile

    store = ctx.store
    reconciled = reconcile(store, ctx.dispatcher(), ctx.engine)
    collected = gc(
        store, max_bytes=ctx.settings.state_max_bytes, store_max_bytes=ctx.settings.store_max_bytes
    )
    images = _gc_images(ctx) if ctx.args.images else None
    if ctx.args.json:
        print_json(
            reconcile=reconciled.to_dict(), gc=collected.to_dict(), **({"images": images} if images else {})
        )
    else:
        for line in reconciled.lines():
            say(line)
        dropped = collected.outcomes_dropped
        say(
            f"state dir {store.state_dir}: {collected.size_before} -> {collected.size_after} bytes "
            f"(cap {collected.max_bytes}); deleted {len(collected.deleted)} terminal run(s), "
            f"freed {collected.freed_bytes} bytes"
            + (f"; dropped the outcomes of {dropped} key(s) no run has" if dropped else "")
        )
    if not collected.cap_met:
        say(
            f"lrun: warning: the state dir stays over its cap ({collected.size_after} > "
            f"{collected.max_bytes} bytes): what is left belongs to live runs or is not run data",
            err=True,
        )
    return 0


def cmd_reap(ctx: Context) -> int:
    from pytest_lrun.run.recovery import reap

    args = ctx.args
    removed: list[dict[str, Any]] = []
    for engine, _names in ctx.each_engine(args.machine):
        removed.extend(c.to_dict() for c in reap(ctx.store, engine, max_age=ctx.settings.reap_age))
    if args.json:
        print_json(removed=removed, skipped=ctx.skipped)
        return 0
    for item in removed:
        container = item["container_id"][:12]
        say(f"removed container {container} on {item['machine']} (run {item['run_id']}: {item['reason']})")
    say(f"reaped {len(removed)} container(s) older than {ctx.settings.reap_age:g}s")
    return 0
