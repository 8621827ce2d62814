"""The stateful side of the plugin: one :class:`LrunSession` per pytest invocation.

Registered as a plugin (``lrun-session``) only when an ``--lrun-*`` switch turns
dispatching on, so pytest without them pays nothing. At session start it
resolves what to run into :class:`~pytest_lrun.run.spec.RunSpec` jobs (from
directory and node id arguments, a plan, or the runs to attach to; an unknown
machine fails before anything runs) and reconciles the store's live runs on
those machines.

It then works as pytest-xdist's controller (``DSession``) does: it collects
nothing itself and takes over ``pytest_runtestloop``. The jobs run on worker
threads (one per machine: machines in parallel, one machine's entries one after
another); the main thread's loop turns what they report -- each run's inner
events as the container writes them, and its end -- into ordinary report hooks
through :class:`~pytest_lrun.report.live.RunReports`, so reports of runs on different
machines interleave as those runs progress. When ``-x`` or ``--maxfail`` stops
the session, the runs it created are stopped (``session_stopped``) and those it
only attached to go on for their owners. It kills its containers on Ctrl-C,
prints a progress line per live run every :data:`PROGRESS_EVERY_S` seconds and
the summary table at the end, and keeps the state dir under its size cap.

Worker threads never call a pytest hook or write to the terminal: they put
events on a queue (progress and output lines, prepared runs, inner events,
finished runs) and the main thread handles them in order.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import xxhash

from pytest_lrun.config.builds import Build, build_digest, image_tag, make_build
from pytest_lrun.config.machines import TAG_PREFIX, ImageSource, Machine, machine_resolver, resolve_image
from pytest_lrun.config.plan import Plan, PlanEntry, load_plan, select
from pytest_lrun.config.select import HostSelection, Selection, dispatched_dir, last_failed
from pytest_lrun.config.settings import DEFAULT_COMMAND, DEFAULT_TIMEOUT, Settings
from pytest_lrun.core.errors import (
    EXIT_ENGINE_UNREACHABLE,
    BatchNotFound,
    ConfigError,
    EngineUnreachable,
    LrunError,
    RunNotFound,
)
from pytest_lrun.core.text import format_table, one_line
from pytest_lrun.engine import Engine
from pytest_lrun.engine.docker import connect
from pytest_lrun.engine.pool import EnginePool
from pytest_lrun.report.evidence import Evidence, default_report_dir
from pytest_lrun.report.forward import forwarded
from pytest_lrun.report.github import is_github_actions
from pytest_lrun.report.live import RunReports
from pytest_lrun.report.naming import dir_nodeid, shown_dir
from pytest_lrun.report.outcomes import Detached, JobOutcome
from pytest_lrun.report.summary import summary_rows
from pytest_lrun.run.balance import balance, by_hash, durations_of
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.run.placement import pytest_arguments_at
from pytest_lrun.run.recovery import gc, reconcile
from pytest_lrun.run.spec import RunResult, RunSpec
from pytest_lrun.store import Batch, Run, RunStore, Status, open_store
from pytest_lrun.wire.events import Collected
from pytest_lrun.wire.events import Event as InnerEvent


@dataclass(frozen=True)
class Prepared:
    """A worker's word that the store decided a spec's run (created, reused, cached)."""

    spec: RunSpec
    run: Run
    origin: str


@dataclass(frozen=True)
class Retried:
    """A worker's word that a spec's run failed for its infrastructure and is tried again."""

    spec: RunSpec
    failed: Run


@dataclass(frozen=True)
class Live:
    """Inner events of a run, as its log pump parsed them."""

    run_id: str
    events: tuple[InnerEvent, ...]


@dataclass(frozen=True)
class Finished:
    """A worker's word that a spec's job ended: its outcome, the bug that stopped the worker,
    or neither (the session stopped before the job began)."""

    spec: RunSpec
    outcome: JobOutcome | None = None
    error: BaseException | None = None
    said: str | None = None  # the job's end line, shown once what its run reported is


# What worker threads hand to the main thread.
Event = str | Prepared | Retried | Live | Finished
# How often the main thread's wait wakes up: a blocking get is deaf to Ctrl-C on Windows.
POLL_S = 0.2
# How often each live run's progress line is shown (when it changed), and at most how long a run
# whose progress stands still (a long test) goes without one.
PROGRESS_EVERY_S = 30.0
QUIET_PROGRESS_S = 300.0


@dataclass(frozen=True, eq=False)
class Job:
    """What the session does with one spec: dispatch it, start it detached, or attach to a run."""

    spec: RunSpec
    attach_to: str | None = None


class LrunSession:
    """Dispatches this invocation's jobs and keeps their outcomes for the report."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.store: RunStore = open_store(settings.resolved_state_dir(), settings.store)
        self.batches = self.store.batches
        # The machine tables are found as `lrun` finds them: --lrun-config, else upward from here.
        self.resolver = machine_resolver(settings.config, config.invocation_params.dir)
        self.engines = EnginePool(lambda m: config.hook.pytest_lrun_make_engine(machine=m, config=config))
        self.dispatcher = Dispatcher(
            self.store,
            self.engines,
            keep=settings.keep,
            reuse=settings.reuse,
            busy_wait=settings.busy_wait,
            log_max_bytes=settings.log_max_bytes,
            terminal_reserve=settings.terminal_reserve_bytes,
            stop_grace=settings.stop_grace,
            on_output=self._show_output if settings.live else None,
            on_events=lambda run, events: self._events.put(Live(run.id, tuple(events))),
            on_prepared=self._prepared,
            on_queued=self._queued,
            on_build=lambda machine, line: self._events.put(f"{machine}: {line}"),
            on_retry=self._retried,
            infra_retries=settings.infra_retries,
        )
        self.batch_id: str | None = None
        self._batch: Batch | None = None  # the batch as refreshed at the end of the session
        self.jobs: list[Job] = []
        self.selections: dict[RunSpec, Selection] = {}  # under --lrun-select=host
        self.outcomes: dict[RunSpec, Future[JobOutcome]] = {}
        self.reports: dict[RunSpec, RunReports] = {}
        self._by_run: dict[str, RunReports] = {}
        # Per spec: the progress last shown, since when it stands still, when it was shown.
        self._shown_progress: dict[RunSpec, tuple[tuple[int, int, str | None], float, float]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._counts_lock = threading.Lock()
        self._counts = {"done": 0, "running": 0}
        self._build_tags: dict[Build, str] = {}  # each build's context is hashed once per invocation
        self.option_image: ImageSource | None = settings.image or self._option_build(settings.build)
        self._progress = _TerminalProgress(config)
        self._presentation: set[str] = set()  # the presentation options forwarded (forward.py)
        start = config.invocation_params.dir
        report_dir = settings.report_dir or default_report_dir(
            config.getoption("xmlpath", None), config.getoption("htmlpath", None)
        )
        self.evidence = Evidence(start / report_dir if report_dir else None, self.store.files, start)

    def register_sinks(self) -> None:
        """Register what hands the runs' results to the report tools in use (pytest-html,
        Allure, GitHub Actions): each reads pytest-lrun's reports as they are fired."""
        manager = self.config.pluginmanager
        html = self.config.getoption("htmlpath", None)
        if html and manager.hasplugin("html"):
            from pytest_lrun.report.html_extras import HtmlExtras

            html_path = Path(os.path.expanduser(os.path.expandvars(html)))  # as pytest-html expands it
            manager.register(HtmlExtras(self.config.invocation_params.dir / html_path), "lrun-html")
        if self.config.getoption("allure_report_dir", None):
            from pytest_lrun.report.allure_results import AllureResults

            attach = bool(self.config.getoption("attach_capture", True))
            manager.register(AllureResults(attach_capture=attach), "lrun-allure")
        if is_github_actions(os.environ):
            from pytest_lrun.report.github import GithubActions

            github = GithubActions(os.environ, self.config.rootpath, self._runs_table, self.evidence.shown)
            manager.register(github, "lrun-github")

    def _engine_unreachable(self) -> bool:
        """Whether a run could not happen, or ended, because its machine's engine did not answer."""
        for future in self.outcomes.values():
            if not future.done() or future.cancelled() or future.exception() is not None:
                continue
            outcome = future.result()
            code = outcome.code if isinstance(outcome, LrunError) else outcome.run.error_code
            if code == EngineUnreachable.code:
                return True
        return False

    def _runs_table(self) -> list[list[str]]:
        """The summary table (header first) of the runs that ended."""
        rows = [
            (spec, future.result())
            for spec, future in self.outcomes.items()
            if future.done() and not future.cancelled() and future.exception() is None
        ]
        return summary_rows(rows, self.config.rootpath) if rows else []

    @property
    def specs(self) -> list[RunSpec]:
        return [job.spec for job in self.jobs]

    # -- deciding what to run -------------------------------------------------

    def plan_jobs(self) -> list[Job]:
        """The jobs of this invocation, from --lrun-attach, --lrun-plan or the directory arguments."""
        settings = self.settings
        option = self.config.option
        HostSelection(Selection(option.keyword or None, option.markexpr or None))  # a bad -k/-m fails now
        if settings.attach:
            return self._attach_jobs(settings.attach)
        if settings.plan:
            if self.config.args_source is pytest.Config.ArgsSource.ARGS:
                raise ConfigError(
                    "--lrun-plan", "the plan names the directories; give no directory arguments"
                )
            plan = load_plan(settings.plan, known_machines=self.resolver.targets())
            entries = select(plan, settings.plan_entry)
            self.batch_id = self.batches.open(plan, settings.batch_id).id
            return [
                Job(
                    self.make_spec(
                        entry.dir,
                        entry.machine,
                        image=entry.image or entry.build,
                        command=entry.command,
                        env=entry.env,
                        secret_env=entry.secret_env,
                        timeout=entry.timeout,
                        artifacts=entry.artifacts,
                        plan_entry=entry.name,
                    )
                )
                for entry in entries
            ]
        assert settings.machine is not None
        machine = settings.machine
        wanted: dict[Path, set[str] | None] = {}  # directory -> inner node ids (None: all of it)
        for arg in self.config.args:
            path, nodeid = dispatched_dir(arg, self.config.invocation_params.dir, self.config.rootpath)
            ids = wanted.setdefault(path, set())
            if nodeid is None or ids is None:
                wanted[path] = None
            else:
                ids.add(nodeid)
        if self.config.getoption("lf", False) or self.config.getoption("failedfirst", False):
            wanted = self._last_failed(wanted)
        return [
            Job(shard)
            for path, ids in wanted.items()
            for shard in self._sharded(self.make_spec(path, machine, nodeids=tuple(sorted(ids or ()))))
        ]

    def _last_failed(self, wanted: dict[Path, set[str] | None]) -> dict[Path, set[str] | None]:
        """``--lf``: each whole directory runs only its inner tests that failed last time, by node
        id (pytest's cache holds the host's node ids); ``--ff`` cannot reorder inside a container."""
        if self.config.getoption("failedfirst", False):
            self.progress("--ff: inner tests run in their own order (a container keeps no pytest cache)")
            return wanted
        cache = getattr(self.config, "cache", None)
        if cache is None:
            self.progress("--lf: pytest's cache is off (-p no:cacheprovider): running everything")
            return wanted
        lastfailed = cache.get("cache/lastfailed", {})
        none_then = self.config.getoption("last_failed_no_failures", "all") == "none"
        picked: dict[Path, set[str] | None] = {}
        for path, ids in wanted.items():
            shown = shown_dir(path, self.config.rootpath)
            if ids is not None:  # node ids given: they are the selection
                picked[path] = ids
                continue
            failed, run_failed = last_failed(lastfailed, dir_nodeid(path, self.config.rootpath))
            # A test whose file is gone is no selection: the inner pytest would refuse it (exit 4).
            failed = {nodeid for nodeid in failed if (path / nodeid.split("::")[0]).is_file()}
            if run_failed:
                self.progress(f"--lf: {shown}: its run failed last time: running all of it")
                picked[path] = None
            elif failed:
                self.progress(f"--lf: {shown}: running the {len(failed)} inner tests that failed last time")
                picked[path] = failed
            elif none_then:
                self.progress(f"--lf: {shown}: nothing failed last time; not run (--lfnf=none)")
            else:
                self.progress(f"--lf: {shown}: nothing failed last time: running all of it")
                picked[path] = None
        return picked

    def _sharded(self, spec: RunSpec) -> list[RunSpec]:
        """``spec`` split into its shards (``--lrun-shards``, ``--lrun-shard``), or ``[spec]``.

        Splitting needs the inner node ids: the inner collection runs first (a run of its
        own, ``--collect-only`` appended), and its node ids are dealt out (:mod:`.shard`).
        """
        settings = self.settings
        count = settings.shards if settings.shards else self._free_slots(spec)
        if (count == 1 and settings.shard is None) or self.config.option.collectonly:
            return [spec]
        if pytest_arguments_at(spec.command) is None:
            raise ConfigError(str(spec.test_dir), "shards split the inner tests of a pytest command only")
        self.progress(f"{spec.where}: {self._shown(spec)}: collecting the inner tests to split them")
        # How failures read is no part of what is collected: the collection's key leaves it out.
        base = tuple(arg for arg in spec.command if arg not in self._presentation)
        collect = replace(spec, command=(*base, "--collect-only", "-q"))
        collecting = self.dispatcher.dispatch(collect, reuse="completed")
        collected = next((e for e in collecting.events or () if isinstance(e, Collected)), None)
        if collected is None or collecting.run.status is not Status.COMPLETED:
            raise ConfigError(
                str(spec.test_dir),
                f"its inner collection failed (run {collecting.run.id}, {collecting.run.status.value}); "
                f"see lrun logs {collecting.run.id}",
            )
        suite = dir_nodeid(spec.test_dir, self.config.rootpath)
        if settings.shard is not None:
            picked = [by_hash(collected.nodeids, settings.shard)]
            labels = [str(settings.shard)]
            every = [f"{k}/{settings.shard.count}" for k in range(1, settings.shard.count + 1)]
        else:
            picked = balance(collected.nodeids, count, self.store.durations(suite))
            labels = every = [f"{k}/{len(picked)}" for k in range(1, len(picked) + 1)]
        self.progress(
            f"{spec.where}: {self._shown(spec)}: {len(collected.nodeids)} inner tests in "
            + ", ".join(f"shard {label} ({len(ids)})" for label, ids in zip(labels, picked, strict=True))
        )
        entry = None
        if settings.batch_id is not None:  # the matrix jobs' shards make one batch
            self._open_shard_batch(spec, suite, collected.nodeids, every)
            entry = f"{suite} [{{}}]"
        return [
            self.make_spec(
                spec.test_dir,
                spec.where,
                nodeids=tuple(ids),
                shard=label,
                plan_entry=entry.format(label) if entry else None,
            )
            for label, ids in zip(labels, picked, strict=True)
            if ids
        ]

    def _open_shard_batch(self, spec: RunSpec, suite: str, nodeids: Sequence[str], labels: list[str]) -> None:
        """Open (or join) ``--lrun-batch-id`` as a plan of the directory's shards.

        The plan's digest covers the directory, the shard count and the inner node ids,
        so every matrix job of the same suite joins one batch, and a job that collected
        something else is refused (``batch_plan_mismatch``).
        """
        inputs = json.dumps([suite, labels, list(nodeids)]).encode("utf-8", "surrogatepass")
        plan = Plan(
            path=spec.test_dir,
            digest=xxhash.xxh3_128_hexdigest(inputs),
            entries=tuple(PlanEntry(f"{suite} [{label}]", spec.test_dir, spec.where) for label in labels),
            collected=tuple(nodeids),  # a job that collected something else is told what differs
        )
        self.batch_id = self.batches.open(plan, self.settings.batch_id).id

    def _free_slots(self, spec: RunSpec) -> int:
        """``auto``: the slots of the spec's machines that no live run holds (at least 1)."""
        busy = {machine.name: len(self.store.active(machine.name)) for machine in spec.pool}
        return max(1, sum(max(0, machine.slots - busy[machine.name]) for machine in spec.pool))

    def _attach_jobs(self, run_or_batch: str) -> list[Job]:
        try:
            runs = [self.store.get(run_or_batch)]
        except RunNotFound:
            try:
                batch = self.batches.get(run_or_batch)
            except BatchNotFound:
                raise ConfigError("--lrun-attach", f"no run or batch with id {run_or_batch!r}") from None
            self.batch_id = batch.id
            runs = [self.store.get(run_id) for run_id in batch.entries.values()]
        return [Job(self._spec_of(run), attach_to=run.id) for run in runs]

    def _spec_of(self, run: Run) -> RunSpec:
        """The spec a stored run was made from (its env is not stored: only the machine's is known)."""
        machine = self.resolver.resolve(run.machine)
        return RunSpec(
            test_dir=Path(run.test_dir),
            machine=machine,
            image=run.image or self._image(resolve_image(machine, entry_image=None, option_image=None))[0],
            command=tuple(run.command or DEFAULT_COMMAND),
            timeout=run.timeout or DEFAULT_TIMEOUT,
            artifacts=tuple(run.artifacts or ()),
            batch_id=run.batch_id,
            plan_entry=run.plan_entry,
        )

    def _option_build(self, context: Path | None) -> Build | None:
        """``--lrun-build``'s build, its context relative to the directory pytest was started in."""
        if context is None:
            return None
        try:
            return make_build(context, base=self.config.invocation_params.dir, origin="--lrun-build")
        except ValueError as e:
            raise ConfigError("--lrun-build", str(e)) from None

    def _image(self, source: ImageSource) -> tuple[str, Build | None]:
        """A run's image reference and, for a build, the build (its tag says its inputs' digest)."""
        if isinstance(source, str):
            return source, None
        tag = self._build_tags.get(source)
        if tag is None:
            tag = self._build_tags[source] = image_tag(
                build_digest(source, cache_dir=self.store.hashcache_dir)
            )
        return tag, source

    def make_spec(
        self,
        test_dir: Path,
        target: str,
        *,
        image: ImageSource | None = None,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        secret_env: Sequence[str] = (),
        timeout: float | None = None,
        artifacts: Sequence[str] | None = None,
        plan_entry: str | None = None,
        nodeids: tuple[str, ...] = (),
        shard: str | None = None,
    ) -> RunSpec:
        """A spec with every default applied: plan entry, then ``--lrun-*``, then the machine table.

        ``target`` is a machine name or ``tag:NAME`` (every machine carrying the tag is a
        candidate; they must agree on the image). A pytest command gets the selection
        (``-k``, ``-m``, ``nodeids``) appended, unless ``--lrun-select=host`` keeps it for
        the host, and ``--collect-only`` under ``--collect-only``.
        """
        settings = self.settings
        pool = self.resolver.resolve_all(target)
        machine = pool[0]
        sources = {resolve_image(m, entry_image=image, option_image=self.option_image) for m in pool}
        if len(sources) > 1:
            named = sorted(s if isinstance(s, str) else f"build {s.describe()}" for s in sources)
            raise ConfigError(
                target,
                f"its machines name different images ({', '.join(named)}); "
                "give --lrun-image, --lrun-build or the plan entry's image or build",
            )
        image_ref, build = self._image(sources.pop())
        option = self.config.option
        selection = Selection(option.keyword or None, option.markexpr or None, nodeids)
        inner = tuple(command or settings.command or DEFAULT_COMMAND)
        if pytest_arguments_at(inner) is None:
            if nodeids:
                raise ConfigError(str(test_dir), "node ids select inner tests of a pytest command only")
        elif settings.select == "container":
            presentation = forwarded(option, inner)
            self._presentation.update(presentation)
            inner += presentation + selection.inner_arguments(machine.workdir)
            if option.collectonly:
                inner += ("--collect-only", "-q")
        spec = RunSpec(
            test_dir=test_dir,
            machine=machine,
            image=image_ref,
            build=build,
            command=inner,
            env=dict(env or {}),
            secret_env=tuple(sorted({*settings.secret_env, *secret_env})),
            timeout=timeout or settings.timeout or machine.timeout or DEFAULT_TIMEOUT,
            artifacts=tuple(artifacts or settings.artifacts),
            batch_id=self.batch_id or settings.batch_id,
            plan_entry=plan_entry,
            candidates=tuple(pool) if target.startswith(TAG_PREFIX) else (),
            target=target if target.startswith(TAG_PREFIX) else None,
            shard=shard,
        )
        for placed in spec.pool:  # a secret missing here fails before anything runs, not in a worker
            replace(spec, machine=placed).environment()
        if settings.select == "host" and selection:
            self.selections[spec] = selection
        return spec

    # -- running ----------------------------------------------------------------

    def start(self) -> None:
        """Start every job: per target (a machine or a tag), as many threads as its machines
        have slots, taking that target's jobs in order."""
        by_target: dict[str, list[Job]] = {}
        for job in self.jobs:
            by_target.setdefault(job.spec.where, []).append(job)
            self.outcomes[job.spec] = Future()
        lines = {target: sum(m.slots for m in jobs[0].spec.pool) for target, jobs in by_target.items()}
        workers = sum(min(lines[target], len(jobs)) for target, jobs in by_target.items())
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="lrun")
        for target, jobs in by_target.items():
            line: queue.SimpleQueue[Job] = queue.SimpleQueue()
            for job in jobs:
                line.put(job)
            for _ in range(min(lines[target], len(jobs))):
                self._executor.submit(self._run_line, line)

    def _run_line(self, line: queue.SimpleQueue[Job]) -> None:
        """A worker thread: take the target's jobs in order, handing every event to the main thread."""
        while True:
            try:
                job = line.get_nowait()
            except queue.Empty:
                return
            if self.dispatcher.stopping:  # -x, --maxfail or Ctrl-C: start nothing new
                self._events.put(Finished(job.spec))
                continue
            self._events.put(self._run_job(job))

    def _run_job(self, job: Job) -> Finished:
        spec = job.spec
        if self.config.option.collectonly and pytest_arguments_at(spec.command) is None:
            what = f"{self._shown(spec)} on {spec.where}"
            self._events.put(f"{what}: not a pytest command, nothing to collect")
            return Finished(spec)
        self._count("running", +1)
        started = time.monotonic()
        try:
            outcome = self._do(job)
        except LrunError as e:
            outcome = e
        except BaseException as e:  # a bug: make it visible as a failure, never hang the session
            return Finished(spec, error=e)
        finally:
            self._count("running", -1)
            self._count("done", +1)
        took = time.monotonic() - started
        what = f"{self._shown(spec)} {_describe(outcome)} in {took:.1f}s"
        if spec.target is not None and not isinstance(outcome, LrunError):
            what += f" on {outcome.run.machine}"
        return Finished(spec, outcome, said=f"{spec.where}: {what}{self._batch_progress()}")

    def _do(self, job: Job) -> JobOutcome:
        if job.attach_to is not None:
            self._events.put(f"{job.spec.where}: attaching to run {job.attach_to} ({self._shown(job.spec)})")
            return self.dispatcher.attach(job.attach_to, job.spec.machine)
        self._events.put(f"{job.spec.where}: dispatching {self._shown(job.spec)}" + self._batch_progress())
        if self.settings.detach:
            result = self.dispatcher.start(job.spec)
            if result.run.status.is_terminal:
                return result  # failed before it began, or a cached result
            return Detached(result.run, self.batch_id)
        return self.dispatcher.dispatch(job.spec)

    # -- the main thread's side of the event queue ------------------------------------

    def loop(self, session: pytest.Session) -> None:
        """Handle the workers' events until every job ended (pytest-xdist's ``DSession.loop``).

        When a report makes the session stop (``-x``, ``--maxfail``), the runs this
        session created are stopped and the loop waits for the jobs to wind up;
        nothing more is reported.
        """
        shown_at = time.monotonic()
        stopped = False
        progress = self._progress
        progress.hold()
        while not all(future.done() for future in self.outcomes.values()):
            try:
                event = self._events.get(timeout=POLL_S)
            except queue.Empty:
                event = None
            if event is not None:
                self._handle(event)
            if not stopped and (session.shouldfail or session.shouldstop):
                stopped = True
                why = session.shouldfail or session.shouldstop
                self.progress(f"{why}: stopping the runs this session created")
                self.dispatcher.stop_created()
            if time.monotonic() - shown_at >= PROGRESS_EVERY_S:
                shown_at = time.monotonic()
                self._show_progress()
        self._drain()
        progress.release()
        progress.end()

    def _counted(self) -> None:
        """A run counted all its tests: once every run has, the terminal's percentages are true."""
        if all(reports.counted for reports in self.reports.values()):
            self._progress.release()

    def _drain(self) -> None:
        """Handle the events still queued."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            self._handle(event)

    def _handle(self, event: Event) -> None:
        if isinstance(event, str):
            self.progress(event)
        elif isinstance(event, Prepared):
            reports = self.reports.get(event.spec)
            if reports is not None:  # not a run of its own (the inner collection before shards)
                reports.prepared(event.run, event.origin)
                self._by_run[event.run.id] = reports
        elif isinstance(event, Retried):
            reports = self.reports.get(event.spec)
            if reports is not None:
                reports.retried(event.failed)
        elif isinstance(event, Live):
            if event.run_id in self._by_run:  # not a run reconcile adopted for nobody
                self._by_run[event.run_id].feed(event.events)
        else:
            self._finished(event)

    def _finished(self, event: Finished) -> None:
        future = self.outcomes[event.spec]
        if future.done():
            return
        reports = self.reports[event.spec]
        if event.error is not None:
            reports.finish_with_error(event.error)
            future.set_exception(event.error)
            return
        if event.outcome is None:
            future.cancel()  # never began: the session stopped first, or nothing to collect
            return
        self._save_durations(event.spec, event.outcome)
        if isinstance(event.outcome, RunResult) and event.outcome.events:
            # A cached or replayed run's tests first, then the line that says how it ended.
            reports.prepared(event.outcome.run, event.outcome.origin)
            reports.feed(event.outcome.events)
        if event.said is not None:
            self.progress(event.said)
        try:
            self.config.hook.pytest_lrun_run_finished(
                spec=event.spec, outcome=event.outcome, config=self.config
            )
        except Exception as e:  # a plugin's bug: reported on the run, never a hang
            reports.finish(event.outcome, hook_error=e)
        else:
            reports.finish(event.outcome)
        future.set_result(event.outcome)

    def _save_durations(self, spec: RunSpec, outcome: JobOutcome) -> None:
        """Keep the inner tests' durations of a run that ran them, for shards balanced by duration."""
        if not isinstance(outcome, RunResult) or outcome.origin != "created" or not outcome.events:
            return
        try:
            suite = dir_nodeid(spec.test_dir, self.config.rootpath)
            self.store.save_durations(suite, durations_of(outcome.events))
        except (LrunError, OSError) as e:  # costs the next split its balance, never this run
            self.progress(f"warning: the inner durations of {self._shown(spec)} were not kept: {e}")

    def _prepared(self, spec: RunSpec, run: Run, origin: str) -> None:
        if self.batch_id is not None and spec.plan_entry is not None:
            self.batches.record(self.batch_id, spec.plan_entry, run.id)
        self._events.put(Prepared(spec, run, origin))

    def _retried(self, spec: RunSpec, failed: Run, attempt: int) -> None:
        """The dispatcher's word (on a worker thread) that ``failed`` is tried again, as ``attempt``."""
        why = f"{failed.error_code}: {one_line(failed.error_msg or '')[:200]}"
        self._events.put(
            f"{failed.machine}: {self._shown(spec)}: run {failed.id} failed for its infrastructure ({why}); "
            f"trying again (attempt {attempt} of {self.settings.infra_retries + 1})"
        )
        self._events.put(Retried(spec, failed))

    def _queued(self, spec: RunSpec, blocker: Run) -> None:
        """The dispatcher's word (on a worker thread) that ``spec`` waits for a free slot."""
        slots = sum(m.slots for m in spec.pool)
        busy = f"all {slots} slots busy, e.g. with run {blocker.id} on {blocker.machine}"
        self._events.put(f"{spec.where}: {self._shown(spec)} waits for a free slot ({busy})")

    def _show_progress(self) -> None:
        """A line per live run whose progress changed since its last line; an unchanged one (a
        long test) gets a line every :data:`QUIET_PROGRESS_S`, saying for how long."""
        now = time.monotonic()
        for spec, reports in self.reports.items():
            if self.outcomes[spec].done() or reports.run is None:
                continue
            p = reports.progress
            state = (p.done, p.failed, p.running)
            last = self._shown_progress.get(spec)
            if last is not None and last[0] == state and now - last[2] < QUIET_PROGRESS_S:
                continue
            since = last[1] if last is not None and last[0] == state else now
            self._shown_progress[spec] = (state, since, now)
            running = f", running {p.running}" if p.running else ""
            if running and now - since >= PROGRESS_EVERY_S:
                running += f" for {now - since:.0f}s"
            self.progress(
                f"{reports.run.machine}: {self._shown(spec)}: {p.done}/{p.collected} tests done, "
                f"{p.failed} failed{running}"
            )

    # -- output -------------------------------------------------------------------

    def progress(self, line: str) -> None:
        """Write ``lrun: line`` to the terminal; main thread only (workers queue their lines).

        ``--collect-only -q`` prints node ids alone, as pytest does: progress stays out.
        """
        if self.config.option.collectonly and self.config.get_verbosity() < 0:
            return
        self._write_line(f"lrun: {line}")

    def _write_line(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            # Under -q the terminal writes result letters without marking the line as begun, so
            # its own write_line would go on after them: end that line first.
            reporter.ensure_newline()
            writer = getattr(reporter, "_tw", None)
            if writer is not None and writer.width_of_current_line:
                writer.line()
            reporter.write_line(line)

    def _count(self, what: str, delta: int) -> None:
        with self._counts_lock:
            self._counts[what] += delta

    def _batch_progress(self) -> str:
        if self.batch_id is None:
            return ""
        with self._counts_lock:
            done, running = self._counts["done"], self._counts["running"]
        queued = len(self.jobs) - done - running
        return f" [batch {self.batch_id}: {done} done, {running} running, {queued} queued]"

    def _show_output(self, source: RunSpec | Run, text: str) -> None:
        """The dispatcher's output sink, called on a log-pump thread: queues the lines."""
        name = source.test_dir.name if isinstance(source, RunSpec) else Path(source.test_dir).name
        machine = source.machine.name if isinstance(source, RunSpec) else source.machine
        for line in text.splitlines():
            self._events.put(f"[{machine} {name}] {line}")

    def _shown(self, spec: RunSpec) -> str:
        shown = shown_dir(spec.test_dir, self.config.rootpath)
        if spec.shard is not None and not spec.plan_entry:  # a batch's entry names its shard already
            shown += f" [shard {spec.shard}]"
        return f"{shown} ({spec.plan_entry})" if spec.plan_entry else shown

    # -- hooks ----------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        try:
            self.jobs = self.plan_jobs()
        except LrunError as e:
            raise pytest.UsageError(f"pytest-lrun: {e}") from e
        if self.settings.plan or self.settings.attach:
            # The plan (or the attached runs) name the directories: collect exactly those.
            self.config.args[:] = sorted({str(spec.test_dir) for spec in self.specs})
        self._reconcile()

    def _reconcile(self) -> None:
        """Settle live runs left by earlier processes on this invocation's machines."""
        machines = {machine.name: machine for spec in self.specs for machine in spec.pool}

        def engine_of(name: str) -> Engine:
            if name not in machines:
                raise ConfigError(name, "not used by this invocation")
            return self.engines.get(machines[name])

        report = reconcile(self.store, self.dispatcher, engine_of, machines=set(machines))
        for line in report.lines():
            self.progress(line)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool:
        """Collect nothing on the host (as pytest-xdist's controller): start the jobs instead."""
        for spec in self.specs:
            selection = self.selections.get(spec)
            self.reports[spec] = RunReports(
                session,
                spec,
                suffix=self._suffix(spec),
                selection=HostSelection(selection) if selection is not None else None,
                say=self.progress,
                write=self._write_line,
                evidence=self.evidence,
                on_counted=self._counted,
            )
        self.start()
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        self.loop(session)
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    def _suffix(self, spec: RunSpec) -> str:
        """What tells apart the runs of one directory: its machine, else its plan entry."""
        same_dir = [s for s in self.specs if s.test_dir == spec.test_dir]
        if len(same_dir) == 1 or spec.shard is not None:  # shards: node ids as without sharding
            return ""
        if [s.where for s in same_dir].count(spec.where) == 1:
            return f"@{spec.where}"
        return f"@{spec.plan_entry}"

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport) -> tuple[str, str, str] | None:
        """A run's own report that passed beside inner tests is no test of the user's: the
        terminal neither counts nor shows it (see :meth:`RunReports._run_report`)."""
        if getattr(report, "lrun_run", False) and report.passed and not getattr(report, "lrun_counted", True):
            return "", "", ""
        return None

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.progress("interrupted: killing this session's containers")
        self.dispatcher.cancel_all()

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Before the terminal's summary, which its own sessionfinish wrapper writes after this.
        _index_teardown_reports(self.config.pluginmanager.get_plugin("terminalreporter"))
        if self._engine_unreachable():
            session.exitstatus = EXIT_ENGINE_UNREACHABLE  # the fleet is down: not a test's failure
        if self._executor is not None:
            if not all(future.done() for future in self.outcomes.values()):
                self.dispatcher.cancel_all()  # the loop did not finish (a bug): leave nothing running
            self._executor.shutdown(wait=True, cancel_futures=True)
        # After Ctrl-C the loop stopped early: the interrupted runs' ends are reported now.
        self._drain()
        self.engines.close()
        # Book-keeping after the tests: a problem here is reported, never turned into an internal error.
        try:
            if self.batch_id is not None:
                self._batch = self.batches.refresh(self.batch_id)
            collected = gc(
                self.store,
                max_bytes=self.settings.state_max_bytes,
                store_max_bytes=self.settings.store_max_bytes,
                keep={reports.run.id for reports in self.reports.values() if reports.run is not None},
            )
            for line in collected.warnings:
                self.progress(f"warning: {line}")
        except (LrunError, OSError) as e:
            self.progress(f"warning: {e}")
        finally:
            self.store.close()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        table = self._runs_table()
        if not table or self.config.option.collectonly:
            return
        terminalreporter.section("lrun runs")
        for line in format_table(table):
            terminalreporter.write_line(line)
        if self._batch is not None:
            batch = self._batch
            terminalreporter.write_line(f"batch {batch.id}: {batch.status.value} (lrun batch {batch.id})")
        detached = [
            outcome
            for future in self.outcomes.values()
            if future.done()
            and not future.cancelled()
            and future.exception() is None
            and isinstance(outcome := future.result(), Detached)
        ]
        if detached:
            target = self.batch_id or detached[0].run.id
            terminalreporter.write_line(f"detached: attach with pytest --lrun-attach={target}")
        for problem in self.store.problems:
            terminalreporter.write_line(f"lrun: warning: {problem}", yellow=True)

    @pytest.hookimpl(trylast=True)
    def pytest_lrun_make_engine(self, machine: Machine, config: pytest.Config) -> Engine:
        return connect(machine, connect_timeout=self.settings.connect_timeout)


