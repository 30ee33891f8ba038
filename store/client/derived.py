"""Derived artifacts: semantic IDs (codes, the item holding a tuple, metrics, plots) and item
graphs (normalized matrices, neighbours, plots), and exports. A graph's matrix and id index are
built once per reader and kept, so that ``neighbors`` is a row lookup after the first call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc

from itemlens.errors import (
    InputError,
    UnknownFeatureError,
    UnknownItemsError,
)
from itemlens.store.snapshots import GraphVersion, SemanticIdVersion

if TYPE_CHECKING:  # pragma: no cover
    pass
from itemlens.store.client.base import LensBase, _as_ids, _strings, snapshot_guard


@dataclass
class _GraphEntry:
    matrix: Any  # scipy.sparse CSR [N, N], rows and columns in item-index order
    order: list[str]  # item ids in item-index order
    index: Any  # IdIndex over order: id -> row


@dataclass
class _CodesEntry:
    index: Any  # IdIndex over the active rows' item ids
    values: np.ndarray  # [rows, width] int64
    ids: list[str]


class Derived(LensBase):
    # -- semantic IDs ---------------------------------------------------------------------------
    def semantic_id_info(self, name: str) -> SemanticIdVersion:
        """The semantic-ID version ``name`` resolves to (``"sid"`` current, ``"sid@v1"`` older):
        its definition, inputs, width and metrics."""
        version = self.doc.semantic_id_version(name)
        if version is None:
            known = [f"{n}@{v}" for n, e in sorted(self.doc.semantic_ids.items()) for v in e.versions]
            raise UnknownFeatureError(
                f"snapshot {self.snapshot} of {self.uri} has no semantic IDs {name!r}; it has: "
                f"{', '.join(known) or 'none'}"
            )
        return version

    @snapshot_guard
    def semantic_ids(self, name: str, ids: Sequence[str], *, fill: int | None = None) -> np.ndarray:
        """Codes of ``ids`` in their order: int64 [len(ids), levels (+1 with the suffix)].

        An item without an ID raises UnknownItemsError (a KeyError) unless ``fill`` is given
        (``-1`` is the usual choice), which then fills its row."""
        version = self.semantic_id_info(name)
        entry = self._sid_entry(version)
        ids = _as_ids(ids)
        rows = entry.index.rows(ids)
        found = rows >= 0
        if not found.all() and fill is None:
            missing = list(dict.fromkeys(_strings([i for i, ok in zip(ids, found) if not ok])))
            raise UnknownItemsError(
                version.qualified,
                missing,
                noun="semantic ID",
                detail=f"no vector for every input of {', '.join(version.inputs.values())}, or not in this snapshot",
            )
        codes = (
            entry.values[np.where(found, rows, 0)]
            if len(entry.values)
            else np.zeros((len(ids), version.width), np.int64)
        )
        if not found.all():
            codes[~found] = fill
        return codes

    @snapshot_guard
    def item_for(self, name: str, codes: Sequence[int] | np.ndarray) -> str | list[str]:
        """The item holding a semantic ID (one tuple), or the items of many ([n, width]).
        Tuples no item holds in this snapshot (never handed out, or retired) raise KeyError."""
        version = self.semantic_id_info(name)
        array = np.asarray(codes, dtype=np.int64)
        single = array.ndim == 1
        if array.ndim not in (1, 2) or (array.size and array.shape[-1] != version.width):
            raise InputError(f"{version.qualified} IDs have {version.width} codes; got an array of shape {array.shape}")
        array = array.reshape(-1, version.width)
        key = ("reverse", version.table, self.doc.tables[version.table])
        reverse = self._reverse.get(key)
        if reverse is None:
            entry = self._sid_entry(version)
            reverse = self._reverse[key] = {tuple(row): i for i, row in zip(entry.ids, entry.values.tolist())}
        out, unknown = [], []
        for row in map(tuple, array.tolist()):
            item = reverse.get(row)
            if item is None:
                unknown.append(row)
            out.append(item)
        if unknown:
            raise UnknownItemsError(version.qualified, unknown, what="code tuple(s)", noun="item", takes_fill=False)
        return out[0] if single else out

    @snapshot_guard
    def semantic_id_plot(self, name: str) -> bytes:
        """The PNG of code usage per level, as stored with the version."""
        version = self.semantic_id_info(name)
        rows = self._dataset(version.quantizer_table).to_table(filter=pc.field("key") == "plot").to_pylist()
        return rows[0]["value"]

    def _sid_entry(self, version: SemanticIdVersion) -> _CodesEntry:
        key = ("codes", version.table, self.doc.tables[version.table])
        entry = self._codes.get(key)
        if entry is None:
            from itemlens.store.cache import IdIndex

            table = self._dataset(version.table).to_table(columns=["item_id", "codes"], filter=pc.field("active"))
            ids = table.column("item_id")
            codes = table.column("codes").combine_chunks()
            values = (
                codes.flatten().to_numpy().reshape(-1, version.width).astype(np.int64)
                if len(codes)
                else np.zeros((0, version.width), np.int64)
            )
            entry = self._codes[key] = _CodesEntry(IdIndex(ids), values, ids.to_pylist())
        return entry

    # -- graphs -----------------------------------------------------------------------------------
    def graph_info(self, name: str) -> GraphVersion:
        """The graph version ``name`` resolves to: definition, inputs, counts, statistics."""
        version = self.doc.graph_version(name)
        if version is None:
            known = [f"{n}@{v}" for n, e in sorted(self.doc.graphs.items()) for v in e.versions]
            raise UnknownFeatureError(
                f"snapshot {self.snapshot} of {self.uri} has no graph {name!r}; it has: {', '.join(known) or 'none'}"
            )
        return version

    @snapshot_guard
    def graph(self, name: str, preset: str | None = None):
        """The graph as a model reads it: (scipy.sparse.csr_matrix [N, N], item ids of its rows),
        rows and columns in item-index order, each input normalized by ``preset`` (default: the
        definition's) and fused with its weight. See itemlens.store.graphs for the presets.
        The matrix is built once per reader, graph and preset; this returns a copy of it."""
        entry = self._graph_entry(name, preset)
        return entry.matrix.copy(), list(entry.order)

    def _graph_entry(self, name: str, preset: str | None) -> _GraphEntry:
        from itemlens.store import graphs
        from itemlens.store.cache import IdIndex
        from itemlens.store.layout import ITEMS_TABLE

        version = self.graph_info(name)
        # the items table's version too: the matrix is [items, items], and a later snapshot may
        # hold more items under the same graph table version
        key = (
            version.table,
            self.doc.tables[version.table],
            self.doc.tables.get(ITEMS_TABLE),
            preset or version.spec.get("preset"),
        )
        entry = self._graphs.get(key)
        if entry is None:
            items = self.items().sort_by("item_index")
            order = items.column("item_id").combine_chunks()
            table = self._dataset(version.table).to_table()
            matrix = graphs.fused_matrix(table, version.spec, len(order), preset)
            entry = self._graphs[key] = _GraphEntry(matrix.tocsr(), order.to_pylist(), IdIndex(order))
        return entry

    @snapshot_guard
    def neighbors(
        self, name: str, ids: Sequence[str], k: int | None = None, *, preset: str | None = "cosine"
    ) -> list[list[tuple[str, float]]]:
        """Per id, its neighbours as (item_id, weight), heaviest first: cosine scores by
        default (``preset="cosine"``; several inputs are summed with their weights), or the
        weights of another preset. Ids without a list get []; unknown ids raise KeyError.
        The graph is read and normalized once per reader (then a row lookup per id)."""
        entry = self._graph_entry(name, preset)
        ids = _strings(_as_ids(ids))
        rows = entry.index.rows(ids)
        unknown = [i for i, r in zip(ids, rows) if r < 0]
        if unknown:
            raise UnknownItemsError(name, unknown, detail="not in the store", noun="neighbour list", takes_fill=False)
        matrix, order = entry.matrix, entry.order
        out = []
        for row in rows.tolist():
            cols = matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]]
            vals = matrix.data[matrix.indptr[row] : matrix.indptr[row + 1]]
            best = np.lexsort((cols, -vals))[: k if k is not None else len(cols)]
            out.append([(order[cols[j]], float(vals[j])) for j in best])
        return out

    @snapshot_guard
    def graph_plot(self, name: str) -> bytes:
        """A PNG of the in-degree histogram per input of graph ``name``."""
        from itemlens.store import graphs

        version = self.graph_info(name)
        return graphs.degree_plot(version.stats, f"{version.qualified}: k = {version.spec['k']}")

    @snapshot_guard
    def export(self, fmt: str, out: str | os.PathLike, **options: Any):
        """Write features (``mmrec``, ``npz``, ``parquet``), semantic IDs (``sid-grid``,
        ``sid-tokens``, ``sid-parquet``) or graphs (``pyg``, ``scipy-npz``, ``mmrec-adj``) in a
        format recommender code reads, rows aligned to the order of the user's own files
        (``ids=``, ``inter=``) or, where the format allows, the store's item index. Rows without
        a value are refused unless ``fill`` is given; ``model="freedom"`` (and the other MMRec
        graph models) adds the graph files that model caches. The options are those of
        :func:`itemlens.store.exports.export` (docs/exports.md). Returns an ExportReport: files,
        rows, present and filled per artifact, the order followed (also in export.json)."""
        from itemlens.store import exports

        return exports.export(self, fmt, out, **options)
