"""One parser for the locations itemlens is given: stores, catalogs and media.

A location is a plain path (``./lens``, ``/data/lens``), a ``file:`` URI, or an object-storage
URI (``s3://bucket/lens``, ``gs://``, ``az://``, ...). The rules, the same everywhere:

* ``file:`` URIs follow RFC 8089: ``file:///abs/path``, ``file://localhost/abs/path`` and
  ``file:/abs/path`` name the local ``/abs/path`` (percent-escapes decoded); a ``file:`` URI
  naming another host is refused (mount it and give the path).
* No URI may carry credentials (``s3://KEY:SECRET@bucket``, ``file://user:pw@localhost/``):
  locations are printed in logs, job reports and the store's snapshot documents, so secrets go
  in storage options or the environment. The refusal never repeats the secret.
* Query strings and fragments are refused: options travel as options, not in the location.

Used by :class:`itemlens.store.location.StoreLocation` (stores), the catalog reader and the
media reader (:mod:`itemlens.extractors.media`), so that a ``file://`` store, catalog and image
all mean the same file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from itemlens.errors import LocationError

#: hosts a ``file:`` URI may name for this machine (RFC 8089: empty or "localhost")
_LOCAL_HOSTS = ("", "localhost")


@dataclass(frozen=True)
class Location:
    """A parsed location: ``scheme`` is ``""`` for a local path (then ``path`` is absolute)."""

    scheme: str
    path: str  # local: an absolute path; remote: the whole URI without credentials

    @property
    def is_local(self) -> bool:
        return not self.scheme


def has_scheme(text: str) -> bool:
    """True for ``s3://...`` or ``file:...``; False for plain paths (also Windows drives, ``C:``)."""
    scheme = urlsplit(text).scheme
    return len(scheme) > 1


def parse_location(value: str | os.PathLike, *, what: str = "location", base: str | None = None) -> Location:
    """Parse ``value`` by the rules above. A relative local path resolves against ``base`` (or
    the working directory); ``~`` expands."""
    text = os.fspath(value)
    if not has_scheme(text):
        path = os.path.expanduser(text)
        if base is not None and not os.path.isabs(path):
            path = os.path.join(base, path)
        return Location("", os.path.abspath(path))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        raise LocationError(
            f"{what} {scheme}://...@{host}{parts.path} carries credentials; pass them as storage options "
            "(the config's storage_options) or in the environment instead"
        )
    if parts.query or parts.fragment:
        raise LocationError(
            f"{what} {scheme}://{parts.netloc}{parts.path} has a query string or fragment "
            f"({'?' + parts.query if parts.query else '#' + parts.fragment}); give the plain "
            "location and pass options separately"
        )
    if scheme == "file":
        if parts.netloc.lower() not in _LOCAL_HOSTS:
            raise LocationError(
                f"{what} {text} names the host {parts.netloc!r}: a file: URI must name this machine "
                "(file:///path or file://localhost/path); mount the other machine's folder and give its path"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise LocationError(f"{what} {text}: a file: URI needs an absolute path (file:///abs/path)")
        return Location("", os.path.normpath(path))
    if not parts.netloc:
        raise LocationError(f"{what} {text} has no bucket or host after {scheme}://")
    return Location(scheme, text)


def local_path(value: str) -> str | None:
    """The local path a plain path or ``file:`` URI names (None for a remote URI)."""
    location = parse_location(value)
    return location.path if location.is_local else None
