"""PNG plots stored with derived artifacts (semantic-ID code usage, graph degrees): one row of
bar charts, drawn with matplotlib's non-interactive backend."""

from __future__ import annotations

import io
from collections.abc import Sequence


def bar_panels(panels: Sequence[tuple[str, Sequence[float], str]], title: str) -> bytes:
    """A PNG with one bar chart per (title, heights, x label) panel, items on the y axis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    count = max(len(panels), 1)
    fig, axes = plt.subplots(1, count, figsize=(4 * count, 3), squeeze=False)
    for ax, (panel_title, heights, xlabel) in zip(axes[0], panels):
        ax.bar(range(len(heights)), heights, width=1.0)
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("items")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()
