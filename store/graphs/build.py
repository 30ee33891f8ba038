"""Building and refreshing a graph's stored lists (``derive``) and ``itemlens graph`` (``build``).

A refresh recomputes only the lists of new and changed items and of items whose list held a
changed or deleted item; lists that a new or changed item should now enter are updated by
merging (exact: an unchanged list is the top-k of unchanged items). The result equals a full
rebuild, up to ties between equal scores."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa

from itemlens.errors import ConfigError
from itemlens.store.faults import fault_point
from itemlens.store.graphs.cooccurrence import cooccurrence_lists
from itemlens.store.graphs.presets import depth_read
from itemlens.store.graphs.spec import COOCCURRENCE, GraphSpec
from itemlens.store.graphs.stats import held_lists, list_stats, summarize
from itemlens.store.graphs.storage import (
    GRAPH_SCHEMA,
    of_feature,
    with_feature,
    write_lists,
)
from itemlens.store.vectors import LocalRunner, Runner, driver_peak_mb, items_in_order

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.snapshots import FeatureVersion
    from itemlens.store.writer import StoreWriter


log = logging.getLogger("itemlens.graphs")


@dataclass
class GraphReport:
    name: str
    version: str = ""
    rebuilt: bool = False
    items: int = 0
    recomputed: dict[str, int] = field(default_factory=dict)  # lists computed from scratch, per input
    merged: dict[str, int] = field(default_factory=dict)  # lists a new or changed item entered
    deleted: dict[str, int] = field(default_factory=dict)
    ran_on: str = "driver"  # "driver", or the Ray tasks (and nodes) that did the work
    driver_peak_mb: float = 0.0  # the driver process's peak resident memory at the end of the run
    seconds: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return {**self.__dict__, "stats": {k: v for k, v in self.stats.items() if k != "in_degree_histogram"}}

    def line(self) -> str:
        what = "built" if self.rebuilt else "refreshed"
        return (
            f"{self.name}@{self.version}: {what}, {self.items} items; recomputed "
            f"{sum(self.recomputed.values())} lists, merged {sum(self.merged.values())}; mutual edges "
            f"{self.stats.get('mutual_share', 0):.0%}"
            + (f", recall@k {self.stats['recall_at_k']:.3f}" if "recall_at_k" in self.stats else "")
            + f"; ran on {self.ran_on}, driver peak {self.driver_peak_mb:,.0f} MiB"
        )


@dataclass
class FeatureInputs:
    """One feature's vectors as a graph reads them: the items that have one, in item-index order."""

    ids: pa.Array  # item ids (strings)
    item_index: np.ndarray  # [n] int64, their stable item indexes
    x: np.ndarray  # [n, d] float32
    source_hash: pa.Array  # the feature's input hash per item: a list is stale when it changes


def read_feature(
    writer: StoreWriter, items: pa.Table, version: FeatureVersion, table_version: int | None
) -> FeatureInputs:
    """The vectors of one feature (``items``: :func:`itemlens.store.vectors.items_in_order`)."""
    from itemlens.store.vectors import read_vectors

    ids = items.column("item_id").combine_chunks()
    present, x, hashes = read_vectors(writer, version, table_version, ids)
    keep = np.flatnonzero(present)
    if len(keep) < len(present):
        x, hashes = x[keep], hashes.take(pa.array(keep))
    return FeatureInputs(
        ids.take(pa.array(keep)),
        items.column("item_index").to_numpy()[keep].astype(np.int64),
        np.ascontiguousarray(x),
        hashes,
    )


