"""Item-item graphs: k-nearest-neighbour lists per feature, normalized when read.

A graph definition (``graphs:`` in the configuration) names its features (with fusion weights),
``k`` and whether an item counts itself among its neighbours. The store keeps, per feature, each
item's raw neighbour list with cosine scores (table ``graph__<name>__<label>``); presets turn
the lists into the matrix a published model builds, when read or exported:

===========  ==========================================  =====================================
preset       edges and weights                           as in
===========  ==========================================  =====================================
freedom      binary kNN edges, D^-1/2 A D^-1/2,           FREEDOM (Zhou & Shen 2023), DRAGON
             D = row sums (out-degree)                   (Zhou et al. 2023)
lattice      cosine weights of the kNN edges,             LATTICE (Zhang et al. 2021),
             D^-1/2 A D^-1/2, D = weighted row sums       MGCN (Yu et al. 2023)
             (not symmetrized)
row          cosine weights, D^-1 A (random walk)         the ``rw`` option of LATTICE/MGCN code
cosine       cosine weights, not normalized               -
hypergraph   H = [B_f1 | B_f2 ...], B_f[i, j] = 1 when    MMHCL's item hypergraph, HGNN's
             i is among j's kNN; Dv^-1/2 H De^-1 H^T      normalization (Feng et al. 2019)
             Dv^-1/2
===========  ==========================================  =====================================

Several features are fused after normalization, each matrix times its weight, overlapping
edges summed (FREEDOM: 0.1 image + 0.9 text). ``dragon`` and ``mgcn`` are aliases. A degree of 0
gives 0 weights, never NaN. An item-item co-occurrence graph from interactions (user, item) can
be one of the inputs (``interactions:``), its scores the co-occurrence counts.

A refresh recomputes only the lists of new and changed items and of items whose list held a
changed or deleted item; lists that a new or changed item should now enter are updated by
merging (exact: an unchanged list is the top-k of unchanged items). The result equals a full
rebuild, up to ties between equal scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from itemlens.config_types import NAME, StrictModel
from itemlens.errors import ConfigError
from itemlens.store.faults import fault_point
from itemlens.store.semantic_ids import check_inputs

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.snapshots import FeatureVersion
    from itemlens.store.writer import StoreWriter

log = logging.getLogger("itemlens.graphs")

PRESETS: dict[str, tuple[str, str]] = {     # name -> (edge weights, normalization)
    "freedom": ("binary", "sym"), "dragon": ("binary", "sym"),
    "lattice": ("cosine", "sym"), "mgcn": ("cosine", "sym"),
    "row": ("cosine", "rw"), "cosine": ("cosine", "none"),
    "hypergraph": ("binary", "hypergraph"),
}
COOCCURRENCE = "cooccurrence"        # the input name of an interactions graph


_Strict = StrictModel


class InteractionsSpec(_Strict):
    """Item co-occurrence from interactions: items two users' histories share, top-N per item."""

    path: str
    user_column: str = "user_id"
    item_column: str = "item_id"
    top_n: int = Field(10, ge=1)
    weight: float = Field(1.0, gt=0)


class GraphSpec(_Strict):
    """``graphs: {name: spec}`` in the configuration."""

    features: list[str] | dict[str, float] = Field(description="features, or feature -> fusion weight")
    k: int = Field(10, ge=1, le=1000)
    depth: int | None = Field(None, ge=1)   # neighbours stored per item (default 2k): slack for refreshes
    self_loops: bool = True          # FREEDOM/LATTICE count the item itself among its k
    preset: Literal["freedom", "dragon", "lattice", "mgcn", "row", "cosine", "hypergraph"] = "freedom"
    method: Literal["exact", "approximate"] = "exact"
    nprobe: int = Field(32, ge=1)    # approximate: IVF lists searched
    block: int = Field(4096, ge=64)  # exact: rows per block of products
    device: Literal["auto", "cpu", "cuda"] = "auto"
    interactions: InteractionsSpec | None = None

    @field_validator("features")
    @classmethod
    def _inputs(cls, value):
        return check_inputs(value)

    @property
    def list_depth(self) -> int:
        return max(self.depth or 2 * self.k, self.k)

    @property
    def weights(self) -> dict[str, float]:
        weights = dict(self.features) if isinstance(self.features, dict) else {f: 1.0 for f in self.features}
        if self.interactions is not None:
            weights[COOCCURRENCE] = self.interactions.weight
        return weights

    def fingerprint(self, inputs: dict[str, str]) -> str:
        """What changes the stored lists: k, self-loops, method and the inputs' versions (the
        preset and fusion weights apply when read)."""
        doc = {"k": self.k, "depth": self.list_depth, "self_loops": self.self_loops, "method": self.method, "inputs": inputs,
               "nprobe": self.nprobe if self.method == "approximate" else None,
               "interactions": self.interactions.model_dump(exclude={"weight"}) if self.interactions else None}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


