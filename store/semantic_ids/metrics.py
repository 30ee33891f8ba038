"""How good a set of semantic IDs is: collisions, per-level utilization and perplexity,
reconstruction error, and the code-usage plot."""

from __future__ import annotations

import math
from typing import Any
import numpy as np


def code_metrics(codes: np.ndarray, codebook_size: int, x: np.ndarray | None = None,
                 decoded: np.ndarray | None = None) -> dict[str, Any]:
    """Collision rate ((N - unique tuples) / N), largest group of one tuple, per-level
    utilization (share of codes used) and perplexity (exp of the code distribution's entropy),
    and the relative reconstruction error sum |x - x^|^2 / sum |x|^2."""
    n = len(codes)
    out: dict[str, Any] = {"items": n}
    if n == 0:
        return out
    _, counts = np.unique(codes, axis=0, return_counts=True)
    out["collision_rate"] = round(float((n - len(counts)) / n), 6)
    out["largest_group"] = int(counts.max())
    usage = [np.bincount(codes[:, level], minlength=codebook_size) for level in range(codes.shape[1])]
    out["utilization"] = [round(float((u > 0).mean()), 4) for u in usage]
    out["perplexity"] = [round(float(np.exp(-sum(p * math.log(p) for p in u[u > 0] / n))), 2) for u in usage]
    if x is not None and decoded is not None:
        out["reconstruction_error"] = round(float(((x - decoded) ** 2).sum() / max(float((x ** 2).sum()), 1e-30)), 6)
    out["usage"] = [u.tolist() for u in usage]
    return out


def usage_plot(metrics: dict[str, Any], title: str) -> bytes:
    """A PNG: items per code, one panel per level, codes sorted by use."""
    from itemlens.store.plots import bar_panels

    return bar_panels([(f"level {level + 1}: {metrics['utilization'][level]:.0%} used, "
                        f"perplexity {metrics['perplexity'][level]:.0f}", sorted(counts, reverse=True),
                        "code (sorted by use)") for level, counts in enumerate(metrics.get("usage") or [])], title)
