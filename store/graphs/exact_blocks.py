"""Exact kNN lists by blocks of rows spread over workers (a build on Ray, for the sizes where
exact search is still affordable, on GPUs above all): each task takes a block of query rows and
streams every row of the feature from Lance against it, block by block, keeping the running
top ``depth`` (the numba fold of :mod:`itemlens.store.graphs.knn_kernels` on CPU, a top-k
merge on a GPU), then writes its rows as fragments. Every pair is scored twice (once from each
side), where the driver's :func:`~itemlens.store.graphs.knn.exact_knn` scores it once: the
price of needing no node to hold every vector. Ties at equal scores go to the lower item index.
A refresh of an exact graph reads the vectors in the driver (:func:`..build._refresh_lists`)."""

from __future__ import annotations

import numpy as np

from itemlens.store.graphs.ivf import MUTUAL_ITEMS, Lists, _collect, _kept_rows, _sample_rows, _summary
from itemlens.store.graphs.knn import NO_NEIGHBOUR, unit
from itemlens.store.vectors import TableSource, blocks, read_block, vectors_of

#: rows of the feature read at a time against a block of queries, and query rows per task
COLUMNS, ROWS = 65_536, 16_384


def exact_block(
    feature: str,
    source: TableSource,
    address: np.ndarray,
    item_index: np.ndarray,
    every: tuple,
    depth: int,
    k: int,
    self_loops: bool,
    dim: int,
    device: str,
    uri: str,
    options,
    size: int,
    keep: np.ndarray,
) -> dict:
    """The exact lists of one block of items against every item (``every``: row addresses and
    item indexes, ascending), written as fragments of the graph table."""
    import torch

    from itemlens.store import lance_io
    from itemlens.store.graphs import knn

    all_address, all_index = every
    table = read_block(source, address, ["item_id", "vector", "input_hash"])
    qu, qvalid = unit(vectors_of(table, dim))
    Q = torch.from_numpy(qu).to(device)
    best_v = torch.full((len(qu), depth), float("-inf"), device=device)
    best_i = torch.full((len(qu), depth), NO_NEIGHBOUR, dtype=torch.int64, device=device)
    own = torch.from_numpy(item_index).to(device)
    with torch.inference_mode():
        for cols in blocks(len(all_address), COLUMNS):
            xu, valid = unit(vectors_of(read_block(source, all_address[cols], ["vector"]), dim))
            S = Q @ torch.from_numpy(xu).to(device).T
            S[:, torch.from_numpy(~valid).to(device)] = float("-inf")  # a zero vector is nobody's neighbour
            items = torch.from_numpy(all_index[cols]).to(device)
            if not self_loops:
                S[items[None, :] == own[:, None]] = float("-inf")
            knn._fold_rows(best_v, best_i, S, slice(None), items, depth)
    found, scores = knn._finish(best_v, best_i, qvalid)
    # the fold keeps the first of equal scores it meets: ties by item index, as the other paths
    order = np.lexsort((np.where(found < 0, np.iinfo(np.int64).max, found), -scores), axis=1)
    found, scores = np.take_along_axis(found, order, 1), np.take_along_axis(scores, order, 1)
    rows = lists_table(feature, table.column("item_id"), item_index, found, scores, table.column("input_hash"))
    return {"fragments": lance_io.write_fragments(rows, uri, options), **_summary(found, item_index, k, size, keep)}


def lists_table(feature: str, ids, item_index: np.ndarray, found: np.ndarray, scores: np.ndarray, hashes):
    """Graph rows (GRAPH_SCHEMA) of lists that are item indexes already, computed whole."""
    import pyarrow as pa

    from itemlens.store.graphs.storage import GRAPH_SCHEMA

    ok = found >= 0
    lengths = ok.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.table(
        {
            "feature": pa.array([feature] * len(found), pa.string()),
            "item_id": ids,
            "item_index": pa.array(item_index, pa.int64()),
            "neighbors": pa.ListArray.from_arrays(offsets, pa.array(found[ok], pa.int64())),
            "scores": pa.ListArray.from_arrays(offsets, pa.array(scores[ok].astype(np.float32), pa.float32())),
            "exact": pa.array(lengths.astype(np.int32), pa.int32()),
            "source_hash": hashes,
        },
        schema=GRAPH_SCHEMA,
    )


def build_lists(runner, feature: str, rows, spec, uri: str, options, size: int, device: str) -> Lists:
    """Every item's exact list of one feature, by blocks of query rows in tasks."""
    n = len(rows.item_index)
    every = runner.share((rows.address, rows.item_index))
    sampled = _sample_rows(n, MUTUAL_ITEMS)
    args = [
        (
            feature,
            rows.source,
            rows.address[b],
            rows.item_index[b],
            every,
            spec.list_depth,
            spec.k,
            spec.self_loops,
            rows.dim,
            device,
            uri,
            options,
            size,
            _kept_rows(sampled, b),
        )
        for b in blocks(n, ROWS)
    ]
    out = _collect(runner.map(exact_block, args, gpus=1 if device == "cuda" else 0), size, spec.k)
    return Lists(
        out["fragments"],
        out["in_degree"],
        out["edges"],
        sampled,
        out["kept"],
        n,
        n,
        None,
        np.zeros((0, rows.dim), np.float32),
        [],
    )
