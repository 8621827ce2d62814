"""The package's exceptions: one root, stable ``code`` strings, CLI exit codes.

Every error pytest-lrun raises on purpose derives from :class:`LrunError`. The
``code`` class attribute is part of the JSON/CLI contract (it is what lands in a
run record's ``error_code`` and in ``lrun ... --json`` error output) and never
changes once released. ``exit_code`` groups the errors into the classes the
``lrun`` command line reports with distinct exit statuses.

Errors carry their data as attributes and survive pickling (they cross process
boundaries in the multi-process store tests and in user tooling).
"""

from __future__ import annotations

from typing import Any, ClassVar

# Exit statuses of the ``lrun`` command line, one per error class.
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_FOUND = 3
EXIT_BUSY = 4
EXIT_ENGINE = 5


def _rebuild(cls: type[LrunError], args: tuple[Any, ...], state: dict[str, Any]) -> LrunError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class LrunError(Exception):
    """Root of pytest-lrun's errors."""

    code: ClassVar[str] = "lrun_error"
    exit_code: ClassVar[int] = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from attributes rather than calling __init__ again, so that
        # subclasses with any constructor signature pickle faithfully.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))

    def to_dict(self) -> dict[str, Any]:
        """The error as the JSON contract shows it: ``code``, ``message`` and data."""
        data: dict[str, Any] = {"code": self.code, "message": self.message}
        for key, value in self.__dict__.items():
            if key != "message" and not key.startswith("_"):
                data[key] = value
        return data


# --- error codes of run records that no exception carries -------------------
# A run's ``error_code`` is an exception's ``code`` when one ended it, else one of these.

#: The container exited with a non-zero status (the inner tests failed).
EXIT_NONZERO = "exit_nonzero"
#: The run outlived its timeout; its container was killed.
TIMED_OUT = "timeout"
#: The kernel's OOM killer stopped the container at its memory limit.
OOM_KILLED = "oom_killed"
#: The session that watched the run was interrupted (Ctrl-C, a stopping session).
INTERRUPTED = "interrupted"
#: The pytest session that created the run stopped early (``-x``, ``--maxfail``) and no longer needed it.
SESSION_STOPPED = "session_stopped"
#: ``lrun cancel`` stopped the run.
CANCELLED = "cancelled"
#: The run's creator died before its container started.
OWNER_GONE = "owner_gone"
#: Some of what came back from the container (artifacts, the JUnit XML) was refused.
UNSAFE_ARCHIVE = "unsafe_archive"
#: The host failed to read or write a file (disk full, permissions) while handling the run.
HOST_IO_ERROR = "host_io_error"
#: pytest-lrun itself failed while handling the run (a bug: the message has the exception).
INTERNAL_ERROR = "internal_error"

#: Every code above, for documentation and tests.
RUN_CODES = (
    EXIT_NONZERO,
    TIMED_OUT,
    OOM_KILLED,
    INTERRUPTED,
    SESSION_STOPPED,
    CANCELLED,
    OWNER_GONE,
    UNSAFE_ARCHIVE,
    HOST_IO_ERROR,
    INTERNAL_ERROR,
)


# --- bad input -------------------------------------------------------------


class BadInput(LrunError, ValueError):
    """Input from a user (a path, a setting, a file) that cannot be used."""

    code = "bad_input"
    exit_code = EXIT_BAD_INPUT


class HashError(BadInput):
    """A directory could not be hashed (missing, not a directory, unreadable)."""

    code = "hash_failed"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot hash {path}: {reason}")
        self.path = path
        self.reason = reason


class ConfigError(BadInput):
    """A setting, machine table or option value is invalid; ``source`` says where it came from."""

    code = "config_invalid"

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class PlanError(BadInput):
    """A plan file is invalid; the message names the file, the entry and the field."""

    code = "plan_invalid"

    def __init__(self, path: str, reason: str, entry: str | None = None, field: str | None = None) -> None:
        where = path
        if entry is not None:
            where += f": entry {entry!r}"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.entry = entry
        self.field = field
        self.reason = reason


class ImageNotSet(BadInput):
    """No image was given by the plan entry, ``--lrun-image`` or the machine table."""

    code = "image_not_set"

    def __init__(self, machine: str) -> None:
        super().__init__(
            f"no image for machine {machine!r}: set --lrun-image (ini lrun_image, env LRUN_IMAGE), "
            f"an `image` in [tool.lrun.machines.{machine}] or in the plan entry"
        )
        self.machine = machine


class ArchiveError(BadInput):
    """A tar archive could not be built or read (a bad path, a corrupt stream, a member over its cap)."""

    code = "archive_invalid"

    def __init__(self, reason: str, name: str | None = None) -> None:
        super().__init__(f"{name}: {reason}" if name is not None else reason)
        self.name = name
        self.reason = reason


