"""k-means for the residual quantizers: faiss' k-means and nearest-centroid search, and a
balanced (capacity-constrained) assignment (OneRec)."""

from __future__ import annotations

import math

import numpy as np

from itemlens.errors import ConfigError


def kmeans(x: np.ndarray, k: int, *, niter: int, seed: int) -> np.ndarray:
    """Centroids [k, d] of ``x`` by faiss' k-means (deterministic for a seed)."""
    import faiss

    n, d = x.shape
    if n < k:
        how = "lower codebook_size, or raise sample where the feature has more vectors" if k > 2 else "add items"
        raise ConfigError(f"k-means with {k} codes needs at least {k} vectors; got {n} ({how})")
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, verbose=False, max_points_per_centroid=256)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids.copy()


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of each row (exact, faiss' flat L2 search)."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, codes = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return codes[:, 0].astype(np.int64)


def squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """[n, k] squared L2 distances."""
    x = x.astype(np.float32, copy=False)
    return np.maximum(
        (x * x).sum(1, keepdims=True) - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None, :], 0.0
    )


def balanced_assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each row to a centroid, no centroid taking more than ``ceil(n / k)`` rows.

    Rounds of proposals: every unassigned row proposes to its nearest centroid that has not
    refused it yet; a centroid keeps its nearest proposers up to its remaining capacity. Ends
    because total capacity >= n; deterministic (ties broken by row number).
    """
    n, k = x.shape[0], centroids.shape[0]
    capacity = math.ceil(n / k)
    dist = squared_distances(x, centroids)
    preference = np.argsort(dist, axis=1, kind="stable")
    codes = np.full(n, -1, np.int64)
    load = np.zeros(k, np.int64)
    tried = np.zeros(n, np.int64)
    pending = np.arange(n)
    while pending.size:
        choice = preference[pending, tried[pending]]
        order = np.lexsort((pending, dist[pending, choice], choice))  # by centroid, then distance
        pending, choice = pending[order], choice[order]
        starts = np.r_[0, np.flatnonzero(np.diff(choice)) + 1]
        rank = np.arange(choice.size) - np.repeat(starts, np.diff(np.r_[starts, choice.size]))
        accepted = rank < (capacity - load[choice])
        codes[pending[accepted]] = choice[accepted]
        load += np.bincount(choice[accepted], minlength=k)
        tried[pending[~accepted]] += 1
        pending = np.sort(pending[~accepted])
    return codes


def balanced_kmeans(x: np.ndarray, k: int, *, niter: int, seed: int, rounds: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """k-means whose assignment step is :func:`balanced_assign` (started from faiss' centroids)."""
    centroids = kmeans(x, k, niter=niter, seed=seed)
    codes = balanced_assign(x, centroids)
    for _ in range(rounds):
        sums = np.zeros_like(centroids)
        np.add.at(sums, codes, x)
        counts = np.bincount(codes, minlength=k)[:, None]
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids).astype(np.float32)
        new = balanced_assign(x, centroids)
        if np.array_equal(new, codes):
            break
        codes = new
    return centroids, codes
