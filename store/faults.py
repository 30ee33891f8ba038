"""A test hook at every commit point of the store's writer: the fault-injection tests stop a job
right after its N-th commit (with SIGKILL, as an out-of-memory kill or a lost node would) and
check that the next run finishes the work without loss or duplicates.

Off unless the environment asks for it:

* ``ITEMLENS_COMMIT_LOG=FILE``: append the name of every commit point this process passes
  (a clean run's list tells the tests how many points there are);
* ``ITEMLENS_KILL_AT_COMMIT=N``: SIGKILL this process right after its N-th commit point;
* ``ITEMLENS_COPY_AT_COMMIT=STORE|FOLDER``: copy the local store folder STORE to
  FOLDER/<N>-<name> at every commit point: what a SIGKILL there would leave on disk, for
  every point from one run (the tests kill for real at some points and check that the copies
  and the killed stores recover alike).
"""

from __future__ import annotations

import os
import shutil
import signal

_passed = 0


def fault_point(name: str) -> None:
    """Mark a commit point: a Lance commit of data a later step or a reader depends on, just
    written (index updates, which the next merge redoes, are not commit points)."""
    global _passed
    log = os.environ.get("ITEMLENS_COMMIT_LOG")
    kill_at = os.environ.get("ITEMLENS_KILL_AT_COMMIT")
    copy = os.environ.get("ITEMLENS_COPY_AT_COMMIT")
    if not log and not kill_at and not copy:
        return
    _passed += 1
    if log:
        with open(log, "a") as f:
            f.write(f"{_passed} {name}\n")
    if copy:
        store, _, folder = copy.partition("|")
        shutil.copytree(store, os.path.join(folder, f"{_passed:03d}-{name.replace(':', '-')}"), symlinks=True)
    if kill_at and int(kill_at) == _passed:
        os.kill(os.getpid(), signal.SIGKILL)
