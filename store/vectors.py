"""Reading a store's vectors without holding them: what semantic IDs, graphs, exports and
``itemlens diff`` share.

A derived pass never loads a feature table whole. It first learns *where* each item's row is
(:func:`feature_rows`: the row address of every item's vector, by item index: two integers per
item), then reads the vectors block by block (:func:`read_block`), wherever the block is
processed: in this process, or in a Ray task that opens the table itself.

Who runs the blocks is a :class:`Runner`. :class:`LocalRunner` runs them one after another in
this process (small stores, tests without Ray); ``itemlens.workflows.derive.RayRunner`` runs
them as Ray tasks spread over the cluster. Both are given the same blocks (fixed sizes, in
item-index order) and the same functions, so that both give the same results for the same data
and seed; only where the memory is spent differs.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from itemlens.errors import ConfigError
from itemlens.store.layout import ITEMS_TABLE

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.snapshots import FeatureVersion
    from itemlens.store.writer import StoreWriter

#: items per block of a derived pass (a task's share): fixed, so that every runner cuts alike
BLOCK_ITEMS = 65_536


def driver_peak_mb() -> float:
    """This process's peak resident memory so far, in MiB (``getrusage``'s ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


@dataclass(frozen=True)
class TableSource:
    """A Lance table at one version, as a task opens it (picklable: a URI, not a handle)."""

    uri: str
    version: int
    options: dict[str, str] | None = None

    def open(self):
        import lance

        return lance.dataset(self.uri, version=self.version, storage_options=self.options)


def table_source(writer: StoreWriter, table: str, version: int | None) -> TableSource | None:
    """The table at ``version`` (None: its latest), or None when there is no such table."""
    from itemlens.store import lance_io

    dataset = lance_io.open_dataset(writer.location.table_uri(table), version, writer.location.options())
    if dataset is None:
        return None
    return TableSource(writer.location.table_uri(table), dataset.version, writer.location.options())


def items_source(writer: StoreWriter) -> TableSource:
    return table_source(writer, ITEMS_TABLE, None)


def items_in_order(writer: StoreWriter) -> pa.Table:
    """Every item id with its stable item index, in item-index order (small stores: the driver
    holds the ids; derived passes use :func:`feature_rows` instead)."""
    return writer.open_table(ITEMS_TABLE).to_table(columns=["item_id", "item_index"]).sort_by("item_index")


# -- where each item's row is ------------------------------------------------------------------


def join_item_indexes(table: TableSource, items: TableSource) -> tuple[np.ndarray, np.ndarray]:
    """(row address, item index) of every row of ``table`` (a table keyed by item_id), sorted by
    item index; rows whose id the items table lacks are left out. Holds both tables' ids: run it
    where that memory is (a Ray task, for large stores)."""
    import pyarrow.compute as pc

    rows = table.open().to_table(columns=["item_id"], with_row_address=True)
    known = items.open().to_table(columns=["item_id", "item_index"])
    at = pc.index_in(rows.column("item_id"), value_set=known.column("item_id").combine_chunks())
    at = at.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = np.flatnonzero(at >= 0)
    item_index = known.column("item_index").to_numpy()[at[keep]].astype(np.int64)
    address = rows.column("_rowaddr").to_numpy().astype(np.int64)[keep]
    order = np.argsort(item_index, kind="stable")
    return address[order], item_index[order]


@dataclass
class FeatureRows:
    """Where a pooled vector feature's values are: ``item_index`` (ascending) and the row
    ``address`` of each in ``source``. Two integers per item, never the vectors."""

    source: TableSource | None
    dim: int
    dtype: str
    item_index: np.ndarray  # [rows] int64, ascending
    address: np.ndarray  # [rows] int64

    def __len__(self) -> int:
        return len(self.item_index)


def feature_rows(
    writer: StoreWriter, version: FeatureVersion, table_version: int | None, runner: Runner
) -> FeatureRows:
    """Where the vectors of one pooled vector feature are (the id join runs on ``runner``)."""
    require_pooled(version, "semantic IDs and graphs take pooled vector features")
    source = table_source(writer, version.table, table_version)
    if source is None:
        return FeatureRows(None, int(version.dim or 0), version.dtype, np.zeros(0, np.int64), np.zeros(0, np.int64))
    dim = source.open().schema.field("vector").type.list_size
    address, item_index = runner.call(join_item_indexes, source, items_source(writer))
    return FeatureRows(source, dim, version.dtype, item_index, address)


