"""What one run is and what it gave: the spec a dispatcher runs, and its result."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_lrun.config.builds import Build
from pytest_lrun.config.machines import Machine
from pytest_lrun.config.settings import (
    DEFAULT_ARTIFACTS,
    DEFAULT_TIMEOUT,
)
from pytest_lrun.core.errors import (
    ConfigError,
)
from pytest_lrun.store import Run
from pytest_lrun.wire.events import Event
from pytest_lrun.wire.junit import CaseResult


@dataclass(frozen=True, eq=False)  # identity equality: specs key the session's outcome table
class RunSpec:
    """Everything that decides one run: a plan entry with every default applied."""

    test_dir: Path
    machine: Machine
    image: str
    """The image reference; for a build, its tag ``lrun-build:<digest of the build's inputs>``."""
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    artifacts: tuple[str, ...] = DEFAULT_ARTIFACTS
    batch_id: str | None = None
    plan_entry: str | None = None
    candidates: tuple[Machine, ...] = ()
    """For a ``tag:NAME`` target: every machine the run may be placed on (``machine`` is the first)."""
    target: str | None = None
    """What the user named when it was not one machine (``tag:NAME``)."""
    shard: str | None = None
    """``K/N`` when the spec is one shard of its directory (its node ids are in ``command``)."""
    build: Build | None = None
    """The build ``image`` is made by on a machine that does not have it yet."""
    secret_env: tuple[str, ...] = ()
    """Host env vars passed in as secrets (``--lrun-secret-env``, the plan entry's); the machine adds its
    own (:attr:`secret_names`)."""

    @property
    def pool(self) -> tuple[Machine, ...]:
        """The machines the run may go to: the candidates, or the one machine."""
        return self.candidates or (self.machine,)

    @property
    def secret_names(self) -> tuple[str, ...]:
        """Every secret the run gets, its machine's too: names only ever (the values are the host's)."""
        return tuple(sorted({*self.secret_env, *self.machine.secret_env}))

    def environment(self) -> dict[str, str]:
        """The container's environment: the machine's, the entry's, then the secrets from the host.

        :raises ConfigError: a secret is not set on this host
        """
        missing = [name for name in self.secret_names if name not in os.environ]
        if missing:
            raise ConfigError(", ".join(missing), f"a secret of {self.where} is not set in this environment")
        return {**self.machine.env, **self.env, **{name: os.environ[name] for name in self.secret_names}}

    @property
    def where(self) -> str:
        """The target as the user named it: ``tag:NAME`` or the machine."""
        return self.target or self.machine.name


@dataclass
class RunResult:
    """A terminal run plus what the report needs: how it was obtained and its inner results."""

    run: Run
    origin: str  # "created", "reused" or "cached"
    cases: list[CaseResult] | None = None  # None: the run left no JUnit XML
    events: list[Event] | None = None  # None: the run has no reporter events (no pytest, an old run)
    dropped_events: int = 0  # left out past the events file's cap


OutputSink = Callable[[RunSpec | Run, str], None]


EventSink = Callable[[Run, Sequence[Event]], None]
