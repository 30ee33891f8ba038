"""numba kernels for the CPU selection step of the blocked exact kNN (:mod:`itemlens.store.graphs.knn`),
its preparation (unit rows, bf16 rounding errors), and the bookkeeping of graph refreshes and
statistics (:mod:`itemlens.store.graphs`).

Once every running top-k list is full, a block of similarities only matters where an entry
beats its row's or its column's current k-th best: a few entries in millions. torch finds them
with three passes over the block (two broadcast comparisons and an ``or``) and a ``nonzero``,
and merges them with sorts: ~100 ms a 4,096 x 4,096 block on two cores, more than the product
itself. These kernels read the block once (rows in parallel), keep the survivors as a CSR list
of columns, and insert them into the sorted lists one by one, which is what faiss' heaps do
inside its tiles. They are written by hand because no library selects against per-row *and*
per-column thresholds in one pass.

Blocks come in two kinds:

- fp32 similarities, compared with the thresholds as they are;
- bf16 similarities as raw ``int16`` bit patterns (the AMX screening of :func:`knn.exact_knn`).
  For positive numbers the bit patterns of bf16 order like the numbers, and every negative
  number (and -0) reads as a negative ``int16``; so where every threshold is a positive bf16,
  comparing patterns as integers is comparing numbers, at integer speed. The caller checks
  that the thresholds are positive. The survivors are then scored again in fp32.
"""

from __future__ import annotations

import numba as nb
import numpy as np

# rows are read in strips this wide: a vectorized count per strip first, then only the (rare)
# strips with a survivor are read again to note its columns
STRIP = 64


@nb.njit(parallel=True, cache=True)
def row_norms(x):
    """Euclidean length of each row, accumulated in float64 (no float32 overflow)."""
    norms = np.empty(x.shape[0], np.float64)
    for i in nb.prange(x.shape[0]):
        total = 0.0
        for j in range(x.shape[1]):
            total += np.float64(x[i, j]) * np.float64(x[i, j])
        norms[i] = np.sqrt(total)
    return norms


@nb.njit(parallel=True, cache=True)
def unit_rows(x, norms, out):
    """Row i of ``x`` divided by ``norms[i]`` into ``out`` where that is finite and positive
    (zero elsewhere): one pass, rows in parallel."""
    for i in nb.prange(x.shape[0]):
        norm = norms[i]
        if np.isfinite(norm) and norm > 0:
            for j in range(x.shape[1]):
                out[i, j] = np.float64(x[i, j]) / norm
        else:
            for j in range(x.shape[1]):
                out[i, j] = 0.0


@nb.njit(inline="always")
def _bf16_bits(bits):
    """The bits of a finite float32 rounded to bfloat16 (to nearest, ties to even), as float32
    bits: what torch's ``.to(torch.bfloat16)`` gives."""
    return (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)


@nb.njit(parallel=True, cache=True)
def bf16_errors(xu, err, size):
    """Per row: ``err`` = ||x - x~||, ``size`` = ||x~||, x~ the row rounded to bf16."""
    bits = xu.view(np.uint32)
    for i in nb.prange(xu.shape[0]):
        rounded = np.empty(xu.shape[1], np.uint32)  # one row's rounded bits, read as float32
        for j in range(xu.shape[1]):
            rounded[j] = _bf16_bits(bits[i, j])
        values = rounded.view(np.float32)
        e = 0.0
        s = 0.0
        for j in range(xu.shape[1]):
            e += (np.float64(xu[i, j]) - np.float64(values[j])) ** 2
            s += np.float64(values[j]) ** 2
        err[i] = np.sqrt(e)
        size[i] = np.sqrt(s)


@nb.njit(cache=True)
def round_bf16(values):
    """:func:`_bf16_bits` over an array of float32 (for the tests: it must equal torch's rounding)."""
    bits = values.view(np.uint32)
    out = np.empty(len(values), np.uint32)
    for i in range(len(values)):
        out[i] = _bf16_bits(bits[i])
    return out.view(np.float32)


