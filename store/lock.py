"""One writer at a time per store.

Every writing command (``ingest``, ``put_vectors``) holds this lock from its first read of
the store's state to its last commit. On a local folder it is an ``flock`` on a file in
the store: the kernel releases it when the holder dies (a killed ingest never leaves a
stale lock behind), and the file records who holds it so the error can say so. ``flock``
is not reliable on network file systems; object-storage stores need a lock of their own
(not built yet: such stores are read-only in this version).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime, timezone

from itemlens.errors import StoreError, StoreLockedError
from itemlens.store.layout import LOCK_FILE, StoreLocation


class WriterLock:
    def __init__(self, location: StoreLocation):
        if not location.is_local:
            raise StoreError(
                f"cannot write to {location.uri}: writing to object storage needs a store-level lock "
                "that this version does not have yet; write to a local folder (reading from object "
                "storage works)")
        self.location = location
        self.path = os.path.join(location.uri, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0, command: str | None = None) -> WriterLock:
        """Take the lock, waiting up to ``wait`` seconds for another writer to finish."""
        import fcntl

        os.makedirs(self.location.uri, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    waited = f" after waiting {wait:g} s" if wait > 0 else ""
                    raise StoreLockedError(
                        f"store {self.location.uri} is being written by another itemlens process{waited}: "
                        f"{holder}. Wait for it to finish, or pass --wait-for-lock SECONDS "
                        "(lock_wait= in Python) to wait.") from None
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command or " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WriterLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} "
            f"({info.get('command', '')})")