GRAPH_SCHEMA = pa.schema([
    pa.field("feature", pa.string()),
    pa.field("item_id", pa.string()),
    pa.field("item_index", pa.int64()),
    pa.field("neighbors", pa.list_(pa.int64())),    # item indexes, best first
    pa.field("scores", pa.list_(pa.float32())),     # cosine (co-occurrence: counts)
    pa.field("exact", pa.int32()),                  # leading entries known to be the exact top
    pa.field("source_hash", pa.string()),           # the input hash of the item's vector
])


@dataclass
class GraphReport:
    name: str
    version: str = ""
    rebuilt: bool = False
    items: int = 0
    recomputed: dict[str, int] = field(default_factory=dict)   # lists computed from scratch, per input
    merged: dict[str, int] = field(default_factory=dict)       # lists a new or changed item entered
    deleted: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return {**self.__dict__, "stats": {k: v for k, v in self.stats.items() if k != "in_degree_histogram"}}

    def line(self) -> str:
        what = "built" if self.rebuilt else "refreshed"
        return (f"{self.name}@{self.version}: {what}, {self.items} items; recomputed "
                f"{sum(self.recomputed.values())} lists, merged {sum(self.merged.values())}; mutual edges "
                f"{self.stats.get('mutual_share', 0):.0%}")


# -- building and refreshing ---------------------------------------------------------------------

@dataclass
class FeatureInputs:
    """One feature's vectors as a graph reads them: the items that have one, in item-index order."""

    ids: pa.Array                  # item ids (strings)
    item_index: np.ndarray         # [n] int64, their stable item indexes
    x: np.ndarray                  # [n, d] float32
    source_hash: pa.Array          # the feature's input hash per item: a list is stale when it changes


def read_feature(writer: StoreWriter, items: pa.Table, version: FeatureVersion,
                 table_version: int | None) -> FeatureInputs:
    """The vectors of one feature (``items``: :func:`semantic_ids.items_in_order`)."""
    from itemlens.store.semantic_ids import read_vectors

    ids = items.column("item_id").combine_chunks()
    present, x, hashes = read_vectors(writer, version, table_version, ids)
    keep = np.flatnonzero(present)
    if len(keep) < len(present):
        x, hashes = x[keep], hashes.take(pa.array(keep))
    return FeatureInputs(ids.take(pa.array(keep)),
                         items.column("item_index").to_numpy()[keep].astype(np.int64), np.ascontiguousarray(x), hashes)


