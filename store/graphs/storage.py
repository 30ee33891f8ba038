"""How a graph's lists are stored: one row per (input feature, item) in ``graph__<name>__<v>``
with the neighbours' item indexes, best first, their scores, how many of them are known exact,
and the hash of the item's input vector; one Lance commit per build or refresh."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from itemlens.store.faults import fault_point

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.writer import StoreWriter


GRAPH_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("item_index", pa.int64()),
        pa.field("neighbors", pa.list_(pa.int64())),  # item indexes, best first
        pa.field("scores", pa.list_(pa.float32())),  # cosine (co-occurrence: counts)
        pa.field("exact", pa.int32()),  # leading entries known to be the exact top
        pa.field("source_hash", pa.string()),  # the input hash of the item's vector
    ]
)


def of_feature(table: pa.Table, feature: str) -> pa.Table:
    """The rows of one input (the whole table, uncopied, when it has no other)."""
    mine = pa.compute.equal(table.column("feature"), feature)
    every = pa.compute.all(mine).as_py()  # None: an empty table
    return table if every is not False else table.filter(mine)


def with_feature(rows: pa.Table, feature: str) -> pa.Table:
    rows = rows.append_column("feature", pa.array([feature] * rows.num_rows, pa.string()))
    return rows.select(GRAPH_SCHEMA.names).cast(GRAPH_SCHEMA)


def write_lists(
    writer: StoreWriter,
    table: str,
    upsert: pa.Table,
    deletions: dict[str, list[str]],
    *,
    replace: bool,
    base_version: int | None = None,
) -> None:
    """One Lance commit: the whole table (a new version), or an upsert keyed on (feature,
    item_index) that also deletes the lists of items that are gone, applied to the version the
    published snapshot names (``base_version``; a later one, left by a run killed before it
    published, is set aside first with Lance's restore)."""
    import lance

    uri, opts = writer.location.table_uri(table), writer.location.options()
    if replace:
        lance.write_dataset(upsert, uri, mode="overwrite", storage_options=opts)
        fault_point("graph:write")
        return
    dataset = lance.dataset(uri, storage_options=opts)
    if base_version is not None and dataset.version != base_version:
        dataset.checkout_version(base_version).restore()
        fault_point("graph:restore")
        dataset = lance.dataset(uri, storage_options=opts)
    gone = " OR ".join(
        f"(feature = '{f}' AND item_id IN ({', '.join(sql_string(i) for i in ids)}))"
        for f, ids in deletions.items()
        if ids
    )
    # the item index names the same rows as the id (never reused), and joins cheaper
    builder = dataset.merge_insert(["feature", "item_index"]).when_matched_update_all().when_not_matched_insert_all()
    if gone:
        builder = builder.when_not_matched_by_source_delete(gone)
    builder.execute(upsert)
    fault_point("graph:write")


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