@nb.njit(parallel=True, cache=True)
def screen(S, row_floor, col_floor, columns, counts):
    """Per row ``i`` of block ``S``: the columns ``j`` whose entry reaches ``row_floor[i]`` or
    ``col_floor[j]``, in ``columns[i, :counts[i]]``. A row with more than fit gets a count above
    the capacity (the caller then takes another way)."""
    n, m = S.shape
    full = m // STRIP  # whole strips: a fixed trip count, which vectorizes
    strips = full + (m % STRIP > 0)
    hits = np.empty((n, strips), np.int32)
    for i in nb.prange(n):
        floor = row_floor[i]
        row = S[i]
        for s in range(full):
            h = 0
            for t in range(STRIP):
                v = row[s * STRIP + t]
                h += (v >= floor) | (v >= col_floor[s * STRIP + t])
            hits[i, s] = h
        if strips > full:
            h = 0
            for j in range(full * STRIP, m):
                h += (row[j] >= floor) | (row[j] >= col_floor[j])
            hits[i, full] = h
    capacity = columns.shape[1]
    for i in nb.prange(n):
        floor = row_floor[i]
        row = S[i]
        found = 0
        for s in range(strips):
            if hits[i, s] == 0:
                continue
            for j in range(s * STRIP, min(s * STRIP + STRIP, m)):
                if (row[j] >= floor) | (row[j] >= col_floor[j]):
                    if found < capacity:
                        columns[i, found] = j
                    found += 1
        counts[i] = found


@nb.njit(cache=True)
def _insert(best_v, best_i, row, value, item):
    """Put (value, item) into ``row``'s list, sorted best first, dropping its last entry."""
    p = best_v.shape[1] - 1
    while p > 0 and best_v[row, p - 1] < value:
        best_v[row, p] = best_v[row, p - 1]
        best_i[row, p] = best_i[row, p - 1]
        p -= 1
    best_v[row, p] = value
    best_i[row, p] = item


@nb.njit(cache=True)
def merge_pairs(
    X,
    S,
    rescore,
    row_pos,
    col_pos,
    columns,
    counts,
    row_v,
    row_i,
    row_slot,
    row_floor,
    col_v,
    col_i,
    col_slot,
    self_loops,
):
    """Fold the survivors of a block (:func:`screen`) into the lists of its rows and of its
    columns. Row ``r`` of the block is item ``row_pos[r]``, whose list is row ``row_slot[r]`` of
    ``row_v``/``row_i`` (-1: none), and likewise for columns. A survivor's score is ``S[r, c]``,
    or with ``rescore`` the fp32 dot product of the two items' rows of ``X`` (``S`` then holds
    bf16 patterns). It enters a list where it beats the list's k-th best, and a row's list only
    from ``row_floor[r]`` up; an item meets itself only with ``self_loops``. Serial: a column's
    list takes entries from any row, and the survivors are few."""
    last_r = row_v.shape[1] - 1
    last_c = col_v.shape[1] - 1
    d = X.shape[1]
    for r in range(counts.shape[0]):
        gi = row_pos[r]
        rs = row_slot[r]
        for p in range(counts[r]):
            c = columns[r, p]
            gj = col_pos[c]
            cs = col_slot[c]
            if gi == gj and not self_loops:
                continue
            if rescore:
                s = np.float32(0.0)
                for t in range(d):
                    s += X[gi, t] * X[gj, t]
            else:
                s = np.float32(S[r, c])
            if rs >= 0 and s >= row_floor[r] and s > row_v[rs, last_r]:
                _insert(row_v, row_i, rs, s, gj)
            if cs >= 0 and s > col_v[cs, last_c]:
                _insert(col_v, col_i, cs, s, gi)


@nb.njit(parallel=True, cache=True)
def fold_rows(S, best_v, best_i, item_of_column, row_floor):
    """Fold block ``S`` into the running top-k of its rows (rows in parallel): entry (r, c)
    enters row r's list, as item ``item_of_column[c]``, where it reaches ``row_floor[r]`` and
    beats the list's k-th best. The lists are sorted best first; a full list rejects most
    entries with one comparison, which makes this cheaper than torch's top-k and its merge."""
    last = best_v.shape[1] - 1
    for r in nb.prange(S.shape[0]):
        row = S[r]
        low = row_floor[r]
        kth = best_v[r, last]  # kept in a register: the loop is load, compare
        for c in range(S.shape[1]):
            if row[c] > kth and row[c] >= low:
                _insert(best_v, best_i, r, row[c], item_of_column[c])
                kth = best_v[r, last]


# columns handled together by one thread of :func:`fold_columns`: a cache line of fp32
COLUMN_GROUP = 16


