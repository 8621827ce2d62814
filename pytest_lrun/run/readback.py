"""What a run's container gives back, written into the run's folder.

The folder is a :class:`~pytest_lrun.core.layout.RunFiles`.

Split out of :mod:`pytest_lrun.run.dispatch`, whose :class:`~pytest_lrun.run.dispatch.Dispatcher`
calls it while it watches a container to its end (its ``_finish``):

* the output as it streams (:func:`pump_logs` into a :class:`RunOutput`): the
  inner reporter's events (the run's token) go to ``events.jsonl`` and to the
  live reports, the rest to the redacted, capped log and to the live display;
* the engine's stored log once the container stopped, when the follow stream
  ended short of it (:func:`respool`);
* the inner JUnit XML (as the inner reporter sent it, else the container's file)
  and the artifacts, read back through the Engine's archive API and extracted
  under caps (:func:`collect`). Each archive read costs a Docker Engine a mount
  and a tar process: an artifacts dir the upload shipped empty is read only when
  the engine's stat says something was made in it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_lrun.core.errors import EngineError, LrunError
from pytest_lrun.core.faults import crash_point
from pytest_lrun.core.fsutil import ENTRY_BYTES, atomic_write_bytes, remove_tree
from pytest_lrun.core.layout import RunFiles
from pytest_lrun.engine import Engine
from pytest_lrun.run.logs import EventSpool, LogSpool, redact_xml
from pytest_lrun.run.placement import LRUN_DIRS
from pytest_lrun.store import Run
from pytest_lrun.tree.archive import EMPTY_DIR_MTIME
from pytest_lrun.tree.extract import MAX_EXTRACT_ENTRIES, ExtractResult, safe_extract
from pytest_lrun.tree.tarstream import read_member
from pytest_lrun.wire.events import Event, EventParser, JunitXml
from pytest_lrun.wire.junit import parse_junit

JUNIT_PATH = "/lrun/out/junit.xml"
SHIPPED_EMPTY = frozenset(f"/{path}" for path in LRUN_DIRS)  # dirs every upload carries, empty
JUNIT_MAX_BYTES = 64 * 1024 * 1024
ARTIFACTS_MAX_BYTES = 512 * 1024 * 1024


class RunOutput:
    """A run's output as it streams: its events (the run's token) to ``events.jsonl``, the rest to the log."""

    def __init__(
        self, logs: Path, events: Path, run: Run, max_bytes: int, secrets: list[str], *, fresh: bool
    ) -> None:
        self._log = LogSpool(logs, max_bytes=max_bytes, secrets=secrets, fresh=fresh)
        self._parser = EventParser(run.event_token) if run.event_token else None
        self._events = (
            EventSpool(events, max_bytes=max_bytes, secrets=secrets, fresh=fresh) if run.event_token else None
        )
        self.received = 0
        """The engine's bytes taken so far, before any parse or redaction (what :func:`respool` compares)."""

    def write(self, chunk: bytes) -> tuple[bytes, tuple[Event, ...]]:
        """Take ``chunk``; returns the redacted complete log lines it completed (for live display)
        and the events it completed (for live reports)."""
        self.received += len(chunk)
        if self._parser is None or self._events is None:
            return self._log.write(chunk), ()
        parsed = self._parser.feed(chunk)
        events = self._events.write(parsed.events)  # redacted: what the host reports never shows a secret
        return self._log.write(parsed.output), tuple(events)

    @property
    def junit(self) -> JunitXml | None:
        """The JUnit XML the inner reporter sent, if it did (:func:`collect` then reads no file)."""
        return None if self._parser is None else self._parser.junit

    @property
    def lost(self) -> bool:
        """Whether output was dropped because the state dir's file system was full."""
        return self._log.lost or (self._events is not None and self._events.lost)

    def close(self) -> None:
        if self._parser is not None and self._events is not None:
            parsed = self._parser.close()
            self._events.write(parsed.events)
            self._log.write(parsed.output)
            self._events.close()
        self._log.close()


def pump_logs(
    run: Run,
    engine: Engine,
    spool: RunOutput,
    on_events: Callable[[Run, Sequence[Event]], None] | None,
    on_output: Callable[[Run, str], None] | None,
) -> None:
    """Follow the container's log into ``spool`` until it ends, passing what it completes on."""
    assert run.container_id is not None
    try:
        for chunk in engine.logs(run.container_id, follow=True):
            shown, events = spool.write(chunk)
            if events and on_events is not None:
                crash_point("mid_run")
                on_events(run, events)
            if shown and on_output is not None:
                on_output(run, shown.decode("utf-8", "replace"))
    except EngineError:
        pass  # the container ended or vanished: the waiter decides the status


