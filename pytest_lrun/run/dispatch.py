"""One run, end to end: hash, prepare, ship, start, watch, collect, clean up.

:class:`Dispatcher` turns a :class:`RunSpec` (a test directory, a machine, an
image, a command...) into a terminal :class:`~pytest_lrun.store.Run` record:

1. read the directory once (:func:`~pytest_lrun.tree.snapshot.snapshot`): its digest
   and the upload archive come from the very same bytes, so what is shipped is
   what the key describes; compute the idempotency key (dir hash, image id,
   command, env, workdir, artifact paths);
2. ``prepare`` in the store: CREATED runs a fresh container, REUSE attaches to
   the live run (never a twin container), BUSY raises ``machine_busy``;
3. create the labelled container, upload the directory with the Engine's
   archive API (no bind mounts), start it, spool its logs, wait with the
   timeout, read the inner JUnit XML and the artifacts back, remove it.

A run whose command is pytest (:func:`~pytest_lrun.run.placement.pytest_arguments_at`) also ships the inner
reporter (:mod:`pytest_lrun.wire.events`) with a fresh token kept in the run record:
its events are split from the output as it streams and kept in the run's
``events.jsonl`` (the log keeps the rest); the reporter's bytes are part of the
key, the token is not. A run is stopped (timeout, Ctrl-C) with SIGINT first and
SIGKILL only after ``stop_grace`` seconds (:func:`~pytest_lrun.engine.stop`), so
the inner pytest can report the test it was running.

Steps 1 and 2 (candidate machines, snapshot, key, the store's placement and the
wait in line) live in :mod:`pytest_lrun.run.placement`, which also defines
:func:`~pytest_lrun.run.placement.run_key` and :func:`~pytest_lrun.run.placement.pytest_arguments_at`;
what the container is created with in step 3 lives in :mod:`pytest_lrun.run.container`,
what it gives back (streamed log and events, the stored log, the JUnit XML and
artifacts) in :mod:`pytest_lrun.run.readback`, and the terminal status that follows
from its exit code, or from what went wrong, in :mod:`pytest_lrun.run.verdict`.

Whoever *finishes* a run (waits for its container and writes its terminal
status) holds the run's watch lock (:meth:`~pytest_lrun.store.RunStore.watching`).
The process that created the run holds it from the start; a process that finds
the lock free while the run is live (its owner was killed, or it detached) takes
over and finishes the run from the engine's state, so a run is never lost with
its host process.

Nothing that happens after ``prepare`` can leave a run live: whatever is raised
on the way (an engine error, a full disk, a batch record that cannot be written,
a bug), the run is ended (:meth:`Dispatcher._end`, through
:meth:`~pytest_lrun.store.RunStore.end`) with an ``error_code`` that says what
happened, its container is removed (or kept under ``--lrun-keep``), and only
then is the exception passed on. The machine is free for the next run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace

from pytest_lrun.config.machines import Machine
from pytest_lrun.config.settings import (
    DEFAULT_INFRA_RETRIES,
    DEFAULT_LOG_MAX_BYTES,
    DEFAULT_STOP_GRACE,
    DEFAULT_TERMINAL_RESERVE_BYTES,
    DEFAULT_TIMEOUT,
    REUSE_EVEN_FLAKY,
    REUSE_NEVER,
)
from pytest_lrun.core.errors import (
    INTERRUPTED,
    OWNER_GONE,
    SESSION_STOPPED,
    ContainerGone,
    EngineError,
    JunitError,
    LeftRunning,
    LrunError,
    StateFull,
    TerminalRunError,
)
from pytest_lrun.core.faults import crash_point
from pytest_lrun.core.reserve import check_room, claim, full
from pytest_lrun.engine import Engine, stop
from pytest_lrun.engine.pool import EnginePool
from pytest_lrun.run.container import Remover, container_spec, stop_all
from pytest_lrun.run.images import Builder, BuildSink
from pytest_lrun.run.logs import hidden_values, read_event_file
from pytest_lrun.run.placement import POLL_S, choices_for, place, run_key, snapshot_for
from pytest_lrun.run.readback import RunOutput, collect, pump_logs, respool
from pytest_lrun.run.slots import Slots
from pytest_lrun.run.spec import EventSink, OutputSink, RunResult, RunSpec
from pytest_lrun.run.verdict import engine_verdict, error_verdict, exit_verdict, infra_failure
from pytest_lrun.store import Decision, Run, RunStore, Status
from pytest_lrun.store.common import local_owner
from pytest_lrun.store.outcomes import disagreed
from pytest_lrun.tree.hashing import hash_dir
from pytest_lrun.tree.snapshot import Snapshot
from pytest_lrun.wire.junit import parse_junit

logger = logging.getLogger("pytest_lrun")


@dataclass
class _Prepared:
    """What ``prepare`` decided for a spec, with the engine and, for a created run, what to ship."""

    run: Run
    origin: str  # "created", "reused" or "cached"
    engine: Engine
    spec: RunSpec  # the spec on the machine the run was placed on
    shipment: Snapshot | None = None  # the directory as hashed: set for created runs only
    staged: bool = False  # placed past its machine's slots: starts at the gate (run.slots)


class Dispatcher:
    """Runs specs on engines and keeps the store honest about them (see module docstring)."""

    def __init__(
        self,
        store: RunStore,
        engines: EnginePool,
        *,
        keep: str = "never",
        reuse: str = REUSE_NEVER,
        busy_wait: float = 0.0,
        stop_grace: float = DEFAULT_STOP_GRACE,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
        terminal_reserve: int = DEFAULT_TERMINAL_RESERVE_BYTES,
        on_output: OutputSink | None = None,
        on_events: EventSink | None = None,
        on_prepared: Callable[[RunSpec, Run, str], None] | None = None,
        on_queued: Callable[[RunSpec, Run], None] | None = None,
        on_build: BuildSink | None = None,
        on_retry: Callable[[RunSpec, Run, int], None] | None = None,
        infra_retries: int = DEFAULT_INFRA_RETRIES,
        remove_later: bool = False,
        stage: bool = False,
    ) -> None:
        self.store = store
        self.engines = engines
        self.keep = keep
        self.reuse = reuse
        self.busy_wait = busy_wait
        self.stop_grace = stop_grace
        self.log_max_bytes = log_max_bytes
        self.terminal_reserve = terminal_reserve  # bytes each live run keeps for its final record
        self.on_output = on_output
        self.on_events = on_events  # (run, events) as the log pump parses them: live reports
        self.on_prepared = on_prepared  # (spec, run, origin) as soon as the run is known: batch records
        self.on_queued = on_queued  # (spec, a run in the way) once, when a spec waits for a free slot
        self.builder = Builder(store, on_line=on_build)  # (machine, line) as an image builds
        self.on_retry = on_retry  # (spec, the failed run, the attempt about to start)
        self.infra_retries = infra_retries
        # Ended runs' containers, removed off the run's path when ``remove_later`` (:meth:`close` waits).
        self._remover = Remover(later=remove_later)
        # A session's look-ahead: a run staged past busy slots is made ready while it waits (run.slots).
        self.stage = stage
        self._slots = Slots()
        self._live: dict[str, tuple[Engine, str]] = {}
        self._created: set[str] = set()  # ids of the runs this dispatcher created
        self._stopped_ids: set[str] = set()  # ids of the runs this dispatcher stopped
        self._from_cache: set[str] = set()  # ids of its runs a remote service's action cache answered
        self._live_lock = threading.Lock()
        self._cancelled = threading.Event()
        # Why runs are being stopped, as (error code, message): Ctrl-C, or -x/--maxfail.
        self._stop_reason: tuple[str, str] = (INTERRUPTED, "interrupted (Ctrl-C)")

    # -- entry points --------------------------------------------------------

    def dispatch(self, spec: RunSpec, *, reuse: str | None = None, retry_of: str | None = None) -> RunResult:
        """Run ``spec`` to a terminal status (or attach to / reuse an equal run).

        ``reuse`` overrides the dispatcher's for this spec (the inner collection before
        shards always takes a completed one: its key says all its result depends on).
        A run this dispatcher created that failed for its infrastructure
        (:func:`infra_failure`) is tried again, up to ``infra_retries`` times, as a new
        run whose ``retry_of`` names the one before; a test that failed never is here (the
        session reruns failed inner tests as a new spec, whose ``retry_of`` it gives).
        """
        result = self._dispatch_once(spec, reuse or self.reuse, retry_of)
        for attempt in range(2, self.infra_retries + 2):
            if result.origin != "created" or self._cancelled.is_set() or not infra_failure(result):
                break
            if self.on_retry is not None:
                self.on_retry(spec, result.run, attempt)
            result = self._dispatch_once(spec, reuse or self.reuse, result.run.id)
        return result

    def _dispatch_once(self, spec: RunSpec, reuse: str, retry_of: str | None) -> RunResult:
        prepared = self._prepare(spec, reuse, retry_of)
        run, engine = prepared.run, prepared.engine
        if prepared.origin == "cached":
            return self.result(run, "cached")
        if prepared.origin == "reused":
            return self.result(self._await(run, engine), "reused")
        with (
            prepared.shipment or contextlib.nullcontext(),
            self._ends_on_error(run, engine),
            self.store.watching(run.id),
        ):
            run = self._launch(prepared)
            if not run.status.is_terminal:
                run = self._finish(run, engine, _secrets(prepared.spec), fresh_logs=False)
        with self._live_lock:
            cached = run.id in self._from_cache  # a remote service's action cache answered
        return self.result(run, "cached" if cached else "created")

    def start(self, spec: RunSpec) -> RunResult:
        """Create and start the run, then leave it running (``--lrun-detach``)."""
        prepared = self._prepare(spec, self.reuse, None)
        run, engine = prepared.run, prepared.engine
        if prepared.origin != "created":
            return RunResult(run, prepared.origin)
        with (
            prepared.shipment or contextlib.nullcontext(),
            self._ends_on_error(run, engine),
            self.store.watching(run.id),
        ):
            run = self._launch(prepared)
            if not run.status.is_terminal:
                # Nobody watches a detached run: whoever attaches next takes over.
                run = replace(run, owner=None)
                self.store.update(run)
        return RunResult(run, "created")

    def attach(self, run_id: str, machine: Machine) -> RunResult:
        """Wait for a run started earlier (maybe by another process) and return its result."""
        run = self.store.get(run_id)
        if run.status.is_terminal:
            return self.result(run, "reused")
        return self.result(self._await(run, self.engines.get(machine)), "reused")

    def close(self) -> None:
        """Wait for the containers still being removed (``remove_later``); later ones go at once."""
        self._remover.close()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`cancel_all` or :meth:`stop_created` was called: start nothing new."""
        return self._cancelled.is_set()

    def cancel_all(self) -> None:
        """Stop the containers of every run this dispatcher is watching (Ctrl-C), all at once:
        SIGINT, and SIGKILL for those still running ``stop_grace`` seconds later."""
        self._stop(lambda run_id: True)

    def stop_created(self) -> None:
        """The session stopped early (``-x``, ``--maxfail``): stop the runs this dispatcher
        created, which end ``interrupted`` with ``session_stopped``; runs it only waits for
        (REUSE) go on for their owners, and the waits give up (:class:`LeftRunning`)."""
        if not self._cancelled.is_set():
            self._stop_reason = (SESSION_STOPPED, "the pytest session stopped early (-x, --maxfail)")
        self._stop(lambda run_id: run_id in self._created)

    def _stop(self, which: Callable[[str], bool]) -> None:
        self._cancelled.set()
        with self._live_lock:
            stopped = [run_id for run_id in self._live if which(run_id)]
            self._stopped_ids.update(stopped)
            live = [self._live[run_id] for run_id in stopped]
        stop_all(live, self.stop_grace)

    def result(self, run: Run, origin: str) -> RunResult:
        """The run's result for the report; a run that ended on another runner is fetched first."""
        if run.status.is_terminal:
            self.store.load_result(run)
        files = self.store.files(run.id)
        if run.logs_path is not None:
            # The files as this host has them (a shared store's record names the runner that ran it).
            run = replace(run, logs_path=str(files.logs), artifacts_path=str(files.artifacts))
        try:
            cases = parse_junit(files.junit.read_bytes()) if files.junit.is_file() else None
        except JunitError:
            cases = None  # kept by an older version: today collect refuses it, on the run's record
        stored = read_event_file(files.events) if run.event_token else None
        if stored is None:
            return RunResult(run, origin, cases)
        return RunResult(run, origin, cases, stored.events, stored.dropped)

    # -- steps ----------------------------------------------------------------

    def _prepare(self, spec: RunSpec, reuse: str, retry_of: str | None) -> _Prepared:
        """Decide created / reused / cached (or raise ``machine_busy``) for ``spec``."""
        prepared = self._decide(spec, reuse, retry_of)
        crash_point("after_prepare")
        if self.on_prepared is not None:
            if prepared.origin == "created":
                with self._ends_on_error(prepared.run, prepared.engine), _closed_on_error(prepared):
                    self.on_prepared(spec, prepared.run, prepared.origin)
            else:
                self.on_prepared(spec, prepared.run, prepared.origin)
        return prepared

    @contextlib.contextmanager
    def _ends_on_error(self, run: Run, engine: Engine) -> Iterator[None]:
        """End ``run`` (created by us) if anything escapes the block, then let the exception go on."""
        try:
            yield
        except BaseException as exc:
            self._end_after(run.id, engine, exc)
            raise

    def _end_after(self, run_id: str, engine: Engine, exc: BaseException) -> None:
        """Record why the run could not go on; never raises (the original exception matters more)."""
        verdict = error_verdict(exc)
        try:
            run = self.store.get(run_id)
            if not run.status.is_terminal:
                self._end(run, verdict.status, engine=engine, code=verdict.code, msg=verdict.msg)
        except Exception:  # the state dir itself fails: the reap and sweep settle what is left
            logger.exception("could not record the end of run %s after %s", run_id, verdict.code)

    def _decide(self, spec: RunSpec, reuse: str, retry_of: str | None) -> _Prepared:
        options = choices_for(spec, self.engines, self.builder)
        if reuse != REUSE_NEVER:
            # A stat-cached hash reads no file of an unchanged tree: a cached result costs no read.
            dir_hash = hash_dir(spec.test_dir, cache_dir=self.store.hashcache_dir)
            for option in options:
                key = run_key(dir_hash, option.image_id, option.spec)
                cached = self.store.last_completed(option.spec.machine.name, key)
                # Runs of this key that disagreed on a test prove it flaky: its pass proves nothing,
                # unless the user asked for it all the same (completed-even-flaky).
                if cached is not None and (
                    reuse == REUSE_EVEN_FLAKY or not disagreed(self.store.outcomes(key))
                ):
                    return _Prepared(cached, "cached", option.engine, option.spec)
        check_room(self.store.state_dir, self.terminal_reserve)  # state_full before anything is recorded
        shipment = snapshot_for(options[0].spec, self.store.hashcache_dir)
        try:
            run, outcome, option, staged = place(
                self.store,
                spec,
                options,
                shipment.digest,
                busy_wait=self.busy_wait,
                ours=self._ours,
                stopping=lambda: self._stop_reason[1] if self._cancelled.is_set() else None,
                on_queued=self.on_queued,
                retry_of=retry_of,
                stage=self._slots if self.stage else None,
            )
            if outcome is Decision.CREATED and option.spec.machine.workdir != options[0].spec.machine.workdir:
                shipment.close()  # the archive's paths are under the workdir: pack it for this machine
                shipment = snapshot_for(option.spec, self.store.hashcache_dir, expect=shipment.digest)
        except BaseException:
            shipment.close()
            raise
        if outcome is not Decision.CREATED:
            shipment.close()
            return _Prepared(run, "reused", option.engine, option.spec)
        refusal: LrunError | None = option.image_error
        if refusal is None:
            try:
                claim(self.store.files(run.id).reserve, self.terminal_reserve, self.store.state_dir)
            except StateFull as e:
                refusal = e  # the disk filled since check_room: no container, the run says why
        if refusal is not None:
            shipment.close()
            run = self._end(run, Status.FAILED, error=refusal)
            return _Prepared(run, "created", option.engine, option.spec)
        return _Prepared(run, "created", option.engine, option.spec, shipment, staged)

    def _launch(self, prepared: _Prepared) -> Run:
        """Create the container, ship the directory in and start it; the run is ``running`` after."""
        run, engine, shipment, spec = prepared.run, prepared.engine, prepared.shipment, prepared.spec
        if run.status.is_terminal or shipment is None:  # failed before it began (image missing)
            return run
        # A remote service's action cache may answer the run only where the store's own cache may.
        cacheable = self.reuse == REUSE_EVEN_FLAKY or (
            self.reuse != REUSE_NEVER and not disagreed(self.store.outcomes(run.key))
        )
        created_with = container_spec(run, spec, self.store.store_id, cacheable=cacheable)
        try:
            container_id = engine.create(created_with)
            crash_point("after_create")
            with self._live_lock:
                self._created.add(run.id)
            # Record the container before starting it, so a crash from here on can be reconciled;
            # the upload does not wait for that write (a crash before it is one at after_create).
            run = replace(run, container_id=container_id, logs_path=str(self.store.files(run.id).logs))
            self._watch(run.id, engine, container_id)
            recorded = _beside(self.store.update, run)
            try:
                engine.put_archive(container_id, "/", shipment.archive)
            finally:
                recorded.result()
            if prepared.staged:  # made ready while the slot was busy: it starts when one frees
                self._slots.wait_free(self.store, spec.machine, run.id, self._cancelled.is_set)
            if self._cancelled.is_set():
                code, msg = self._stop_reason
                return self._end(run, Status.INTERRUPTED, engine=engine, code=code, msg=msg)
            started_as = engine.start(container_id)
            self._slots.started(run.machine, run.id)
        except LrunError as e:
            return self._end(run, Status.FAILED, engine=engine, error=e)
        if started_as is not None:  # a remote execution's name: what attaching to it needs
            run = replace(run, container_id=started_as.container_id, action_digest=started_as.action_digest)
            self._watch(run.id, engine, started_as.container_id)
            if started_as.cached:
                with self._live_lock:
                    self._from_cache.add(run.id)
        run = replace(run, status=Status.RUNNING, started_at=time.time())
        try:
            self.store.update(run)
        except TerminalRunError:  # `lrun cancel` ended it while it started: its container goes
            return self._end(run, Status.INTERRUPTED, engine=engine)
        return run

    def _finish(self, run: Run, engine: Engine, secrets: list[str], *, fresh_logs: bool) -> Run:
        """Watch a running container to its end and record everything about it."""
        assert run.container_id is not None
        container_id = run.container_id
        self._watch(run.id, engine, container_id)
        files = self.store.files(run.id)
        spool = RunOutput(files.logs, files.events, run, self.log_max_bytes, secrets, fresh=fresh_logs)
        # A cached result's events are reported once its origin is known, at its end: not live.
        live = None if run.id in self._from_cache else self.on_events
        pump = threading.Thread(
            target=pump_logs, args=(run, engine, spool, live, self.on_output), daemon=True
        )
        pump.start()
        timeout = run.timeout or DEFAULT_TIMEOUT
        remaining = max(0.0, timeout - (time.time() - (run.started_at or time.time())))
        try:
            exit_code = engine.wait(container_id, remaining)
        except EngineError as e:
            pump.join(5)
            spool.close()
            return self._lost(run, engine, e)
        if exit_code is None:
            stop(engine, container_id, self.stop_grace)
            engine.wait(container_id, 30)
        self._slots.exited(run.machine, run.id)  # its slot is free: a staged run starts during the read-back
        pump.join(30)
        spool.close()
        # Two reads of the stopped container at once: its whole log (respool) and the JUnit XML
        # and artifacts (collect); they write different files.
        respooled = _beside(respool, files, run, engine, self.log_max_bytes, secrets, spool.received)
        run = replace(run, exit_code=exit_code)
        try:
            refused, lost = collect(files, run, engine, secrets=secrets, junit=spool.junit), False
        except OSError as e:
            if not full(e):
                raise
            refused, lost = [], True
        except EngineError as e:
            return self._lost(run, engine, e)
        finally:
            respooled.result()
        lost = lost or spool.lost
        with self._live_lock:
            stopped = self._stop_reason if run.id in self._stopped_ids else None
        run, verdict = exit_verdict(
            run, exit_code, engine=engine, timeout=timeout, lost=lost, refused=refused, stopped=stopped
        )
        return self._end(run, verdict.status, engine=engine, code=verdict.code, msg=verdict.msg)

    def _lost(self, run: Run, engine: Engine, error: EngineError) -> Run:
        """End ``run`` after the engine failed it mid-run or mid-read (:func:`engine_verdict`)."""
        verdict, remove = engine_verdict(run, engine, error)
        remover = engine if remove else None
        return self._end(run, verdict.status, engine=remover, code=verdict.code, msg=verdict.msg)

    def _await(self, run: Run, engine: Engine) -> Run:
        """Wait for a live run someone else owns; take it over if nobody watches it any more."""
        while True:
            adopted = self.adopt(run, engine)
            if adopted is not None:
                return adopted
            if self._cancelled.is_set():
                raise LeftRunning(run.id, self._stop_reason[1])
            time.sleep(POLL_S)

    def adopt(self, run: Run, engine: Engine) -> Run | None:
        """Finish ``run`` if nobody watches it (its watch lock is free); None while someone does.

        Returns the terminal run. A run whose container exited while nobody
        watched gets its real status, exit code, logs and artifacts; one whose
        container vanished becomes ``interrupted`` (``container_gone``); a run
        whose creator died before starting its container becomes ``interrupted``
        (``owner_gone``). The log is re-read from the engine, redacted with the
        values the container's environment has for the run's ``env_names``.
        """
        run = self.store.get(run.id)
        if run.status.is_terminal:
            return run
        with self.store.watching(run.id, wait=False) as free:
            if not free:
                return None
            run = self.store.get(run.id)  # it may have ended while we took the lock
            if run.status.is_terminal:
                return run
            if run.container_id is None:
                if self.store.owner_alive(run):
                    return None  # its creator is between prepare and create: let it go on
                return self._end(
                    run, Status.INTERRUPTED, code=OWNER_GONE, msg="its creator died before starting it"
                )
            state = engine.inspect(run.container_id)
            if state is None:
                gone = ContainerGone(
                    run.machine, f"container {run.container_id[:12]} vanished while nobody watched"
                )
                return self._end(run, Status.INTERRUPTED, error=gone)
            if state.status == "created":
                # Never started: a wait would return 0 at once and pass a run that never ran.
                return self._end(
                    run,
                    Status.INTERRUPTED,
                    engine=engine,
                    code=OWNER_GONE,
                    msg="its creator died before starting its container",
                )
            env = {name: state.env[name] for name in run.env_names or () if name in state.env}
            secrets = hidden_values(env, run.secret_env or ())
            return self._finish(replace(run, owner=local_owner()), engine, secrets, fresh_logs=True)

    def _end(
        self,
        run: Run,
        status: Status,
        *,
        engine: Engine | None = None,
        error: LrunError | None = None,
        code: str | None = None,
        msg: str | None = None,
    ) -> Run:
        """Record the terminal status, then remove the container unless ``keep`` says otherwise."""
        if error is not None:
            code, msg = error.code, str(error)
        run = replace(run, artifacts_path=str(self.store.files(run.id).artifacts))
        # Ours, not the stored record's: a run cancelled while its container was made may
        # have been recorded without it, and the container must not outlive the run.
        container_id = run.container_id
        try:
            run = self.store.end(run, status, error_code=code, error_msg=msg)
        except TerminalRunError:
            run = self.store.get(run.id)  # ended elsewhere meanwhile (`lrun cancel`): its word stands
            status = run.status
        else:
            self._share(run)
        self._slots.ended(run.machine, run.id)  # a staged run of this machine may start now
        if engine is not None and container_id is not None:
            keep = self.keep == "always" or (self.keep == "failed" and status is not Status.COMPLETED)
            if not keep or status is Status.INTERRUPTED:
                self._remover.remove(engine, container_id)
        with self._live_lock:
            self._live.pop(run.id, None)
        return run

    def _share(self, run: Run) -> None:
        """Share the result with the store's other runners; a failure costs them a cached result,
        never this run its record."""
        try:
            self.store.save_result(run)
        except (LrunError, OSError) as e:
            logger.warning("run %s: its result was not shared with other runners: %s", run.id, e)

    # -- small helpers ------------------------------------------------------------

    def _watch(self, run_id: str, engine: Engine, container_id: str) -> None:
        with self._live_lock:
            self._live[run_id] = (engine, container_id)

    def _ours(self, run: Run) -> bool:
        """Whether this dispatcher created the run, or this process holds it: a run a sibling
        worker placed a moment ago, before its container (and so ``_created``) exists."""
        with self._live_lock:
            if run.id in self._created:
                return True
        owner, here = run.owner or {}, local_owner()
        return bool(owner.get("host") == here["host"] and owner.get("pid") == here["pid"])


@contextlib.contextmanager
def _closed_on_error(prepared: _Prepared) -> Iterator[None]:
    """Close the shipment (its spool may be a temporary file) if the block raises."""
    try:
        yield
    except BaseException:
        if prepared.shipment is not None:
            prepared.shipment.close()
        raise


def _beside(fn: Callable[..., object], *args: object) -> Future[object]:
    """``fn(*args)`` on a thread of its own, while the caller goes on; the future holds its end."""
    future: Future[object] = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # handed to whoever waits on the future
            future.set_exception(e)

    threading.Thread(target=run, name="lrun-beside", daemon=True).start()
    return future


def _secrets(spec: RunSpec) -> list[str]:
    """Env values the log must never show (:func:`~pytest_lrun.run.logs.hidden_values`)."""
    return hidden_values(spec.environment(), spec.secret_names)