class JunitError(BadInput):
    """The JUnit XML written by an inner run is oversized or malformed."""

    code = "junit_invalid"

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid junit xml: {reason}")
        self.reason = reason


class ExtraMissing(BadInput):
    """A feature needs an optional dependency that is not installed."""

    code = "extra_missing"

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(
            f"{feature} needs the {module!r} module: install it with pip install 'pytest-lrun[{extra}]'"
        )
        self.feature = feature
        self.extra = extra
        self.module = module


class BatchPlanMismatch(BadInput):
    """A process tried to join a batch created for a different plan (its file's digest differs)."""

    code = "batch_plan_mismatch"

    def __init__(
        self,
        batch_id: str,
        batch_plan: str,
        batch_digest: str,
        plan: str,
        plan_digest: str,
        difference: str | None = None,
    ) -> None:
        if difference is None:
            message = (
                f"batch {batch_id!r} belongs to plan {batch_plan} (digest {batch_digest}), not to "
                f"{plan} (digest {plan_digest}); join it with the same plan file or use another batch id"
            )
        else:  # a shard batch, which no plan file describes: what its jobs collected differs
            message = f"batch {batch_id!r} does not match this job's shards of {plan}: {difference}"
        super().__init__(message)
        #: What differs between the batch and this job's shards (None: two plan files differ).
        self.difference = difference
        self.batch_id = batch_id
        self.batch_plan = batch_plan
        self.batch_digest = batch_digest
        self.plan = plan
        self.plan_digest = plan_digest


# --- not found -------------------------------------------------------------


class NotFound(LrunError, LookupError):
    """Something named by the user does not exist."""

    code = "not_found"
    exit_code = EXIT_NOT_FOUND


class RunNotFound(NotFound):
    code = "run_not_found"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}")
        self.run_id = run_id


class BatchNotFound(NotFound):
    code = "batch_not_found"

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch with id {batch_id!r}")
        self.batch_id = batch_id


class LogNotFound(NotFound):
    """A run's log is not in this state dir, and the store holds no copy this host can fetch."""

    code = "log_not_found"

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(f"no log of run {run_id} in this state dir: {reason}")
        self.run_id = run_id
        self.reason = reason


class UnknownMachine(NotFound):
    code = "unknown_machine"

    def __init__(self, machine: str, known: list[str], tables_from: str | None = None) -> None:
        listed = ", ".join(sorted(known)) or "(none)"
        where = f" ({tables_from})" if tables_from else ""
        super().__init__(f"unknown machine {machine!r}; known machines: {listed}{where}")
        self.machine = machine
        self.known = sorted(known)
        #: Which file the machine tables were read from, or where none was found.
        self.tables_from = tables_from


# --- busy ------------------------------------------------------------------


class MachineBusy(LrunError):
    """The machine runs a different directory hash (the single-active-run rule)."""

    code = "machine_busy"
    exit_code = EXIT_BUSY

    def __init__(
        self, machine: str, run_id: str, test_dir: str, age_s: float, waited_s: float | None = None
    ) -> None:
        busy = f"machine {machine!r} is busy with run {run_id} ({test_dir}, started {age_s:.0f}s ago)"
        if waited_s is None:
            message = f"{busy}; use --lrun-busy-wait=SECONDS to wait for it"
        else:
            message = f"{busy}; still busy after waiting {waited_s:.0f}s"
        super().__init__(message)
        self.machine = machine
        self.run_id = run_id
        self.test_dir = test_dir
        self.age_s = age_s
        self.waited_s = waited_s


class LeftRunning(LrunError):
    """This session stopped waiting for a run another process owns; the run goes on for its owner."""

    code = "left_running"

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(f"stopped waiting for run {run_id} ({reason}); it goes on for its owner")
        self.run_id = run_id


# --- engine ----------------------------------------------------------------


class EngineError(LrunError):
    """The Docker Engine refused or failed an operation."""

    code = "engine_error"
    exit_code = EXIT_ENGINE

    def __init__(self, machine: str, reason: str) -> None:
        super().__init__(f"machine {machine!r}: {reason}")
        self.machine = machine
        self.reason = reason


#: pytest's exit status when a machine's engine could not be reached, whatever the tests did:
#: sysexits' EX_TEMPFAIL ("a temporary failure; try again later"), so CI tells a fleet that is
#: down from a test that failed (exit 1) and may retry.
EXIT_ENGINE_UNREACHABLE = 75


class EngineUnreachable(EngineError):
    """The engine of a machine does not answer."""

    code = "engine_unreachable"

    def __init__(self, machine: str, url: str, reason: str) -> None:
        LrunError.__init__(
            self,
            f"machine {machine!r}: engine at {url} is unreachable: {reason}. Check that a Docker "
            f"Engine runs there and answers (`docker -H {url} info`), and the machine's host "
            "(its [tool.lrun.machines] table, Docker context or DOCKER_HOST)",
        )
        self.machine = machine
        self.url = url
        self.reason = reason


