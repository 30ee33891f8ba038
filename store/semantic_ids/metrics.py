"""How good a set of semantic IDs is: collisions, per-level utilization and perplexity,
reconstruction error, and the code-usage plot."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def tuple_groups(*parts: np.ndarray) -> np.ndarray:
    """One group number per row of the stacked ``parts`` (rows of non-negative codes): equal
    tuples, equal numbers. Tuples that fit 62 bits are packed into one integer column by column
    (a 1-d unique: 8 bytes per row, not a copy of the rows); others use a unique of the rows."""
    parts = [np.asarray(p) for p in parts]
    parts = [p.reshape(len(p), p.shape[1] if p.ndim == 2 else 1) for p in parts]
    width = max((p.shape[1] for p in parts), default=0)
    n = sum(len(p) for p in parts)
    if width == 0 or n == 0:
        return np.zeros(n, np.int64)
    highest = [max((int(p[:, c].max(initial=0)) for p in parts if len(p)), default=0) for c in range(width)]
    bits = [max(1, h.bit_length()) for h in highest]
    if sum(bits) <= 62 and all(int(p.min(initial=0)) >= 0 for p in parts if len(p)):
        key = np.zeros(n, np.int64)
        for column, shift in zip(range(width), bits):
            key <<= shift
            key |= np.concatenate([p[:, column] for p in parts]).astype(np.int64, copy=False)
        return np.unique(key, return_inverse=True)[1].reshape(-1)
    rows = np.concatenate([p.astype(np.int64, copy=False) for p in parts])
    return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)


def code_metrics(
    codes: np.ndarray, codebook_size: int, x: np.ndarray | None = None, decoded: np.ndarray | None = None
) -> dict[str, Any]:
    """Collision rate ((N - unique tuples) / N), largest group of one tuple, per-level
    utilization (share of codes used) and perplexity (exp of the code distribution's entropy),
    and the relative reconstruction error sum |x - x^|^2 / sum |x|^2."""
    n = len(codes)
    out: dict[str, Any] = {"items": n}
    if n == 0:
        return out
    counts = np.bincount(tuple_groups(codes))  # items per distinct tuple
    out["collision_rate"] = round(float((n - len(counts)) / n), 6)
    out["largest_group"] = int(counts.max())
    usage = [np.bincount(codes[:, level], minlength=codebook_size) for level in range(codes.shape[1])]
    out["utilization"] = [round(float((u > 0).mean()), 4) for u in usage]
    out["perplexity"] = [round(float(np.exp(-sum(p * math.log(p) for p in u[u > 0] / n))), 2) for u in usage]
    if x is not None and decoded is not None:
        out["reconstruction_error"] = round(float(((x - decoded) ** 2).sum() / max(float((x**2).sum()), 1e-30)), 6)
    out["usage"] = [u.tolist() for u in usage]
    return out


def usage_plot(metrics: dict[str, Any], title: str) -> bytes:
    """A PNG: items per code, one panel per level, codes sorted by use."""
    from itemlens.store.plots import bar_panels

    return bar_panels(
        [
            (
                f"level {level + 1}: {metrics['utilization'][level]:.0%} used, "
                f"perplexity {metrics['perplexity'][level]:.0f}",
                sorted(counts, reverse=True),
                "code (sorted by use)",
            )
            for level, counts in enumerate(metrics.get("usage") or [])
        ],
        title,
    )
