"""A run's evidence -- its log and artifacts -- and where every report points to it.

With a report folder (``--lrun-report-dir``; by default ``lrun-report/`` beside
``--junitxml`` or ``--html`` when one is given), each run's log
and artifacts are published to ``<report dir>/<dir>-<machine>-<short id>/`` as
``logs.txt`` and ``artifacts/...`` (hard links where the state dir's filesystem
allows, copies otherwise), and every attachment, property and link names that
copy, relative to the directory pytest was started in: uploading that folder
with the JUnit XML or HTML report is enough, and the state dir's cap may evict
the run without breaking a link. Without a report folder, reports name the
run's own files in the state dir.

A run with one artifact path (the default, ``/lrun/artifacts``) publishes that
folder's files directly under ``artifacts/``; several paths keep a folder each,
named after the path.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_lrun.core.layout import RunFiles
from pytest_lrun.store import Run

# How the report folder of a run is named: readable, and safe on every filesystem a CI uploads from.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
LOGS = "logs.txt"
ARTIFACTS = "artifacts"


@dataclass(frozen=True)
class RunEvidence:
    """Where one run's log and artifacts are (or will be, once published)."""

    log: Path
    artifacts: Path

    def files(self) -> list[Path]:
        """The log and the artifact files that exist now, the log first, artifacts sorted."""
        found = [self.log] if self.log.is_file() else []
        for dirpath, dirs, names in os.walk(self.artifacts):
            dirs.sort()
            found.extend(Path(dirpath, name) for name in sorted(names))
        return found


class Evidence:
    """The session's one answer to "where are this run's files?" (see the module docstring)."""

    def __init__(self, report_dir: Path | None, files_of: Callable[[str], RunFiles], start: Path) -> None:
        self.report_dir = report_dir
        self._files_of = files_of
        self.start = start  # the directory pytest was started in: what relative paths are relative to

    def of(self, run: Run, label: str) -> RunEvidence:
        """Where the evidence of ``run`` (of the dispatched directory ``label``) is; no disk access."""
        if self.report_dir is None:
            files = self._files_of(run.id)
            return RunEvidence(files.logs, _single_folder(files.artifacts, run))
        folder = self.report_dir / f"{_safe(label)}-{_safe(run.machine)}-{run.id.rsplit('-', 1)[-1]}"
        return RunEvidence(folder / LOGS, folder / ARTIFACTS)

    def publish(self, run: Run, label: str) -> RunEvidence:
        """Publish the run's log and artifacts to the report folder (a no-op without one).

        An ``OSError`` (a full disk, a file the gc removed meanwhile) propagates: the
        caller warns and the reports keep pointing where the files would be.
        """
        target = self.of(run, label)
        if self.report_dir is None:
            return target
        source = self._files_of(run.id)
        target.artifacts.mkdir(parents=True, exist_ok=True)
        if source.logs.is_file():
            _link_or_copy(source.logs, target.log)
        artifacts = _single_folder(source.artifacts, run)
        for dirpath, _dirs, names in os.walk(artifacts):  # never follows a link a container planted
            rel = Path(dirpath).relative_to(artifacts)
            for name in names:
                src = Path(dirpath, name)
                if stat.S_ISREG(src.lstat().st_mode):
                    (target.artifacts / rel).mkdir(parents=True, exist_ok=True)
                    _link_or_copy(src, target.artifacts / rel / name)
        return target

    def shown(self, path: Path) -> str:
        """``path`` relative to where pytest was started when it is below it, else absolute."""
        try:
            return path.relative_to(self.start).as_posix()
        except ValueError:
            return str(path)


def default_report_dir(*outputs: str | None) -> Path | None:
    """``lrun-report/`` beside the first report file given (``--junitxml``, ``--html``), its path
    expanded as pytest expands it (``~``, ``$VAR``); None when no report file is written."""
    for output in outputs:
        if output:
            return Path(os.path.expanduser(os.path.expandvars(output))).absolute().parent / "lrun-report"
    return None


def _single_folder(artifacts: Path, run: Run) -> Path:
    """The artifacts folder of a run with one artifact path is that path's own folder in it."""
    paths = run.artifacts or ()
    if len(paths) == 1:
        return artifacts / Path(paths[0].rstrip("/")).name
    return artifacts


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._")[:60] or "run"


def _link_or_copy(src: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``src`` (the state dir's files are never changed in place), or a
    copy where the two are on different filesystems; an older ``dest`` is replaced."""
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError:
        shutil.copyfile(src, dest, follow_symlinks=False)