class RemoteUnreachable(EngineUnreachable):
    """The Remote Execution API service of a machine does not answer."""

    def __init__(self, machine: str, url: str, reason: str) -> None:
        LrunError.__init__(
            self,
            f"machine {machine!r}: the Remote Execution API service at {url} is unreachable: {reason}. "
            "Check that it runs and answers there, and the machine table's remote, instance_name "
            + (
                "and token_env, and its tls_* files (a closed socket is often a refused client certificate)"
                if url.startswith("grpcs://")
                else "and token_env"
            ),
        )
        self.machine = machine
        self.url = url
        self.reason = reason


class ImageMissing(EngineError):
    """The image is not on the engine and the pull policy forbids (or failed) pulling it."""

    code = "image_missing"

    def __init__(self, machine: str, image: str, reason: str, url: str | None = None) -> None:
        message = f"machine {machine!r}: image {image!r} is not available: {reason}"
        if url is not None:  # what the user can do about it
            message += (
                f". Load or build it on that engine (`docker -H {url} load -i IMAGE.tar`, "
                f"`docker -H {url} build -t {image} DIR`), let pytest-lrun build it "
                '(--lrun-build=DIR, or build = "DIR" in the machine table), or name an image '
                f"the engine has (`docker -H {url} images`)"
            )
        LrunError.__init__(self, message)
        self.machine = machine
        self.image = image
        self.reason = reason
        self.url = url


class ImagePullFailed(ImageMissing):
    """The image is not on the engine and pulling it failed (a registry down): worth a retry."""

    code = "image_pull_failed"


class ImageBuildFailed(ImageMissing):
    """The image's build on the engine failed: its runs fail before any test container starts."""

    code = "image_build_failed"

    def __init__(self, machine: str, image: str, step: str | None, error: str, tail: str, log: str) -> None:
        at = f" at {step}" if step else ""
        LrunError.__init__(
            self,
            f"machine {machine!r}: the build of image {image!r} failed{at}: {error}\n"
            f"--- build log tail ({log}) ---\n{tail}",
        )
        self.machine = machine
        self.image = image
        self.step = step
        self.error = error
        self.tail = tail
        self.log = log
        self.reason = error


class ContainerGone(EngineError):
    """The run's container vanished before its exit status was known."""

    code = "container_gone"


# --- store -----------------------------------------------------------------


class StoreError(LrunError):
    """The run store was asked for something its invariants forbid."""

    code = "store_error"


class TerminalRunError(StoreError):
    """A terminal run was asked to change status (or to be deleted while live)."""

    code = "run_terminal"

    def __init__(self, run_id: str, status: str, wanted: str) -> None:
        super().__init__(f"run {run_id} is {status}; it cannot become {wanted}")
        self.run_id = run_id
        self.status = status
        self.wanted = wanted


class CorruptRecord(StoreError):
    """A state file did not parse; it was moved aside to ``moved_to`` ("" if it could not be moved)."""

    code = "corrupt_record"

    def __init__(self, path: str, moved_to: str, reason: str) -> None:
        where = f"kept aside as {moved_to}" if moved_to else "left in place"
        super().__init__(f"corrupt state file {path} ({reason}); {where}")
        self.path = path
        self.moved_to = moved_to
        self.reason = reason


class StateFull(StoreError):
    """The state dir's file system cannot hold a new run's terminal reserve: the run is refused."""

    code = "state_full"

    def __init__(self, state_dir: str, free: int, reserve: int) -> None:
        super().__init__(
            f"the state dir {state_dir} has {free} bytes free, less than the {reserve} bytes each run keeps "
            "for its final record (--lrun-terminal-reserve-bytes): free some space (lrun gc) and run again"
        )
        self.state_dir = state_dir
        self.free = free
        self.reserve = reserve


class StoreUnreachable(StoreError):
    """The store's database did not answer, or refused us; ``location`` never holds a password."""

    code = "store_unreachable"
    exit_code = EXIT_ENGINE

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"store {location} is unreachable: {reason}")
        self.location = location
        self.reason = reason


class StoreSchemaTooNew(StoreError):
    """The database was set up by a newer pytest-lrun than this one."""

    code = "store_schema_too_new"

    def __init__(self, location: str, found: int, known: int) -> None:
        super().__init__(
            f"store {location} has schema version {found}, newer than {known}, the newest this "
            "pytest-lrun knows: upgrade pytest-lrun on this runner"
        )
        self.location = location
        self.found = found
        self.known = known


class StoreLocked(StoreError, TimeoutError):
    """A store lock (a machine's, a batch's) was not free within the lock timeout (a holder is stuck)."""

    code = "store_locked"

    def __init__(self, what: str, lock_path: str, timeout: float) -> None:
        super().__init__(f"{what}: store lock {lock_path} still held after {timeout:g}s")
        self.what = what
        self.lock_path = lock_path
        self.timeout = timeout
