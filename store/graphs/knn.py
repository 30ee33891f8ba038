"""Cosine k-nearest neighbours for item graphs, never holding an N x N matrix.

- :func:`exact_knn`: blocked matrix products in torch (CPU or GPU). The similarity matrix is
  symmetric, so each block of pairs (I, J) with I <= J is computed once and serves the top-k of
  both its rows (block I) and its columns (block J): half the products of a plain search. Once
  every list is full, a block only matters where it beats a row's or a column's current k-th
  best. On CPU the numba kernels of :mod:`itemlens.store.knn_kernels` find those few entries in
  one pass and insert them (torch's comparisons and top-k cost more than the product). Where
  the CPU has AMX, those blocks are multiplied in bf16 (2.5-4x faster here), screened against
  the k-th best lowered by a proven bound on the bf16 error (:func:`bf16_margins`), and only
  the survivors are scored in fp32, so the lists are those of fp32 products.
- :func:`knn_rows`: the neighbours of some rows only (a refresh recomputes those).
- :func:`search_from`: for every row, its best matches among a few given rows (how a refresh
  finds the lists a new or changed item should now enter), and those rows' own lists, from one
  product.
- :func:`approximate_knn`: a faiss IVF index for catalogs too large for exact search.

Vectors are L2-normalized first. A zero vector has no direction: it gets no neighbours and is
nobody's neighbour. Equal vectors are ordinary neighbours (cosine 1). Missing slots (fewer than
k candidates) are index -1, score -inf.
"""

from __future__ import annotations

import numpy as np

NO_NEIGHBOUR = -1


def valid_rows(x: np.ndarray) -> np.ndarray:
    """Which rows have a direction (non-zero, finite length)."""
    from itemlens.store.graphs import knn_kernels

    norms = knn_kernels.row_norms(np.ascontiguousarray(x, dtype=np.float32))
    return np.isfinite(norms) & (norms > 0)


def unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to length 1, and which rows could be (non-zero, finite length); the others
    are zero. (numba kernels: numpy took three passes and a zeroed copy, ~2x the time.)"""
    from itemlens.store.graphs import knn_kernels

    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = knn_kernels.row_norms(x)
    out = np.empty_like(x)
    knn_kernels.unit_rows(x, norms, out)
    return out, np.isfinite(norms) & (norms > 0)


def _survivors_per_row(columns: int) -> int:
    """How many survivors a row of a screened block may have before the block is folded whole
    instead: 1/64 of its columns, and at least 64 (a refresh's blocks have few columns, and
    its second block still many survivors; a fold costs more than merging them)."""
    return max(64, columns // 64)


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

    current_v = best_v[start : start + count]
    current_i = best_i[start : start + count]
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
    best_v[start : start + count] = all_v[order][keep].view(count, k)
    best_i[start : start + count] = all_i[order][keep].view(count, k)


def _update(best_v, best_i, S, start: int, offset: int, k: int, by_column: bool) -> None:
    """Fold block ``S`` into the running top-k of its rows (or, ``by_column``, of its columns)
    at ``start``; neighbour numbers are ``offset`` + the other axis. Where the running lists are
    full, only scores above a row's current k-th best can matter: a comparison finds those
    (few, once some blocks are seen), which is far cheaper than a top-k over the block, above
    all down columns."""
    import torch

    count = S.shape[1] if by_column else S.shape[0]
    threshold = best_v[start : start + count, -1]
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


def _nonzero(mask):
    """Row and column of every True of a 2-d mask (numpy reads a CPU mask ~4x faster than torch)."""
    import torch

    if mask.device.type != "cpu":
        return mask.nonzero(as_tuple=True)
    flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
    return flat // mask.shape[1], flat % mask.shape[1]


def has_amx() -> bool:
    """Whether this CPU multiplies bf16 matrices with AMX (several times its fp32 rate)."""
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_bf16" in f.read()
    except OSError:
        return False


def bf16_margins(xu: np.ndarray) -> np.ndarray:
    """Per row i, a bound on |bf16 product - x_i . x_j| for every j, x unit rows.

    With x~ = x + e and y~ = y + f the rows rounded to bf16: x.y - x~.y~ = -(e.y + x~.f), so
    the error is at most ||e|| + ||x~|| max_j ||f_j|| (Cauchy-Schwarz, ||y|| = 1): about one unit
    roundoff (2^-8) for real rows, a third of the a-priori bound 2u + u^2. Added: fp32
    accumulation of the product and of the fp32 dot product that scores a survivor again
    (each at most d 2^-24 for unit rows; taken twice over), and 1e-6 for the rounding of the
    thresholds and of these norms (e is exact in fp32: x~ is x with its low bits cleared)."""
    from itemlens.store.graphs import knn_kernels

    err = np.empty(len(xu), np.float64)
    size = np.empty(len(xu), np.float64)
    knn_kernels.bf16_errors(np.ascontiguousarray(xu, dtype=np.float32), err, size)  # rounding as torch's
    worst = err.max(initial=0.0)
    accumulation = 2 * 2 * xu.shape[1] * 2.0**-24 * (1 + worst) ** 2
    return err + size * worst + accumulation + 1e-6


def _bf16_floor_bits(values: np.ndarray) -> np.ndarray | None:
    """The bit patterns (as int16) of bf16 numbers at most ``values``; None unless every value
    is positive (the kernels compare patterns as integers, which orders positive numbers only)."""
    if not (values > 0).all():
        return None
    bits = values.astype(np.float32).view(np.uint32) >> 16  # truncation: down, for positives
    return bits.astype(np.uint16).view(np.int16)


def _bf16_block(A16, B16, low_r, low_c):
    """The products A16 @ B16.T as bf16 bit patterns (int16), with the floors (already lowered
    by the error bound) as patterns too; None where a floor is not positive."""
    import torch

    bits_r, bits_c = _bf16_floor_bits(low_r), _bf16_floor_bits(low_c)
    if bits_r is None or bits_c is None:
        return None
    return (A16 @ B16.T).view(torch.int16).numpy(), bits_r, bits_c


def _merge_survivors(
    xu, S, low_r, low_c, rows, cols, row_lists, row_slot, row_floor, col_lists, col_slot, self_loops
) -> bool:
    """Merge the entries of block ``S`` that reach their row's floor ``low_r`` or their
    column's ``low_c`` into the rows' and the columns' lists (the arguments of
    :func:`knn_kernels.merge_pairs`); bf16 patterns (int16) are scored again in fp32. False,
    and nothing merged, where a row has too many (the caller folds the block whole)."""
    from itemlens.store.graphs import knn_kernels

    found = knn_kernels.survivors(S, low_r, low_c, _survivors_per_row(S.shape[1]))
    if found is None:
        return False
    knn_kernels.merge_pairs(
        xu,
        S,
        S.dtype == np.int16,
        rows,
        cols,
        *found,
        *row_lists,
        row_slot,
        row_floor,
        *col_lists,
        col_slot,
        self_loops,
    )
    return True


def _fold_block_cpu(best_v, best_i, xu, X, X16, margins, valid, bi, ei, bj, ej):
    """Fold off-diagonal block (I, J) into both I's and J's lists with the numba kernels, once
    those lists are full: with ``X16``, screen bf16 products (AMX) against the lists' k-th best
    lowered by the error bound and score the survivors in fp32, else select on fp32 products.
    Returns (done, the fp32 products if they were computed but too many entries survived)."""
    import torch

    kth = best_v.numpy()[:, -1]
    floor_r = np.where(valid[bi:ei], kth[bi:ei], np.inf)  # a zero row takes nobody
    floor_c = np.where(valid[bj:ej], kth[bj:ej], np.inf)
    if np.isneginf(floor_r).any() or np.isneginf(floor_c).any():
        return False, None  # some list not full yet: a top-k over the block
    lists = best_v.numpy(), best_i.numpy()
    rows, cols = np.arange(bi, ei), np.arange(bj, ej)
    merge = (
        rows,
        cols,
        lists,
        np.where(valid[bi:ei], rows, -1),  # a zero row keeps no list
        np.full(ei - bi, -np.inf, np.float32),
        lists,
        np.where(valid[bj:ej], cols, -1),
        True,
    )
    if X16 is not None:
        block = _bf16_block(X16[bi:ei], X16[bj:ej], floor_r - margins[bi:ei], floor_c - margins[bj:ej])
        if block is not None and _merge_survivors(xu, *block, *merge):
            return True, None
    S = X[bi:ei] @ X[bj:ej].T
    if not (valid[bi:ei].all() and valid[bj:ej].all()):  # zero rows score 0: may beat a floor < 0
        S[torch.from_numpy(~valid[bi:ei])] = float("-inf")
        S[:, torch.from_numpy(~valid[bj:ej])] = float("-inf")
    if not _merge_survivors(xu, S.numpy(), floor_r.astype(np.float32), floor_c.astype(np.float32), *merge):
        return False, S  # early blocks, low floors: a top-k of the block is cheaper
    return True, None


def exact_knn(
    x: np.ndarray,
    k: int,
    *,
    self_loops: bool = False,
    block: int = 4096,
    device: str = "cpu",
    screen: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of every row: (index [n, k] int64, cosine [n, k] float32),
    best first. ``self_loops``: a row counts itself among its k (as FREEDOM and LATTICE build
    their graphs), else its k others.

    On CPU, once the lists are full, blocks are folded in by the numba kernels
    (:func:`_fold_block_cpu`); ``screen`` (default: where the CPU has AMX, :func:`has_amx`)
    computes those blocks' products in bf16 and scores only their survivors in fp32: the
    result is the same. On a GPU every block is an fp32 product and torch selections."""
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
    cpu = X.device.type == "cpu"
    screen = cpu and (has_amx() if screen is None else screen)
    X16 = X.to(torch.bfloat16) if screen else None
    margins = bf16_margins(xu) if screen else None
    with torch.inference_mode():
        for bi, bj in pairs:
            ei, ej = min(bi + block, n), min(bj + block, n)
            S = None
            if cpu and bi != bj:
                done, S = _fold_block_cpu(best_v, best_i, xu, X, X16, margins, valid, bi, ei, bj, ej)
                if done:
                    continue
            if S is None:
                S = X[bi:ei] @ X[bj:ej].T
            if any_invalid:
                S.masked_fill_(invalid[bj:ej][None, :], float("-inf"))
                S.masked_fill_(invalid[bi:ei][:, None], float("-inf"))
            if bi == bj and not self_loops:
                S.fill_diagonal_(float("-inf"))
            _update(best_v, best_i, S, bi, bj, k, by_column=False)
            if bj != bi:  # the same products, read by column: block J's rows
                _update(best_v, best_i, S, bj, bi, k, by_column=True)
    return _finish(best_v, best_i, valid)


