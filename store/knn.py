"""Cosine k-nearest neighbours for item graphs, never holding an N x N matrix.

- :func:`exact_knn`: blocked matrix products in torch (CPU or GPU). The similarity matrix is
  symmetric, so each block of pairs (I, J) with I <= J is computed once and serves the top-k of
  both its rows (block I) and its columns (block J): half the products of a plain search.
- :func:`knn_rows`: the neighbours of some rows only (a refresh recomputes those).
- :func:`candidates_from`: for every row, its best matches among a few given rows (how a
  refresh finds the lists a new or changed item should now enter).
- :func:`approximate_knn`: a faiss IVF index for catalogs too large for exact search.

Vectors are L2-normalized first. A zero vector has no direction: it gets no neighbours and is
nobody's neighbour. Equal vectors are ordinary neighbours (cosine 1). Missing slots (fewer than
k candidates) are index -1, score -inf.
"""

from __future__ import annotations

import numpy as np

NO_NEIGHBOUR = -1


def unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to length 1, and which rows could be (non-zero, finite)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    valid = np.isfinite(norms) & (norms > 0)
    out = np.zeros_like(x)
    out[valid] = x[valid] / norms[valid, None]
    return out, valid


def _torch(x: np.ndarray, device: str):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _merge(best_v, best_i, rows: slice | object, v, i, k: int) -> None:
    import torch

    cand_v = torch.cat([best_v[rows], v], dim=1)
    cand_i = torch.cat([best_i[rows], i], dim=1)
    top_v, pos = cand_v.topk(k, dim=1)
    best_v[rows] = top_v
    best_i[rows] = cand_i.gather(1, pos)


def _merge_candidates(best_v, best_i, start: int, count: int, rows, neighbours, values, k: int) -> None:
    """Merge scattered candidates (row ``rows`` local to ``start``, its neighbour, its score)
    into the running top-k of rows start .. start + count: one sort of the few candidates and
    the current lists, instead of a top-k over a whole block."""
    import torch

    current_v = best_v[start:start + count]
    current_i = best_i[start:start + count]
    own = torch.arange(count, device=rows.device).repeat_interleave(k)
    all_r = torch.cat([rows, own])
    all_v = torch.cat([values, current_v.reshape(-1)])
    all_i = torch.cat([neighbours, current_i.reshape(-1)])
    order = torch.argsort(all_v, descending=True, stable=True)
    order = order[torch.argsort(all_r[order], stable=True)]
    r_sorted = all_r[order]
    counts = torch.bincount(r_sorted, minlength=count)
    first = torch.cumsum(counts, 0) - counts
    keep = (torch.arange(len(order), device=rows.device) - first[r_sorted]) < k
    best_v[start:start + count] = all_v[order][keep].view(count, k)
    best_i[start:start + count] = all_i[order][keep].view(count, k)


def _update(best_v, best_i, S, start: int, offset: int, k: int, by_column: bool) -> None:
    """Fold block ``S`` into the running top-k of its rows (or, ``by_column``, of its columns)
    at ``start``; neighbour numbers are ``offset`` + the other axis. Where the running lists are
    full, only scores above a row's current k-th best can matter: a comparison finds those
    (few, once some blocks are seen), which is far cheaper than a top-k over the block, above
    all down columns."""
    count = S.shape[1] if by_column else S.shape[0]
    threshold = best_v[start:start + count, -1]
    if bool(torch_isinf(threshold).any()):       # lists not full yet: a plain top-k
        kk = min(k, S.shape[0] if by_column else S.shape[1])
        v, i = S.topk(kk, dim=0 if by_column else 1)
        if by_column:
            v, i = v.T, i.T
        _merge(best_v, best_i, slice(start, start + count), v, i + offset, k)
        return
    hits = S > (threshold[None, :] if by_column else threshold[:, None])
    r, c = hits.nonzero(as_tuple=True)
    if len(r) == 0:
        return
    values = S[r, c]
    if by_column:
        _merge_candidates(best_v, best_i, start, count, c, r + offset, values, k)
    else:
        _merge_candidates(best_v, best_i, start, count, r, c + offset, values, k)


def torch_isinf(t):
    import torch

    return torch.isinf(t)


