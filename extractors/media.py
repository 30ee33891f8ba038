"""Finding and reading media files (images, videos, audio) named by a catalog, defensively.

A catalog cell is a path (relative ones resolve against the catalog's folder) or a URI read
through fsspec (``s3://``, ``gs://``, ``file://`` ...; see :mod:`itemlens.uris` for the rules
every location follows). Reading is where a catalog can hurt a job, so every read is bounded:

* local files are opened only when they are regular files: the path's symlinks are resolved
  once, the resolved path opened without following links and without blocking (a FIFO would
  block in ``open()`` forever), and the open file checked with ``fstat``, so FIFOs, devices,
  sockets and folders are errors, whatever was swapped in between;
* a byte budget (``max_bytes``): a larger file is an error before it is read whole;
* a time budget (``timeout`` seconds per read): a read that takes longer (a stalled network
  share, an object store that stops answering) is an error. Local reads check the clock
  between chunks; remote reads run in a helper thread that is abandoned when its time is up.

Every failure is an :class:`ItemError` at stage ``read``: one errors row, the job goes on.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from dataclasses import dataclass

from itemlens.errors import LocationError
from itemlens.extractors.base import ItemError
from itemlens.uris import has_scheme, parse_location

#: default time budget of one media read, in seconds
DEFAULT_READ_TIMEOUT = 120.0
#: default byte budget of one read (the configuration's decode section sets it per kind of media)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: default limit on decoded size (width x height, also after the encoder's resize): a larger image
#: is a decompression bomb or would become one in preprocessing
DEFAULT_MAX_PIXELS = 64_000_000
#: default limit on an image's aspect ratio (longer side / shorter side)
DEFAULT_MAX_ASPECT_RATIO = 100.0
_CHUNK = 4 * 1024 * 1024

__all__ = ["DEFAULT_READ_TIMEOUT", "MediaLimits", "has_scheme", "media_key", "read_bytes", "resolve_uri"]


@dataclass(frozen=True)
class MediaLimits:
    """The bounds one kind of media is read and decoded within (the configuration's ``decode:``
    section; ``bytes_field`` is the field that set ``max_bytes``, named in messages)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    timeout: float = DEFAULT_READ_TIMEOUT
    bytes_field: str = "max_bytes"

    def read(self, uri: str) -> bytes:
        return read_bytes(uri, self.max_bytes, self.timeout, what=self.bytes_field)


def resolve_uri(value: str, base: str | None) -> str:
    """A catalog cell as a path or URI; relative paths resolve against ``base`` (the catalog's folder)."""
    if has_scheme(value) or os.path.isabs(value) or not base:
        return value
    if has_scheme(base):
        return base.rstrip("/") + "/" + value
    return os.path.normpath(os.path.join(base, value))


def _local(uri: str) -> str | None:
    """The local path of a plain path or file: URI; None for a remote URI."""
    try:
        location = parse_location(uri, what="media location")
    except LocationError as exc:
        raise ItemError("read", str(exc)) from None
    return location.path if location.is_local else None


def media_key(uri: str) -> str | None:
    """A cheap key of a file's current content, without reading it: its URI, size and
    modification time (object stores: the ETag where they give one). None when it cannot be
    had (a missing file): the caller then reads it, and meets the error there."""
    try:
        path = _local(uri)
        if path is None:
            import fsspec

            fs, remote = fsspec.core.url_to_fs(uri)
            info = fs.info(remote)
            stamp = (
                info.get("ETag")
                or info.get("etag")
                or info.get("mtime")
                or info.get("LastModified")
                or info.get("updated")
                or info.get("last_modified")
            )
            if stamp is None:
                return None  # no change stamp: only the bytes can tell
            return f"{uri}\0{info.get('size')}\0{stamp}"
        st = os.stat(path)
        return f"{uri}\0{st.st_size}\0{st.st_mtime_ns}"
    except Exception:  # missing, permissions, network: the read will say what is wrong
        return None


def read_bytes(
    uri: str, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_READ_TIMEOUT, *, what: str = "max_bytes"
) -> bytes:
    """The file's bytes within the byte and time budgets; ItemError("read", ...) when missing,
    empty, not a regular file, too large or too slow. ``what`` names the byte limit in messages
    (the configuration field that sets it)."""
    path = _local(uri)
    try:
        data = (
            _read_local(path, uri, max_bytes, timeout, what)
            if path is not None
            else _read_remote(uri, max_bytes, timeout, what)
        )
    except ItemError:
        raise
    except FileNotFoundError:
        raise ItemError("read", f"file not found: {uri}") from None
    except Exception as exc:  # permission, network, bad URI: all per-item
        raise ItemError("read", f"cannot read {uri}: {type(exc).__name__}: {exc}") from None
    if not data:
        raise ItemError("read", f"empty file (0 bytes): {uri}")
    if len(data) > max_bytes:
        raise ItemError("read", f"file larger than {what} ({max_bytes:,} bytes): {uri}")
    return data


def _read_local(path: str, uri: str, max_bytes: int, timeout: float, what: str) -> bytes:
    real = os.path.realpath(path)  # symlinks resolved once ...
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)  # ... then never followed again, and no blocking open
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ItemError("read", f"the file changed into a symbolic link while it was opened: {uri}") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ItemError("read", f"not a regular file ({_file_kind(info.st_mode)}): {uri}")
        if info.st_size > max_bytes:
            raise ItemError("read", f"file larger than {what} ({max_bytes:,} bytes): {uri}")
        deadline = time.monotonic() + timeout
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if time.monotonic() > deadline:
                raise ItemError("read", f"reading took longer than {timeout:g} s (read_timeout): {uri}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def _read_remote(uri: str, max_bytes: int, timeout: float, what: str) -> bytes:
    """An fsspec read in a daemon thread: a read past its time budget is abandoned (a thread
    cannot be stopped from outside; the stalled one ends when its connection does)."""
    import fsspec

    result: dict = {}

    def read() -> None:
        try:
            with fsspec.open(uri, "rb") as f:
                size = getattr(f, "size", None)
                if isinstance(size, int) and size > max_bytes:
                    result["error"] = ItemError("read", f"file larger than {what} ({max_bytes:,} bytes): {uri}")
                    return
                result["data"] = f.read(max_bytes + 1)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=read, name="itemlens-media-read", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ItemError("read", f"reading took longer than {timeout:g} s (read_timeout): {uri}")
    if "error" in result:
        raise result["error"]
    return result["data"]
