"""An item co-occurrence input from interactions (MMHCL, REARM): per item, the items that the
same users' histories share, top-N by count (ties by item index)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from itemlens.errors import ConfigError
from itemlens.store.graphs.spec import InteractionsSpec
from itemlens.store.graphs.storage import GRAPH_SCHEMA

if TYPE_CHECKING:  # pragma: no cover
    pass


def _read_interactions(spec: InteractionsSpec) -> pa.Table:
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    path = spec.path
    if path.endswith(".parquet") or path.endswith(".pq"):
        table = pq.read_table(path)
    elif path.endswith((".jsonl", ".json")):
        table = pjson.read_json(path)
    elif path.endswith((".csv", ".tsv", ".txt")):
        options = pcsv.ParseOptions(delimiter="\t" if path.endswith((".tsv", ".txt")) else ",")
        # ids stay text: "0001" must not become the integer 1, which no stored id equals
        text_ids = pcsv.ConvertOptions(column_types={spec.user_column: pa.string(), spec.item_column: pa.string()})
        table = pcsv.read_csv(path, parse_options=options, convert_options=text_ids)
    else:
        raise ConfigError(f"interactions file {path!r}: use .parquet, .jsonl or .csv/.tsv")
    for column in (spec.user_column, spec.item_column):
        if column not in table.column_names:
            raise ConfigError(
                f"interactions file {path!r} has no column {column!r} (it has {', '.join(table.column_names)})"
            )
    return table


def cooccurrence_lists(spec: InteractionsSpec, index_of: dict[str, int]) -> pa.Table:
    """Per item, the top-N items most often in the same users' histories (counts as scores;
    ties by item index)."""
    import scipy.sparse as sp

    table = _read_interactions(spec)
    users = pa.compute.cast(table.column(spec.user_column), pa.string()).to_pylist()
    items = pa.compute.cast(table.column(spec.item_column), pa.string()).to_pylist()
    pairs = {(u, index_of[i]) for u, i in zip(users, items) if i in index_of}  # known items, deduplicated
    if not pairs:
        return GRAPH_SCHEMA.empty_table().drop_columns(["feature"])
    user_ids = {u: n for n, u in enumerate(sorted({u for u, _ in pairs}))}
    rows = np.array([user_ids[u] for u, _ in pairs])
    cols = np.array([i for _, i in pairs])
    size = max(index_of.values()) + 1
    b = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(user_ids), size))
    c = (b.T @ b).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    by_index = {v: k for k, v in index_of.items()}
    out_ids, out_index, neighbors, counts = [], [], [], []
    for i in np.flatnonzero(np.diff(c.indptr)).tolist():
        cols_i = c.indices[c.indptr[i] : c.indptr[i + 1]]
        vals_i = c.data[c.indptr[i] : c.indptr[i + 1]]
        order = np.lexsort((cols_i, -vals_i))[: spec.top_n]
        out_ids.append(by_index[i])
        out_index.append(i)
        neighbors.append(cols_i[order].astype(np.int64).tolist())
        counts.append(vals_i[order].astype(np.float32).tolist())
    return pa.table(
        {
            "item_id": pa.array(out_ids, pa.string()),
            "item_index": pa.array(out_index, pa.int64()),
            "neighbors": pa.array(neighbors, pa.list_(pa.int64())),
            "scores": pa.array(counts, pa.list_(pa.float32())),
            "exact": pa.array([len(c) for c in counts], pa.int32()),
            "source_hash": pa.array([""] * len(out_ids), pa.string()),
        }
    )