def aligned_rows(parts: list[FeatureRows]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The item indexes every part has (ascending) and, per part, the row address of each."""
    common = parts[0].item_index
    for part in parts[1:]:
        common = np.intersect1d(common, part.item_index, assume_unique=True)
    return common, [part.address[np.searchsorted(part.item_index, common)] for part in parts]


# -- reading blocks ---------------------------------------------------------------------------


def read_block(source: TableSource, address: np.ndarray, columns: list[str]) -> pa.Table:
    """Rows at ``address`` (any order, repeats allowed) of ``source``, in that order."""
    address = np.asarray(address, np.int64)
    if len(address) == 0:
        schema = source.open().schema
        return pa.schema([schema.field(c) for c in columns]).empty_table()
    unique, inverse = np.unique(address, return_inverse=True)
    table = source.open()._take_rows(unique.tolist(), columns=columns)
    return table if len(unique) == len(address) and (unique == address).all() else table.take(pa.array(inverse))


def vectors_of(table: pa.Table, dim: int, column: str = "vector") -> np.ndarray:
    """A fixed-size list column as float32 [rows, dim]."""
    values = table.column(column).combine_chunks()
    if len(values) == 0:
        return np.zeros((0, dim), np.float32)
    return values.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def read_vectors_at(source: TableSource, address: np.ndarray, dim: int) -> np.ndarray:
    return vectors_of(read_block(source, address, ["vector"]), dim)


def blocks(n: int, size: int = BLOCK_ITEMS) -> list[slice]:
    """Consecutive slices of ``range(n)``, ``size`` long (the last shorter)."""
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


def read_vectors(
    writer: StoreWriter, version: FeatureVersion, table_version: int | None, item_ids: pa.Array
) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """One pooled vector feature aligned to ``item_ids``, read whole: (present [n] bool, vectors
    [n, d] float32, zero where absent, the input hashes, null where absent). For small stores
    and the exact graph's refresh; derived passes over large stores read blocks instead."""
    import pyarrow.compute as pc

    from itemlens.store import lance_io

    require_pooled(version, "semantic IDs and graphs take pooled vector features")
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


# -- who runs the blocks ----------------------------------------------------------------------


class Runner:
    """Runs a derived pass's work: ``call`` one function, ``map`` a function over blocks
    (results in order, consumed as they come so that the caller holds one at a time), and
    ``shards`` (objects that keep part of an index in memory and answer calls). ``where``
    says what ran it, for the job's report."""

    tasks = 0

    def call(self, fn: Callable, *args, cpus: float = 1, gpus: float = 0) -> Any:
        raise NotImplementedError

    def map(self, fn: Callable, args: Iterable[tuple], *, cpus: float = 1, gpus: float = 0) -> Iterator[Any]:
        raise NotImplementedError

    def share(self, value: Any) -> Any:
        """``value`` as the tasks receive it (Ray: stored once in the object store)."""
        return value

    def shards(self, cls: type, args: list[tuple]) -> list[Any]:
        raise NotImplementedError

    def ask(self, shards: list[Any], method: str, *args) -> list[Any]:
        raise NotImplementedError

    def release(self, shards: list[Any]) -> None:
        pass

    @property
    def where(self) -> str:
        raise NotImplementedError


class LocalRunner(Runner):
    """Everything in this process, one block after another."""

    def call(self, fn, *args, cpus=1, gpus=0):
        return fn(*args)

    def map(self, fn, args, *, cpus=1, gpus=0):
        for a in args:
            yield fn(*a)

    def shards(self, cls, args):
        return [cls(*a) for a in args]

    def ask(self, shards, method, *args):
        return [getattr(s, method)(*args) for s in shards]

    @property
    def where(self) -> str:
        return "driver"


def require_pooled(version, purpose: str) -> None:
    """ConfigError unless ``version`` holds one vector per item: ``purpose`` says what needs it."""
    if version.kind != "vector" or version.pooling != "mean":
        raise ConfigError(f"{purpose}; {version.qualified} holds {holds(version)}")


def holds(version) -> str:
    """What a feature version holds, in words: captions, one vector per item, or one per image or frame."""
    if version.kind == "caption":
        return "captions"
    per = "item" if version.pooling == "mean" else version.pooling.removeprefix("per_")
    return f"one vector per {per}"