def derive(
    writer: StoreWriter,
    name: str,
    spec: GraphSpec,
    *,
    rebuild: bool = False,
    features: dict[str, FeatureVersion] | None = None,
    runner: Runner | None = None,
) -> GraphReport:
    """Bring graph ``name`` up to date with the writer's vectors (publishing is the caller's).
    An approximate graph runs on ``runner`` (this process by default, or Ray tasks) and never
    holds the vectors (:mod:`itemlens.store.graphs.ivf`); an exact one reads them in the driver."""
    from itemlens.store import lance_io
    from itemlens.store.snapshots import GraphVersion, now_iso

    report = GraphReport(name=name)
    t0 = time.perf_counter()
    versions: dict[str, FeatureVersion] = {}
    for feature in spec.weights:
        if feature == COOCCURRENCE:
            continue
        version = (features or {}).get(feature) or writer.base.feature_version(feature)
        if version is None:
            raise ConfigError(f"graph {name!r}: the store has no feature {feature!r}")
        versions[feature] = version
    qualified = {f: v.qualified for f, v in versions.items()}
    if spec.interactions is not None:
        qualified[COOCCURRENCE] = _file_digest(spec.interactions.path)
    fingerprint = spec.fingerprint(qualified)
    entry = writer.base.graphs.get(name)
    existing = (
        None
        if (rebuild or entry is None)
        else next((v for v in entry.versions.values() if v.fingerprint == fingerprint), None)
    )
    on_workers = runner is not None and not isinstance(runner, LocalRunner)
    if spec.method == "approximate" or (on_workers and existing is None):
        return _derive_by_blocks(
            writer,
            name,
            spec,
            entry,
            existing,
            fingerprint,
            qualified,
            versions,
            features,
            runner or LocalRunner(),
            report,
            t0,
        )
    with ThreadPoolExecutor(1) as pool:
        if existing is None:
            label = entry.next_label() if entry else "v1"
            version = GraphVersion(
                name=name,
                label=label,
                fingerprint=fingerprint,
                table=f"graph__{name}__{label}",
                spec=spec.model_dump(mode="json"),
                inputs=qualified,
                created_at=now_iso(),
            )
            stored = None
            report.rebuilt = True
        else:
            version = existing.model_copy(deep=True)
            version.spec = spec.model_dump(mode="json")  # preset and weights: read-time choices
            # the stored lists are read while the vectors are (Lance reads outside the GIL), as the
            # published snapshot has them: a run killed after writing left a later version, which
            # this run's write replaces (see _write)
            stored = pool.submit(
                lambda: (
                    lance_io.open_dataset(
                        writer.location.table_uri(version.table),
                        writer.base.tables.get(version.table),
                        writer.location.options(),
                    )
                    .to_table()
                    .combine_chunks()
                )
            )
        items = items_in_order(writer)
        inputs_by_feature = {}
        for feature, feature_version in versions.items():
            # a feature this job wrote: its latest table version; else the one the base snapshot names
            table_version = None if features and feature in features else writer.base.tables.get(feature_version.table)
            inputs_by_feature[feature] = read_feature(writer, items, feature_version, table_version)
        old = GRAPH_SCHEMA.empty_table() if stored is None else stored.result()
    report.seconds["read_inputs"] = time.perf_counter() - t0
    report.version = version.label
    device = _device(spec)

    # per input: the rows to upsert, the ids to delete, and every item's list after this run
    # (item indexes, lists as positions into them), kept for the statistics instead of reading
    # the table again
    upserts, deletions, lists = [], {}, {}
    for feature, inputs in inputs_by_feature.items():
        t = time.perf_counter()
        part = of_feature(old, feature)
        result = _refresh_lists(part, inputs, spec, device)
        upserts.append(with_feature(result.rows, feature))
        deletions[feature] = result.deleted
        lists[feature] = (
            inputs.item_index,
            result.lists if result.lists is not None else held_lists(part, inputs.item_index, None),
        )  # unchanged: as stored
        report.recomputed[feature], report.merged[feature] = result.recomputed, result.merged
        report.deleted[feature] = len(result.deleted)
        report.seconds[f"knn:{feature}"] = time.perf_counter() - t
    if spec.interactions is not None:
        t = time.perf_counter()
        rows = with_feature(cooccurrence_lists(spec.interactions, _item_indexes(items)), COOCCURRENCE)
        previous = of_feature(old, COOCCURRENCE)
        gone = sorted(set(previous.column("item_id").to_pylist()) - set(rows.column("item_id").to_pylist()))
        upserts.append(rows)
        order = rows.column("item_index").to_numpy()
        lists[COOCCURRENCE] = (order, held_lists(rows, order, None))
        deletions[COOCCURRENCE] = gone
        report.recomputed[COOCCURRENCE], report.deleted[COOCCURRENCE] = rows.num_rows, len(gone)
        report.seconds["cooccurrence"] = time.perf_counter() - t

    t = time.perf_counter()
    upsert = pa.concat_tables(upserts)
    changed = upsert.num_rows or any(deletions.values())
    if not report.rebuilt and not changed:
        report.items = version.count
        report.stats = dict(version.stats)
        report.seconds["total"] = time.perf_counter() - t0
        writer.stage_graph(version)  # a definition gone back to, or new read-time settings: publish decides
        return report
    write_lists(
        writer,
        version.table,
        upsert,
        deletions,
        replace=report.rebuilt,
        base_version=writer.base.tables.get(version.table),
    )
    report.seconds["write"] = time.perf_counter() - t
    t = time.perf_counter()
    listed = np.zeros(max((int(o.max(initial=-1)) + 1 for o, _ in lists.values()), default=0), bool)
    for order, _ in lists.values():
        listed[order] = True  # items with a list of some input
    report.items = int(listed.sum())
    report.stats = summarize(
        {f: list_stats(held[:, : depth_read(spec, f) or held.shape[1]]) for f, (_, held) in lists.items()}
    )
    report.seconds["stats"] = time.perf_counter() - t
    version.count, version.stats, version.refreshed_at = report.items, report.stats, now_iso()
    writer.stage_graph(version)
    return _finish(report, LocalRunner(), 0, t0)