def derive(writer: StoreWriter, name: str, spec: GraphSpec, *, rebuild: bool = False,
           features: dict[str, FeatureVersion] | None = None) -> GraphReport:
    """Bring graph ``name`` up to date with the writer's vectors (publishing is the caller's)."""
    from itemlens.store import lance_io
    from itemlens.store.semantic_ids import items_in_order
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
    existing = None if (rebuild or entry is None) else next(
        (v for v in entry.versions.values() if v.fingerprint == fingerprint), None)
    with ThreadPoolExecutor(1) as pool:
        if existing is None:
            label = entry.next_label() if entry else "v1"
            version = GraphVersion(name=name, label=label, fingerprint=fingerprint, table=f"graph__{name}__{label}",
                                   spec=spec.model_dump(mode="json"), inputs=qualified, created_at=now_iso())
            stored = None
            report.rebuilt = True
        else:
            version = existing.model_copy(deep=True)
            version.spec = spec.model_dump(mode="json")    # preset and weights: read-time choices
            # the stored lists are read while the vectors are (Lance reads outside the GIL), as the
            # published snapshot has them: a run killed after writing left a later version, which
            # this run's write replaces (see _write)
            stored = pool.submit(lambda: lance_io.open_dataset(
                writer.location.table_uri(version.table), writer.base.tables.get(version.table),
                writer.location.options()).to_table().combine_chunks())
        items = items_in_order(writer)
        inputs_by_feature = {}
        for feature, feature_version in versions.items():
            # a feature this job wrote: its latest table version; else the one the base snapshot names
            table_version = (None if features and feature in features else
                             writer.base.tables.get(feature_version.table))
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
        part = _of_feature(old, feature)
        result = _refresh_lists(part, inputs, spec, device)
        upserts.append(_with_feature(result.rows, feature))
        deletions[feature] = result.deleted
        lists[feature] = (inputs.item_index, result.lists if result.lists is not None else
                          _held(part, inputs.item_index, None))       # unchanged: as stored
        report.recomputed[feature], report.merged[feature] = result.recomputed, result.merged
        report.deleted[feature] = len(result.deleted)
        report.seconds[f"knn:{feature}"] = time.perf_counter() - t
    if spec.interactions is not None:
        t = time.perf_counter()
        rows = _with_feature(_cooccurrence_lists(spec.interactions, _item_indexes(items)), COOCCURRENCE)
        previous = _of_feature(old, COOCCURRENCE)
        gone = sorted(set(previous.column("item_id").to_pylist()) - set(rows.column("item_id").to_pylist()))
        upserts.append(rows)
        order = rows.column("item_index").to_numpy()
        lists[COOCCURRENCE] = (order, _held(rows, order, None))
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
        return report
    _write(writer, version.table, upsert, deletions, replace=report.rebuilt,
           base_version=writer.base.tables.get(version.table))
    report.seconds["write"] = time.perf_counter() - t
    t = time.perf_counter()
    listed = np.zeros(max((int(o.max(initial=-1)) + 1 for o, _ in lists.values()), default=0), bool)
    for order, _ in lists.values():
        listed[order] = True                          # items with a list of some input
    report.items = int(listed.sum())
    report.stats = _summary({f: list_stats(held[:, :_depth_read(spec, f) or held.shape[1]])
                             for f, (_, held) in lists.items()})
    if spec.method == "approximate":
        report.stats["recall_at_k"] = _sampled_recall(lists, inputs_by_feature, spec, device)
    report.seconds["stats"] = time.perf_counter() - t
    version.count, version.stats, version.refreshed_at = report.items, report.stats, now_iso()
    writer.stage_graph(version)
    report.seconds["total"] = time.perf_counter() - t0
    log.info("%s", report.line())
    return report


def _of_feature(table: pa.Table, feature: str) -> pa.Table:
    """The rows of one input (the whole table, uncopied, when it has no other)."""
    mine = pa.compute.equal(table.column("feature"), feature)
    every = pa.compute.all(mine).as_py()              # None: an empty table
    return table if every is not False else table.filter(mine)


def _with_feature(rows: pa.Table, feature: str) -> pa.Table:
    rows = rows.append_column("feature", pa.array([feature] * rows.num_rows, pa.string()))
    return rows.select(GRAPH_SCHEMA.names).cast(GRAPH_SCHEMA)


class Refreshed(NamedTuple):
    rows: pa.Table              # lists to upsert
    deleted: list[str]          # ids whose lists go
    recomputed: int             # lists searched whole
    merged: int                 # lists that took new candidates or lost changed ones, merged
    lists: np.ndarray | None    # [n, depth] every item's list after the run, as positions into
    #                             the inputs (-1: none); None: nothing changed (an approximate graph)


