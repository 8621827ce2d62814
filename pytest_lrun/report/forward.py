"""The host's presentation options, forwarded into the inner pytest.

How a failure reads is decided where the test runs: ``--tb``, ``-l/--showlocals``,
``--full-trace`` and the verbosity (``-v`` shows fuller assertion diffs) shape the
inner pytest's failure text; ``-r`` and ``-s/--capture`` shape its own output,
which the run's log keeps. Each of them the host was given, unless it is pytest's
default, is appended to a pytest command, so that the inner reports read as a
local run's would. They are part of the command, and so of the run key: a run
asked for with other presentation options is another run.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

# pytest's defaults: a value equal to one is not forwarded, so a plain invocation keeps its run key.
_DEFAULTS = {"tbstyle": "auto", "reportchars": "fE", "capture": "fd"}
_SHORT_FLAGS = re.compile(r"^-(?P<flags>[vq]+)$")


def forwarded(option: argparse.Namespace, command: Sequence[str]) -> tuple[str, ...]:
    """The arguments that give the inner pytest (``command``) the host's presentation options."""
    args: list[str] = []
    tbstyle = getattr(option, "tbstyle", _DEFAULTS["tbstyle"])
    if tbstyle != _DEFAULTS["tbstyle"]:
        args.append(f"--tb={tbstyle}")
    if getattr(option, "showlocals", False):
        args.append("--showlocals")
    if getattr(option, "fulltrace", False):
        args.append("--full-trace")
    wanted = getattr(option, "verbose", 0) or 0
    missing = wanted - verbosity(command)
    if wanted > 0 and missing > 0:  # the default command's -q would otherwise eat a -v
        args.append("-" + "v" * missing)
    reportchars = getattr(option, "reportchars", _DEFAULTS["reportchars"])
    if reportchars and reportchars != _DEFAULTS["reportchars"]:
        args.append(f"-r{reportchars}")
    capture = getattr(option, "capture", _DEFAULTS["capture"])
    if capture and capture != _DEFAULTS["capture"]:
        args.append(f"--capture={capture}")
    return tuple(args)


def verbosity(command: Sequence[str]) -> int:
    """The verbosity a pytest command asks for: each ``-v`` adds one, each ``-q`` takes one."""
    level = 0
    for arg in command:
        if arg in ("--verbose", "--quiet"):
            level += 1 if arg == "--verbose" else -1
        elif match := _SHORT_FLAGS.match(arg):
            level += match["flags"].count("v") - match["flags"].count("q")
    return level