def _finish(report: GraphReport, runner: Runner, tasks_before: int, t0: float) -> GraphReport:
    report.ran_on = (
        runner.where if isinstance(runner, LocalRunner) else f"{runner.tasks - tasks_before} Ray tasks ({runner.where})"
    )
    report.driver_peak_mb = driver_peak_mb()
    report.seconds["total"] = time.perf_counter() - t0
    log.info("%s", report.line())
    return report


def _derive_by_blocks(
    writer: StoreWriter,
    name: str,
    spec: GraphSpec,
    entry,
    existing,
    fingerprint: str,
    qualified: dict[str, str],
    versions: dict[str, FeatureVersion],
    features: dict[str, FeatureVersion] | None,
    runner: Runner,
    report: GraphReport,
    t0: float,
) -> GraphReport:
    """A graph by blocks on ``runner``, the driver holding no vectors. Approximate: a build
    trains an IVF index on a sample and searches every item; a refresh searches the new and
    changed items with the stored index and merges them into the lists they enter
    (:mod:`itemlens.store.graphs.ivf`). Exact (a build on Ray): blocks of query rows against
    every row streamed (:mod:`itemlens.store.graphs.exact_blocks`). The whole table is written by
    the blocks (a refresh's unchanged lists copied) and committed in one transaction."""
    import lance

    from itemlens.store.graphs import exact_blocks, ivf
    from itemlens.store.snapshots import GraphVersion, now_iso
    from itemlens.store.vectors import feature_rows, table_source

    tasks_before = runner.tasks
    if existing is None:
        label = entry.next_label() if entry else "v1"
        version = GraphVersion(
            name=name,
            label=label,
            fingerprint=fingerprint,
            table=f"graph__{name}__{label}",
            spec=spec.model_dump(mode="json"),
            inputs=qualified,
            created_at=now_iso(),
        )
        report.rebuilt = True
    else:
        version = existing.model_copy(deep=True)
        version.spec = spec.model_dump(mode="json")  # preset and weights: read-time choices
    report.version = version.label
    uri, opts = writer.location.table_uri(version.table), writer.location.options()
    index_uri = writer.location.table_uri(f"graphivf__{name}__{version.label}")
    size = writer.open_table("items").count_rows()  # every item index is below it
    stored = None if report.rebuilt else table_source(writer, version.table, writer.base.tables.get(version.table))
    centroids = {} if stored is None else _stored_centroids(index_uri, opts)
    fragments, done = [], {}
    changed = report.rebuilt
    exact = spec.method == "exact"
    schema = GRAPH_SCHEMA if exact else ivf.APPROX_SCHEMA
    try:
        for feature, feature_version in versions.items():
            t = time.perf_counter()
            table_version = None if features and feature in features else writer.base.tables.get(feature_version.table)
            rows = feature_rows(writer, feature_version, table_version, runner)
            if spec.method == "exact":
                lists, deleted = (
                    exact_blocks.build_lists(runner, feature, rows, spec, uri, opts, size, _device(spec)),
                    0,
                )
            elif stored is None or feature not in centroids or "probes" not in stored.open().schema.names:
                lists, deleted = ivf.build_lists(runner, feature, rows, spec, uri, opts, size), 0
                changed = True
            else:
                part = stored.open().to_table(
                    columns=["item_index"], filter=f"feature = '{feature}'", with_row_address=True
                )
                lists, deleted = ivf.refresh_lists(
                    runner,
                    feature,
                    rows,
                    spec,
                    stored,
                    (part.column("item_index").to_numpy(), part.column("_rowaddr").to_numpy().astype(np.int64)),
                    centroids[feature],
                    uri,
                    opts,
                    size,
                )
                changed |= lists.touched > 0 or deleted > 0
            fragments += lists.fragments
            done[feature] = (lists, rows)
            report.recomputed[feature] = lists.recomputed
            report.merged[feature] = lists.touched - lists.recomputed
            report.deleted[feature] = deleted
            report.seconds[f"knn:{feature}"] = time.perf_counter() - t
        cooccurrence = None  # the co-occurrence lists, for the item count and statistics
        if spec.interactions is not None:
            t = time.perf_counter()
            cooccurrence = with_feature(
                cooccurrence_lists(spec.interactions, _item_indexes(items_in_order(writer))), COOCCURRENCE
            )
            rows = cooccurrence
            if not exact:
                rows = rows.append_column("probes", pa.nulls(rows.num_rows, pa.list_(pa.int32())))
            previous = 0 if stored is None else stored.open().count_rows(filter=f"feature = '{COOCCURRENCE}'")
            report.recomputed[COOCCURRENCE], report.deleted[COOCCURRENCE] = (
                rows.num_rows,
                max(previous - rows.num_rows, 0),
            )
            from itemlens.store import lance_io

            fragments += lance_io.write_fragments(
                rows.cast(schema) if exact else rows.cast(ivf.APPROX_SCHEMA), uri, opts
            )
            report.seconds["cooccurrence"] = time.perf_counter() - t
            changed = True
        if not changed:  # nothing new, changed or gone: the published lists stand
            report.items, report.stats = version.count, dict(version.stats)
            writer.stage_graph(version)  # publish decides whether it moved (see above)
            return _finish(report, runner, tasks_before, t0)
        t = time.perf_counter()
        from itemlens.store.semantic_ids.build import _commit_overwrite

        _commit_overwrite(uri, fragments, schema, opts)
        fault_point("graph:write")
        if not exact and (report.rebuilt or set(done) - set(centroids)):
            lance.write_dataset(
                pa.table(
                    {"feature": list(done), "centroids": [ivf.centroid_blob(done[f][0].centroids) for f in done]},
                    schema=pa.schema([("feature", pa.string()), ("centroids", pa.large_binary())]),
                ),
                index_uri,
                mode="overwrite",
                storage_options=opts,
            )
        report.seconds["write"] = time.perf_counter() - t
        t = time.perf_counter()
        inputs = {f: ivf.stats(lists, rows) for f, (lists, rows) in done.items()}
        listed = [rows.item_index for _, rows in done.values()]
        if cooccurrence is not None:
            order = cooccurrence.column("item_index").to_numpy()
            inputs[COOCCURRENCE] = list_stats(held_lists(cooccurrence, order, depth_read(spec, COOCCURRENCE)))
            listed.append(order)
        report.items = int(len(np.unique(np.concatenate(listed)))) if listed else 0
        report.stats = summarize(inputs)
        if not exact:
            recalls = [ivf.recall(runner, lists, rows, spec) for lists, rows in done.values() if len(rows.item_index)]
            report.stats["recall_at_k"] = round(float(np.mean(recalls)), 4) if recalls else 0.0
            report.stats["index"] = {
                "kind": "IVF_FLAT",
                "nprobe": spec.nprobe,
                "nlist": {f: int(len(lists.centroids)) for f, (lists, _) in done.items()},
                "shards": {f: len(lists.shards) for f, (lists, _) in done.items()},
            }
        report.seconds["stats"] = time.perf_counter() - t
    finally:
        for lists, _ in done.values():
            runner.release(lists.shards)
    version.count, version.stats, version.refreshed_at = report.items, report.stats, now_iso()
    writer.stage_graph(version)
    return _finish(report, runner, tasks_before, t0)


