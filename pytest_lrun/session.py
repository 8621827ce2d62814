"""The stateful side of the plugin: one :class:`LrunSession` per pytest invocation.

Registered as a plugin (``lrun-session``) only when an ``--lrun-*`` switch turns
dispatching on, so pytest without them pays nothing. It resolves the machines
and specs up front (an unknown machine fails before anything runs), starts the
runs when collection starts (one worker thread per machine: entries on
different machines run in parallel, entries on one machine one after another),
hands each dispatched directory to :class:`~pytest_lrun.report.LrunDir`, kills
its containers on Ctrl-C and prints the summary table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .dispatch import DEFAULT_TIMEOUT, Dispatcher, EnginePool, RunSpec
from .engine import Engine, connect
from .errors import ConfigError, LrunError
from .machines import Machine, MachineResolver, load_machine_tables, resolve_image
from .report import LrunDir, Outcome, format_table, summary_rows
from .settings import DEFAULT_COMMAND, Settings
from .store import Run, RunStore


class LrunSession:
    """Dispatches this invocation's specs and keeps their outcomes for the report."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.store = RunStore(settings.resolved_state_dir())
        pyproject = config.rootpath / "pyproject.toml"
        self.resolver = MachineResolver(load_machine_tables(pyproject), pyproject)
        self.engines = EnginePool(
            lambda machine: config.hook.pytest_lrun_make_engine(machine=machine, config=config)
        )
        self.live = settings.live or config.option.verbose > 0
        self.dispatcher = Dispatcher(
            self.store,
            self.engines,
            keep=settings.keep,
            reuse=settings.reuse,
            busy_wait=settings.busy_wait,
            log_max_bytes=settings.log_max_bytes,
            on_output=self._show_output if self.live else None,
        )
        self.specs: list[RunSpec] = []
        self.outcomes: dict[RunSpec, Future[Outcome]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._print_lock = threading.Lock()

    # -- building the specs ---------------------------------------------------

    def build_specs(self, args: Sequence[str]) -> list[RunSpec]:
        """One spec per directory argument, all on ``--lrun-machine``."""
        settings = self.settings
        assert settings.machine is not None
        machine = self.resolver.resolve(settings.machine)
        specs = []
        for arg in args:
            path = Path(arg.split("::")[0])
            path = path if path.is_absolute() else self.config.invocation_params.dir / path
            if not path.is_dir():
                raise ConfigError(arg, "pytest-lrun dispatches directories; this is not one")
            specs.append(self.make_spec(path.resolve(), machine))
        return specs

    def make_spec(
        self,
        test_dir: Path,
        machine: Machine,
        *,
        image: str | None = None,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        artifacts: Sequence[str] | None = None,
        plan_entry: str | None = None,
    ) -> RunSpec:
        """A spec with every default applied: entry, then ``--lrun-*``, then the machine table."""
        settings = self.settings
        return RunSpec(
            test_dir=test_dir,
            machine=machine,
            image=resolve_image(machine, entry_image=image, option_image=settings.image),
            command=tuple(command or settings.command or DEFAULT_COMMAND),
            env=dict(env or {}),
            timeout=timeout or settings.timeout or machine.timeout or DEFAULT_TIMEOUT,
            artifacts=tuple(artifacts or settings.artifacts),
            batch_id=settings.batch_id,
            plan_entry=plan_entry,
        )

    # -- running ----------------------------------------------------------------

    def start(self) -> None:
        """Start every spec: one thread per machine, that machine's specs in order."""
        by_machine: dict[str, list[RunSpec]] = {}
        for spec in self.specs:
            by_machine.setdefault(spec.machine.name, []).append(spec)
            self.outcomes[spec] = Future()
        self._executor = ThreadPoolExecutor(max_workers=max(1, len(by_machine)), thread_name_prefix="lrun")
        for specs in by_machine.values():
            self._executor.submit(self._run_machine, specs)

    def _run_machine(self, specs: list[RunSpec]) -> None:
        for spec in specs:
            future = self.outcomes[spec]
            self.progress(f"{spec.machine.name}: dispatching {self._shown(spec.test_dir)}")
            started = time.monotonic()
            try:
                outcome: Outcome = self.dispatcher.dispatch(spec)
            except LrunError as e:
                outcome = e
            except BaseException as e:  # a bug: make it visible on the item, never hang the session
                future.set_exception(e)
                continue
            self.progress(
                f"{spec.machine.name}: {self._shown(spec.test_dir)} {_describe(outcome)} "
                f"in {time.monotonic() - started:.1f}s"
            )
            self.config.hook.pytest_lrun_run_finished(spec=spec, outcome=outcome, config=self.config)
            future.set_result(outcome)

    def wait(self, spec: RunSpec) -> Outcome:
        if spec not in self.outcomes:
            raise ConfigError(str(spec.test_dir), "was not dispatched")
        return self.outcomes[spec].result()

    # -- output -------------------------------------------------------------------

    def progress(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        with self._print_lock:
            reporter.write_line(f"lrun: {line}")

    def _show_output(self, source: RunSpec | Run, text: str) -> None:
        name = source.test_dir.name if isinstance(source, RunSpec) else Path(source.test_dir).name
        machine = source.machine.name if isinstance(source, RunSpec) else source.machine
        for line in text.splitlines():
            self.progress(f"[{machine} {name}] {line}")

    def _shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.config.rootpath))
        except ValueError:
            return str(path)

    # -- hooks ----------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        try:
            self.specs = self.build_specs(self.config.args)
        except LrunError as e:
            raise pytest.UsageError(f"pytest-lrun: {e}") from e

    @pytest.hookimpl(wrapper=True)
    def pytest_collection(self, session: pytest.Session) -> Generator[None, object, object]:
        if not self.config.option.collectonly:
            self.start()
        return (yield)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        specs = [spec for spec in self.specs if spec.test_dir == path]
        if not specs:
            return None
        return LrunDir.from_parent(parent, path=path, specs=specs, wait=self.wait)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, Any]:
        report = yield
        case = getattr(item, "case", None)
        if case is not None and call.when == "call":
            report.duration = case.duration  # the inner test's own duration, not the replay's
        return report

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.progress("interrupted: killing this session's containers")
        self.dispatcher.cancel_all()

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self._executor is not None:
            if session.shouldstop or session.shouldfail:
                self.dispatcher.cancel_all()
            self._executor.shutdown(wait=True, cancel_futures=True)
        self.engines.close()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        rows = [
            (spec, future.result())
            for spec, future in self.outcomes.items()
            if future.done() and future.exception() is None
        ]
        if not rows:
            return
        terminalreporter.section("lrun runs")
        for line in format_table(summary_rows(rows, self.config.rootpath)):
            terminalreporter.write_line(line)
        for problem in self.store.problems:
            terminalreporter.write_line(f"lrun: warning: {problem}", yellow=True)

    @pytest.hookimpl(trylast=True)
    def pytest_lrun_make_engine(self, machine: Machine, config: pytest.Config) -> Engine:
        return connect(machine, connect_timeout=self.settings.connect_timeout)


def _describe(outcome: Outcome) -> str:
    if isinstance(outcome, LrunError):
        return f"error {outcome.code}"
    return f"{outcome.run.status.value} ({outcome.origin})"
