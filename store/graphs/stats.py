"""Statistics of a graph's lists (edges, share of mutual edges, in-degree distribution), shown
by ``itemlens show``, and the in-degree histogram plot."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from itemlens.store.graphs.presets import depth_read
from itemlens.store.graphs.spec import GraphSpec
from itemlens.store.graphs.storage import of_feature

if TYPE_CHECKING:  # pragma: no cover
    pass


def held_lists(part: pa.Table, order: np.ndarray, width: int | None) -> np.ndarray:
    """The stored lists of ``part`` as [len(order), width] positions into ``order`` (item
    indexes; -1: none): row i holds item order[i]'s first ``width`` neighbours (all: None)."""
    size = int(max(order.max(initial=-1), part.column("item_index").to_numpy().max(initial=-1))) + 1
    neighbors = part.column("neighbors").combine_chunks()
    lengths = np.diff(neighbors.offsets.to_numpy())
    position = np.full(size + 1, -1, np.int64)  # position[-1]: an item without a row
    position[order] = np.arange(len(order))
    targets = neighbors.flatten().to_numpy()
    rank = np.arange(len(targets)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    width = int(lengths.max(initial=0)) if width is None else width
    held = np.full((len(order), width), -1, np.int64)
    rows = position[np.repeat(part.column("item_index").to_numpy(), lengths)]
    keep = (rank < width) & (rows >= 0)
    held[rows[keep], rank[keep]] = position[np.minimum(targets[keep], size)]
    return held


def list_stats(held: np.ndarray) -> dict[str, Any]:
    """One input's in-degree distribution (out-degree is k), share of mutual edges and in-degree
    histogram, from its lists ``held`` ([items, k] positions of the neighbours, -1: none).
    Self-loops are left out; an edge i -> j is mutual when j -> i is an edge too."""
    from itemlens.store.graphs import knn_kernels

    held = np.where(held == np.arange(len(held))[:, None], -1, held)
    targets = held[held >= 0]
    in_degree = np.bincount(targets, minlength=len(held))
    edges = len(targets)
    mutual = knn_kernels.count_mutual(held) if edges else 0
    return {
        "items": int(len(held)),
        "edges": int(edges),
        "mutual_share": round(mutual / edges, 4) if edges else 0.0,
        **in_degree_summary(in_degree),
    }


def in_degree_summary(in_degree: np.ndarray) -> dict[str, Any]:
    """The in-degree figures of one input's statistics (an exact or an approximate graph's)."""
    n = len(in_degree)
    return {
        "in_degree": {
            "min": int(in_degree.min()) if n else 0,
            "median": float(np.median(in_degree)) if n else 0.0,
            "max": int(in_degree.max(initial=0)),
            "zero": int((in_degree == 0).sum()),
        },
        "in_degree_histogram": np.bincount(in_degree).tolist(),
    }


def summarize(inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    shares = [s["mutual_share"] for s in inputs.values()]
    return {"inputs": dict(sorted(inputs.items())), "mutual_share": round(float(np.mean(shares)), 4) if shares else 0.0}


def graph_stats(table: pa.Table, spec: GraphSpec) -> dict[str, Any]:
    """The statistics of a stored graph table (:func:`list_stats` per input). A build or a
    refresh computes them from the lists it holds in memory instead; the tests check that the
    two agree, reading the table back with this."""
    inputs = {}
    for feature in pa.compute.unique(table.column("feature")).to_pylist():
        part = of_feature(table, feature)
        inputs[feature] = list_stats(held_lists(part, part.column("item_index").to_numpy(), depth_read(spec, feature)))
    return summarize(inputs)


def degree_plot(stats: dict[str, Any], title: str) -> bytes:
    """A PNG: in-degree histogram per input."""
    from itemlens.store.plots import bar_panels

    return bar_panels(
        [
            (
                f"{feature}: in-degree (mutual edges {s['mutual_share']:.0%})",
                s.get("in_degree_histogram", []),
                "in-degree",
            )
            for feature, s in stats.get("inputs", {}).items()
        ],
        title,
    )