def _stored_centroids(uri: str, options) -> dict[str, np.ndarray]:
    from itemlens.store import lance_io
    from itemlens.store.graphs import ivf

    dataset = lance_io.open_dataset(uri, storage_options=options)
    if dataset is None:
        return {}
    return {r["feature"]: ivf.centroids_of(r["centroids"]) for r in dataset.to_table().to_pylist()}


class Refreshed(NamedTuple):
    rows: pa.Table  # lists to upsert
    deleted: list[str]  # ids whose lists go
    recomputed: int  # lists searched whole
    merged: int  # lists that took new candidates or lost changed ones, merged
    lists: np.ndarray | None  # [n, depth] every item's list after the run, as positions into


def _refresh_lists(old: pa.Table, inputs: FeatureInputs, spec: GraphSpec, device: str) -> Refreshed:
    """New neighbour lists of one feature (an exact graph).

    Lists are stored ``depth`` deep (2k by default) with the length of their prefix known to
    be exact (``exact``). A list that loses changed or deleted neighbours keeps, in order, the
    exact top of the unchanged items; merged with the best candidates among the new and changed
    items it stays exact up to the first score either source cannot vouch for. Only lists
    whose exact prefix falls under k, and those of new and changed items, are recomputed.
    The bookkeeping is column-wise (numpy on the item indexes, one numba pass over the stored
    lists): a refresh must cost a small share of a rebuild, at any catalog size."""
    from itemlens.store.graphs import knn, knn_kernels

    pc = pa.compute
    x, item_index = inputs.x, inputs.item_index
    n = len(item_index)
    old_index = old.column("item_index").to_numpy()
    size = int(max(item_index.max(initial=-1), old_index.max(initial=-1))) + 2
    position = np.full(size, -1, np.int64)
    position[item_index] = np.arange(n)
    k, depth = spec.k, spec.list_depth
    valid = knn.valid_rows(x)
    reachable = int(valid.sum()) - (0 if spec.self_loops else 1)  # most neighbours a list can have
    if old.num_rows == 0:
        found, sims = knn.exact_knn(x, depth, self_loops=spec.self_loops, block=spec.block, device=device)
        return Refreshed(_rows(inputs, found, sims, np.arange(n)), [], n, 0, found)

    old_ids = old.column("item_id").combine_chunks()
    # item indexes are stable and never reused: an item's stored list is the one of its index
    row_of_index = np.full(size, -1, np.int64)
    row_of_index[old_index] = np.arange(len(old_index))
    old_row = row_of_index[item_index]
    still_there = np.zeros(len(old_ids), bool)
    still_there[old_row[old_row >= 0]] = True
    gone_rows = np.flatnonzero(~still_there)
    deleted = old_ids.take(pa.array(gone_rows)).to_pylist()
    old_hash = old.column("source_hash").combine_chunks().take(pa.array(np.maximum(old_row, 0)))
    same = pc.equal(inputs.source_hash, old_hash).fill_null(False).to_numpy(zero_copy_only=False)
    fresh = ~same | (old_row < 0)  # new or changed
    # the stored lists of today's items that stay (not new or changed), as dense [n, depth] arrays
    moved = np.zeros(size, bool)  # item indexes whose old scores are void
    moved[item_index[fresh]] = True
    moved[old_index[gone_rows]] = True
    kept = np.flatnonzero(~fresh)
    owner = np.full(len(old_ids), -1, np.int64)  # stored row -> input position of a kept list
    owner[old_row[kept]] = kept
    neighbors = old.column("neighbors").combine_chunks()
    offsets = neighbors.offsets.to_numpy()
    lists = np.full((n, depth), knn.NO_NEIGHBOUR, np.int64)
    scores = np.full((n, depth), -np.inf, np.float32)
    exact, lost = np.zeros(n, np.int64), np.zeros(n, np.int64)
    knn_kernels.unchanged_lists(
        offsets - offsets[0],
        neighbors.flatten().to_numpy(),
        old.column("scores").combine_chunks().flatten().to_numpy(),
        old.column("exact").to_numpy().astype(np.int64),
        owner,
        moved,
        position,
        lists,
        scores,
        exact,
        lost,
    )
    # what the unchanged items can vouch for: every score above the last exact one is known
    # A list is complete when it still holds every unchanged item with a direction (itself aside
    # without self loops): then no unchanged item is missing under its last score. Its stored
    # length alone does not say so: a list an earlier refresh shortened is short too.
    complete = np.zeros(n, bool)
    need = int(valid[kept].sum()) - (valid[kept] & (not spec.self_loops)).astype(np.int64)
    complete[kept] = (lists[kept] != knn.NO_NEIGHBOUR).sum(axis=1) >= need
    bound = np.full(n, np.inf, np.float32)
    has_prefix = np.flatnonzero(exact > 0)
    bound[has_prefix] = scores[has_prefix, exact[has_prefix] - 1]
    bound[complete] = -np.inf

    # new and changed items: their own lists, and the lists they should now enter, from one search
    sources = np.flatnonzero(fresh)
    merged_rows = np.zeros(0, np.int64)
    if len(sources):
        # a kept list can only take sources from the lowest score it vouches for: higher up
        floor = np.full(n, np.inf, np.float32)
        floor[kept] = bound[kept]
        (cand, cand_scores), (own, own_scores) = knn.search_from(
            x, sources, depth, row_floor=floor, self_loops=spec.self_loops, block=spec.block, device=device
        )
        lists[sources], scores[sources] = own, own_scores
        # a full candidate list may have left out sources under its last score
        c_bound = cand_scores[:, -1] if len(sources) > depth else np.full(n, -np.inf, np.float32)
        offered = kept[cand[kept, 0] != knn.NO_NEIGHBOUR]  # lists with a candidate to merge
        new_lists, new_scores = knn.merge_lists(
            lists[offered], scores[offered], cand[offered], cand_scores[offered], depth
        )
        merged_rows = offered[(new_lists != lists[offered]).any(axis=1)]
        lists[offered], scores[offered] = new_lists, new_scores
        limit = np.maximum(bound[kept], c_bound[kept])
        vouched = (scores[kept] >= limit[:, None]) & np.isfinite(scores[kept])
        exact[kept] = np.minimum(vouched.sum(axis=1), depth)
    # unchanged items whose list no longer vouches for its first k: searched again
    stale = np.zeros(n, bool)
    stale[kept] = exact[kept] < min(k, max(reachable, 0))
    stale &= valid
    again = np.flatnonzero(stale)
    if len(again):
        found, sims = knn.knn_rows(x, again, depth, self_loops=spec.self_loops, block=spec.block, device=device)
        lists[again], scores[again] = found, sims
    recompute = np.zeros(n, bool)
    recompute[sources] = recompute[again] = True
    touched = recompute.copy()
    touched[merged_rows] = True
    touched[lost > 0] = True  # lists that dropped a changed or deleted item
    exact[recompute] = depth  # computed whole just now
    touched = np.flatnonzero(touched)
    recomputed = int(recompute.sum())
    return Refreshed(
        _rows(inputs, lists, scores, touched, exact[touched]), deleted, recomputed, len(touched) - recomputed, lists
    )


