"""The ``lrun`` command line (also ``python -m pytest_lrun``): look at, follow, cancel and clean up runs.

This package owns argument parsing, output formats and exit statuses; the work is
done by the store (:mod:`pytest_lrun.store`) and recovery (:mod:`pytest_lrun.run.recovery`).
:func:`main`, here, is the entry point (``pytest_lrun.cli:main``); its modules:

* :mod:`.parser`: the argument parser, one subparser per command;
* :mod:`.commands`: the commands' handlers, and ``lrun batch``'s exit statuses;
* :mod:`.context`: what the commands share (settings, store, machines, engines), made on first use;
* :mod:`.output`: printing: text lines, the ``--json`` envelope, errors and warnings;
* :mod:`.batch`: a batch's rows and inner-test counts; :mod:`.follow`: following a run's log;
* :mod:`.worker`: ``lrun worker``, a Remote Execution API bot;
* :mod:`.flaky`: ``lrun flaky``, the tests runs of one key disagreed on, and the quarantine list.

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
    lrun worker --remote NAME|URL [--instance I] --machine M [--slots N] [--property K=V] [--bot-id ID]
    lrun flaky [quarantine|release NODEID] [--json]

Global options (before or after the command): ``--state-dir`` (default
``$LRUN_STATE_DIR``, else ``~/.lrun``), ``--store URL`` (default ``$LRUN_STORE``,
else the file store in the state dir), ``--project DIR`` (where the
``pyproject.toml`` with ``[tool.lrun.machines.*]`` is, or the file itself; default:
``$LRUN_CONFIG``, else the nearest one upward from the current directory, found by
:func:`~pytest_lrun.config.machines.find_machine_file` as the plugin finds it) and
``--connect-timeout`` (default
``$LRUN_CONNECT_TIMEOUT``, else :data:`~pytest_lrun.config.settings.DEFAULT_CONNECT_TIMEOUT`).

Output contract: with ``--json`` stdout holds one JSON object, an envelope
whose ``schema_version`` (:data:`~pytest_lrun.cli.output.JSON_SCHEMA_VERSION`, now 1) changes only when
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
:data:`~pytest_lrun.cli.commands.EXIT_BATCH_FAILED` failed (or timeout, interrupted),
:data:`~pytest_lrun.cli.commands.EXIT_BATCH_INCOMPLETE` incomplete,
:data:`~pytest_lrun.cli.commands.EXIT_BATCH_UNFINISHED` pending or running.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from pytest_lrun.cli.context import Context
from pytest_lrun.cli.output import print_error, warnings_at_exit
from pytest_lrun.cli.parser import build_parser
from pytest_lrun.core.errors import EXIT_ERROR, LrunError

__all__ = ["main"]

EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lrun`` command line; returns the exit status (usage errors exit 2 via SystemExit)."""
    args = build_parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    with warnings_at_exit() as printed:
        ctx: Context | None = None
        try:
            ctx = Context(args)
            status: int = args.func(ctx)
            return status
        except LrunError as e:
            printed.append(e)
            return print_error(e, as_json=as_json)
        except BrokenPipeError:
            # The reader went away (`lrun runs | head`): stop quietly, and keep Python's exit flush quiet too.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_ERROR
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            return print_error(LrunError(f"{where}{e.strerror or e}"), as_json=as_json)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        finally:
            if ctx is not None:
                ctx.close()
