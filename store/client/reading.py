"""Reading a snapshot: items, ids, vectors, per-part vectors, captions and errors, looked up
through the cached id index (a hash lookup plus a numpy gather once a table is loaded)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from itemlens.errors import (
    ConfigError,
    UnknownItemsError,
)
from itemlens.store import lance_io
from itemlens.store.cache import CachedTable, load_table
from itemlens.store.layout import ABSENT, ERRORS_SCHEMA, ERRORS_TABLE, ITEMS_TABLE, value_column
from itemlens.store.snapshots import FeatureVersion

if TYPE_CHECKING:  # pragma: no cover
    pass
from itemlens.store.client.base import (
    LensBase,
    _as_ids,
    _as_output,
    _fixed_size_to_numpy,
    _strings,
    snapshot_guard,
)


class Reading(LensBase):
    @snapshot_guard
    def items(self) -> pa.Table:
        """item_id and its stable item_index, for every item the store has seen."""
        ds = self._dataset(ITEMS_TABLE)
        return (
            ds.to_table(columns=["item_id", "item_index"])
            if ds is not None
            else pa.table({"item_id": pa.array([], pa.string()), "item_index": pa.array([], pa.int64())})
        )

    @snapshot_guard
    def ids(self, name: str) -> list[str]:
        """The ids that have a value (a vector or a caption) for feature ``name``; the others
        have an errors row (``errors(name)``) or were never in a catalog."""
        ds = self._dataset(self._version(name).table)
        return ds.to_table(columns=["item_id"]).column(0).to_pylist() if ds is not None else []

    @snapshot_guard
    def errors(self, feature: str | None = None, *, absent: bool = False) -> pa.Table:
        """Items whose input failed (stage input, read, decode or encode, and a reason): for one
        feature version if named (``"image"`` is its current version, ``"image@v1"`` an older
        one), else for the current version of every feature. Items that simply lack the input
        (no photo for a song: stage ``absent``) are not failures and are left out, unless
        ``absent=True`` (then only they are listed; :meth:`absent` gives their ids)."""
        import pyarrow.compute as pc

        columns = ["feature", "item_id", "stage", "reason", "at"]
        ds = self._dataset(ERRORS_TABLE)
        if ds is None:
            return pa.schema([ERRORS_SCHEMA.field(c) for c in columns]).empty_table()
        if feature is not None:
            versions = [self._version(feature).fingerprint]
        else:
            versions = [e.versions[e.current].fingerprint for e in self.doc.features.values()]
        which = pc.field("stage") == ABSENT if absent else pc.field("stage") != ABSENT
        return ds.to_table(columns=columns, filter=lance_io.isin_filter("version", versions) & which)

    @snapshot_guard
    def absent(self, name: str) -> list[str]:
        """The ids that have no input for feature ``name`` (an empty cell, no such file named),
        recorded apart from failures."""
        return self.errors(name, absent=True).column("item_id").to_pylist()

    # -- lookups ------------------------------------------------------------------------------
    @snapshot_guard
    def vectors(self, name: str, ids: Sequence[str], *, fill: float | None = None, output: str = "numpy") -> Any:
        """Vectors of ``ids`` in their order, [len(ids), dim], in the stored dtype.

        Duplicates in ``ids`` are repeated. An id with no vector raises
        :class:`~itemlens.errors.UnknownItemsError` (a KeyError) naming it, unless ``fill`` is
        given: its row is then filled with that value (``np.nan`` to mask, ``0.0`` to zero).
        ``output``: ``"numpy"`` (default), ``"torch"`` (a tensor sharing the array), ``"arrow"``
        (a table of item_id, vector) or ``"pandas"`` (a frame indexed by item_id).
        """
        version = self._version(name)
        if version.kind != "vector":
            raise ConfigError(f"{version.qualified} holds captions: use lens.captions()")
        if version.pooling != "mean":
            raise ConfigError(f"{version.qualified} keeps one vector per image: use lens.part_vectors()")
        ids = _as_ids(ids)
        values, _ = self._lookup(version, ids, fill)
        return values if output == "numpy" else _as_output(values, _strings(ids), "vector", output)

    @snapshot_guard
    def part_vectors(self, name: str, ids: Sequence[str]) -> list[np.ndarray]:
        """Per-image vectors of ``ids`` (features with ``pooling: per_image``): one [n_i, dim] each."""
        version = self._version(name)
        if version.kind != "vector" or version.pooling == "mean":
            raise ConfigError(f"{version.qualified} has no per-image vectors: use lens.vectors()")
        dtype = np.float16 if version.dtype == "float16" else np.float32
        values, _ = self._lookup(version, _as_ids(ids), None, takes_fill=False)
        return [np.asarray(v, dtype=dtype).reshape(-1, version.dim) for v in values]

    @snapshot_guard
    def captions(self, name: str, ids: Sequence[str], *, fill: str | None = None, output: str = "list") -> Any:
        """Captions of ``ids`` in their order. ``output``: ``"list"`` (default), ``"arrow"`` or
        ``"pandas"`` (both with the model, prompt and generation settings that wrote them)."""
        version = self._version(name)
        if version.kind != "caption":
            raise ConfigError(f"{version.qualified} holds vectors, not captions: use lens.vectors()")
        ids = _as_ids(ids)
        values, _ = self._lookup(version, ids, fill)
        texts = values.tolist()
        if output == "list":
            return texts
        # what wrote them: the model, and the prompt and generation settings in effect
        model = version.spec.get("model", "")
        described = version.encoder or {}
        prompt = described.get("prompt", version.spec.get("prompt"))
        generation = json.dumps(
            {k: described[k] for k in ("max_new_tokens", "num_beams", "decoding") if k in described}, sort_keys=True
        )
        n = len(ids)
        table = pa.table(
            {
                "item_id": _strings(ids),
                "caption": pa.array(texts, pa.string()),
                "model": [model] * n,
                "prompt": [prompt] * n,
                "generation": [generation] * n,
            }
        )
        if output == "arrow":
            return table
        if output == "pandas":
            return table.to_pandas().set_index("item_id")
        raise ConfigError(f"output must be one of list, arrow, pandas; not {output!r}")

    @snapshot_guard
    def vectors_at(self, name: str, indexes: Sequence[int] | np.ndarray, *, fill: float | None = None) -> np.ndarray:
        """Vectors by the store's integer ``item_index`` (``lens.items()``), [len(indexes), dim],
        for training loops that already hold integer item ids: a gather through an index ->
        row array built once per reader (then as fast as a numpy gather when the table is
        cached; else rows are read from Lance by address). An index without a vector raises
        UnknownItemsError unless ``fill`` is given."""
        version = self._version(name)
        if version.kind != "vector" or version.pooling != "mean":
            raise ConfigError(f"{version.qualified} holds no pooled vectors: use lens.vectors() or lens.part_vectors()")
        indexes = np.asarray(indexes, dtype=np.int64)
        entry = self._entry(version)
        row_of_item = self._row_of_item(version, entry)
        if len(indexes) and 0 <= indexes.min() and indexes.max() < len(row_of_item):
            rows = row_of_item[indexes]  # the common case: two gathers, nothing else
        else:
            inside = (indexes >= 0) & (indexes < len(row_of_item))
            rows = np.where(inside, row_of_item[np.where(inside, indexes, 0)], -1)
        found = rows >= 0
        complete = bool(found.all())
        if not complete and fill is None:
            missing = list(dict.fromkeys(indexes[~found].tolist()))
            raise UnknownItemsError(version.qualified, missing, what="item index(es)")
        if entry.values is not None and len(entry.values):
            values = entry.values[rows] if complete else entry.values[np.where(found, rows, 0)]
        else:
            values = self._take(version, rows, found)
        if not complete:
            values[~found] = fill
        return values

    def _row_of_item(self, version: FeatureVersion, entry: CachedTable) -> np.ndarray:
        """item_index -> row of the table (-1: no value), once per reader and table version."""
        key = ("row_of_item", version.table, self.doc.tables.get(version.table))
        cached = self._reverse.get(key)
        if cached is None:
            items = self.items()
            rows = entry.index.rows(items.column("item_id").to_pylist()) if items.num_rows else np.zeros(0, np.int64)
            index = items.column("item_index").to_numpy()
            cached = np.full(int(index.max(initial=-1)) + 1, -1, np.int64)
            cached[index] = rows
            self._reverse[key] = cached
        return cached

    def _rows(self, version: FeatureVersion, ids: list[str]) -> np.ndarray:
        """Rows of ``ids`` in the table (-1: none) from its id index alone: the values are not
        loaded (exports read them chunk by chunk)."""
        dataset = self._dataset(version.table)
        if dataset is None:
            return np.full(len(ids), -1, np.int64)
        key = (self.location.uri, version.table, self.doc.tables[version.table])
        column = value_column(version.pooling, version.kind)
        entry = self._cache.peek(key)
        if entry is None:
            entry = self._cache.get(("ids",) + key, lambda budget: load_table(dataset, column, 0))
        return entry.index.rows(ids)

    def _lookup(
        self, version: FeatureVersion, ids: list[str], fill: Any, *, takes_fill: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values of ``ids`` (fill where missing, or raise) and a mask of those found."""
        entry = self._entry(version)
        rows = entry.index.rows(ids)
        found = rows >= 0
        complete = bool(found.all())
        if not complete and fill is None:
            self._raise_missing(version, _strings([i for i, ok in zip(ids, found) if not ok]), takes_fill)
        if entry.values is not None and len(entry.values):
            values = entry.values[rows] if complete else entry.values[np.where(found, rows, 0)]
        else:
            values = self._take(version, rows, found)
        if not complete:
            values[~found] = fill
        return values, found

    def _entry(self, version: FeatureVersion) -> CachedTable:
        dataset = self._dataset(version.table)
        column = value_column(version.pooling, version.kind)
        if dataset is None:  # nothing stored yet
            from itemlens.store.cache import IdIndex

            return CachedTable(IdIndex(pa.array([], pa.string())), None)
        key = (self.location.uri, version.table, self.doc.tables[version.table])
        return self._cache.get(key, lambda budget: load_table(dataset, column, budget))

    def _take(self, version: FeatureVersion, rows: np.ndarray, found: np.ndarray) -> np.ndarray:
        """Rows from Lance, for tables too large for the cache."""
        column = value_column(version.pooling, version.kind)
        wanted, inverse = np.unique(rows[found], return_inverse=True)
        dataset = self._dataset(version.table)
        taken = dataset.take(wanted.tolist(), columns=[column]).column(column) if len(wanted) else None
        if version.kind == "vector" and version.pooling == "mean":
            dtype = np.float16 if version.dtype == "float16" else np.float32
            out = np.zeros((len(rows), version.dim or 0), dtype)
            if taken is not None:
                out[found] = _fixed_size_to_numpy(taken, version.dim, dtype)[inverse]
            return out
        out = np.empty(len(rows), dtype=object)
        if taken is not None:
            objects = taken.to_pylist()
            for position, j in zip(np.flatnonzero(found), inverse):
                out[position] = objects[j]
        return out

    def _raise_missing(self, version: FeatureVersion, missing: list[str], takes_fill: bool = True) -> None:
        missing = list(dict.fromkeys(missing))
        detail = ""
        errors = self._dataset(ERRORS_TABLE)
        if errors is not None:
            flt = lance_io.isin_filter("item_id", missing[:5]) & (pc.field("version") == version.fingerprint)
            rows = errors.to_table(columns=["item_id", "stage", "reason"], filter=flt).to_pylist()
            if rows:
                detail = "; ".join(f"{r['item_id']!r} failed at {r['stage']}: {r['reason']}" for r in rows[:3])
        per = version.pooling.removeprefix("per_")
        noun = "caption" if version.kind == "caption" else "vector" if per == "mean" else f"vectors per {per}"
        raise UnknownItemsError(version.qualified, missing, detail=detail, noun=noun, takes_fill=takes_fill)

    @snapshot_guard
    def item_order(self) -> list[str]:
        """Item ids in the store's stable item-index order (row i = item_index i)."""
        items = self.items().sort_by("item_index")
        return items.column("item_id").to_pylist()
