"""Following a run's log (``lrun logs --follow``).

This module owns printing a run's log as it grows, surviving rewrites
(:class:`Tail`), and watching the run meanwhile (:func:`follow`): a watcher
thread finishes the run, as ``pytest --lrun-attach`` would, while no other
process watches it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from pytest_lrun.cli.output import say
from pytest_lrun.core.errors import LrunError
from pytest_lrun.core.text import one_line
from pytest_lrun.store import Run, RunStore

if TYPE_CHECKING:
    from pytest_lrun.engine import Engine
    from pytest_lrun.run.dispatch import Dispatcher

__all__ = ["FOLLOW_POLL_MAX_S", "FOLLOW_POLL_MIN_S", "FollowContext", "Tail", "follow", "resume_at"]

FOLLOW_POLL_MIN_S = 0.05
FOLLOW_POLL_MAX_S = 1.0
_WATCHER_JOIN_S = 30.0
_TAIL_KEEP = 4096  # bytes of printed log remembered to find our place again in a rewritten file


class FollowContext(Protocol):
    """What following needs from the command line's context: the store, and how to watch the run."""

    @property
    def store(self) -> RunStore: ...

    def dispatcher(self) -> Dispatcher: ...

    def engine(self, machine: str) -> Engine: ...


class Tail:
    """Reads what a growing log file gained since the last read, surviving rewrites.

    The log of a run is appended to, except when a process takes over the run
    (the engine replays the whole log into a fresh file) or the size cap cuts it
    to its tail (a new file). Then the last bytes already printed are searched
    for in the new content, and printing continues after them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.inode: int | None = None
        self.last = b""

    def read(self, *, final: bool) -> bytes:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return b""
        with f:
            st = os.fstat(f.fileno())
            same = self.inode in (None, st.st_ino)
            if same and st.st_size >= self.offset:
                f.seek(self.offset - len(self.last))
                if f.read(len(self.last)) != self.last:
                    return self._resync(f, st.st_ino)
                data = f.read()
            elif same and not final:
                return b""  # rewritten in place by a take-over: wait until it catches up
            else:
                return self._resync(f, st.st_ino)
        self._advance(data, st.st_ino, self.offset + len(data))
        return data

    def _resync(self, f: IO[bytes], inode: int) -> bytes:
        f.seek(0)
        content = f.read()
        data = content[resume_at(content, self.last) :]
        self._advance(data, inode, len(content))
        return data

    def _advance(self, data: bytes, inode: int, offset: int) -> None:
        self.inode = inode
        self.offset = offset
        self.last = (self.last + data)[-_TAIL_KEEP:]


def resume_at(content: bytes, printed: bytes) -> int:
    """Where to continue printing ``content``, a rewrite of a log whose last printed bytes are ``printed``.

    A replayed log contains ``printed`` whole; a log cut to its tail starts (after
    its marker line) with the end of ``printed``, cut at a line boundary. When
    neither is found, everything is printed: repeating beats losing output.
    """
    if not printed:
        return 0
    at = content.rfind(printed)
    if at >= 0:
        return at + len(printed)
    # Where lines start in what was printed: the longest suffix of whole lines is tried first.
    starts = [i for i in range(1, len(printed)) if printed[i - 1] == 0x0A]
    for begin in dict.fromkeys((0, content.find(b"\n") + 1)):
        for i in starts:
            if content.startswith(printed[i:], begin):
                return begin + len(printed) - i
    return 0


def follow(ctx: FollowContext, run: Run, tail: Tail, out: IO[bytes]) -> None:
    """Print the log as it grows until the run is terminal; watch the run ourselves when nobody does.

    The watcher thread finishes the run (as ``pytest --lrun-attach`` would) only
    while no other process watches it. Ctrl-C leaves at once: the run's finish
    lock goes with this process and its container keeps running.
    """
    store = ctx.store
    stop = threading.Event()
    failure: list[str] = []

    def watcher() -> None:
        from pytest_lrun.run.recovery import watch

        try:
            watch(ctx.dispatcher(), run.id, ctx.engine(run.machine), stop=stop)
        except LrunError as e:
            failure.append(one_line(str(e)))
        except Exception as e:  # an OSError of the state dir, say: report it, keep following
            failure.append(f"{type(e).__name__}: {e}")

    thread = threading.Thread(target=watcher, name=f"lrun-watch-{run.id}", daemon=True)
    thread.start()
    warned = False
    delay = FOLLOW_POLL_MIN_S
    try:
        while True:
            current = store.get(run.id)  # the record first: once it is terminal, the log is complete
            data = tail.read(final=current.status.is_terminal)
            if data:
                out.write(data)
                out.flush()
                delay = FOLLOW_POLL_MIN_S
            if current.status.is_terminal:
                break
            if failure and not warned:
                warned = True
                say(
                    f"lrun: warning: cannot watch run {run.id} ({failure[0]}); "
                    "showing its log as another process writes it",
                    err=True,
                )
            time.sleep(delay)
            delay = min(delay * 2, FOLLOW_POLL_MAX_S)
    finally:
        stop.set()
    thread.join(timeout=_WATCHER_JOIN_S)  # if we finished the run, let it remove the container
    say(f"lrun: run {current.id} {current.status.value}" + _exit_note(current), err=True)


def _exit_note(run: Run) -> str:
    if run.exit_code is not None:
        return f" (exit code {run.exit_code})"
    if run.error_code is not None:
        return f" ({run.error_code})"
    return ""
