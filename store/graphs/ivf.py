"""Approximate kNN graphs without holding the vectors: an IVF index (faiss IVF-Flat, inner
product on unit vectors) whose coarse centroids are trained on a sample, its lists held by
shards (each the vectors of a range of items), and the catalog's queries searched by blocks.

A build (:func:`build_lists`):

1. trains the centroids on a seeded sample of the items, in one task;
2. starts the shards (on Ray: actors spread over the nodes), each reading its items' rows from
   Lance and adding them to the lists their nearest centroid names;
3. searches every block of items in a task: the block's ``nprobe`` nearest centroids (its
   *probes*), each shard's best ``depth`` among the items of those lists
   (``search_preassigned``), merged by score then item index; and writes the block's rows as
   Lance fragments. The driver commits them and keeps in-degree counts and a sample of lists.

The centroids are stored with the graph (``graphivf__<name>__<label>``) and every item's
probes with its list, so that a refresh (:func:`refresh_lists`) uses the same index: new and
changed items are searched as a build would search them; a stored list loses the items that
changed or left, takes the new and changed items of its probed lists (searched in an index of
those items only, with the stored probes) and keeps what it can vouch for; a list left with
fewer than k such neighbours is searched again. Lists searched in a refresh equal those of a
rebuild with the same index.

Results do not depend on how items are cut into blocks or shards: probes come from products of
fixed-shape padded chunks (a row's scores are the same bits in any chunk), and ties are broken
by item index. So a run on Ray and one in this process give the same lists.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from itemlens.errors import ConfigError
from itemlens.store.graphs.knn import NO_NEIGHBOUR, unit
from itemlens.store.vectors import TableSource, blocks, read_block, vectors_of

#: items per shard of the index (each shard holds their vectors)
SHARD_ITEMS = 2_000_000
#: rows of one product when computing probes (fixed: a row's scores are then the same bits anywhere)
PROBE_CHUNK = 4096
#: the centroids train on at most this many points per list
SAMPLE_PER_LIST = 64
#: mutual share: exact up to this many items, else on a seeded sample of this many
MUTUAL_ITEMS = 100_000
#: recall@k against exact search: on this many sampled rows
RECALL_ROWS = 200

APPROX_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("item_index", pa.int64()),
        pa.field("neighbors", pa.list_(pa.int64())),
        pa.field("scores", pa.list_(pa.float32())),
        pa.field("exact", pa.int32()),
        pa.field("source_hash", pa.string()),
        pa.field("probes", pa.list_(pa.int32())),  # the item's nprobe nearest centroids, nearest first
    ]
)


def nlist_for(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))


def probes_of(xu: np.ndarray, centroids: np.ndarray, nprobe: int) -> np.ndarray:
    """The ``nprobe`` nearest centroids (inner product) of unit rows ``xu``, nearest first."""
    import torch

    nprobe = min(nprobe, len(centroids))
    out = np.empty((len(xu), nprobe), np.int32)
    c = np.ascontiguousarray(centroids.T)
    pad = np.zeros((PROBE_CHUNK, xu.shape[1]), np.float32)
    for start in range(0, len(xu), PROBE_CHUNK):
        rows = xu[start : start + PROBE_CHUNK]
        pad[: len(rows)] = rows
        pad[len(rows) :] = 0
        scores = torch.from_numpy(pad @ c)[: len(rows)]
        out[start : start + len(rows)] = scores.topk(nprobe, dim=1, sorted=True).indices.numpy()
    return out


def train_centroids(source: TableSource, address: np.ndarray, dim: int, nlist: int, seed: int) -> np.ndarray:
    """IVF centroids [nlist, d] from the unit vectors of the sampled rows (faiss' k-means)."""
    import faiss

    xu, valid = unit(vectors_of(read_block(source, address, ["vector"]), dim))
    xu = xu[valid]
    if not len(xu):
        raise ConfigError("an approximate graph needs vectors with a direction: every sampled vector is zero")
    # zero vectors have no direction and train nothing: at most one list per vector that does
    nlist = min(nlist, len(xu))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(xu)
    return quantizer.reconstruct_n(0, nlist)


class IvfShard:
    """The IVF lists of some items: their unit vectors, each in the list of its first probe."""

    def __init__(
        self,
        centroids: np.ndarray,
        source: TableSource,
        address: np.ndarray,
        item_index: np.ndarray,
        dim: int,
        nprobe: int,
    ):
        import faiss

        nlist, d = centroids.shape
        self.nlist = nlist
        self.quantizer = faiss.IndexFlatIP(d)
        self.quantizer.add(np.ascontiguousarray(centroids, np.float32))
        self.index = faiss.IndexIVFFlat(self.quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        for b in blocks(len(address)):
            xu, valid = unit(vectors_of(read_block(source, address[b], ["vector"]), dim))
            keep = np.flatnonzero(valid)  # a zero vector is nobody's neighbour
            if len(keep):
                x = np.ascontiguousarray(xu[keep])
                ids = np.ascontiguousarray(item_index[b][keep], np.int64)
                lists = np.ascontiguousarray(probes_of(x, centroids, 1)[:, 0], np.int64)
                self.index.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))

    def ready(self) -> int:
        return int(self.index.ntotal)

    def search(self, xu: np.ndarray, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's best ``k`` (scores, item indexes; -1 missing) among the items of its probes."""
        if len(xu) == 0 or self.index.ntotal == 0:
            return np.full((len(xu), k), -np.inf, np.float32), np.full((len(xu), k), NO_NEIGHBOUR, np.int64)
        self.index.nprobe = probes.shape[1]
        probes = np.ascontiguousarray(probes, np.int64)
        scores, found = self.index.search_preassigned(
            np.ascontiguousarray(xu, np.float32), k, probes, np.zeros(probes.shape, np.float32)
        )
        return scores, found

    def exact(self, xu: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's best ``k`` among every item of the shard (every list probed)."""
        return self.search(xu, np.tile(np.arange(self.nlist, dtype=np.int64), (len(xu), 1)), k)


def ask_local(shards, method: str, *args) -> list[Any]:
    return [getattr(s, method)(*args) for s in shards]


def merge_parts(
    parts: list[tuple[np.ndarray, np.ndarray]], depth: int, own: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the best ``depth`` of the shards' answers, by score then item index; ``own``
    (the rows' item indexes) are left out where given (no self-loops)."""
    scores = np.concatenate([p[0] for p in parts], axis=1).astype(np.float32)
    found = np.concatenate([p[1] for p in parts], axis=1).astype(np.int64)
    missing = found < 0
    if own is not None:
        missing |= found == own[:, None]
    scores = np.where(missing, -np.inf, scores)
    found = np.where(missing, NO_NEIGHBOUR, found)
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, found), -scores), axis=1)[:, :depth]
    scores, found = np.take_along_axis(scores, order, 1), np.take_along_axis(found, order, 1)
    if scores.shape[1] < depth:
        pad = depth - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        found = np.pad(found, ((0, 0), (0, pad)), constant_values=NO_NEIGHBOUR)
    return found, scores


@dataclass(frozen=True)
class Search:
    """What every block task of one feature shares."""

    feature: str
    centroids: Any  # [nlist, d] float32 (Ray: an object reference)
    nprobe: int
    depth: int
    k: int
    self_loops: bool
    dim: int
    caller: Any  # calls a method on every shard (in this process, or on Ray actors)


def search_rows(
    search: Search, shards, xu: np.ndarray, valid: np.ndarray, item_index: np.ndarray, probes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lists of some items: (item indexes [b, depth], scores, probes)."""
    if probes is None:
        probes = probes_of(xu, search.centroids, search.nprobe)
    extra = 0 if search.self_loops else 1
    parts = search.caller(shards, "search", xu, probes, search.depth + extra)
    found, scores = merge_parts(parts, search.depth, None if search.self_loops else item_index)
    found[~valid], scores[~valid] = NO_NEIGHBOUR, -np.inf
    return found, scores, probes


def rows_table(
    feature: str,
    ids: pa.Array,
    item_index: np.ndarray,
    found: np.ndarray,
    scores: np.ndarray,
    exact: np.ndarray | None,
    hashes: pa.Array,
    probes: np.ndarray,
) -> pa.Table:
    ok = found >= 0
    lengths = ok.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    n, width = probes.shape
    return pa.table(
        {
            "feature": pa.array([feature] * n, pa.string()),
            "item_id": ids,
            "item_index": pa.array(item_index, pa.int64()),
            "neighbors": pa.ListArray.from_arrays(offsets, pa.array(found[ok], pa.int64())),
            "scores": pa.ListArray.from_arrays(offsets, pa.array(scores[ok].astype(np.float32), pa.float32())),
            "exact": pa.array((lengths if exact is None else np.minimum(exact, lengths)).astype(np.int32), pa.int32()),
            "source_hash": hashes,
            "probes": pa.ListArray.from_arrays(
                pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32)), pa.array(probes.reshape(-1), pa.int32())
            ),
        },
        schema=APPROX_SCHEMA,
    )


def _summary(found: np.ndarray, item_index: np.ndarray, k: int, size: int, keep: np.ndarray) -> dict[str, Any]:
    """What the driver keeps of a block: the targets of the first k (self-loops left out, as
    list_stats counts; the driver counts in-degrees from them), and the sampled lists."""
    first = found[:, :k]
    edge = (first >= 0) & (first != item_index[:, None])
    return {"targets": first[edge].astype(np.int32), "edges": int(edge.sum()), "kept": first[keep].astype(np.int32)}


def build_block(
    search: Search,
    shards,
    source: TableSource,
    address: np.ndarray,
    item_index: np.ndarray,
    uri: str,
    options,
    size: int,
    keep: np.ndarray,
) -> dict[str, Any]:
    """Search one block of items and write its rows (uncommitted fragments)."""
    from itemlens.store import lance_io

    table = read_block(source, address, ["item_id", "vector", "input_hash"])
    xu, valid = unit(vectors_of(table, search.dim))
    found, scores, probes = search_rows(search, shards, xu, valid, item_index)
    rows = rows_table(
        search.feature, table.column("item_id"), item_index, found, scores, None, table.column("input_hash"), probes
    )
    return {
        "fragments": lance_io.write_fragments(rows, uri, options),
        **_summary(found, item_index, search.k, size, keep),
    }


def refresh_block(
    search: Search,
    shards,
    fresh_shards,
    source: TableSource,
    address: np.ndarray,
    item_index: np.ndarray,
    stored: TableSource | None,
    stored_address: np.ndarray,
    moved_ref,
    reachable: int,
    uri: str,
    options,
    size: int,
    keep: np.ndarray,
) -> dict[str, Any]:
    """One block of a refresh: new and changed items searched; stored lists without the items
    that moved, merged with the new and changed items of their probed lists; lists left unsure
    of their first k searched again. Writes the block's rows; counts what it touched."""
    from itemlens.store import lance_io

    moved = moved_ref
    n = len(item_index)
    depth = search.depth
    current = read_block(source, address, ["item_id", "input_hash"])
    hashes = current.column("input_hash")
    fresh = np.ones(n, bool)
    held = np.flatnonzero(stored_address >= 0)
    old = None
    if stored is not None and len(held):
        old = read_block(stored, stored_address[held], ["neighbors", "scores", "exact", "source_hash", "probes"])
        same = np.asarray(
            [a == b for a, b in zip(old.column("source_hash").to_pylist(), hashes.take(pa.array(held)).to_pylist())],
            bool,
        )
        fresh[held[same]] = False
    found = np.full((n, depth), NO_NEIGHBOUR, np.int64)
    scores = np.full((n, depth), -np.inf, np.float32)
    exact = np.zeros(n, np.int64)
    probes = np.zeros((n, min(search.nprobe, len(search.centroids))), np.int32)
    kept = np.flatnonzero(~fresh)
    again = np.zeros(n, bool)
    touched = fresh.copy()
    if len(kept):
        rows_of = np.full(n, -1, np.int64)
        rows_of[held] = np.arange(len(held))
        at = rows_of[kept]
        neighbors = old.column("neighbors").take(pa.array(at))
        lists, sims = _dense(neighbors, old.column("scores").take(pa.array(at)), depth)
        stored_exact = old.column("exact").take(pa.array(at)).to_numpy().astype(np.int64)
        probes[kept] = np.asarray(
            old.column("probes").take(pa.array(at)).combine_chunks().flatten().to_numpy()
        ).reshape(len(kept), -1)
        gone = (lists >= 0) & moved[np.maximum(lists, 0)]
        lost = gone.any(axis=1)
        touched[kept[lost]] = True
        # what a stored list vouches for: its exact prefix, less the entries that left it (they
        # keep their order, so the survivors of the prefix come first)
        vouched_left = stored_exact - (gone & (np.arange(depth)[None, :] < stored_exact[:, None])).sum(axis=1)
        survivors = np.where(gone, NO_NEIGHBOUR, lists)
        order = np.argsort(survivors < 0, axis=1, kind="stable")
        lists, sims = (
            np.take_along_axis(survivors, order, 1),
            np.take_along_axis(np.where(gone, -np.inf, sims), order, 1),
        )
        prefix = np.minimum(vouched_left, (lists >= 0).sum(axis=1))
        # New and changed items merge in as exact down to the last vouched score. No list counts
        # as holding every item of its probes (a short list may be one a refresh shortened, and
        # the probed lists' sizes are not stored): a list left unsure of its first k is searched again.
        bound = np.where(prefix > 0, sims[np.arange(len(kept)), np.maximum(prefix - 1, 0)], np.inf)
        # the new and changed items of each list's probed lists
        if fresh_shards is not None:
            extra = 0 if search.self_loops else 1
            xq, directed = unit(_vectors_for(source, address[kept], search.dim))  # queries: the items' own vectors
            parts = search.caller(fresh_shards, "search", xq, probes[kept], depth + extra)
            cand, cand_scores = merge_parts(parts, depth, None if search.self_loops else item_index[kept])
            # a zero vector has no direction and no neighbours (as in a rebuild), not 0-score ones
            cand[~directed], cand_scores[~directed] = NO_NEIGHBOUR, -np.inf
            new_lists, new_sims = merge_parts([(sims, lists), (cand_scores, cand)], depth, None)
            changed = (new_lists != lists).any(axis=1)
            touched[kept[changed]] = True
            # entries at or above the bound are the index's top: a rebuild has them too
            vouched = (new_sims >= bound[:, None]) & np.isfinite(new_sims)
            prefix = np.where(changed | lost, vouched.sum(axis=1), stored_exact)
            lists, sims = new_lists, new_sims
        found[kept], scores[kept], exact[kept] = lists, sims, np.minimum(prefix, depth)
        again[kept] = exact[kept] < min(search.k, max(reachable, 0))
    search_now = np.flatnonzero(fresh | again)
    if len(search_now):
        xu, valid = unit(_vectors_for(source, address[search_now], search.dim))
        f, s, p = search_rows(search, shards, xu, valid, item_index[search_now])
        found[search_now], scores[search_now], probes[search_now] = f, s, p
        exact[search_now] = depth
    rows = rows_table(search.feature, current.column("item_id"), item_index, found, scores, exact, hashes, probes)
    touched[search_now] = True
    return {
        "fragments": lance_io.write_fragments(rows, uri, options),
        "recomputed": len(search_now),
        "touched": int(touched.sum()),
        **_summary(found, item_index, search.k, size, keep),
    }


def _vectors_for(source: TableSource, address: np.ndarray, dim: int) -> np.ndarray:
    return vectors_of(read_block(source, address, ["vector"]), dim)


def _dense(neighbors: pa.ChunkedArray, scores: pa.ChunkedArray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    neighbors, scores = neighbors.combine_chunks(), scores.combine_chunks()
    offsets = neighbors.offsets.to_numpy()
    lengths = np.diff(offsets)
    n = len(lengths)
    lists = np.full((n, depth), NO_NEIGHBOUR, np.int64)
    sims = np.full((n, depth), -np.inf, np.float32)
    rank = np.arange(offsets[-1] - offsets[0]) - np.repeat(offsets[:-1] - offsets[0], lengths)
    row = np.repeat(np.arange(n), lengths)
    ok = rank < depth
    lists[row[ok], rank[ok]] = neighbors.flatten().to_numpy()[ok]
    sims[row[ok], rank[ok]] = scores.flatten().to_numpy()[ok]
    return lists, sims


# -- the passes ---------------------------------------------------------------------------------


@dataclass
class Lists:
    """What a build or refresh of one feature leaves on the driver."""

    fragments: list[str]
    in_degree: np.ndarray  # [size] int32
    edges: int
    sampled: np.ndarray  # positions (into the items) whose first k are kept
    sampled_lists: np.ndarray  # [len(sampled), k] item indexes
    recomputed: int
    touched: int
    fresh: np.ndarray | None  # refresh: which items were new or changed
    centroids: np.ndarray
    shards: list


def _shard_args(centroids, source, address, item_index, dim, nprobe) -> list[tuple]:
    count = max(1, math.ceil(len(address) / SHARD_ITEMS))
    cuts = np.linspace(0, len(address), count + 1).astype(int)
    return [(centroids, source, address[a:b], item_index[a:b], dim, nprobe) for a, b in itertools.pairwise(cuts)]


def _kept_rows(sampled: np.ndarray, block: slice) -> np.ndarray:
    """Positions within ``block`` of the sampled items (whose lists the driver keeps)."""
    inside = sampled[(sampled >= block.start) & (sampled < block.stop)]
    return inside - block.start


def _sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.arange(n) if n <= size else np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def build_lists(
    runner, feature: str, rows, spec, uri: str, options, size: int, centroids: np.ndarray | None = None
) -> Lists:
    """Train (unless ``centroids`` are given), shard and search every item of one feature."""
    n = len(rows.item_index)
    nlist = len(centroids) if centroids is not None else min(spec.nlist or nlist_for(n), max(n, 1))
    if centroids is None:
        picks = _sample_rows(n, SAMPLE_PER_LIST * nlist, seed=0)
        centroids = runner.call(train_centroids, rows.source, rows.address[picks], rows.dim, nlist, 0)
    shards = runner.shards(
        IvfShard,
        _shard_args(runner.share(centroids), rows.source, rows.address, rows.item_index, rows.dim, spec.nprobe),
    )
    search = Search(
        feature,
        centroids,
        spec.nprobe,
        spec.list_depth,
        spec.k,
        spec.self_loops,
        rows.dim,
        getattr(runner, "shard_caller", ask_local),
    )
    shared = runner.share(search)
    sampled = _sample_rows(n, MUTUAL_ITEMS)
    cut = blocks(n)
    args = [
        (shared, shards, rows.source, rows.address[b], rows.item_index[b], uri, options, size, _kept_rows(sampled, b))
        for b in cut
    ]
    out = _collect(runner.map(build_block, args), size, spec.k, len(args))
    return Lists(out["fragments"], out["in_degree"], out["edges"], sampled, out["kept"], n, n, None, centroids, shards)


def refresh_lists(
    runner,
    feature: str,
    rows,
    spec,
    stored: TableSource,
    stored_rows: tuple[np.ndarray, np.ndarray],
    centroids: np.ndarray,
    uri: str,
    options,
    size: int,
) -> tuple[Lists, int]:
    """Refresh one feature's lists with the stored centroids (see the module's docstring).
    ``stored_rows``: (item index, row address) of the feature's stored lists. Returns the
    lists and how many stored lists were deleted (their items are gone)."""
    n = len(rows.item_index)
    stored_index, stored_address = stored_rows
    position = np.full(size, -1, np.int64)
    position[rows.item_index] = np.arange(n)
    at = position[np.minimum(stored_index, size - 1)]
    at[stored_index >= size] = -1
    stored_of_item = np.full(n, -1, np.int64)
    stored_of_item[at[at >= 0]] = stored_address[at >= 0]
    gone = stored_index[at < 0]
    # which items are new or changed: a first pass over the hashes
    fresh = np.ones(n, bool)
    held = np.flatnonzero(stored_of_item >= 0)
    for b, same in zip(
        blocks(len(held)),
        runner.map(
            _same_hash,
            [(rows.source, rows.address[held[b]], stored, stored_of_item[held[b]]) for b in blocks(len(held))],
        ),
    ):
        fresh[held[b][same]] = False
    moved = np.zeros(size, bool)
    moved[rows.item_index[fresh]] = True
    moved[gone] = True
    shards = runner.shards(
        IvfShard,
        _shard_args(runner.share(centroids), rows.source, rows.address, rows.item_index, rows.dim, spec.nprobe),
    )
    new = np.flatnonzero(fresh)
    fresh_shards = (
        runner.shards(
            IvfShard,
            [(runner.share(centroids), rows.source, rows.address[new], rows.item_index[new], rows.dim, spec.nprobe)],
        )
        if len(new)
        else None
    )
    search = Search(
        feature,
        centroids,
        spec.nprobe,
        spec.list_depth,
        spec.k,
        spec.self_loops,
        rows.dim,
        getattr(runner, "shard_caller", ask_local),
    )
    shared, moved_ref = runner.share(search), runner.share(moved)
    reachable = n - (0 if spec.self_loops else 1)
    sampled = _sample_rows(n, MUTUAL_ITEMS)
    cut = blocks(n)
    args = [
        (
            shared,
            shards,
            fresh_shards,
            rows.source,
            rows.address[b],
            rows.item_index[b],
            stored,
            stored_of_item[b],
            moved_ref,
            reachable,
            uri,
            options,
            size,
            _kept_rows(sampled, b),
        )
        for b in cut
    ]
    out = _collect(runner.map(refresh_block, args), size, spec.k, len(args))
    if fresh_shards is not None:
        runner.release(fresh_shards)
    return (
        Lists(
            out["fragments"],
            out["in_degree"],
            out["edges"],
            sampled,
            out["kept"],
            out["recomputed"],
            out["touched"],
            fresh,
            centroids,
            shards,
        ),
        len(gone),
    )


def _same_hash(source: TableSource, address: np.ndarray, stored: TableSource, stored_address: np.ndarray) -> np.ndarray:
    now = read_block(source, address, ["input_hash"]).column(0).to_pylist()
    before = read_block(stored, stored_address, ["source_hash"]).column(0).to_pylist()
    return np.asarray([a == b for a, b in zip(now, before)], bool)


def _collect(results, size: int, k: int, total: int = 0) -> dict[str, Any]:
    import logging
    import time

    log, start = logging.getLogger("itemlens.graphs"), time.perf_counter()
    out = {
        "fragments": [],
        "in_degree": np.zeros(size, np.int64),
        "edges": 0,
        "kept": [],
        "recomputed": 0,
        "touched": 0,
    }
    for done, r in enumerate(results, 1):
        if done % 10 == 0:
            log.info("%d of %d blocks done in %.0f s", done, total, time.perf_counter() - start)
        out["fragments"] += r["fragments"]
        out["in_degree"] += np.bincount(r["targets"], minlength=size)  # the edges' targets, counted here
        out["edges"] += r["edges"]
        out["kept"].append(r["kept"])
        out["recomputed"] += r.get("recomputed", 0)
        out["touched"] += r.get("touched", 0)
    out["kept"] = np.concatenate(out["kept"]) if out["kept"] else np.zeros((0, k), np.int32)
    return out


# -- statistics ---------------------------------------------------------------------------------


def stats(lists: Lists, rows) -> dict[str, Any]:
    """list_stats' figures from what the passes kept: in-degree over every list, the mutual
    share over the sampled lists (every list up to MUTUAL_ITEMS items: then exact)."""
    n = len(rows.item_index)
    in_degree = lists.in_degree[rows.item_index]
    mutual = _mutual(lists.sampled_lists.astype(np.int64), rows.item_index[lists.sampled])
    from itemlens.store.graphs.stats import in_degree_summary

    return {
        "items": int(n),
        "edges": int(lists.edges),
        "mutual_share": round(mutual, 4),
        **in_degree_summary(in_degree),
        **({"mutual_share_sample": len(lists.sampled)} if len(lists.sampled) < n else {}),
    }


def _mutual(kept: np.ndarray, own: np.ndarray) -> float:
    """Share of edges i -> j (self left out) whose j -> i is an edge too, among the lists
    ``kept`` of items ``own`` (ascending): edges to items outside them are left out."""
    from itemlens.store.graphs import knn_kernels

    at = np.searchsorted(own, np.maximum(kept, 0))
    inside = (kept >= 0) & (at < len(own)) & (own[np.minimum(at, max(len(own) - 1, 0))] == kept)
    held = np.where(inside, at, -1)
    held = np.where(held == np.arange(len(held))[:, None], -1, held)
    edges = int((held >= 0).sum())
    return knn_kernels.count_mutual(np.ascontiguousarray(held)) / edges if edges else 0.0


def recall(runner, lists: Lists, rows, spec) -> float:
    """Recall@k of the lists against exact search (every list of the shards probed), on
    RECALL_ROWS seeded rows."""
    n = len(rows.item_index)
    if not n:
        return 0.0
    picks = np.sort(np.random.default_rng(0).choice(n, min(RECALL_ROWS, n), replace=False))
    xu, valid = unit(_vectors_for(rows.source, rows.address[picks], rows.dim))
    extra = 0 if spec.self_loops else 1
    parts = runner.ask(lists.shards, "exact", xu, spec.k + extra)
    truth, _ = merge_parts(parts, spec.k, None if spec.self_loops else rows.item_index[picks])
    found = _lists_of(runner, lists, rows, picks, spec)
    recalls = []
    for t, f, ok in zip(truth, found, valid):
        t = set(t[t >= 0].tolist())
        if ok and t:
            recalls.append(len(t & set(f[: spec.k].tolist())) / len(t))
    return round(float(np.mean(recalls)), 4) if recalls else 0.0


def _lists_of(runner, lists: Lists, rows, picks: np.ndarray, spec) -> np.ndarray:
    """The first k of the lists of items ``picks`` (positions): from the kept sample if there,
    else searched again (the same lists: searches do not depend on the block)."""
    at = np.searchsorted(lists.sampled, picks)
    if len(lists.sampled) and (at < len(lists.sampled)).all() and (lists.sampled[at] == picks).all():
        return lists.sampled_lists[at]
    search = Search(
        "",
        lists.centroids,
        spec.nprobe,
        spec.list_depth,
        spec.k,
        spec.self_loops,
        rows.dim,
        getattr(runner, "shard_caller", ask_local),
    )
    xu, valid = unit(_vectors_for(rows.source, rows.address[picks], rows.dim))
    found, _, _ = search_rows(search, lists.shards, xu, valid, rows.item_index[picks])
    return found[:, : spec.k]


def centroid_blob(centroids: np.ndarray) -> bytes:
    from safetensors.numpy import save

    return save({"centroids": np.ascontiguousarray(centroids, np.float32)})


def centroids_of(blob: bytes) -> np.ndarray:
    from safetensors.numpy import load

    return load(blob)["centroids"]