def respool(
    files: RunFiles, run: Run, engine: Engine, max_bytes: int, secrets: list[str], delivered: int
) -> None:
    """Rewrite the log and the events from the stopped container's complete log, if it is longer.

    A follow stream opened on a container that exits at once can end before
    its last output (seen with Docker 20.10); the engine's stored log is whole.
    The stored log is counted first, and only when it has more bytes than the
    follow stream ``delivered`` is it read again to be parsed and written: in
    the common case, a run's end costs one read and no parse.
    """
    assert run.container_id is not None
    try:
        stored = sum(map(len, engine.logs(run.container_id, follow=False)))
    except EngineError:
        return  # keep what the follow stream gave
    if stored <= delivered:
        return
    paths = (files.logs, files.events)
    # Leftover names the sweep knows, should this process die before the rename.
    logs, events = (path.with_name(f".{path.name}.respool.tmp") for path in paths)
    spool = RunOutput(logs, events, run, max_bytes, secrets, fresh=True)
    try:
        for chunk in engine.logs(run.container_id, follow=False):
            spool.write(chunk)
    except EngineError:
        spool.close()
        for fresh in (logs, events):
            fresh.unlink(missing_ok=True)  # keep what the follow stream gave
        return
    spool.close()
    if spool.lost:  # a full disk cut the rewrite short: what the follow stream gave is more
        for fresh in (logs, events):
            fresh.unlink(missing_ok=True)
        return
    for fresh, path in zip((logs, events), paths, strict=True):
        if fresh.exists():
            os.replace(fresh, path)


def collect(
    files: RunFiles,
    run: Run,
    engine: Engine,
    *,
    secrets: Sequence[str] = (),
    junit: JunitXml | None = None,
) -> list[tuple[str, str]]:
    """Read the inner JUnit XML (``secrets`` masked) and the artifacts back; returns what was refused.

    ``junit`` is the XML the inner reporter sent, if it did: then no file is read for it. A JUnit
    XML the report could not read is refused here, so the refusal is on the run's record, and
    the artifacts are read all the same.
    """
    assert run.container_id is not None
    refused: list[tuple[str, str]] = []
    try:
        data = junit.xml.encode("utf-8") if junit is not None and junit.path == JUNIT_PATH else None
        if data is None:
            chunks = engine.get_archive(run.container_id, JUNIT_PATH)
            if chunks is not None:
                data = read_member(chunks, Path(JUNIT_PATH).name, max_bytes=JUNIT_MAX_BYTES)
        if data is not None:
            parse_junit(data)
            # Renamed into place: a symlink planted where junit.xml goes is replaced, never followed.
            atomic_write_bytes(files.junit, redact_xml(data, secrets))
    except EngineError:
        raise  # the engine failed the read, not the archive its content: the run ends with it
    except LrunError as e:
        refused.append((JUNIT_PATH, str(e)))
    dest = files.artifacts
    # What a collection cut short (its host killed) left is replaced whole: merged, its files would be
    # refused as already there, and the completed run would fail with unsafe_archive.
    remove_tree(dest)
    # One budget per run, however many paths it declares: each extraction gets what is left
    # (an entry counted at a block, so a budget is never overspent).
    budget_bytes, budget_entries = ARTIFACTS_MAX_BYTES, MAX_EXTRACT_ENTRIES
    for path in run.artifacts or ():
        if path in SHIPPED_EMPTY and engine.untouched(run.container_id, path, EMPTY_DIR_MTIME):
            continue  # shipped empty and nothing made in it: a read would cost the engine a tar
        chunks = engine.get_archive(run.container_id, path)
        if chunks is None:
            continue
        dest.mkdir(parents=True, exist_ok=True)
        result: ExtractResult = safe_extract(
            chunks, dest, max_bytes=max(0, budget_bytes), max_entries=max(0, budget_entries)
        )
        refused.extend(result.refused)
        crash_point("during_artifacts")
        budget_bytes -= result.bytes_written + result.entries * ENTRY_BYTES
        budget_entries -= result.entries
    return refused
