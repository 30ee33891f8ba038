"""The numba kernel of nearest-free uniqueness (:func:`itemlens.store.semantic_ids.build.make_unique`):
items in item order within each parent tuple (all codes but the last), each taking its own last
code if no earlier item holds that tuple, else the nearest free one. Groups are independent, so
one pass over the items sorted by parent does it with one boolean array of codes."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def nearest_free(old_parent, old_last, new_parent, new_last, alternatives, k, out):
    """``old_*``: tuples handed out before, sorted by parent; ``new_*``: the new items sorted by
    parent (stable: item order within one); ``alternatives`` [m, T] their last-level codes,
    nearest first. Writes each new item's last code to ``out``; returns a flag per parent group
    whose items ran out of alternatives (the caller settles those groups in full)."""
    groups = 0
    if len(new_parent):
        groups = new_parent.max() + 1
    if len(old_parent):
        groups = max(groups, old_parent.max() + 1)
    failed = np.zeros(groups, np.bool_)
    used = np.zeros(k, np.bool_)
    o = 0
    i = 0
    m = len(new_parent)
    while i < m:
        group = new_parent[i]
        while o < len(old_parent) and old_parent[o] < group:
            o += 1
        first_old = o
        while o < len(old_parent) and old_parent[o] == group:
            used[old_last[o]] = True
            o += 1
        first_new = i
        while i < m and new_parent[i] == group:
            code = new_last[i]
            if used[code]:
                code = -1
                for j in range(alternatives.shape[1]):
                    if not used[alternatives[i, j]]:
                        code = alternatives[i, j]
                        break
            if code < 0:
                failed[group] = True
            else:
                used[code] = True
            out[i] = code
            i += 1
        for j in range(first_old, o):  # clear what this group marked
            used[old_last[j]] = False
        for j in range(first_new, i):
            if out[j] >= 0:
                used[out[j]] = False
    return failed