def _refresh_lists(old: pa.Table, inputs: FeatureInputs, spec: GraphSpec, device: str) -> Refreshed:
    """New neighbour lists of one feature.

    Lists are stored ``depth`` deep (2k by default) with the length of their prefix known to
    be exact (``exact``). A list that loses changed or deleted neighbours keeps, in order, the
    exact top of the unchanged items; merged with the best candidates among the new and changed
    items it stays exact up to the first score either source cannot vouch for. Only lists
    whose exact prefix falls under k, and those of new and changed items, are recomputed.
    The bookkeeping is column-wise (numpy on the item indexes, one numba pass over the stored
    lists): a refresh must cost a small share of a rebuild, at any catalog size."""
    from itemlens.store import knn, knn_kernels

    pc = pa.compute
    x, item_index = inputs.x, inputs.item_index
    n = len(item_index)
    old_index = old.column("item_index").to_numpy()
    size = int(max(item_index.max(initial=-1), old_index.max(initial=-1))) + 2
    position = np.full(size, -1, np.int64)
    position[item_index] = np.arange(n)
    k, depth = spec.k, spec.list_depth
    valid = knn.valid_rows(x)
    reachable = int(valid.sum()) - (0 if spec.self_loops else 1)     # most neighbours a list can have
    if old.num_rows == 0:
        if spec.method == "approximate":
            found, sims, _ = knn.approximate_knn(x, depth, self_loops=spec.self_loops, nprobe=spec.nprobe)
        else:
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
    fresh = ~same | (old_row < 0)                                                    # new or changed
    if spec.method == "approximate":      # an approximate graph is rebuilt whole when anything changed
        if not fresh.any() and not deleted:
            return Refreshed(_rows(inputs, np.zeros((0, depth), np.int64), np.zeros((0, depth), np.float32), []),
                             [], 0, 0, None)
        found, sims, _ = knn.approximate_knn(x, depth, self_loops=spec.self_loops, nprobe=spec.nprobe)
        return Refreshed(_rows(inputs, found, sims, np.arange(n)), deleted, n, 0, found)

    # the stored lists of today's items that stay (not new or changed), as dense [n, depth] arrays
    moved = np.zeros(size, bool)                       # item indexes whose old scores are void
    moved[item_index[fresh]] = True
    moved[old_index[gone_rows]] = True
    kept = np.flatnonzero(~fresh)
    owner = np.full(len(old_ids), -1, np.int64)      # stored row -> input position of a kept list
    owner[old_row[kept]] = kept
    neighbors = old.column("neighbors").combine_chunks()
    offsets = neighbors.offsets.to_numpy()
    lengths = np.diff(offsets)
    lists = np.full((n, depth), knn.NO_NEIGHBOUR, np.int64)
    scores = np.full((n, depth), -np.inf, np.float32)
    exact, lost = np.zeros(n, np.int64), np.zeros(n, np.int64)
    knn_kernels.unchanged_lists(offsets - offsets[0], neighbors.flatten().to_numpy(),
                                old.column("scores").combine_chunks().flatten().to_numpy(),
                                old.column("exact").to_numpy().astype(np.int64), owner, moved, position,
                                lists, scores, exact, lost)
    # what the unchanged items can vouch for: every score above the last exact one is known
    complete = np.zeros(n, bool)
    complete[kept] = lengths[old_row[kept]] < depth   # the list held every item it could
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
            x, sources, depth, row_floor=floor, self_loops=spec.self_loops, block=spec.block, device=device)
        lists[sources], scores[sources] = own, own_scores
        # a full candidate list may have left out sources under its last score
        c_bound = cand_scores[:, -1] if len(sources) > depth else np.full(n, -np.inf, np.float32)
        offered = kept[cand[kept, 0] != knn.NO_NEIGHBOUR]      # lists with a candidate to merge
        new_lists, new_scores = knn.merge_lists(lists[offered], scores[offered], cand[offered],
                                                cand_scores[offered], depth)
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
    touched[lost > 0] = True                          # lists that dropped a changed or deleted item
    exact[recompute] = depth                          # computed whole just now
    touched = np.flatnonzero(touched)
    recomputed = int(recompute.sum())
    return Refreshed(_rows(inputs, lists, scores, touched, exact[touched]), deleted, recomputed,
                     len(touched) - recomputed, lists)


