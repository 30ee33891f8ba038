"""Cosine k-nearest neighbours for item graphs, never holding an N x N matrix.

- :func:`exact_knn`: blocked matrix products in torch (CPU or GPU). The similarity matrix is
  symmetric, so each block of pairs (I, J) with I <= J is computed once and serves the top-k of
  both its rows (block I) and its columns (block J): half the products of a plain search. Once
  every list is full, a block only matters where it beats a row's or a column's current k-th
  best: a comparison finds those few entries. Where bf16 products are fast (CUDA, CPUs with
  AMX) the comparison runs on bf16 products with a proven error margin and only the entries it
  keeps are scored in fp32, so the lists are those of fp32 products.
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
    import torch

    count = S.shape[1] if by_column else S.shape[0]
    threshold = best_v[start:start + count, -1]
    # lists mostly not full yet: a plain top-k (the threshold pass is right either way, but it
    # would keep every entry of a row whose list is not full)
    if float(torch.isinf(threshold).float().mean()) > 0.5:
        kk = min(k, S.shape[0] if by_column else S.shape[1])
        v, i = S.topk(kk, dim=0 if by_column else 1)
        if by_column:
            v, i = v.T, i.T
        _merge(best_v, best_i, slice(start, start + count), v, i + offset, k)
        return
    hits = S > (threshold[None, :] if by_column else threshold[:, None])
    r, c = _nonzero(hits)
    if len(r) == 0:
        return
    values = S[r, c]
    if by_column:
        _merge_candidates(best_v, best_i, start, count, c, r + offset, values, k)
    else:
        _merge_candidates(best_v, best_i, start, count, r, c + offset, values, k)


def _finish(best_v, best_i, valid_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = best_v.cpu().numpy()
    index = best_i.cpu().numpy()
    empty = ~np.isfinite(sims)
    index[empty] = NO_NEIGHBOUR
    sims[empty] = -np.inf
    index[~valid_rows] = NO_NEIGHBOUR
    sims[~valid_rows] = -np.inf
    return index, sims


# bf16 screening: |x~.y~ - x.y| <= 2u + u^2 for unit vectors rounded to bf16 (u = 2^-8, by
# Cauchy-Schwarz), plus fp32 accumulation (<= d 2^-24) and the bf16 rounding of the result (<= u).
BF16_U = 2.0 ** -8


def bf16_margin(dim: int) -> float:
    return 3 * BF16_U + BF16_U ** 2 + dim * 2.0 ** -23


def fast_bf16(device: str) -> bool:
    """Whether bf16 products are much faster than fp32 here: CUDA, or a CPU with AMX."""
    if str(device).startswith("cuda"):
        return True
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_bf16" in f.read()
    except OSError:
        return False


# above this many candidates in a block, scoring them one by one costs more than fp32 products
RESCORE_LIMIT = 20_000


def _nonzero(mask):
    """Row and column of every True of a 2-d mask (numpy reads a CPU mask ~4x faster than torch)."""
    import torch

    if mask.device.type != "cpu":
        return mask.nonzero(as_tuple=True)
    flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
    return flat // mask.shape[1], flat % mask.shape[1]


def _screened_update(best_v, best_i, X, X16, bi, ei, bj, ej, k: int, margin: float) -> bool:
    """Fold block (I, J) into both I's and J's lists from bf16 products: only pairs whose bf16
    score is within ``margin`` of a row's or column's current k-th best can enter, and those are
    scored again in fp32, so the result is what fp32 products give. False where some list is not
    full yet (the caller then takes the fp32 path)."""
    import torch

    thr_r, thr_c = best_v[bi:ei, -1], best_v[bj:ej, -1]
    if bool(torch.isinf(thr_r).any()) or bool(torch.isinf(thr_c).any()):
        return False
    S16 = X16[bi:ei] @ X16[bj:ej].T
    # thresholds lowered by the margin and by one more bf16 rounding (|t| <= 1: half an ulp
    # <= 2^-9), so that comparing in bf16 (much faster than promoting to fp32) loses nothing
    low_r = (thr_r - margin - BF16_U).to(torch.bfloat16)
    low_c = (thr_c - margin - BF16_U).to(torch.bfloat16)
    hits = S16 > low_r[:, None]
    torch.logical_or(hits, S16 > low_c[None, :], out=hits)
    r, c = _nonzero(hits)
    if len(r) == 0:
        return True
    if len(r) > RESCORE_LIMIT:        # early blocks, low thresholds: fp32 products are cheaper
        return False
    exact = (X[bi + r] * X[bj + c]).sum(dim=1)          # fp32 scores of the few candidates
    rows = exact > thr_r[r]
    if bool(rows.any()):
        _merge_candidates(best_v, best_i, bi, ei - bi, r[rows], c[rows] + bj, exact[rows], k)
    cols = exact > thr_c[c]
    if bool(cols.any()):
        _merge_candidates(best_v, best_i, bj, ej - bj, c[cols], r[cols] + bi, exact[cols], k)
    return True


def exact_knn(x: np.ndarray, k: int, *, self_loops: bool = False, block: int = 4096,
              device: str = "cpu", screen: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of every row: (index [n, k] int64, cosine [n, k] float32),
    best first. ``self_loops``: a row counts itself among its k (as FREEDOM and LATTICE build
    their graphs), else its k others. ``screen`` (default: where bf16 is fast, see
    :func:`fast_bf16`): blocks after the diagonal ones are screened with bf16 products and
    their few candidates scored in fp32 (:func:`_screened_update`); the result is the same."""
    import torch

    xu, valid = unit(x)
    n = len(xu)
    X = _torch(xu, device)
    invalid = _torch(~valid, device)
    any_invalid = not valid.all()
    best_v = torch.full((n, k), float("-inf"), device=device)
    best_i = torch.full((n, k), NO_NEIGHBOUR, dtype=torch.int64, device=device)
    starts = list(range(0, n, block))
    # Diagonal blocks first: every row then holds a full list (when a block has more than k
    # rows), so that the other blocks are folded in by the cheap threshold pass, rows and columns.
    pairs = [(b, b) for b in starts] + [(bi, bj) for bi in starts for bj in starts if bj > bi]
    screen = fast_bf16(device) if screen is None else screen
    X16 = X.to(torch.bfloat16) if screen else None
    margin = bf16_margin(X.shape[1])
    with torch.inference_mode():
        for bi, bj in pairs:
            ei, ej = min(bi + block, n), min(bj + block, n)
            # zero vectors score 0 in bf16 too and are dropped below; only fp32 blocks mask them
            if screen and bi != bj and not any_invalid and _screened_update(
                    best_v, best_i, X, X16, bi, ei, bj, ej, k, margin):
                continue
            S = X[bi:ei] @ X[bj:ej].T
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
            if not self_loops:        # each query row's own column, where it falls in this block
                own = (row_ids >= bj) & (row_ids < ej)
                S[own.nonzero(as_tuple=True)[0], row_ids[own] - bj] = float("-inf")
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
            if not self_loops:        # a source row does not match itself
                own = (src >= b) & (src < e)
                S[src[own] - b, own.nonzero(as_tuple=True)[0]] = float("-inf")
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
