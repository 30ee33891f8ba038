"""Where a store lives: its root (a local folder or an object-storage URI) and storage options.

Parsing follows :mod:`itemlens.uris` (one parser for stores, catalogs and media). Lance reads
and writes the store's tables by itself; the files it does not manage (the writer lock,
staging folders) go through fsspec, whose options :func:`fsspec_options` maps from Lance's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

from itemlens.errors import LocationError, StoreError
from itemlens.uris import has_scheme, parse_location


@dataclass(frozen=True)
class StoreLocation:
    """A store's root URI (a local folder or an object-storage URI) and its storage options."""

    uri: str
    storage_options: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, uri: str | os.PathLike, storage_options: dict[str, str] | None = None) -> StoreLocation:
        """A store's location by :func:`itemlens.uris.parse_location`'s rules (file: URIs as RFC 8089
        says, no credentials or query strings in any scheme); a local store is an absolute path."""
        try:
            location = parse_location(uri, what="store URI")
        except LocationError as exc:
            raise StoreError(str(exc)) from None
        if location.scheme and location.scheme not in _FSSPEC_KEYS:
            raise StoreError(
                f"store URI {location.path}: unknown scheme {location.scheme}://; a store is a local folder "
                "(or a file:// URI) or an s3://, gs:// or az:// URI"
            )
        return cls(location.path.rstrip("/") or "/", dict(storage_options or {}))

    @property
    def is_local(self) -> bool:
        return not has_scheme(self.uri)

    def path(self, relative: str) -> str:
        return f"{self.uri}/{relative}"

    def table_uri(self, table: str) -> str:
        return self.path(f"{table}.lance")

    def options(self) -> dict[str, str] | None:
        return self.storage_options or None

    def filesystem(self, relative: str = ""):
        """An fsspec filesystem for this store and the path of ``relative`` in it (for the files
        Lance does not manage: the writer lock, staging folders)."""
        import fsspec

        uri = self.path(relative) if relative else self.uri
        scheme = urlparse(uri).scheme if not self.is_local else "file"
        return fsspec.core.url_to_fs(uri, **fsspec_options(scheme, self.storage_options))


#: Lance storage-option keys (object_store's names; case-insensitive, ``aws_``/``google_``/``azure_``
#: prefixes optional) -> the fsspec implementation's keyword. Unlisted keys are Lance's alone;
#: fsspec then falls back to the environment, as Lance does.
_FSSPEC_KEYS = {
    "s3": {
        "access_key_id": "key",
        "secret_access_key": "secret",
        "session_token": "token",
        "endpoint": "client_kwargs.endpoint_url",
        "endpoint_url": "client_kwargs.endpoint_url",
        "region": "client_kwargs.region_name",
    },
    "gs": {"service_account": "token", "service_account_path": "token", "application_credentials": "token"},
    "az": {
        "storage_account_name": "account_name",
        "account_name": "account_name",
        "storage_account_key": "account_key",
        "account_key": "account_key",
        "storage_sas_token": "sas_token",
    },
}
_FSSPEC_KEYS["gcs"] = _FSSPEC_KEYS["gs"]
_FSSPEC_KEYS["abfs"] = _FSSPEC_KEYS["az"]  # the schemes a store may have: Lance's and fsspec's both


def fsspec_options(scheme: str, storage_options: dict[str, str] | None) -> dict:
    names = _FSSPEC_KEYS.get(scheme, {})
    out: dict = {}
    for key, value in (storage_options or {}).items():
        bare = key.lower()
        for prefix in ("aws_", "google_", "azure_"):
            bare = bare.removeprefix(prefix)
        target = names.get(bare)
        if target is None:
            continue
        if "." in target:
            outer, inner = target.split(".")
            out.setdefault(outer, {})[inner] = value
        else:
            out[target] = value
    return out
