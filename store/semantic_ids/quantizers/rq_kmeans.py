"""RQ-KMeans (TIGER's simple variant, used by GRID and OneRec): per level, k-means on the
residual, with faiss. Options: L2-normalize the residual before each level (GRID), and a
balanced assignment in which every code gets at most ``ceil(N / K)`` items (OneRec)."""

from __future__ import annotations

from typing import Any

import numpy as np

from itemlens.store.semantic_ids.quantizers.base import TRAININGS, Encoded
from itemlens.store.semantic_ids.quantizers.kmeans import balanced_kmeans, kmeans, nearest, squared_distances


class RQKMeans:
    method = "rq-kmeans"

    @classmethod
    def from_params(cls, params: dict[str, Any], input_dim: int) -> RQKMeans:
        """From a semantic-ID definition's fields (``SemanticIdSpec.model_dump()``)."""
        return cls(
            params["levels"],
            params["codebook_size"],
            normalize_residual=params["normalize_residual"],
            balanced=params["balanced"],
            niter=params["kmeans_iterations"],
            seed=params["seed"],
        )

    def __init__(
        self,
        levels: int,
        codebook_size: int,
        *,
        normalize_residual: bool = False,
        balanced: bool = False,
        niter: int = 20,
        seed: int = 0,
    ):
        self.levels, self.k = levels, codebook_size
        self.normalize_residual, self.balanced = normalize_residual, balanced
        self.niter, self.seed = niter, seed
        self.codebooks: np.ndarray | None = None  # [levels, K, d]
        self.scales: np.ndarray | None = None  # [levels] mean residual norm (normalized mode)

    def _unit(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        norms = np.linalg.norm(r, axis=1)
        if not self.normalize_residual:
            return r, np.ones_like(norms)
        return r / np.maximum(norms, 1e-12)[:, None], norms

    def fit(self, x: np.ndarray) -> RQKMeans:
        self.fit_encode(x)
        return self

    def fit_encode(self, x: np.ndarray, distances: bool = False) -> Encoded:
        """Train, and return the training vectors' codes (balanced: as assigned in training)."""
        TRAININGS["count"] += 1
        r = np.array(x, dtype=np.float32)
        codebooks, scales, all_codes = [], [], []
        for level in range(self.levels):
            u, norms = self._unit(r)
            if self.balanced:
                centroids, codes = balanced_kmeans(u, self.k, niter=self.niter, seed=self.seed + level)
            else:
                centroids = kmeans(u, self.k, niter=self.niter, seed=self.seed + level)
                codes = nearest(u, centroids)
            if level == self.levels - 1:
                last = squared_distances(u, centroids) if distances else None
            codebooks.append(centroids)
            all_codes.append(codes)
            scales.append(float(norms.mean()))
            r = r - norms[:, None] * centroids[codes]  # the residual stays in the input's scale
        self.codebooks, self.scales = np.stack(codebooks), np.array(scales, np.float32)
        return Encoded(np.stack(all_codes, 1).astype(np.int64), last)

    def encode(self, x: np.ndarray, distances: bool = False) -> Encoded:
        """Codes of new vectors with the frozen codebooks (nearest code; a balanced quantizer's
        capacities apply to its training set only)."""
        r = np.array(x, dtype=np.float32)
        codes = np.zeros((len(r), self.levels), np.int64)
        for level in range(self.levels):
            u, norms = self._unit(r)
            if level == self.levels - 1:
                last = squared_distances(u, self.codebooks[level]) if distances else None
            codes[:, level] = nearest(u, self.codebooks[level])
            r = r - norms[:, None] * self.codebooks[level][codes[:, level]]
        return Encoded(codes, last)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The vector the codes stand for (normalized mode: each level at its mean norm)."""
        scale = self.scales if self.normalize_residual else np.ones(self.levels, np.float32)
        return sum(scale[i] * self.codebooks[i][codes[:, i]] for i in range(self.levels))

    def state(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks, "scales": self.scales}

    def load_state(self, tensors: dict[str, np.ndarray]) -> RQKMeans:
        self.codebooks, self.scales = tensors["codebooks"], tensors["scales"]
        return self
