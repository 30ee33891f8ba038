"""One writer at a time per store.

Every writing command (``ingest``, ``put_vectors``, ``semantic-ids``, ``graph``, ``prune``) holds
this lock from its first read of the store's state to its last commit. ``WriterLock(location)``
picks the kind the store needs:

- a local folder: an ``flock`` on a file in the store. The kernel releases it when the holder
  dies (a killed ingest never leaves a stale lock behind), and the file records who holds it so
  the error can say so. ``flock`` is not reliable on network file systems.
- object storage (``s3://``, ``gs://``, ``az://``): a lease object created with a conditional
  write (put-if-absent, ``If-None-Match: *``), renewed by a heartbeat thread, deleted on release.
  A holder that dies leaves it behind until its lease runs out (``LEASE_SECONDS``); then the next
  writer replaces it, on S3 with ``If-Match`` on the stale copy's ETag so that of two writers
  racing for a stale lock only one wins. A holder whose heartbeat finds its lease taken stops
  before its next commit (``check``).

Lance's own commits on object storage rely on the same put-if-absent: two commits of one table
version cannot both succeed. A server that ignores conditional writes (some S3 clones do) makes
both unsafe, so the first lock taken on such a server probes for it and refuses with a message
(docs/storage.md, "One writer").
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from datetime import datetime, timezone

from itemlens.errors import StoreError, StoreLockedError
from itemlens.store.layout import LOCK_FILE
from itemlens.store.location import StoreLocation

#: how long an object-storage lock outlives its holder's last heartbeat
LEASE_SECONDS = float(os.environ.get("ITEMLENS_LOCK_LEASE_SECONDS", 60))


def WriterLock(location: StoreLocation):  # noqa: N802 - a factory standing in for the class it returns
    """The lock for this store: a local file lock, or an object-storage lease."""
    return LocalLock(location) if location.is_local else ObjectStoreLock(location)


def _holder(command: str | None) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join(sys.argv)[:300],
    }


def _describe(info: dict) -> str:
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} ({info.get('command', '')})"


def _locked_error(location: StoreLocation, holder: str, wait: float, extra: str = "") -> StoreLockedError:
    waited = f" after waiting {wait:g} s" if wait > 0 else ""
    return StoreLockedError(
        f"store {location.uri} is being written by another itemlens process{waited}: {holder}.{extra} "
        "Wait for it to finish, or pass --wait-for-lock SECONDS (lock_wait= in Python) to wait."
    )


class _LockBase:
    location: StoreLocation

    def __enter__(self):
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def check(self) -> None:
        """Raise if this process no longer holds the lock (an object-storage lease taken over)."""


class LocalLock(_LockBase):
    def __init__(self, location: StoreLocation):
        self.location = location
        self.path = os.path.join(location.uri, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0, command: str | None = None) -> LocalLock:
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
                    raise _locked_error(self.location, holder, wait) from None
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder(command)).encode(), 0)
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


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    return _describe(info)


class ObjectStoreLock(_LockBase):
    """A lease object at ``<store>/_itemlens_writer.lock`` (see the module docstring)."""

    _probed: set[str] = set()  # servers (per scheme and endpoint) seen to honour conditional writes

    def __init__(self, location: StoreLocation, lease_seconds: float | None = None):
        self.location = location
        self.lease = float(lease_seconds if lease_seconds is not None else LEASE_SECONDS)
        self.fs, self.path = location.filesystem(LOCK_FILE)
        self._s3 = type(self.fs).__name__ == "S3FileSystem"
        self._etag: str | None = None
        self._body: dict | None = None
        self._lost: str | None = None
        self._renewed_at: float | None = None  # monotonic time of the last write of our lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the object itself -------------------------------------------------------------------------
    def _payload(self) -> bytes:
        self._body["renewed"] = time.time()
        self._body["lease_seconds"] = self.lease
        return json.dumps(self._body).encode()

    def _create(self) -> bool:
        """Put-if-absent; False if the object exists."""
        try:
            if self._s3:
                bucket, key = self.path.split("/", 1)
                self._etag = self.fs.call_s3(
                    "put_object", Bucket=bucket, Key=key, Body=self._payload(), IfNoneMatch="*"
                )["ETag"]
            else:
                self.fs.pipe_file(self.path, self._payload(), mode="create")
            return True
        except FileExistsError:
            return False

    def _replace(self, etag: str | None) -> bool:
        """Overwrite the object if it is still the copy with ``etag`` (S3); False if it changed."""
        try:
            if self._s3:
                bucket, key = self.path.split("/", 1)
                self._etag = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self._payload(), IfMatch=etag)[
                    "ETag"
                ]
                return True
            # Without compare-and-swap (fsspec has no portable one): delete and create. Two writers
            # taking over one stale lock at the same instant could both pass; documented.
            self.fs.rm_file(self.path)
            return self._create()
        except (FileExistsError, FileNotFoundError):
            return False
        except OSError as e:
            if "PreconditionFailed" in str(e) or "412" in str(e) or "pre-conditions" in str(e):
                return False
            raise

    def _read(self) -> tuple[dict | None, str | None]:
        """The lock's holder record (None if there is no lock object; ``{}`` if it is unreadable)
        and, on S3, the ETag of that very copy, from one GET."""
        try:
            if self._s3:
                from fsspec.asyn import sync

                bucket, key = self.path.split("/", 1)

                async def get():
                    response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
                    async with response["Body"] as body:
                        return await body.read(), response.get("ETag")

                data, etag = sync(self.fs.loop, get)
            else:
                data, etag = self.fs.cat_file(self.path), None
        except FileNotFoundError:
            return None, None
        try:
            info = json.loads(data or b"{}")
        except ValueError:
            info = {}  # a torn or foreign object: treated as a lease that ran out long ago
        return (info if isinstance(info, dict) else {}), etag

    # -- the lock --------------------------------------------------------------------------------
    def acquire(self, wait: float = 0.0, command: str | None = None) -> ObjectStoreLock:
        self._body = _holder(command)
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            self._renewed_at = time.monotonic()  # the lease we may write now starts no earlier
            if self._create():
                break
            info, etag = self._read()
            if info is None:
                continue  # released between our create and read: try again
            age = time.time() - float(info.get("renewed", 0))
            if age > float(info.get("lease_seconds", self.lease)) and self._replace(etag):
                break  # its holder stopped renewing: a dead writer's lease
            if time.monotonic() >= deadline:
                expires = max(float(info.get("lease_seconds", self.lease)) - age, 0)
                raise _locked_error(
                    self.location,
                    _describe(info),
                    wait,
                    f" (its lease on object storage runs out {expires:.0f} s after its last renewal if that "
                    "process is gone)",
                )
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.05)))
        self._probe()
        self._thread = threading.Thread(target=self._heartbeat, name="itemlens-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _probe(self) -> None:
        """Refuse a server that ignores put-if-absent: neither Lance's commits nor this lock hold there."""
        endpoint = (getattr(self.fs, "client_kwargs", None) or {}).get("endpoint_url") or os.environ.get(
            "AWS_ENDPOINT_URL", ""
        )
        key = f"{type(self.fs).__name__}:{endpoint}:{self.path.split('/', 1)[0]}"
        if key in self._probed:
            return
        if self._create():  # must fail: we hold the object
            self.fs.rm_file(self.path)
            raise StoreError(
                f"the object store behind {self.location.uri} ignored a conditional write (If-None-Match: *). "
                "Lance's commits and the itemlens writer lock rely on it, so writing there is unsafe; "
                "use AWS S3, GCS, Azure, MinIO or another server that honours conditional writes "
                "(cluster/README.md, 'Where the store lives')"
            )
        self._probed.add(key)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 4):
            started = time.monotonic()
            try:
                if self._s3:
                    if not self._replace(self._etag):
                        self._lost = "another writer took over this store's lock (its lease had run out)"
                        return
                else:
                    info, _ = self._read()
                    mine = ("pid", "host", "since")
                    if info is None or [info.get(k) for k in mine] != [self._body[k] for k in mine]:
                        self._lost = "another writer took over this store's lock (its lease had run out)"
                        return
                    self.fs.pipe_file(self.path, self._payload())
                self._renewed_at = started
            except Exception as e:  # a transient error: the lease still has 3/4 of its time
                sys.stderr.write(f"itemlens: renewing the store lock failed ({type(e).__name__}); retrying\n")

    def check(self) -> None:
        if self._lost:
            raise StoreLockedError(f"store {self.location.uri}: {self._lost}; this job stops before committing")
        # renewals that keep failing (the store unreachable) let the lease run out, and another
        # writer may then take it without this one seeing it: stop while a quarter of it is left
        since = time.monotonic() - self._renewed_at if self._renewed_at is not None else 0.0
        if since > 0.75 * self.lease:
            raise StoreLockedError(
                f"store {self.location.uri}: this writer could not renew its lease for {since:.0f} s (the lease "
                f"is {self.lease:.0f} s, after which another writer may take over); this job stops before committing"
            )

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if not self._lost:
            try:
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass

    @property
    def held(self) -> bool:
        return self._thread is not None
