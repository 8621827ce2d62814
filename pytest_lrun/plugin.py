"""pytest wiring only: options, hook specs, and the session plugin when switched on.

The work happens in :class:`pytest_lrun.session.session.LrunSession`, which is
registered only when ``--lrun-machine``, ``--lrun-plan`` or ``--lrun-attach``
(or their ini/env twins) turn dispatching on.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_lrun import hookspecs
from pytest_lrun.config.select import dispatched_dir
from pytest_lrun.config.settings import OPTIONS, Settings, flag_type, resolve
from pytest_lrun.config.values import redact_url
from pytest_lrun.core.errors import LrunError

SETTINGS_KEY = pytest.StashKey[Settings]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lrun", "pytest-lrun: dispatch test directories to Docker Engines")
    for option in OPTIONS:
        kwargs: dict[str, Any] = {"dest": f"lrun_{option.name}", "help": f"{option.help} [env {option.env}]"}
        if option.flag_kind == "flag":
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=flag_type(option), metavar=option.metavar)
            if option.flag_kind == "append":
                kwargs["action"] = "append"
        group.addoption(option.flag, **kwargs)
        parser.addini(option.ini, help=option.help, default=None)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> Generator[None, object, object]:
    """Keep pytest from importing a dispatched directory's own conftest.py on the host.

    pytest imports ``conftest.py`` of each directory argument (and of its ``test*``
    subdirectories) at start-up, before any collection hook can step in. A
    dispatched directory's conftest belongs to the container and may import what
    only the image has. While pytest loads these initial conftests, each directory
    argument is swapped for a file beside it: its parents' conftests load as before.
    """
    namespace = early_config.known_args_namespace
    if not _dispatches_directory_args(early_config):
        return (yield)
    given = namespace.file_or_dir
    where = (early_config.invocation_params.dir, early_config.rootpath)
    namespace.file_or_dir = [_anchor_beside(arg, *where) for arg in given]
    try:
        return (yield)
    finally:
        namespace.file_or_dir = given


def _dispatches_directory_args(early_config: pytest.Config) -> bool:
    namespace = early_config.known_args_namespace
    machine = getattr(namespace, "lrun_machine", None) or os.environ.get("LRUN_MACHINE")
    return bool(machine or _ini(early_config, "lrun_machine")) and bool(namespace.file_or_dir)


def _anchor_beside(arg: str, invocation_dir: Path, rootpath: Path) -> str:
    """A file beside the directory ``arg`` dispatches, or in the nearest folder above it that
    holds one: pytest's anchor for the host's conftests, never the directory or a file in it.

    Never a folder either: pytest also imports the conftest of each ``test*`` subdirectory of a
    folder anchor, and those are the dispatched directory's siblings. A folder without files
    holds no conftest, so the nearest one above with a file brings the same conftests.
    """
    try:
        path, _ = dispatched_dir(arg, invocation_dir, rootpath)
    except LrunError:
        return arg  # the session reports it as a usage error
    for folder in path.parents:
        try:
            files = sorted(child for child in folder.iterdir() if child.is_file())
        except OSError:  # a folder above that this user may not list
            continue
        if files:
            return str(files[0])
    return str(path.parent)


def pytest_configure(config: pytest.Config) -> None:
    try:
        settings = resolve(
            {option.name: config.getoption(f"lrun_{option.name}") for option in OPTIONS},
            lambda key: _ini(config, key),
        )
    except LrunError as e:
        raise pytest.UsageError(f"pytest-lrun: {e}") from e
    config.stash[SETTINGS_KEY] = settings
    if settings.enabled:
        from pytest_lrun.session.session import LrunSession

        try:
            session = LrunSession(config, settings)
        except LrunError as e:
            raise pytest.UsageError(f"pytest-lrun: {e}") from e
        config.pluginmanager.register(session, "lrun-session")
        session.register_sinks()


def pytest_lrun_run_finished(spec: Any, outcome: Any, config: pytest.Config) -> None:
    """Say how to ship the project root when a run's inner collection missed the package above it."""
    from pytest_lrun.report.hints import shipping_hint

    hint = shipping_hint(spec, outcome, config.rootpath)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if hint is not None and reporter is not None:
        reporter.write_line(f"lrun: hint: {hint}")


def pytest_report_header(config: pytest.Config) -> str | None:
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None or not settings.enabled:
        return None
    what = f"machine={settings.machine}" if settings.machine else f"plan={settings.plan}"
    return (
        f"lrun: {what}, image={settings.image or '(machine default)'}, reuse={settings.reuse}, "
        f"state={settings.resolved_state_dir()}"
        + (f", store={redact_url(settings.store)}" if settings.store else "")
    )


def _ini(config: pytest.Config, key: str) -> str | None:
    value = config.getini(key)
    return None if value in (None, "", []) else str(value)
