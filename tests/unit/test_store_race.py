"""The file store's machine lock against a holder in another process.

The races every backend must win (processes and threads contending in ``prepare``,
a SIGKILLed holder) are in test_store_contract.py. Every wait here is bounded and
the child is always reaped in ``finally``.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from lrun_procs import WAIT_S, StoreSpec, hold_prepare_until_killed, reap_processes

from pytest_lrun.core.errors import StoreLocked
from pytest_lrun.store import Run
from pytest_lrun.store.files import FileStore

CTX = multiprocessing.get_context("spawn")


@pytest.mark.timeout(120)
def test_a_machine_lock_held_too_long_is_store_locked(tmp_path: Path) -> None:
    """A caller gives up after ``lock_timeout`` (a SIGKILLed holder frees it: test_store_contract.py)."""
    spec = StoreSpec("files", str(tmp_path / "state"))
    holding = CTX.Event()
    proc = CTX.Process(target=hold_prepare_until_killed, args=(spec, holding), daemon=True)
    try:
        proc.start()
        assert holding.wait(WAIT_S), "the child never took the lock"
        with pytest.raises(StoreLocked) as info:
            FileStore(spec.state_dir, lock_timeout=0.3).prepare("m", "k", lambda: Run(test_dir="/t"))
        assert info.value.what == "machine 'm'"
    finally:
        proc.kill()
        reap_processes([proc])
