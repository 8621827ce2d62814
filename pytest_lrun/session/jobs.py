"""What the session runs: its jobs, and the planner that decides them.

:class:`JobPlanner` resolves this invocation into :class:`Job` s, each a
:class:`~pytest_lrun.run.spec.RunSpec` with every default applied: from the directory
and node id arguments (with ``--lf``, and split into shards: ``--lrun-shards``,
``--lrun-shard``), from a plan (``--lrun-plan``, which opens its batch), or from the
runs to attach to (``--lrun-attach``). An unknown machine, a bad selection or a missing
secret fails here, before anything runs. Which machine runs a job, and when, is the
workers' (:mod:`.workers`) and the dispatcher's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import xxhash

from pytest_lrun.config.builds import Build, build_digest, image_tag, make_build
from pytest_lrun.config.machines import TAG_PREFIX, ImageSource, MachineResolver, resolve_image
from pytest_lrun.config.plan import Plan, PlanEntry, load_plan, select
from pytest_lrun.config.select import HostSelection, Selection, dispatched_dir, last_failed
from pytest_lrun.config.settings import DEFAULT_COMMAND, DEFAULT_TIMEOUT, REUSE_COMPLETED, Settings
from pytest_lrun.core.errors import BatchNotFound, ConfigError, RunNotFound
from pytest_lrun.report.forward import forwarded
from pytest_lrun.report.naming import dir_nodeid, shown_dir
from pytest_lrun.run.balance import balance, by_hash
from pytest_lrun.run.dispatch import Dispatcher
from pytest_lrun.run.placement import pytest_arguments_at
from pytest_lrun.run.spec import RunSpec
from pytest_lrun.session.terminal import shown_spec
from pytest_lrun.store import Run, RunStore, Status
from pytest_lrun.wire.events import Collected

# Set in a rerun's container (--lrun-flaky-attempts): which attempt it is, from 2.
ATTEMPT_ENV = "LRUN_ATTEMPT"


@dataclass(frozen=True, eq=False)
class Job:
    """What the session does with one spec: dispatch it, start it detached, or attach to a run."""

    spec: RunSpec
    attach_to: str | None = None


class JobPlanner:
    """Decides this invocation's jobs (see the module docstring); ``say`` writes a progress line.

    It keeps what the jobs share: the batch they make (``batch_id``), the host's selection of
    each spec under ``--lrun-select=host`` (``selections``), and each build's image tag.
    """

    def __init__(
        self,
        config: pytest.Config,
        settings: Settings,
        store: RunStore,
        resolver: MachineResolver,
        dispatcher: Dispatcher,
        say: Callable[[str], None],
    ) -> None:
        self.config = config
        self.settings = settings
        self.store = store
        self.batches = store.batches
        self.resolver = resolver
        self.dispatcher = dispatcher  # the shards' inner collection is a run of its own
        self.say = say
        self.batch_id: str | None = None
        self.selections: dict[RunSpec, Selection] = {}  # under --lrun-select=host
        self._build_tags: dict[Build, str] = {}  # each build's context is hashed once per invocation
        self.option_image: ImageSource | None = settings.image or self._option_build(settings.build)
        self._presentation: set[str] = set()  # the presentation options forwarded (forward.py)
        # Each pytest spec's command before its node ids, and its selection: what a rerun of some
        # of its inner tests (--lrun-flaky-attempts) is made of.
        self._rerun_bases: dict[RunSpec, tuple[tuple[str, ...], Selection]] = {}

    def _shown(self, spec: RunSpec) -> str:
        return shown_spec(spec, self.config.rootpath)

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
            self.say("--ff: inner tests run in their own order (a container keeps no pytest cache)")
            return wanted
        cache = getattr(self.config, "cache", None)
        if cache is None:
            self.say("--lf: pytest's cache is off (-p no:cacheprovider): running everything")
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
                self.say(f"--lf: {shown}: its run failed last time: running all of it")
                picked[path] = None
            elif failed:
                self.say(f"--lf: {shown}: running the {len(failed)} inner tests that failed last time")
                picked[path] = failed
            elif none_then:
                self.say(f"--lf: {shown}: nothing failed last time; not run (--lfnf=none)")
            else:
                self.say(f"--lf: {shown}: nothing failed last time: running all of it")
                picked[path] = None
        return picked

    def _sharded(self, spec: RunSpec) -> list[RunSpec]:
        """``spec`` split into its shards (``--lrun-shards``, ``--lrun-shard``), or ``[spec]``.

        Splitting needs the inner node ids: the inner collection runs first (a run of its
        own, ``--collect-only`` appended), and its node ids are dealt out (:mod:`pytest_lrun.run.balance`).
        """
        settings = self.settings
        count = settings.shards if settings.shards else self._free_slots(spec)
        if (count == 1 and settings.shard is None) or self.config.option.collectonly:
            return [spec]
        if pytest_arguments_at(spec.command) is None:
            raise ConfigError(str(spec.test_dir), "shards split the inner tests of a pytest command only")
        self.say(f"{spec.where}: {self._shown(spec)}: collecting the inner tests to split them")
        # How failures read is no part of what is collected: the collection's key leaves it out.
        base = tuple(arg for arg in spec.command if arg not in self._presentation)
        collect = replace(spec, command=(*base, "--collect-only", "-q"))
        collecting = self.dispatcher.dispatch(collect, reuse=REUSE_COMPLETED)
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
        self.say(
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
        base = inner  # the command before its node ids (under --lrun-select=host, all of it)
        if pytest_arguments_at(inner) is None:
            if nodeids:
                raise ConfigError(str(test_dir), "node ids select inner tests of a pytest command only")
        elif settings.select == "container":
            presentation = forwarded(option, inner)
            self._presentation.update(presentation)
            base = inner + presentation
            inner = base + selection.inner_arguments(machine.workdir)
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
        if pytest_arguments_at(inner) is not None and not option.collectonly:
            # Under --lrun-select=host the host keeps -k and -m: a rerun picks node ids only.
            self._rerun_bases[spec] = (base, selection if settings.select == "container" else Selection())
        return spec

    def rerun_spec(self, spec: RunSpec, nodeids: Sequence[str], attempt: int) -> RunSpec | None:
        """``spec`` again as attempt number ``attempt`` for only its inner tests ``nodeids`` (those
        that failed), selected as node id arguments select them (and shards do), on the same
        machine or tag, with ``LRUN_ATTEMPT`` in its environment; None for a spec that cannot
        select by node id (a command other than pytest, a run attached to)."""
        known = self._rerun_bases.get(spec)
        if known is None:
            return None
        base, selection = known
        picked = replace(selection, nodeids=tuple(nodeids))
        command = base + picked.inner_arguments(spec.machine.workdir)
        return replace(spec, command=command, env={**spec.env, ATTEMPT_ENV: str(attempt)})
