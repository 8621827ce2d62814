"""``lrun flaky``: the inner tests whose outcome differed between runs of one key, and the quarantine list.

Two runs with the same key (directory hash, image, command, environment) that disagree on
a test prove it flaky; the store keeps each inner test's outcome per key
(:mod:`pytest_lrun.store.outcomes`), and ``lrun flaky`` lists what they prove: each test with
its passes and failures under the key, when it was last seen and on which machines, the most
recent first; then the store's quarantine list. ``lrun flaky quarantine NODEID`` and ``lrun
flaky release NODEID`` edit that list, which ``--lrun-quarantine=store`` reads (on a shared
store, for the whole fleet).
"""

from __future__ import annotations

import time

from pytest_lrun.cli.context import Context
from pytest_lrun.cli.output import print_json, say, when
from pytest_lrun.core.errors import BadInput
from pytest_lrun.core.text import format_table
from pytest_lrun.core.times import rfc3339
from pytest_lrun.store.outcomes import FlakyEvidence, Quarantined, flaky_evidence

__all__ = ["cmd_flaky"]

#: How much of a run key the table shows (the JSON has all of it).
SHOWN_KEY = 12


def cmd_flaky(ctx: Context) -> int:
    args = ctx.args
    if args.action is not None:
        if args.nodeid is None:
            raise BadInput(f"lrun flaky {args.action}: give the test's NODEID, as the terminal names it")
        args.reads_only = False  # an edit makes the state dir of a file store
        return _edit(ctx, args.action, args.nodeid)
    found = flaky_evidence(ctx.store.outcomes())
    listed = ctx.store.quarantined_tests()
    if args.json:
        flaky = [{**f.to_dict(), "last_seen": rfc3339(f.last_seen)} for f in found]
        print_json(flaky=flaky, quarantined=[_entry(q) for q in listed])
        return 0
    now = time.time()
    _print_flaky(found, now)
    for entry in listed:
        say(f"quarantined: {entry.nodeid} (since {when(entry.since, now)})")
    return 0


def _edit(ctx: Context, action: str, nodeid: str) -> int:
    if action == "quarantine":
        entry = ctx.store.quarantine_test(nodeid, time.time())
        if ctx.args.json:
            print_json(quarantined=_entry(entry))
        else:
            say(f"quarantined: {nodeid} (since {rfc3339(entry.since)})")
        return 0
    released = ctx.store.release_test(nodeid)
    if ctx.args.json:
        print_json(released={"nodeid": nodeid, "was_quarantined": released})
    else:
        say(f"released: {nodeid}" if released else f"{nodeid} was not quarantined")
    return 0


def _entry(entry: Quarantined) -> dict[str, str]:
    return {"nodeid": entry.nodeid, "since": rfc3339(entry.since)}


def _print_flaky(found: list[FlakyEvidence], now: float) -> None:
    if not found:
        say("no flaky tests: no two runs of one key disagreed")
        return
    rows = [["TEST", "KEY", "PASSED", "FAILED", "LAST SEEN", "MACHINES"]]
    for f in found:
        test = f.nodeid if f.suite == "." else f"{f.suite}/{f.nodeid}"
        rows.append(
            [
                test,
                f.key[:SHOWN_KEY],
                str(f.passed),
                str(f.failed),
                when(f.last_seen, now),
                ",".join(f.machines),
            ]
        )
    for line in format_table(rows):
        say(line)
