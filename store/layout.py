"""Where things live in a store, and their Arrow schemas.

A store is a LanceDB database (a local folder by default):

==============================  =============================================================
``meta``                        format version and creation info (one row per key)
``items``                       item_id -> item_index: stable, append-only, never reused
``errors``                      items that have no value for a feature version, and why
``snapshots``                   one row per published snapshot: a JSON document naming the
                                Lance version of every table it covers
``feature__<name>__<fp>``       one table per feature version (fp = spec fingerprint)
``_staging/<name>__<fp>.lance`` rows encoded by a running job, committed as it goes, merged
                                into the feature table at the end (a rerun resumes from it)
``_work/catalog_ids.lance``     the catalog's ids during an ingest (duplicate check, new ids)
==============================  =============================================================

The ``_``-prefixed folders are not LanceDB tables and are invisible to readers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pyarrow as pa

from itemlens.errors import StoreError

FORMAT_VERSION = 2         # 2: media_key beside input_hash (refresh compares it before reading media)

META_TABLE = "meta"
ITEMS_TABLE = "items"
ERRORS_TABLE = "errors"
SNAPSHOTS_TABLE = "snapshots"
WORK_IDS_PATH = "_work/catalog_ids.lance"
LOCK_FILE = "_itemlens_writer.lock"

FEATURE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

TIMESTAMP = pa.timestamp("us", tz="UTC")

META_SCHEMA = pa.schema([("key", pa.string()), ("value", pa.string())])
ITEMS_SCHEMA = pa.schema([
    pa.field("item_id", pa.string()),
    pa.field("item_index", pa.int64()),
    pa.field("first_seen", TIMESTAMP),
])
ERRORS_SCHEMA = pa.schema([
    pa.field("feature", pa.string()),
    pa.field("version", pa.string()),      # the feature version's fingerprint
    pa.field("item_id", pa.string()),
    pa.field("stage", pa.string()),                        # input | read | decode | encode
    pa.field("reason", pa.string()),
    pa.field("input_hash", pa.string()),
    pa.field("media_key", pa.string()),
    pa.field("at", TIMESTAMP),
])
SNAPSHOTS_SCHEMA = pa.schema([
    pa.field("snapshot_id", pa.int64()),
    pa.field("created_at", TIMESTAMP),
    pa.field("doc", pa.string()),
])
WORK_IDS_SCHEMA = pa.schema([
    pa.field("item_id", pa.string()),
    pa.field("row_hash", pa.int64()),
])


def feature_table(name: str, fingerprint: str) -> str:
    return f"feature__{name}__{fingerprint}"


def staging_path(name: str, fingerprint: str) -> str:
    return f"_staging/{name}__{fingerprint}.lance"


def vector_type(dtype: str, dim: int) -> pa.DataType:
    value = {"float32": pa.float32(), "float16": pa.float16()}[dtype]
    return pa.list_(value, dim)


def feature_fields(dtype: str, dim: int | None, pooling: str, kind: str = "vector") -> list[pa.Field]:
    """Columns of a feature table: one row per item, its value (a vector, per-image vectors,
    or a caption) and where it came from."""
    if kind == "caption":
        value = pa.field("caption", pa.string())
    elif pooling == "mean":
        value = pa.field("vector", vector_type(dtype, dim))
    else:
        value = pa.field("vectors", pa.list_(vector_type(dtype, dim)))
    return [
        pa.field("item_id", pa.string()),
        value,
        pa.field("n_parts", pa.int32()),          # inputs behind the value (images pooled; 1 for text)
        pa.field("input_hash", pa.string()),      # what the value was computed from
        pa.field("media_key", pa.string()),       # media only: URI, size and mtime/ETag, compared before reading
        pa.field("fingerprint", pa.string()),     # the feature version (spec) that computed it
        pa.field("computed_at", TIMESTAMP),
    ]


def staging_schema(dtype: str, dim: int | None, pooling: str, kind: str = "vector") -> pa.Schema:
    """A feature table's columns plus the outcome of items that failed and the run that staged them."""
    return pa.schema(feature_fields(dtype, dim, pooling, kind) + [
        pa.field("error_stage", pa.string()),
        pa.field("error_reason", pa.string()),
        pa.field("run_id", pa.string()),
    ])


def value_column(pooling: str, kind: str = "vector") -> str:
    if kind == "caption":
        return "caption"
    return "vector" if pooling == "mean" else "vectors"


@dataclass(frozen=True)
class StoreLocation:
    """A store's root URI (a local folder or an object-storage URI) and its storage options."""

    uri: str
    storage_options: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, uri: str | os.PathLike, storage_options: dict[str, str] | None = None) -> StoreLocation:
        text = os.fspath(uri)
        if text.startswith("file://"):
            text = text[len("file://"):]
        parsed = urlparse(text)
        if len(parsed.scheme) > 1 and "@" in parsed.netloc:
            # a URI is printed in logs and reports: credentials belong in storage options or the environment
            raise StoreError(f"store URI {parsed.scheme}://...@{parsed.netloc.rsplit('@', 1)[1]}{parsed.path} "
                             "carries credentials; pass them as storage options (the config's "
                             "storage_options) or in the environment instead")
        if len(parsed.scheme) <= 1:  # a plain path (or a Windows drive letter)
            text = os.path.abspath(os.path.expanduser(text))
        return cls(text.rstrip("/") or "/", dict(storage_options or {}))

    @property
    def is_local(self) -> bool:
        return len(urlparse(self.uri).scheme) <= 1

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
    "s3": {"access_key_id": "key", "secret_access_key": "secret", "session_token": "token",
           "endpoint": "client_kwargs.endpoint_url", "endpoint_url": "client_kwargs.endpoint_url",
           "region": "client_kwargs.region_name"},
    "gs": {"service_account": "token", "service_account_path": "token", "application_credentials": "token"},
    "az": {"storage_account_name": "account_name", "account_name": "account_name",
           "storage_account_key": "account_key", "account_key": "account_key", "storage_sas_token": "sas_token"},
}
_FSSPEC_KEYS["gcs"] = _FSSPEC_KEYS["gs"]
_FSSPEC_KEYS["abfs"] = _FSSPEC_KEYS["az"]


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