def _index_teardown_reports(reporter: Any) -> None:
    """Let the terminal find a failed test's teardown reports by node id in one step.

    pytest's failure summary looks up each failure's teardown reports by scanning every
    report of the "" category (every passed setup and teardown): F failures among N tests
    cost F x N, and a dispatched suite of 200,000 tests with 20,000 failures did not finish.
    This gives the terminal reporter (its private ``_get_teardown_reports``, when it has one)
    the same answer from an index built once, at the summary, when every report is in.
    """
    if not callable(getattr(reporter, "_get_teardown_reports", None)):
        return
    index: dict[str, list[Any]] | None = None

    def teardown_reports(node_id: Any) -> list[Any]:  # a node id, or pytest 9's NodeId (its str is one)
        nonlocal index
        if index is None:
            index = {}
            for report in reporter.getreports(""):
                if report.when == "teardown":
                    index.setdefault(report.nodeid, []).append(report)
        return index.get(str(node_id), [])

    reporter._get_teardown_reports = teardown_reports


class _TerminalProgress:
    """The terminal's progress percentages, kept true while runs report their collections late.

    pytest counts the tests collected before any runs; here each run's count arrives with
    its inner collection, so percentages shown early would go back (100%, then 83%). They are
    held until every run has counted its tests. Its final ``[100%]``, which pytest writes after
    the loop, would land alone on a line after the runs' last ``lrun:`` lines: it is left out.
    Both use the terminal reporter's ``_show_progress_info`` (private, read with a default).
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.reporter: Any = None
        self.shown: Any = False
        self.held = False

    def hold(self) -> None:
        """Hold the percentages (the terminal reporter exists by now: the session's loop runs)."""
        self.reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        self.shown = getattr(self.reporter, "_show_progress_info", False)
        # Before pytest 8.4 the terminal counted a finished test only while it showed percentages.
        if self.shown and self.reporter is not None and pytest.version_tuple >= (8, 4):
            self.reporter._show_progress_info = False
            self.held = True

    def release(self) -> None:
        if self.held and self.reporter is not None:
            self.reporter._show_progress_info = self.shown
            self.held = False

    def end(self) -> None:
        writer = getattr(self.reporter, "_tw", None)
        if (
            self.shown
            and self.reporter is not None
            and writer is not None
            and writer.width_of_current_line == 0
        ):
            self.reporter._show_progress_info = False


def _describe(outcome: JobOutcome) -> str:
    if isinstance(outcome, LrunError):
        return f"error {outcome.code}"
    if isinstance(outcome, Detached):
        return f"detached as run {outcome.run.id}"
    return f"{outcome.run.status.value} ({outcome.origin})"