def _fold_rows(best_v, best_i, S, rows: slice, items, k: int) -> None:
    """Fold block ``S`` (its columns are the neighbours ``items``) into the running top-k of
    the lists ``rows``: the numba kernel on CPU, a top-k and a merge on a GPU."""
    if S.device.type == "cpu":
        from itemlens.store.graphs import knn_kernels

        v, i = best_v[rows], best_i[rows]  # views: the kernel writes the lists in place
        knn_kernels.fold_rows(S.numpy(), v.numpy(), i.numpy(), items.numpy(), np.full(len(v), -np.inf, np.float32))
        return
    top_v, top_i = S.topk(min(k, S.shape[1]), dim=1)
    _merge(best_v, best_i, rows, top_v, items[top_i], k)


def knn_rows(
    x: np.ndarray, rows: np.ndarray, k: int, *, self_loops: bool = False, block: int = 4096, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
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
            if not self_loops:  # each query row's own column, where it falls in this block
                own = (row_ids >= bj) & (row_ids < ej)
                S[own.nonzero(as_tuple=True)[0], row_ids[own] - bj] = float("-inf")
            _fold_rows(best_v, best_i, S, slice(None), torch.arange(bj, ej, device=device), k)
    return _finish(best_v, best_i, valid[rows])


def search_from(
    x: np.ndarray,
    sources: np.ndarray,
    k: int,
    *,
    row_floor: np.ndarray | None = None,
    self_loops: bool = False,
    block: int = 4096,
    device: str = "cpu",
    screen: bool | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The two searches of a refresh, from one product of every row with the few ``sources``
    (positions into ``x``): for every row, its best ``k`` matches among the sources that score
    at least ``row_floor`` (default: any), and for every source, its own top ``k`` among all
    rows. Each as (index, cosine), as :func:`exact_knn` gives them.

    A refresh passes, as a row's floor, the lowest score its list still vouches for: only
    sources above it can change what the list knows, and they are few. On CPU, once the
    sources' lists are full, one screen finds them (bf16 products where the CPU has AMX, as in
    :func:`exact_knn`)."""
    import torch

    xu, valid = unit(x)
    n = len(xu)
    sources = np.asarray(sources, dtype=np.int64)
    floors = np.full(n, -np.inf, np.float32) if row_floor is None else np.asarray(row_floor, np.float32)
    X = _torch(xu, device)
    src = _torch(sources, device)
    C = X[src]
    cpu = X.device.type == "cpu"
    screen = cpu and (has_amx() if screen is None else screen)
    X16 = X.to(torch.bfloat16) if screen else None
    C16 = C.to(torch.bfloat16) if screen else None
    margins = bf16_margins(xu) if screen else None
    any_invalid = not valid.all()
    invalid = _torch(~valid, device)
    cand_v = torch.full((n, k), float("-inf"), device=device)
    cand_i = torch.full((n, k), NO_NEIGHBOUR, dtype=torch.int64, device=device)
    own_v = torch.full((len(sources), k), float("-inf"), device=device)
    own_i = torch.full((len(sources), k), NO_NEIGHBOUR, dtype=torch.int64, device=device)
    with torch.inference_mode():
        for b in range(0, n, block):
            e = min(b + block, n)
            if screen and _screen_sources_cpu(
                X16, C16, margins, floors, b, e, sources, valid[sources], cand_v, cand_i, own_v, own_i, xu, self_loops
            ):
                continue
            S = X[b:e] @ C.T  # rows b..e against the sources
            if any_invalid:  # zero vectors: nobody's neighbour
                S.masked_fill_(invalid[src][None, :], float("-inf"))
                S.masked_fill_(invalid[b:e][:, None], float("-inf"))
            if not self_loops:  # a source does not match itself
                own = (src >= b) & (src < e)
                S[src[own] - b, own.nonzero(as_tuple=True)[0]] = float("-inf")
            if cpu:
                _fold_sources_cpu(
                    S.numpy(), floors[b:e], b, e, sources, valid[sources], cand_v, cand_i, own_v, own_i, xu
                )
                continue
            low = _torch(floors[b:e], device)
            R = S.masked_fill(S < low[:, None], float("-inf"))
            _fold_rows(cand_v, cand_i, R, slice(b, e), src, k)
            rows = torch.arange(b, e, device=device)
            top_v, top_i = S.topk(min(k, e - b), dim=0)
            _merge(own_v, own_i, slice(None), top_v.T, rows[top_i.T], k)
    return _finish(cand_v, cand_i, valid), _finish(own_v, own_i, valid[sources])


def _screen_sources_cpu(
    X16, C16, margins, floors, b, e, sources, source_valid, cand_v, cand_i, own_v, own_i, xu, self_loops
) -> bool:
    """One block of :func:`search_from` from bf16 products, screened with the error bound and
    the survivors scored in fp32. False where it cannot be (the sources' lists are not full
    yet, a floor is not positive, or too many survive): the caller takes fp32 products."""
    kth = np.where(source_valid, own_v.numpy()[:, -1], np.inf)  # a zero source keeps no list
    if np.isneginf(kth).any():
        return False
    block = _bf16_block(X16[b:e], C16, floors[b:e] - margins[b:e], kth - margins[sources])
    rows = np.arange(b, e)
    return block is not None and _merge_survivors(
        xu,
        *block,
        rows,
        sources,
        (cand_v.numpy(), cand_i.numpy()),
        rows,
        floors[b:e],
        (own_v.numpy(), own_i.numpy()),
        np.arange(len(sources)),
        self_loops,
    )


def _fold_sources_cpu(S, floors, b, e, sources, source_valid, cand_v, cand_i, own_v, own_i, xu) -> None:
    """One block of :func:`search_from` from fp32 products (self pairs and zero rows already
    masked): once the sources' lists are full, one screen finds the entries that enter a row's
    or a source's list; before (the first block) or where a row has many (a low floor), the
    kernels fold whole rows and columns instead."""
    from itemlens.store.graphs import knn_kernels

    rows = np.arange(b, e)
    own = own_v.numpy(), own_i.numpy()
    kth = np.where(source_valid, own[0][:, -1], np.inf)  # a zero source keeps no list
    if not np.isneginf(kth).any() and _merge_survivors(
        xu,
        S,
        floors,
        kth.astype(np.float32),
        rows,
        sources,
        (cand_v.numpy(), cand_i.numpy()),
        rows,
        floors,
        own,
        np.arange(len(sources)),
        True,
    ):
        return
    knn_kernels.fold_columns(S, *own, rows)
    knn_kernels.fold_rows(S, cand_v[b:e].numpy(), cand_i[b:e].numpy(), sources, floors)


def merge_lists(index_a, sims_a, index_b, sims_b, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the best ``k`` of two neighbour lists, each sorted best first (no item in both;
    on equal scores ``a``'s first)."""
    from itemlens.store.graphs import knn_kernels

    index = np.empty((len(index_a), k), np.int64)
    sims = np.empty((len(index_a), k), np.float32)
    knn_kernels.merge_sorted(
        np.ascontiguousarray(index_a, np.int64),
        np.ascontiguousarray(sims_a, np.float32),
        np.ascontiguousarray(index_b, np.int64),
        np.ascontiguousarray(sims_b, np.float32),
        index,
        sims,
    )
    return index, sims


def approximate_knn(
    x: np.ndarray, k: int, *, self_loops: bool = False, nlist: int | None = None, nprobe: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict]:
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
    if not self_loops:  # drop the row itself wherever it came back
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
