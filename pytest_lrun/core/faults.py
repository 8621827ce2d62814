"""Test-only crash points: where the reliability suite kills the host process on purpose.

:func:`crash_point` is called at each point of a run's life where a host killed
by SIGKILL must still leave the state honest (``tests/integration/test_crash_points.py``,
``bench/reliability.py``). With ``LRUN_TEST_CRASH_AT`` equal to the point's name,
the process sends itself SIGKILL there: no ``finally``, no ``atexit``, no flush,
as when the machine's OOM killer or a CI timeout ends it. The variable is read
once, at import; a call costs one comparison otherwise. It is not a setting:
only tests set it.

The points, in the order a run meets them: :data:`POINTS`.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "crash_point"]

#: Every crash point, in the order a run meets them.
POINTS = (
    "after_prepare",  # the run is recorded (pending); no container exists yet
    "after_create",  # the container exists and is recorded; not started
    "mid_run",  # the container runs and its first events were received
    "during_artifacts",  # the container exited; the first artifacts are written, not all
    "during_final_update",  # the terminal record is being written (between its steps)
)

_CRASH_AT = os.environ.get("LRUN_TEST_CRASH_AT")


def crash_point(name: str) -> None:
    """SIGKILL this process when ``LRUN_TEST_CRASH_AT`` is ``name``; nothing otherwise."""
    if name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)
