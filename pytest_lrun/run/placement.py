"""Where a spec runs and under which key: its candidate machines, what ships, its place in the store.

Split out of :mod:`pytest_lrun.run.dispatch`, whose :class:`~pytest_lrun.run.dispatch.Dispatcher`
calls it before a run exists (its ``_decide``):

* the spec's candidate machines that answer, with the image's id on each
  (:func:`choices_for`; a build is built where it is missing): a fleet goes on
  without a host that is down;
* the directory read once for a machine (:func:`snapshot_for`): its digest and
  the upload archive come from the same bytes, with the empty ``lrun/`` dirs and,
  for a pytest command, the inner reporter;
* the idempotency key (:func:`run_key`) and whether a command runs pytest
  (:func:`pytest_arguments_at`);
* the store's placement of the spec on its candidates, with the wait in line for a
  free slot, or a run staged past a machine's slots (:func:`place`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from pytest_lrun.core.errors import EngineError, HashError, ImageMissing, LeftRunning, MachineBusy
from pytest_lrun.engine import Engine
from pytest_lrun.store import Candidate, Decision, Run, RunStore, Ticket
from pytest_lrun.tree.snapshot import Snapshot, snapshot
from pytest_lrun.wire.events import keyed_token, new_token, reporter_file

if TYPE_CHECKING:
    from pytest_lrun.config.machines import Machine
    from pytest_lrun.engine.pool import EnginePool
    from pytest_lrun.run.images import Builder
    from pytest_lrun.run.slots import Slots
    from pytest_lrun.run.spec import RunSpec

logger = logging.getLogger("pytest_lrun")

# Shipped as empty dirs with every run, so commands can write results and artifacts without mkdir.
LRUN_DIRS = ("lrun/out", "lrun/artifacts")
POLL_S = 0.2


@dataclass(frozen=True)
class MachineChoice:
    """One candidate machine of a spec, with its engine and the image's id there (not a setting's
    :class:`~pytest_lrun.config.settings.Option`)."""

    spec: RunSpec  # the spec on this machine
    engine: Engine
    image_id: str
    image_error: ImageMissing | None  # ImageBuildFailed when its build failed


def run_key(dir_hash: str, image_id: str, spec: RunSpec) -> str:
    """The idempotency key: everything that can change a run's result.

    Env values enter only as a digest, so a secret never appears in the key's inputs on disk;
    a named secret (``--lrun-secret-env``) enters by its name only: a new token is the same run.
    A pytest command's key covers the reporter shipped with it: a new reporter is a new run.
    """
    inputs: dict[str, object] = {
        "dir": dir_hash,
        "image": image_id,
        "command": list(spec.command),
        "env": sorted(spec.env.items()),
        **({"secret_env": list(spec.secret_names)} if spec.secret_names else {}),
        "workdir": spec.machine.workdir,
        "artifacts": list(spec.artifacts),
    }
    if pytest_arguments_at(spec.command) is not None:
        inputs["reporter"] = xxhash.xxh3_128_hexdigest(reporter_file()[1])
    return xxhash.xxh3_128_hexdigest(json.dumps(inputs, sort_keys=True).encode())


def pytest_arguments_at(command: tuple[str, ...]) -> int | None:
    """Where pytest's own arguments start in ``command`` (the reporter's ``-p`` goes there);
    None when the command runs no pytest.

    pytest is ``pytest ...`` or ``python -m pytest ...`` (any ``python``/``python3.X``, with a path or not).
    """
    program = os.path.basename(command[0]) if command else ""
    if program == "pytest":
        return 1
    if program.startswith("python") and command[1:3] == ("-m", "pytest"):
        return 3
    return None


def choices_for(spec: RunSpec, engines: EnginePool, builder: Builder) -> list[MachineChoice]:
    """The spec's candidate machines that answer, with the image's id on each.

    A candidate whose engine does not answer is left out while another one does (a
    fleet goes on without a host that is down); when none answers, the first error is raised.
    The candidates are asked at once (a build is built on every candidate that lacks it).
    """
    pool = spec.pool
    if len(pool) > 1:  # engines connect, and images are found or built, on all candidates at once
        with ThreadPoolExecutor(len(pool), thread_name_prefix="lrun-choice") as threads:
            tried = list(threads.map(lambda m: _choice(spec, m, engines, builder), pool))
    else:
        tried = [_choice(spec, machine, engines, builder) for machine in pool]
    found = [choice for choice in tried if isinstance(choice, MachineChoice)]
    errors = [error for error in tried if isinstance(error, EngineError)]
    for error in errors:
        if len(pool) == 1:
            raise error
        logger.warning("%s: machine %s left out: %s", spec.where, error.machine, error)
    if not found:
        raise errors[0]
    return found


def _choice(
    spec: RunSpec, machine: Machine, engines: EnginePool, builder: Builder
) -> MachineChoice | EngineError:
    """``spec`` on ``machine``, or why its engine cannot take it (an image it lacks is the run's error)."""
    try:
        engine = engines.get(machine)
        placed = replace(spec, machine=machine)
        try:
            return MachineChoice(
                placed, engine, builder.image_id(engine, machine, spec.image, spec.build), None
            )
        except ImageMissing as e:  # a failed build too: the run fails with it, before any container
            return MachineChoice(placed, engine, spec.image, e)
    except EngineError as e:
        return e


def snapshot_for(spec: RunSpec, cache_dir: Path, *, expect: str | None = None) -> Snapshot:
    """Read the directory once: its digest and the upload archive for ``spec``'s machine."""
    shipment = snapshot(
        spec.test_dir,
        prefix=spec.machine.workdir.strip("/"),
        extra_dirs=LRUN_DIRS,
        extra_files=[reporter_file()] if pytest_arguments_at(spec.command) is not None else [],
        cache_dir=cache_dir,
    )
    if expect is not None and shipment.digest != expect:
        shipment.close()
        raise HashError(str(spec.test_dir), "the directory changed while it was being dispatched")
    return shipment


def place(
    store: RunStore,
    spec: RunSpec,
    choices: list[MachineChoice],
    dir_hash: str,
    *,
    busy_wait: float,
    ours: Callable[[Run], bool],
    stopping: Callable[[], str | None],
    on_queued: Callable[[RunSpec, Run], None] | None,
    retry_of: str | None = None,
    stage: Slots | None = None,
) -> tuple[Run, Decision, MachineChoice, bool]:
    """The store's placement of the spec on its candidates: CREATED or REUSE, where, and whether
    the run is staged.

    BUSY waits in line when the spec names a tag, when the machine is taken by the
    dispatcher's own runs (``ours``: this process's), or for ``busy_wait`` seconds; then it raises
    ``machine_busy``. A stop (Ctrl-C, ``-x``: ``stopping`` gives why) ends the wait
    with :class:`LeftRunning`.

    Staged: when every slot is taken, a run may be placed past the slots of a candidate
    whose place for it ``stage`` reserves (one per run of the dispatcher's own running there),
    if nobody waits in line before it there; its container is made and filled at once but
    started only when a container there exits (:mod:`.slots`).
    """
    by_name = {choice.spec.machine.name: choice for choice in choices}
    candidates = [
        Candidate(name, run_key(dir_hash, choice.image_id, choice.spec), choice.spec.machine.slots)
        for name, choice in by_name.items()
    ]

    def make(candidate: Candidate) -> Run:
        placed = by_name[candidate.machine].spec
        return Run(
            machine=candidate.machine,
            test_dir=str(placed.test_dir),
            test_dir_hash=dir_hash,
            image=placed.image,
            command=list(placed.command),
            batch_id=placed.batch_id,
            plan_entry=placed.plan_entry,
            timeout=placed.timeout,
            artifacts=list(placed.artifacts),
            env_names=sorted({*placed.machine.env, *placed.env, *placed.secret_names}),
            secret_env=list(placed.secret_names) or None,
            retry_of=retry_of,
            event_token=_token(candidate.key, placed)
            if pytest_arguments_at(placed.command) is not None
            else None,
        )

    deadline = time.monotonic() + busy_wait
    delay = POLL_S / 4
    queued = False  # on_queued was told
    machines = frozenset(by_name)
    # A waiter holds its place in line (the store gives a free slot to the oldest ticket).
    ticket = _ticket() if spec.candidates or busy_wait > 0 else None
    run: Run | None = None  # the last answer: the placed run, or the one in the way
    try:
        while True:
            if run is None or stage is None or ticket is None or stage.first_in_line(machines, ticket):
                run, outcome, staged = _try_place(store, candidates, make, dir_hash, ticket, stage)
                if outcome is not Decision.BUSY:
                    return run, outcome, by_name[run.machine], staged
            waits = spec.candidates or ours(run) or time.monotonic() < deadline
            if not waits or stopping() is not None:
                if ticket is not None:
                    store.leave_line(ticket, list(by_name))
                why = stopping()
                if why is not None:
                    raise LeftRunning(run.id, f"{why} while {spec.where} had no free slot")
                raise MachineBusy(
                    run.machine,
                    run.id,
                    run.test_dir,
                    time.time() - (run.started_at or run.created_at or time.time()),
                    waited_s=busy_wait or None,
                )
            if ticket is None:
                ticket = _ticket()
                continue  # in line at once
            if not queued and on_queued is not None:
                on_queued(spec, run)
                queued = True
            nap = delay * random.uniform(0.5, 1.0)
            if stage is not None:
                stage.wait_in_line(machines, ticket)
                stage.pause(nap)  # cut short when a run of the dispatcher's ends: a slot it held is free
            else:
                time.sleep(nap)
            delay = min(delay * 2, 2.0)  # well under the line's TICKET_TTL_S: a waiter keeps its place
    finally:
        if stage is not None and ticket is not None:
            stage.leave_line(machines, ticket)


def _try_place(
    store: RunStore,
    candidates: list[Candidate],
    make: Callable[[Candidate], Run],
    dir_hash: str,
    ticket: Ticket | None,
    stage: Slots | None,
) -> tuple[Run, Decision, bool]:
    """One ask of the store: a free slot on a candidate, else a staged place past the slots of
    one ``stage`` reserves. The run and the decision (BUSY: the run in the way), and whether
    the run is staged."""
    run, outcome = store.place(candidates, make, test_dir_hash=dir_hash, ticket=ticket)
    if outcome is not Decision.BUSY or stage is None:
        return run, outcome, False
    ahead, past = _reserved(stage, candidates)
    if ahead is None:
        return run, outcome, False
    try:
        staged, outcome = store.place(
            [replace(ahead, slots=ahead.slots + past)], make, test_dir_hash=dir_hash, ticket=ticket
        )
    except BaseException:
        stage.release(ahead.machine)
        raise
    if outcome is Decision.CREATED:
        stage.staged_as(ahead.machine, staged.id)
    else:
        stage.release(ahead.machine)
    if outcome is Decision.BUSY:
        return run, outcome, False
    if ticket is not None:  # in line on the others too: the place there is no longer wanted
        store.leave_line(ticket, [c.machine for c in candidates if c.machine != staged.machine])
    return staged, outcome, outcome is Decision.CREATED


def _reserved(stage: Slots, candidates: list[Candidate]) -> tuple[Candidate | None, int]:
    """The first candidate where ``stage`` reserves a place for a staged run, and how far past
    that machine's slots the store may place it (:meth:`Slots.reserve <.slots.Slots.reserve>`)."""
    for candidate in candidates:
        past = stage.reserve(candidate.machine)
        if past is not None:
            return candidate, past
    return None, 0


def _ticket() -> Ticket:
    return Ticket(secrets.token_hex(8), time.time())


def _token(key: str, spec: RunSpec) -> str:
    """A run's event token: random, but on a remote machine the key's own (:func:`keyed_token`)."""
    return keyed_token(key) if spec.machine.remote is not None else new_token()