def _sampled_recall(lists: dict[str, tuple[np.ndarray, np.ndarray]], inputs_by_feature: dict[str, FeatureInputs],
                    spec: GraphSpec, device: str, sample: int = 200) -> float:
    """Recall@k of the (approximate) lists against exact search, on a seeded sample of rows of
    every input feature."""
    from itemlens.store import knn

    recalls = []
    for feature, inputs in inputs_by_feature.items():
        n = len(inputs.item_index)
        if not n:
            continue
        picks = np.random.default_rng(0).choice(n, min(sample, n), replace=False)
        exact, _ = knn.knn_rows(inputs.x, picks, spec.k, self_loops=spec.self_loops, block=spec.block, device=device)
        found = lists[feature][1][picks, : spec.k]
        for truth, got in zip(exact, found):
            truth = set(truth[truth >= 0].tolist())
            if truth:
                recalls.append(len(truth & set(got.tolist())) / len(truth))
    return round(float(np.mean(recalls)), 4) if recalls else 0.0


def _rows(inputs: FeatureInputs, positions: np.ndarray, scores: np.ndarray, which, exact: np.ndarray | None = None
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
    return pa.table({
        "item_id": inputs.ids.take(picked),
        "item_index": pa.array(inputs.item_index[which], pa.int64()),
        "neighbors": neighbors,
        "scores": weights,
        "exact": pa.array(exact.astype(np.int32), pa.int32()),
        "source_hash": inputs.source_hash.take(picked),
    })


def _write(writer: StoreWriter, table: str, upsert: pa.Table, deletions: dict[str, list[str]], *, replace: bool,
           base_version: int | None = None) -> None:
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
    gone = " OR ".join(f"(feature = '{f}' AND item_id IN ({', '.join(_sql(i) for i in ids)}))"
                       for f, ids in deletions.items() if ids)
    # the item index names the same rows as the id (never reused), and joins cheaper
    builder = dataset.merge_insert(["feature", "item_index"]).when_matched_update_all().when_not_matched_insert_all()
    if gone:
        builder = builder.when_not_matched_by_source_delete(gone)
    builder.execute(upsert)
    fault_point("graph:write")


def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


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


# -- co-occurrence ---------------------------------------------------------------------------

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
        table = pcsv.read_csv(path, parse_options=options)
    else:
        raise ConfigError(f"interactions file {path!r}: use .parquet, .jsonl or .csv/.tsv")
    for column in (spec.user_column, spec.item_column):
        if column not in table.column_names:
            raise ConfigError(f"interactions file {path!r} has no column {column!r} (it has {', '.join(table.column_names)})")
    return table


def _cooccurrence_lists(spec: InteractionsSpec, index_of: dict[str, int]) -> pa.Table:
    """Per item, the top-N items most often in the same users' histories (counts as scores;
    ties by item index)."""
    import scipy.sparse as sp

    table = _read_interactions(spec)
    users = pa.compute.cast(table.column(spec.user_column), pa.string()).to_pylist()
    items = pa.compute.cast(table.column(spec.item_column), pa.string()).to_pylist()
    pairs = {(u, index_of[i]) for u, i in zip(users, items) if i in index_of}      # known items, deduplicated
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
        cols_i = c.indices[c.indptr[i]:c.indptr[i + 1]]
        vals_i = c.data[c.indptr[i]:c.indptr[i + 1]]
        order = np.lexsort((cols_i, -vals_i))[: spec.top_n]
        out_ids.append(by_index[i])
        out_index.append(i)
        neighbors.append(cols_i[order].astype(np.int64).tolist())
        counts.append(vals_i[order].astype(np.float32).tolist())
    return pa.table({"item_id": pa.array(out_ids, pa.string()), "item_index": pa.array(out_index, pa.int64()),
                     "neighbors": pa.array(neighbors, pa.list_(pa.int64())),
                     "scores": pa.array(counts, pa.list_(pa.float32())),
                     "exact": pa.array([len(c) for c in counts], pa.int32()),
                     "source_hash": pa.array([""] * len(out_ids), pa.string())})


# -- reading: presets, fusion, statistics ----------------------------------------------------

def knn_matrix(table: pa.Table, feature: str, size: int, k: int | None = None):
    """The kNN lists of one input as a CSR matrix [size, size] of scores (row i: item i's
    first ``k`` neighbours; all stored ones when k is None)."""
    import scipy.sparse as sp

    part = _of_feature(table, feature)
    if part.num_rows == 0:
        return sp.csr_matrix((size, size))
    rows = part.column("item_index").to_numpy()
    neighbors = part.column("neighbors").combine_chunks()
    lengths = np.diff(neighbors.offsets.to_numpy())
    r = np.repeat(rows, lengths)
    c = neighbors.flatten().to_numpy()
    v = part.column("scores").combine_chunks().flatten().to_numpy()
    if k is not None:
        rank = np.arange(len(c)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        first = rank < k
        r, c, v = r[first], c[first], v[first]
    return sp.csr_matrix((v.astype(np.float64), (r, c)), shape=(size, size))


def _depth_read(definition: GraphSpec, feature: str) -> int | None:
    return None if feature == COOCCURRENCE else definition.k


def normalize(a, preset: str):
    """One input's kNN matrix as ``preset`` defines it (see the module's table)."""
    import scipy.sparse as sp

    weights, norm = PRESETS[preset]
    a = a.tocsr(copy=True)
    if weights == "binary":
        a.data[:] = 1.0
    if norm == "none":
        return a
    degree = np.asarray(a.sum(axis=1)).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        if norm == "sym":
            d = np.where(degree > 0, degree ** -0.5, 0.0)
            return (sp.diags(d) @ a @ sp.diags(d)).tocsr()
        if norm == "rw":
            d = np.where(degree > 0, 1.0 / degree, 0.0)
            return (sp.diags(d) @ a).tocsr()
    raise ValueError(norm)


def hypergraph(incidences: list, weights: list[float] | None = None):
    """HGNN's normalized item-item matrix of a hypergraph with incidence H = [B_1 | B_2 ...]
    (B[i, j] = 1 when item i is in hyperedge j, the kNN list of item j); a feature weight
    scales its hyperedges (W). Dv^-1/2 H W De^-1 H^T Dv^-1/2, zero degrees giving 0."""
    import scipy.sparse as sp

    h = sp.hstack(incidences).tocsr()
    w = np.concatenate([np.full(b.shape[1], wt) for b, wt in zip(incidences, weights or [1.0] * len(incidences))])
    dv = np.asarray(h @ w).ravel()
    de = np.asarray(h.sum(axis=0)).ravel()
    with np.errstate(divide="ignore"):
        dv_inv = np.where(dv > 0, dv ** -0.5, 0.0)
        de_inv = np.where(de > 0, 1.0 / de, 0.0)
    return (sp.diags(dv_inv) @ h @ sp.diags(w * de_inv) @ h.T @ sp.diags(dv_inv)).tocsr()


def fused_matrix(table: pa.Table, spec: dict[str, Any], size: int, preset: str | None = None):
    """The graph a model reads: each input normalized by ``preset``, times its weight, summed."""
    definition = GraphSpec.model_validate(spec)
    preset = preset or definition.preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown graph preset {preset!r}; presets: {', '.join(PRESETS)}")
    weights = definition.weights
    if preset == "hypergraph":
        # B_f = A_f^T: column j holds item j's neighbours
        return hypergraph([(knn_matrix(table, f, size, _depth_read(definition, f)) != 0).astype(np.float64).T.tocsr()
                           for f in weights], list(weights.values()))
    total = None
    for feature, weight in weights.items():
        part = normalize(knn_matrix(table, feature, size, _depth_read(definition, feature)), preset) * weight
        total = part if total is None else total + part
    return total.tocsr()


def _held(part: pa.Table, order: np.ndarray, width: int | None) -> np.ndarray:
    """The stored lists of ``part`` as [len(order), width] positions into ``order`` (item
    indexes; -1: none): row i holds item order[i]'s first ``width`` neighbours (all: None)."""
    size = int(max(order.max(initial=-1), part.column("item_index").to_numpy().max(initial=-1))) + 1
    neighbors = part.column("neighbors").combine_chunks()
    lengths = np.diff(neighbors.offsets.to_numpy())
    position = np.full(size + 1, -1, np.int64)          # position[-1]: an item without a row
    position[order] = np.arange(len(order))
    targets = neighbors.flatten().to_numpy()
    rank = np.arange(len(targets)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    width = int(lengths.max(initial=0)) if width is None else width
    held = np.full((len(order), width), -1, np.int64)
    rows = position[np.repeat(part.column("item_index").to_numpy(), lengths)]
    keep = (rank < width) & (rows >= 0)
    held[rows[keep], rank[keep]] = position[np.minimum(targets[keep], size)]
    return held


def list_stats(held: np.ndarray) -> dict[str, Any]:
    """One input's in-degree distribution (out-degree is k), share of mutual edges and in-degree
    histogram, from its lists ``held`` ([items, k] positions of the neighbours, -1: none).
    Self-loops are left out; an edge i -> j is mutual when j -> i is an edge too."""
    from itemlens.store import knn_kernels

    held = np.where(held == np.arange(len(held))[:, None], -1, held)
    targets = held[held >= 0]
    in_degree = np.bincount(targets, minlength=len(held))
    edges = len(targets)
    mutual = knn_kernels.count_mutual(held) if edges else 0
    return {
        "items": int(len(held)), "edges": int(edges),
        "mutual_share": round(mutual / edges, 4) if edges else 0.0,
        "in_degree": {"min": int(in_degree.min(initial=0)), "median": float(np.median(in_degree)) if len(held) else 0.0,
                      "max": int(in_degree.max(initial=0)), "zero": int((in_degree == 0).sum())},
        "in_degree_histogram": np.bincount(in_degree).tolist(),
    }


def _summary(inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    shares = [s["mutual_share"] for s in inputs.values()]
    return {"inputs": dict(sorted(inputs.items())), "mutual_share": round(float(np.mean(shares)), 4) if shares else 0.0}


def graph_stats(table: pa.Table, spec: GraphSpec) -> dict[str, Any]:
    """The statistics of a stored graph table (:func:`list_stats` per input). A build or a
    refresh computes them from the lists it holds in memory instead; the tests check that the
    two agree, reading the table back with this."""
    inputs = {}
    for feature in pa.compute.unique(table.column("feature")).to_pylist():
        part = _of_feature(table, feature)
        inputs[feature] = list_stats(_held(part, part.column("item_index").to_numpy(), _depth_read(spec, feature)))
    return _summary(inputs)


def degree_plot(stats: dict[str, Any], title: str) -> bytes:
    """A PNG: in-degree histogram per input."""
    from itemlens.store.plots import bar_panels

    return bar_panels([(f"{feature}: in-degree (mutual edges {s['mutual_share']:.0%})",
                        s.get("in_degree_histogram", []), "in-degree")
                       for feature, s in stats.get("inputs", {}).items()], title)


def build(uri: str, specs: dict[str, GraphSpec | dict[str, Any]], *, rebuild: bool = False,
          lock_wait: float = 0.0, storage_options: dict[str, str] | None = None
          ) -> tuple[dict[str, GraphReport], int | None]:
    """Build or refresh graph definitions from the store's latest snapshot and publish a
    snapshot (``itemlens graph``). Returns the reports and the new snapshot (None: unchanged)."""
    from itemlens.store.writer import publish_derived

    return publish_derived(uri, specs, GraphSpec, lambda w, n, s: derive(w, n, s, rebuild=rebuild),
                           what="graphs", section="graphs", command="itemlens graph",
                           lock_wait=lock_wait, storage_options=storage_options)
