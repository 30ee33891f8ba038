"""What every part of the reader shares: the store's location and snapshot, open Lance handles
(reopened in a forked worker), the feature registry, and the guard that turns reads of a pruned
snapshot into :class:`SnapshotNotFoundError`."""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from itemlens.errors import (
    ConfigError,
    InputError,
    QueryError,
    SnapshotNotFoundError,
    UnknownFeatureError,
    UnknownItemsError,
)
from itemlens.store import lance_io
from itemlens.store.cache import DEFAULT_CACHE_BYTES, TableCache
from itemlens.store.location import StoreLocation
from itemlens.store.snapshots import FeatureVersion, SnapshotDoc, list_snapshots, read_doc

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.extractors.base import Encoder
    from itemlens.store.client.derived import _CodesEntry, _GraphEntry


@dataclass(frozen=True)
class FeatureInfo:
    """One feature version as the snapshot records it."""

    name: str
    version: str  # "v1", "v2", ...
    current: bool  # the version that ``name`` alone resolves to
    fingerprint: str
    kind: str  # "vector" or "caption"
    encoder: str
    model: str
    dim: int | None
    dtype: str
    pooling: str
    count: int  # items with a value
    errors: int  # items whose input failed (lens.errors(name))
    absent: int  # items without such an input (lens.absent(name))
    note: str | None
    spec: dict[str, Any]
    created_at: str
    index: dict[str, Any] | None = None  # vector index: kind, params, rows, recall_at_10

    @property
    def qualified(self) -> str:
        return f"{self.name}@{self.version}"


OUTPUTS = ("numpy", "torch", "arrow", "pandas")


def snapshot_guard(method):
    """Reads of a snapshot that a prune removed fail inside Lance ("manifest was not found");
    they become :class:`SnapshotNotFoundError` naming the snapshots that remain."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (ValueError, OSError) as exc:
            if not isinstance(exc, (ConfigError, QueryError, UnknownItemsError)):
                self._raise_if_pruned(exc)
            raise

    return guarded


class LensBase:
    """The reader's state; :class:`~itemlens.store.client.Lens` adds what it can do."""

    def __init__(self, location: StoreLocation, doc: SnapshotDoc, *, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.location = location
        self.doc = doc
        self.cache_bytes = cache_bytes
        self._cache = TableCache(cache_bytes)
        self._open_handles()

    def _open_handles(self) -> None:
        self._datasets: dict[tuple[str, int], Any] = {}
        self._encoders: dict[str, Encoder] = {}
        self._db = None
        self._codes: dict[tuple, _CodesEntry] = {}  # semantic IDs: small, held whole
        self._graphs: dict[tuple, _GraphEntry] = {}  # graphs as read: matrix, item order, id index
        self._reverse: dict[tuple, dict[tuple[int, ...], str]] = {}
        self._pid = os.getpid()

    def _here(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's Lance handles are unusable here
            self._open_handles()

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "doc": self.doc, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = TableCache(self.cache_bytes)
        self._open_handles()

    def __repr__(self) -> str:
        names = ", ".join(sorted(self.doc.features)) or "no features"
        return f"<Lens {self.location.uri} snapshot={self.snapshot} ({names})>"

    # -- snapshots --------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return self.location.uri

    @property
    def snapshot(self) -> int:
        """The snapshot this reader is on (0: the store has none yet)."""
        return self.doc.snapshot_id

    def _raise_if_pruned(self, exc: BaseException) -> None:
        """Raise SnapshotNotFoundError when this reader's snapshot is no longer listed."""
        if not self.snapshot:
            return
        remaining = [s["snapshot_id"] for s in list_snapshots(self.location)]
        if self.snapshot not in remaining:
            raise SnapshotNotFoundError(
                f"snapshot {self.snapshot} of {self.uri} was pruned while this reader was on it; the store has "
                f"snapshots {', '.join(map(str, remaining[-10:])) or 'none'}: call refresh() to move to the newest, "
                "or pin snapshots that readers must keep (itemlens pin)"
            ) from exc

    def snapshots(self) -> list[dict[str, Any]]:
        return list_snapshots(self.location)

    def refresh(self) -> int:
        """Move to the newest snapshot; returns its id."""
        latest = read_doc(self.location)
        if latest is not None and latest.snapshot_id != self.doc.snapshot_id:
            self.doc = latest
        return self.snapshot

    # -- what is stored ---------------------------------------------------------------------
    def features(self) -> list[FeatureInfo]:
        out = []
        for name, entry in sorted(self.doc.features.items()):
            for label, v in sorted(entry.versions.items(), key=lambda kv: int(kv[0][1:])):
                out.append(
                    FeatureInfo(
                        name=name,
                        version=label,
                        current=label == entry.current,
                        fingerprint=v.fingerprint,
                        kind=v.kind,
                        encoder=v.spec.get("encoder", ""),
                        model=v.spec.get("model", ""),
                        dim=v.dim,
                        dtype=v.dtype,
                        pooling=v.pooling,
                        count=v.count,
                        errors=v.errors,
                        absent=v.absent,
                        note=v.spec.get("note"),
                        spec=v.spec,
                        created_at=v.created_at,
                        index=v.index,
                    )
                )
        return out

    def _version(self, name: str) -> FeatureVersion:
        version = self.doc.feature_version(name)
        if version is None:
            known = ", ".join(f.qualified + (" (current)" if f.current else "") for f in self.features())
            raise UnknownFeatureError(
                f"snapshot {self.snapshot} of {self.uri} has no feature {name!r}; it has: {known or 'none'}"
            )
        return version

    def _dataset(self, table: str):
        self._here()
        version = self.doc.tables.get(table)
        if version is None:
            return None
        key = (table, version)
        if key not in self._datasets:
            self._datasets[key] = lance_io.open_dataset(
                self.location.table_uri(table), version, self.location.options()
            )
        return self._datasets[key]


def _as_output(values: np.ndarray, ids: list[str], column: str, output: str) -> Any:
    if output == "numpy":
        return values
    if output == "torch":
        import torch

        return torch.from_numpy(values)
    if output == "arrow":
        flat = pa.array(values.reshape(-1))
        return pa.table(
            {"item_id": pa.array(ids, pa.string()), column: pa.FixedSizeListArray.from_arrays(flat, values.shape[1])}
        )
    if output == "pandas":
        import pandas as pd

        return pd.DataFrame({column: list(values)}, index=pd.Index(ids, name="item_id"))
    raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}; not {output!r}")


def _unique_ids(ids: Sequence[Any]) -> list[str]:
    ids = _as_ids(ids)
    missing = sum(1 for i in ids if i is None or (isinstance(i, numbers.Real) and i != i))  # NaN of any float type
    if missing:  # str() would store the items "None" and "nan"
        raise InputError(f"{missing} ids are missing (None or NaN); every item needs an id")
    ids = _strings(ids)
    if len(set(ids)) != len(ids):
        raise InputError("ids must be unique")
    return ids


def _as_ids(ids: Sequence[Any]) -> list:
    """Ids as a list, cheaply: a list passes as it is (its non-string ids count as str(id))."""
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids must be a sequence of item ids, not a single string")
    if isinstance(ids, list):
        return ids
    if isinstance(ids, np.ndarray):
        return ids.tolist()
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        return ids.to_pylist()
    return list(ids)


def _strings(ids: list) -> list[str]:
    return [i if isinstance(i, str) else str(i) for i in ids]


def _fixed_size_to_numpy(column: pa.ChunkedArray, dim: int, dtype) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, dim).astype(dtype, copy=False)