@nb.njit(parallel=True, cache=True)
def fold_columns(S, best_v, best_i, item_of_row):
    """Fold block ``S`` into the running top-k of its columns (column c's list is row c of
    ``best_v``): entry (r, c) enters as item ``item_of_row[r]``. Threads take groups of
    adjacent columns, so each reads whole cache lines down the rows and owns its lists."""
    n, m = S.shape
    last = best_v.shape[1] - 1
    for g in nb.prange((m + COLUMN_GROUP - 1) // COLUMN_GROUP):
        c0 = g * COLUMN_GROUP
        c1 = min(c0 + COLUMN_GROUP, m)
        floor = np.empty(COLUMN_GROUP, best_v.dtype)  # the group's k-th bests, at hand
        for c in range(c0, c1):
            floor[c - c0] = best_v[c, last]
        for r in range(n):
            row = S[r]
            for c in range(c0, c1):
                if row[c] > floor[c - c0]:
                    _insert(best_v, best_i, c, row[c], item_of_row[r])
                    floor[c - c0] = best_v[c, last]


def survivors(S: np.ndarray, row_floor: np.ndarray, col_floor: np.ndarray, per_row: int):
    """(columns, counts) of the entries of ``S`` that reach their row's or column's floor, or
    None where a row has more than ``per_row`` (early blocks: a top-k over the block is cheaper)."""
    columns = np.empty((S.shape[0], per_row), np.int32)
    counts = np.empty(S.shape[0], np.int32)
    screen(S, row_floor, col_floor, columns, counts)
    if counts.max(initial=0) > per_row:
        return None
    return columns, counts


@nb.njit(parallel=True, cache=True)
def merge_sorted(index_a, sims_a, index_b, sims_b, index, sims):
    """Row by row, the best ``index.shape[1]`` of two lists sorted best first, into ``index``
    and ``sims`` (on equal scores ``a``'s entry first): a refresh merges its candidates into
    tens of thousands of lists, where an argsort of each pair took ~4x longer."""
    k = index.shape[1]
    for r in nb.prange(index.shape[0]):
        i = j = 0
        for o in range(k):
            take_a = j >= sims_b.shape[1] or (i < sims_a.shape[1] and sims_a[r, i] >= sims_b[r, j])
            if take_a and i < sims_a.shape[1]:
                index[r, o], sims[r, o] = index_a[r, i], sims_a[r, i]
                i += 1
            elif j < sims_b.shape[1]:
                index[r, o], sims[r, o] = index_b[r, j], sims_b[r, j]
                j += 1
            else:  # both lists ran out (k is more than both hold)
                index[r, o], sims[r, o] = -1, -np.inf


@nb.njit(parallel=True, cache=True)
def unchanged_lists(offsets, targets, target_scores, stored_exact, owner, moved, position, lists, scores, exact, lost):
    """A refresh's view of the stored lists: stored list ``r`` (entries ``offsets[r]`` to
    ``offsets[r + 1]`` of ``targets``, item indexes, and ``target_scores``) belongs to input
    position ``owner[r]`` (-1: its list goes). Into that row of ``lists`` (as positions) and
    ``scores`` go its entries that did not move (``moved``: item indexes of new, changed and
    deleted items), in order; ``lost`` counts the moved ones within its exact prefix, and
    ``exact`` what is left of that prefix. One pass, rows in parallel (numpy took ~7x longer)."""
    width = lists.shape[1]
    for r in nb.prange(len(owner)):
        p = owner[r]
        if p < 0:
            continue
        o = 0
        dropped = 0
        for e in range(offsets[r], offsets[r + 1]):
            t = targets[e]
            if moved[t]:
                if e - offsets[r] < stored_exact[r]:
                    dropped += 1
            elif o < width:
                lists[p, o] = position[t]
                scores[p, o] = target_scores[e]
                o += 1
        lost[p] = dropped
        exact[p] = stored_exact[r] - dropped


@nb.njit(parallel=True, cache=True)
def count_mutual(held):
    """How many edges i -> held[i, c] have their reverse (row held[i, c] holds i), where row i
    of ``held`` is item i's list as positions (-1: none): the graphs' statistics. A numpy
    gather of the lists took ~5x longer."""
    mutual = 0
    for i in nb.prange(held.shape[0]):
        for c in range(held.shape[1]):
            j = held[i, c]
            if j >= 0:
                for b in range(held.shape[1]):
                    if held[j, b] == i:
                        mutual += 1
                        break
    return mutual
