"""``lrun flaky``: the inner tests whose outcome differed between runs of one key.

Two runs with the same key (directory hash, image, command, environment) that disagree on
a test prove it flaky; the store keeps each inner test's outcome per key
(:mod:`pytest_lrun.store.outcomes`), and this command lists what they prove: each test with
its passes and failures under the key, when it was last seen and on which machines, the most
recent first.
"""

from __future__ import annotations

import time

from pytest_lrun.cli.context import Context
from pytest_lrun.cli.output import print_json, say, when
from pytest_lrun.core.text import format_table
from pytest_lrun.core.times import rfc3339
from pytest_lrun.store.outcomes import flaky_evidence

__all__ = ["cmd_flaky"]

#: How much of a run key the table shows (the JSON has all of it).
SHOWN_KEY = 12


def cmd_flaky(ctx: Context) -> int:
    found = flaky_evidence(ctx.store.outcomes())
    if ctx.args.json:
        print_json(flaky=[{**f.to_dict(), "last_seen": rfc3339(f.last_seen)} for f in found])
        return 0
    if not found:
        say("no flaky tests: no two runs of one key disagreed")
        return 0
    now = time.time()
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
    return 0
