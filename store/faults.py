"""A test hook at every commit point of the store's writer: the fault-injection tests kill a
job right after its N-th commit (with SIGKILL, as an out-of-memory kill or a lost node would)
and check that the next run finishes the work without loss or duplicates.

Off unless the environment asks for it:

* ``ITEMLENS_COMMIT_LOG=FILE``: append the name of every commit point this process passes
  (a clean run's list tells the tests how many points there are);
* ``ITEMLENS_KILL_AT_COMMIT=N``: SIGKILL this process right after its N-th commit point.
"""

from __future__ import annotations

import os
import signal

_passed = 0


def fault_point(name: str) -> None:
    """Mark a commit point (a Lance commit, or a file the store depends on, just written)."""
    global _passed
    log = os.environ.get("ITEMLENS_COMMIT_LOG")
    kill_at = os.environ.get("ITEMLENS_KILL_AT_COMMIT")
    if not log and not kill_at:
        return
    _passed += 1
    if log:
        with open(log, "a") as f:
            f.write(f"{_passed} {name}\n")
    if kill_at and int(kill_at) == _passed:
        os.kill(os.getpid(), signal.SIGKILL)
