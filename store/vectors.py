"""Reading a store's vectors in stable item-index order: what semantic IDs, graphs, exports and
``itemlens diff`` share."""

from __future__ import annotations

from typing import TYPE_CHECKING
import numpy as np
import pyarrow as pa
from itemlens.errors import ConfigError
from itemlens.store.layout import ITEMS_TABLE
if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.snapshots import FeatureVersion
    from itemlens.store.writer import StoreWriter


def items_in_order(writer: StoreWriter) -> pa.Table:
    """Every item id with its stable item index, in item-index order."""
    return writer.open_table(ITEMS_TABLE).to_table(columns=["item_id", "item_index"]).sort_by("item_index")


def read_vectors(writer: StoreWriter, version: FeatureVersion, table_version: int | None,
                 item_ids: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """One pooled vector feature aligned to ``item_ids``: (present [n] bool, vectors [n, d]
    float32, zero where absent, the feature's input hashes, null where absent). Column-wise
    throughout (pyarrow's hash join of the ids): graphs read 100,000s of items per refresh."""
    import pyarrow.compute as pc

    from itemlens.store import lance_io

    if version.kind != "vector" or version.pooling != "mean":
        raise ConfigError(f"semantic IDs and graphs take pooled vector features; {version.qualified} holds "
                          f"{version.kind}s per {version.pooling}")
    n = len(item_ids)
    dataset = lance_io.open_dataset(writer.location.table_uri(version.table), table_version, writer.location.options())
    if dataset is None:
        return np.zeros(n, bool), np.zeros((n, 0), np.float32), pa.nulls(n, pa.string())
    table = dataset.to_table(columns=["item_id", "vector", "input_hash"])
    column = table.column("vector").combine_chunks()
    if table.num_rows == 0:
        return np.zeros(n, bool), np.zeros((n, column.type.list_size), np.float32), pa.nulls(n, pa.string())
    rows = pc.index_in(item_ids, value_set=table.column("item_id").combine_chunks()).fill_null(-1)
    rows = rows.to_numpy(zero_copy_only=False).astype(np.int64)
    present = rows >= 0
    take = np.where(present, rows, 0)
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
    vectors = values[take].astype(np.float32, copy=False)
    if not present.all():
        vectors[~present] = 0
    hashes = table.column("input_hash").combine_chunks().take(pa.array(take))
    return present, vectors, pc.if_else(pa.array(present), hashes, pa.scalar(None, pa.string()))