def _finish(best_v, best_i, valid_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = best_v.cpu().numpy()
    index = best_i.cpu().numpy()
    empty = ~np.isfinite(sims)
    index[empty] = NO_NEIGHBOUR
    sims[empty] = -np.inf
    index[~valid_rows] = NO_NEIGHBOUR
    sims[~valid_rows] = -np.inf
    return index, sims


def exact_knn(x: np.ndarray, k: int, *, self_loops: bool = False, block: int = 4096,
              device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of every row: (index [n, k] int64, cosine [n, k] float32),
    best first. ``self_loops``: a row counts itself among its k (as FREEDOM and LATTICE build
    their graphs), else its k others."""
    import torch

    xu, valid = unit(x)
    n = len(xu)
    X = _torch(xu, device)
    invalid = _torch(~valid, device)
    any_invalid = not valid.all()
    best_v = torch.full((n, k), float("-inf"), device=device)
    best_i = torch.full((n, k), NO_NEIGHBOUR, dtype=torch.int64, device=device)
    with torch.inference_mode():
        for bi in range(0, n, block):
            ei = min(bi + block, n)
            Xi = X[bi:ei]
            for bj in range(bi, n, block):
                ej = min(bj + block, n)
                S = Xi @ X[bj:ej].T
                if any_invalid:
                    S.masked_fill_(invalid[bj:ej][None, :], float("-inf"))
                    S.masked_fill_(invalid[bi:ei][:, None], float("-inf"))
                if bi == bj and not self_loops:
                    S.fill_diagonal_(float("-inf"))
                _update(best_v, best_i, S, bi, bj, k, by_column=False)
                if bj != bi:           # the same products, read by column: block J's rows
                    _update(best_v, best_i, S, bj, bi, k, by_column=True)
    return _finish(best_v, best_i, valid)


def knn_rows(x: np.ndarray, rows: np.ndarray, k: int, *, self_loops: bool = False, block: int = 4096,
             device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of ``rows`` only (positions into ``x``), against every row."""
    import torch

    xu, valid = unit(x)
    rows = np.asarray(rows, dtype=np.int64)
    X = _torch(xu, device)
    Q = X[_torch(rows, device)]
    invalid = _torch(~valid, device)
    best_v = torch.full((len(rows), k), float("-inf"), device=device)
    best_i = torch.full((len(rows), k), NO_NEIGHBOUR, dtype=torch.int64, device=device)
    row_ids = _torch(rows, device)
    with torch.inference_mode():
        for bj in range(0, len(xu), block):
            ej = min(bj + block, len(xu))
            S = Q @ X[bj:ej].T
            S.masked_fill_(invalid[bj:ej][None, :], float("-inf"))
            if not self_loops:
                cols = torch.arange(bj, ej, device=device)
                S.masked_fill_(row_ids[:, None] == cols[None, :], float("-inf"))
            v, i = S.topk(min(k, ej - bj), dim=1)
            _merge(best_v, best_i, slice(None), v, i + bj, k)
    return _finish(best_v, best_i, valid[rows])


def candidates_from(x: np.ndarray, sources: np.ndarray, k: int, *, self_loops: bool = False,
                    block: int = 65536, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``x``: its best ``k`` matches among the rows ``sources``."""
    import torch

    xu, valid = unit(x)
    sources = np.asarray(sources, dtype=np.int64)
    X = _torch(xu, device)
    C = X[_torch(sources, device)]
    c_invalid = _torch(~valid[sources], device)
    src = _torch(sources, device)
    kk = min(k, len(sources))
    out_v = torch.full((len(xu), k), float("-inf"), device=device)
    out_i = torch.full((len(xu), k), NO_NEIGHBOUR, dtype=torch.int64, device=device)
    with torch.inference_mode():
        for b in range(0, len(xu), block):
            e = min(b + block, len(xu))
            S = X[b:e] @ C.T
            S.masked_fill_(c_invalid[None, :], float("-inf"))
            if not self_loops:
                here = torch.arange(b, e, device=device)
                S.masked_fill_(here[:, None] == src[None, :], float("-inf"))
            v, i = S.topk(kk, dim=1)
            out_v[b:e, :kk] = v
            out_i[b:e, :kk] = src[i]
    return _finish(out_v, out_i, valid)


def merge_lists(index_a, sims_a, index_b, sims_b, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the best ``k`` of two neighbour lists (no item in both)."""
    sims = np.concatenate([sims_a, sims_b], axis=1)
    index = np.concatenate([index_a, index_b], axis=1)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(index, order, 1), np.take_along_axis(sims, order, 1)


def approximate_knn(x: np.ndarray, k: int, *, self_loops: bool = False, nlist: int | None = None,
                    nprobe: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Top-``k`` by a faiss IVF-Flat inner-product index (cosine on unit vectors):
    (index, cosine, the index parameters)."""
    import faiss

    xu, valid = unit(x)
    n, d = xu.shape
    keys = np.flatnonzero(valid)
    nlist = nlist or max(1, min(int(4 * np.sqrt(len(keys))), len(keys) // 39 or 1))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(xu[keys])
    index.add_with_ids(xu[keys], keys.astype(np.int64))
    index.nprobe = min(nprobe, nlist)
    extra = 0 if self_loops else 1
    sims, found = index.search(xu, k + extra)
    if not self_loops:      # drop the row itself wherever it came back
        own = found == np.arange(n)[:, None]
        sims = np.where(own, -np.inf, sims)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        found, sims = np.take_along_axis(found, order, 1), np.take_along_axis(sims, order, 1)
    found = found[:, :k].astype(np.int64)
    sims = sims[:, :k].astype(np.float32)
    missing = (found < 0) | ~np.isfinite(sims)
    found[missing], sims[missing] = NO_NEIGHBOUR, -np.inf
    found[~valid], sims[~valid] = NO_NEIGHBOUR, -np.inf
    return found, sims, {"kind": "IVF_FLAT", "nlist": nlist, "nprobe": int(index.nprobe)}
