"""Making the state honest after crashes: runs nobody watches, cancelled runs, leftover containers.

This module owns what happens to runs and containers *outside* a dispatch:

* :func:`reconcile` settles the live (pending or running) runs that no process
  watches any more: a run whose container exited while nobody watched gets its
  real status, exit code, logs and artifacts (via
  :meth:`~pytest_lrun.run.dispatch.Dispatcher.adopt`); a run whose container vanished,
  or whose creator died before starting it, becomes ``interrupted``. A run
  watched by a live process (its watch lock is held) and a container still
  running are left alone, so reconciling never blocks on a run.
* :func:`watch` is the blocking variant for one run: it finishes the run as soon
  as nobody else watches it (``lrun logs --follow``).
* :func:`cancel` kills a live run's container and records it ``interrupted``
  with ``error_code`` ``cancelled``.
* :func:`reap` removes leftover containers: those labelled ``lrun.run-id`` whose
  run is terminal or unknown to the store, once older than an age.

One bad run is that run's problem: reconcile reports it and goes on with the
others, so no record, from a user or a container, stops it. Keeping the state
directory bounded is :mod:`pytest_lrun.run.gc`'s.

Who finishes a run is decided by the run's watch lock (:meth:`RunStore.watching`; see
:mod:`pytest_lrun.run.dispatch`): this module takes it, without waiting, before it
writes a terminal status itself, and leaves the run alone when another process
holds it.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pytest_lrun.config.settings import DEFAULT_STOP_GRACE
from pytest_lrun.core.errors import (
    CANCELLED,
    EXIT_NONZERO,
    CorruptRecord,
    EngineError,
    EngineUnreachable,
    LrunError,
    RunNotFound,
    StoreError,
    TerminalRunError,
)
from pytest_lrun.core.text import printable
from pytest_lrun.engine import LABEL_CREATED, LABEL_RUN, LABEL_STORE, ContainerState, Engine, stop
from pytest_lrun.store import Run, RunStore, Status

if TYPE_CHECKING:
    from pytest_lrun.run.dispatch import Dispatcher

__all__ = [
    "ReapedContainer",
    "ReconcileReport",
    "RunChange",
    "cancel",
    "container_created",
    "reap",
    "reconcile",
    "watch",
]

WATCH_POLL_S = 0.2

ResolveEngine = Callable[[str], Engine]


# --- reports -----------------------------------------------------------------


@dataclass(frozen=True)
class RunChange:
    """What reconciling did (or did not do) to one live run, and why."""

    run_id: str
    machine: str
    old_status: str
    new_status: str
    reason: str

    @property
    def changed(self) -> bool:
        return self.old_status != self.new_status

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ReconcileReport:
    """The outcome of :func:`reconcile`.

    ``changed``: runs that became terminal; ``untouched``: live runs left as they
    are (watched by a live process, container still running, ...); ``problems``:
    one line per machine whose engine could not be used (``machine X unreachable: ...``)
    and per run that could not be settled.
    """

    changed: list[RunChange] = field(default_factory=list)
    untouched: list[RunChange] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human lines for the terminal: every change and every problem (untouched runs are not news)."""
        shown = [
            f"run {c.run_id} on {c.machine}: {c.old_status} -> {c.new_status} ({c.reason})"
            for c in self.changed
        ]
        return shown + list(self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed": [c.to_dict() for c in self.changed],
            "untouched": [c.to_dict() for c in self.untouched],
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class ReapedContainer:
    """A container :func:`reap` removed, and why."""

    machine: str
    container_id: str
    run_id: str
    run_status: str | None  # None: the run is unknown to the store
    age_s: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- reconcile -----------------------------------------------------------------------


def _why(run: Run) -> str:
    if run.status in (Status.COMPLETED, Status.FAILED) and run.exit_code is not None:
        extra = f"; {run.error_code}: {run.error_msg}" if run.error_code not in (None, EXIT_NONZERO) else ""
        return f"its container exited with code {run.exit_code} while nobody watched{extra}"
    if run.error_code is not None:
        return f"{run.error_code}: {run.error_msg}" if run.error_msg else run.error_code
    return f"it became {run.status.value}"


def _settle(dispatcher: Dispatcher, run: Run, engine: Engine, *, block: bool) -> tuple[Run, str]:
    """Make one live run honest; returns the run as it is now and why."""
    if run.container_id is not None and not block:
        state = engine.inspect(run.container_id)
        if state is not None and state.running:
            return run, "its container is still running"
    adopted = dispatcher.adopt(run, engine)
    if adopted is None:
        if run.container_id is None:
            return run, "watched by a live process, or its creator is still starting it"
        return run, "watched by a live process"
    return adopted, _why(adopted)


def _unreachable(machine: str, err: LrunError) -> str:
    """The report line of a machine whose runs are left untouched because of ``err``."""
    if isinstance(err, EngineUnreachable):
        return f"machine {machine} unreachable: {err.url}: {err.reason}"
    if isinstance(err, EngineError):
        return f"machine {machine}: engine error: {err.reason}"
    return f"machine {machine} unreachable: {err}"  # unknown machine, bad machine table


def reconcile(
    store: RunStore,
    dispatcher: Dispatcher,
    resolve_engine: ResolveEngine,
    *,
    machines: Collection[str] | None = None,
) -> ReconcileReport:
    """Settle every live run of the store (of ``machines`` only, when given) that nobody watches.

    For each pending or running run: its machine's engine comes from
    ``resolve_engine(name)`` (once per machine; an :class:`~pytest_lrun.core.errors.LrunError`
    there, e.g. ``engine_unreachable`` or ``unknown_machine``, leaves all of that
    machine's runs untouched and adds one ``machine X unreachable: ...`` problem).
    Then, unless a live process holds the run's watch lock:

    * container exited -> the run's real terminal status, exit code, logs and
      artifacts (``Dispatcher.adopt``); its container is removed;
    * container gone -> ``interrupted``, ``error_code`` ``container_gone``;
    * container created but never started, or no container and its creator is
      dead -> ``interrupted``, ``error_code`` ``owner_gone``;
    * container still running -> left alone (whoever attaches finishes it).

    ``dispatcher.store`` must be ``store``. Never waits for a container to end.
    """
    if dispatcher.store is not store and dispatcher.store.location != store.location:
        raise ValueError("reconcile: the dispatcher works on another store")
    report = ReconcileReport()
    engines: dict[str, Engine | None] = {}
    for run in store.active():
        if machines is not None and run.machine not in machines:
            continue
        if run.machine not in engines:
            try:
                engines[run.machine] = resolve_engine(run.machine)
            except LrunError as e:
                engines[run.machine] = None
                report.problems.append(_unreachable(run.machine, e))
        engine = engines[run.machine]
        if engine is None:
            continue
        old = run.status.value
        try:
            now, reason = _settle(dispatcher, run, engine, block=False)
        except EngineError as e:
            # The engine answered before and fails now: spare its other runs the same wait.
            engines[run.machine] = None
            report.problems.append(_unreachable(run.machine, e))
            continue
        except (RunNotFound, CorruptRecord):
            continue  # deleted or moved aside meanwhile: nothing left to settle
        except StoreError as e:  # e.g. run_terminal: someone else ended it at the same moment
            try:
                now, reason = store.get(run.id), str(e)
            except (RunNotFound, CorruptRecord):
                continue
        except LrunError as e:  # collecting its results failed (a bad archive, ...): try again next time
            report.problems.append(f"run {run.id} on {run.machine}: {e}")
            continue
        except Exception as e:  # one bad run (a hand-edited record, a full disk) never stops the others
            report.problems.append(printable(f"run {run.id} on {run.machine}: {type(e).__name__}: {e}"))
            continue
        change = RunChange(run.id, run.machine, old, now.status.value, reason)
        (report.changed if change.changed else report.untouched).append(change)
    return report


def watch(
    dispatcher: Dispatcher,
    run_id: str,
    engine: Engine,
    *,
    stop: threading.Event | None = None,
    poll: float = WATCH_POLL_S,
) -> Run | None:
    """Wait for run ``run_id`` to end, finishing it ourselves whenever nobody else watches it.

    Returns the terminal run, or None when ``stop`` was set first. Unlike
    :func:`reconcile` it does wait for a running container (it becomes the run's watcher).

    :raises EngineError: the engine failed while watching
    """
    store = dispatcher.store
    stop = stop or threading.Event()
    while not stop.is_set():
        run = store.get(run_id)
        if run.status.is_terminal:
            return run
        try:
            run, _ = _settle(dispatcher, run, engine, block=True)
        except TerminalRunError:
            continue  # someone else ended it meanwhile: the next read returns it
        if run.status.is_terminal:
            return run
        stop.wait(poll)
    return None


# --- cancel ---------------------------------------------------------------------------


def cancel(
    store: RunStore, run_id: str, resolve_engine: ResolveEngine, *, grace: float = DEFAULT_STOP_GRACE
) -> Run:
    """Stop a live run: SIGINT to its container (SIGKILL after ``grace`` seconds), record
    ``interrupted``/``cancelled``, remove the container.

    When nobody watches the run (the usual case: a detached run, or one whose
    watcher died) this happens under the run's watch lock, stop first: an
    engine failure then changes nothing. When a live process watches it, the
    record is written first, so the run ends ``cancelled`` however the watcher
    sees its container die (the store refuses the watcher's later status).

    :raises RunNotFound: no such run
    :raises TerminalRunError: the run has already ended
    :raises EngineError: the engine could not kill or remove the container (the message says
        whether the record was changed)
    """
    run = store.get(run_id)
    if run.status.is_terminal:
        raise TerminalRunError(run.id, run.status.value, CANCELLED)
    engine = resolve_engine(run.machine) if run.container_id is not None else None
    msg = "cancelled with `lrun cancel`"
    with store.watching(run.id, wait=False) as free:
        run = store.get(run_id)
        if run.status.is_terminal:
            raise TerminalRunError(run.id, run.status.value, CANCELLED)
        if run.container_id is not None and engine is None:
            engine = resolve_engine(run.machine)  # it got a container since we first looked
        if free:
            if engine is not None and run.container_id is not None:
                stop(engine, run.container_id, grace)
            run = store.end(run, Status.INTERRUPTED, error_code=CANCELLED, error_msg=msg)
        else:
            run = store.end(run, Status.INTERRUPTED, error_code=CANCELLED, error_msg=msg)
            if engine is not None and run.container_id is not None:
                _after_record(engine, run, lambda container_id: stop(engine, container_id, grace))
        if engine is not None and run.container_id is not None:
            _after_record(engine, run, engine.remove)
    return run


def _after_record(engine: Engine, run: Run, action: Callable[[str], None]) -> None:
    assert run.container_id is not None
    try:
        action(run.container_id)
    except EngineError as e:
        raise EngineError(
            run.machine,
            f"run {run.id} is recorded as interrupted, but its container {run.container_id[:12]} could not "
            f"be stopped: {getattr(e, 'reason', e)}; `lrun reap` removes it later",
        ) from e


# --- reap ------------------------------------------------------------------------------

_DOCKER_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def _docker_time(text: str) -> float | None:
    """Unix seconds of a Docker timestamp (``2024-01-02T03:04:05.123456789Z``), None if it does not parse."""
    match = _DOCKER_TIME.match(text.strip())
    if match is None:
        return None
    base, fraction, zone = match.groups()
    try:
        moment = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    offset = 0
    if zone and zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = (int(digits[:2]) * 3600 + int(digits[2:]) * 60) * (1 if zone[0] == "+" else -1)
    seconds = moment.replace(tzinfo=timezone.utc).timestamp() - offset
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def container_created(state: ContainerState) -> float | None:
    """When a container was created: its ``lrun.created`` label, else the engine's ``Created`` time."""
    label = state.labels.get(LABEL_CREATED, "")
    try:
        return float(label)
    except ValueError:
        return _docker_time(state.created) if state.created else None


def reap(
    store: RunStore, engine: Engine, *, max_age: float, now: float | None = None
) -> list[ReapedContainer]:
    """Remove ``engine``'s leftover containers; returns what was removed and why.

    Only containers labelled ``lrun.run-id`` are listed. One is removed (forced,
    with its volumes) when it is older than ``max_age`` seconds (``lrun.created``
    label, else the engine's creation time) and its run is terminal, or unknown
    to the store and the container is not running. Never removed: a container of
    a live run, a running container of an unknown run (it may belong to another
    state directory sharing the engine), one whose age or record cannot be read.
    """
    now = time.time() if now is None else now
    reaped: list[ReapedContainer] = []
    for state in engine.list_labelled(LABEL_RUN):
        run_id = state.labels.get(LABEL_RUN)
        if not run_id:
            continue
        created = container_created(state)
        if created is None:
            continue
        age = now - created
        if age < max_age:
            continue
        status: Status | None
        try:
            status = store.get(run_id).status
        except RunNotFound:
            status = None
        except CorruptRecord:
            continue  # moved aside just now; decided on the next reap
        if status is None:
            if state.labels.get(LABEL_STORE) != store.store_id:
                continue  # another state dir's run, sharing this engine: not ours to judge
            if state.running:
                continue  # its record may be torn or on its way: a running container is never orphaned
            reason = "its run is unknown to the store"
        elif status.is_terminal:
            reason = f"its run is {status.value}"
        else:
            continue
        engine.remove(state.id)
        reaped.append(
            ReapedContainer(
                machine=engine.machine,
                container_id=state.id,
                run_id=run_id,
                run_status=None if status is None else status.value,
                age_s=round(age, 3),
                reason=reason,
            )
        )
    return reaped
