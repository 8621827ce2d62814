"""What the end-to-end benchmarks share: timing one command (scripts run as ``python bench/X.py``)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of ``cmd``; a failing command stops the benchmark with its output."""
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return elapsed