def _rows(
    inputs: FeatureInputs, positions: np.ndarray, scores: np.ndarray, which, exact: np.ndarray | None = None
) -> pa.Table:
    """Rows for ``which`` (positions into the inputs), neighbours mapped to item indexes;
    ``exact`` per row where given (capped at the list's length), else the whole (freshly
    computed) list. Built column-wise (a refresh may rewrite tens of thousands of lists)."""
    which = np.asarray(which, np.int64)
    chosen = positions[which]
    ok = chosen >= 0
    lengths = ok.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    neighbors = pa.ListArray.from_arrays(offsets, pa.array(inputs.item_index[chosen[ok]], pa.int64()))
    weights = pa.ListArray.from_arrays(offsets, pa.array(scores[which][ok].astype(np.float32), pa.float32()))
    exact = lengths if exact is None else np.minimum(exact, lengths)
    picked = pa.array(which)
    return pa.table(
        {
            "item_id": inputs.ids.take(picked),
            "item_index": pa.array(inputs.item_index[which], pa.int64()),
            "neighbors": neighbors,
            "scores": weights,
            "exact": pa.array(exact.astype(np.int32), pa.int32()),
            "source_hash": inputs.source_hash.take(picked),
        }
    )


def _item_indexes(items: pa.Table) -> dict[str, int]:
    return dict(zip(items.column("item_id").to_pylist(), items.column("item_index").to_pylist()))


def _device(spec: GraphSpec) -> str:
    if spec.device != "auto":
        return spec.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _file_digest(path: str) -> str:
    import os

    stat = os.stat(path)
    return f"{os.path.abspath(path)}:{stat.st_size}:{int(stat.st_mtime)}"


def build(
    uri: str,
    specs: dict[str, GraphSpec | dict[str, Any]],
    *,
    rebuild: bool = False,
    lock_wait: float = 0.0,
    storage_options: dict[str, str] | None = None,
    runner: Runner | None = None,
) -> tuple[dict[str, GraphReport], int | None]:
    """Build or refresh graph definitions from the store's latest snapshot and publish a
    snapshot (``itemlens graph``). Returns the reports and the new snapshot (None: unchanged)."""
    from itemlens.store.writer import publish_derived

    return publish_derived(
        uri,
        specs,
        GraphSpec,
        lambda w, n, s: derive(w, n, s, rebuild=rebuild, runner=runner),
        what="graphs",
        section="graphs",
        command="itemlens graph",
        lock_wait=lock_wait,
        storage_options=storage_options,
    )
