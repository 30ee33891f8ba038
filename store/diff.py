"""How far two sets of vectors for the same items disagree about each item's neighbours: what
``itemlens diff`` prints and ``itemlens browse`` shows before a team swaps an encoder.

Two *sides* name a feature's vectors, each written ``NAME``, ``NAME@vN`` (a feature version)
and/or ``NAME@sN`` (as snapshot N holds it), e.g. ``text@v1 text@v2`` (two versions in one
snapshot) or ``text@s3 text@s5`` (the current version of ``text`` in snapshots 3 and 5; a
refresh between them re-encoded some items). ``text@3`` is refused as ambiguous.

For every item that has a vector on both sides, its top-``k`` cosine neighbours are found on
each side by exact search (:mod:`itemlens.store.graphs.knn`), among the items both sides have (an item
present on one side only would change the lists without the encoder having changed), the item
itself left out. Per item:

* **Jaccard@k** = |N_a ∩ N_b| / |N_a ∪ N_b| of the two neighbour sets: 1 when the sets are the
  same, 0 when they share nothing (k shared of k: 1; 5 of 10: 5/15 = 0.33).
* **Spearman's rank correlation** of the shared neighbours: each shared neighbour's position in
  the A list and in the B list, ranked among the shared ones, rho = 1 - 6 sum d^2 / (m (m^2 - 1))
  (positions are distinct, so there are no ties); 1: the shared ones come in the same order;
  undefined (NaN) with fewer than 2 shared.

Ties between equal cosine scores fall either way (as in the graphs). A zero vector has no
neighbours: its Jaccard is NaN when neither side has any, 0 when one side has some.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from itemlens.errors import ConfigError
from itemlens.store.vectors import require_pooled

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.client import Lens

#: a side: NAME, then optionally @vN (a feature version) and @sN (a snapshot), in that order
_SIDE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_]{0,63})(?:@v(?P<version>[0-9]+))?(?:@s(?P<snapshot>[0-9]+))?$")

#: quantiles reported in the summary
QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


@dataclass(frozen=True)
class Side:
    """One side of a diff as written: a feature (``text`` or ``text@v2``) and a snapshot (None:
    the snapshot the reader is on)."""

    text: str
    feature: str
    snapshot: int | None


def parse_side(text: str) -> Side:
    """``NAME``, ``NAME@vN``, ``NAME@sN`` or ``NAME@vN@sM``; anything else is a ConfigError
    that says how to write it."""
    raw = text.strip()
    match = _SIDE.match(raw)
    if match is None:
        hint = (
            "write NAME@vN for a feature version (text@v2), NAME@sN for the feature in snapshot N "
            "(text@s5), or both (text@v2@s5)"
        )
        bare = re.match(r"^([A-Za-z][A-Za-z0-9_]*)@([0-9]+)$", raw)
        if bare:
            name, number = bare.groups()
            raise ConfigError(
                f"{raw!r} is ambiguous: version v{number} or snapshot {number}? Write {name}@v{number} "
                f"for the feature version or {name}@s{number} for snapshot {number}"
            )
        raise ConfigError(f"cannot read {raw!r} as a side of a diff: {hint}")
    name, version, snapshot = match.group("name", "version", "snapshot")
    return Side(raw, f"{name}@v{int(version)}" if version else name, int(snapshot) if snapshot else None)


def open_sides(
    uri: str | os.PathLike,
    a: str,
    b: str,
    *,
    snapshot: int | None = None,
    storage_options: dict[str, str] | None = None,
    lens: Lens | None = None,
) -> tuple[tuple[Lens, str], tuple[Lens, str]]:
    """Readers and qualified feature versions (``text@v2``) of two sides. A side without
    ``@sN`` reads ``snapshot`` (default: the latest), or ``lens`` where given (a reader already
    open on it). Refuses what is not a pooled vector feature, and two sides that are one."""
    import itemlens

    sides = [parse_side(a), parse_side(b)]
    readers: dict[int | None, Lens] = {}
    if lens is not None:
        readers[None] = lens
    out = []
    for side in sides:
        key = side.snapshot if side.snapshot is not None else snapshot
        if key not in readers:
            if lens is not None and key == lens.snapshot:
                readers[key] = lens
            else:
                readers[key] = itemlens.connect(uri, snapshot=key, storage_options=storage_options)
        reader = readers[key]
        info = feature_info(reader, side.feature)
        require_pooled(info, f"{side.text}: a diff compares pooled vectors")
        out.append((reader, info.qualified))
    (lens_a, name_a), (lens_b, name_b) = out
    if name_a == name_b and _table_version(lens_a, name_a) == _table_version(lens_b, name_b):
        raise ConfigError(f"{a} and {b} are the same vectors ({name_a} at the same table version): nothing to compare")
    return out[0], out[1]


def feature_info(lens: Lens, feature: str):
    """The FeatureInfo that ``feature`` (``text`` = its current version, or ``text@v2``) names in
    ``lens``'s snapshot; UnknownFeatureError listing what the snapshot has."""
    from itemlens.errors import UnknownFeatureError

    name, _, label = feature.partition("@")
    infos = lens.features()
    match = [f for f in infos if f.name == name and (f.version == label if label else f.current)]
    if not match:
        known = ", ".join(f.qualified + (" (current)" if f.current else "") for f in infos)
        raise UnknownFeatureError(
            f"snapshot {lens.snapshot} of {lens.uri} has no feature {feature!r}; it has: {known or 'none'}"
        )
    return match[0]


def _table_version(lens: Lens, qualified: str) -> tuple[str, int | None]:
    """Which stored rows a feature version reads in this snapshot: its table and Lance version."""
    table = lens.doc.feature_version(qualified).table
    return table, lens.doc.tables.get(table)


def compare_lists(index_a: np.ndarray, index_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of two [n, k] neighbour lists (positions, best first; -1: no neighbour): Jaccard
    of the two sets, Spearman's rho of the shared neighbours' ranks, and how many are shared.
    In chunks, so that the [n, k, k] comparison stays small."""
    n, k = index_a.shape
    jaccard = np.full(n, np.nan)
    spearman = np.full(n, np.nan)
    shared = np.zeros(n, np.int64)
    chunk = max(1, 4_000_000 // max(k * k, 1))
    for start in range(0, n, chunk):
        a, b = index_a[start : start + chunk], index_b[start : start + chunk]
        same = (a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)  # [rows, i in a, j in b]
        in_a = same.any(axis=2)  # a's entry i is shared
        in_b = same.any(axis=1)  # b's entry j is shared
        m = in_a.sum(axis=1)
        union = (a >= 0).sum(axis=1) + (b >= 0).sum(axis=1) - m
        with np.errstate(invalid="ignore", divide="ignore"):
            jaccard[start : start + len(a)] = np.where(union > 0, m / np.maximum(union, 1), np.nan)
        # ranks among the shared ones: a's entry i is the rank_a[i]-th shared entry of a, and it
        # sits at b's position j = argmax(same[i]), the rank_b[j]-th shared entry of b
        rank_a = np.cumsum(in_a, axis=1)
        rank_b = np.cumsum(in_b, axis=1)
        position_b = same.argmax(axis=2)
        d = np.where(in_a, rank_a - np.take_along_axis(rank_b, position_b, axis=1), 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = 1.0 - 6.0 * (d.astype(np.float64) ** 2).sum(axis=1) / (m * (m.astype(np.float64) ** 2 - 1))
        spearman[start : start + len(a)] = np.where(m >= 2, rho, np.nan)
        shared[start : start + len(a)] = m
    return jaccard, spearman, shared


@dataclass
class DiffResult:
    """Per item of ``ids``: ``jaccard``, ``spearman`` and ``shared`` (see the module), and the two
    neighbour lists (positions into ``pool``, the items both sides have)."""

    a: str  # "text@v1 (snapshot 3)"
    b: str
    k: int
    pool: list[str]  # items with a vector on both sides: where neighbours were searched
    rows: np.ndarray  # positions into pool of the items compared (all, or a sample)
    neighbours_a: np.ndarray
    neighbours_b: np.ndarray
    jaccard: np.ndarray
    spearman: np.ndarray
    shared: np.ndarray
    only_a: int  # items with a vector on side A only (left out)
    only_b: int
    sampled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [self.pool[i] for i in self.rows]

    def summary(self) -> dict[str, Any]:
        """Counts and the distribution of both measures (NaN-free: items without a value are
        counted apart)."""

        def stats(values: np.ndarray) -> dict[str, Any]:
            v = values[np.isfinite(values)]
            if not len(v):
                return {"items": 0}
            return {
                "items": int(len(v)),
                "mean": round(float(v.mean()), 4),
                "median": round(float(np.median(v)), 4),
                "min": round(float(v.min()), 4),
                "max": round(float(v.max()), 4),
                "quantiles": {f"{q:g}": round(float(np.quantile(v, q)), 4) for q in QUANTILES},
            }

        finite = np.isfinite(self.jaccard)
        return {
            "a": self.a,
            "b": self.b,
            "k": self.k,
            "items_compared": int(len(self.rows)),
            "items_in_both": len(self.pool),
            "only_in_a": self.only_a,
            "only_in_b": self.only_b,
            "sampled": self.sampled,
            "jaccard": stats(self.jaccard),
            "identical_sets": int((self.jaccard[finite] == 1.0).sum()),
            "disjoint_sets": int((self.jaccard[finite] == 0.0).sum()),
            "without_neighbours": int((~finite).sum()),
            "spearman": stats(self.spearman),
            "spearman_undefined": int((~np.isfinite(self.spearman)).sum()),
            "shared_histogram": np.bincount(self.shared, minlength=self.k + 1).tolist(),
        }

    def movers(self, n: int = 20) -> list[dict[str, Any]]:
        """The ``n`` items whose neighbourhoods changed most: lowest Jaccard first, then lowest
        rank correlation (undefined counts as lowest), then item id."""
        jaccard = np.where(np.isfinite(self.jaccard), self.jaccard, 2.0)  # no neighbours at all: last
        spearman = np.where(np.isfinite(self.spearman), self.spearman, -2.0)
        ids = self.ids
        order = np.lexsort((np.array(ids, dtype=str), spearman, jaccard))[:n]
        return [self.row(int(i)) for i in order]

    def row(self, i: int) -> dict[str, Any]:
        """Item ``i`` of the comparison (an index into ``ids``) with its two neighbour lists."""

        def names(index: np.ndarray) -> list[str]:
            return [self.pool[j] for j in index if j >= 0]

        return {
            "item_id": self.pool[self.rows[i]],
            "jaccard": _number(self.jaccard[i]),
            "spearman": _number(self.spearman[i]),
            "shared": int(self.shared[i]),
            "neighbours_a": names(self.neighbours_a[i]),
            "neighbours_b": names(self.neighbours_b[i]),
        }

    def histogram_png(self) -> bytes:
        """A PNG: items by Jaccard@k (one bar per possible value), and by rank correlation."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
        counts = np.bincount(self.shared, minlength=self.k + 1)
        values = [s / (2 * self.k - s) for s in range(self.k + 1)]  # Jaccard of s shared of k and k
        left.bar(range(self.k + 1), counts, width=0.9)
        step = max(1, (self.k + 1) // 10)
        left.set_xticks(
            range(0, self.k + 1, step), [f"{values[s]:.2f}" for s in range(0, self.k + 1, step)], fontsize=7
        )
        left.set_xlabel(f"Jaccard@{self.k} (shared neighbours 0 .. {self.k})")
        left.set_ylabel("items")
        finite = self.jaccard[np.isfinite(self.jaccard)]
        left.set_title(
            f"neighbour overlap: mean {finite.mean():.3f}" if len(finite) else "neighbour overlap", fontsize=9
        )
        rho = self.spearman[np.isfinite(self.spearman)]
        right.hist(rho, bins=np.linspace(-1, 1, 21))
        right.set_xlabel("Spearman's rho of the shared neighbours")
        right.set_title(f"order of the shared ({len(rho)} items with 2 or more)", fontsize=9)
        fig.suptitle(f"{self.a} vs {self.b}" + (" (a sample)" if self.sampled else ""), fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        return buffer.getvalue()

    def write(self, out: str | os.PathLike, movers: int = 50) -> list[str]:
        """``diff.json`` (the summary and the movers), ``items.csv`` (one row per item) and
        ``histogram.png`` in folder ``out``; returns the files written."""
        os.makedirs(out, exist_ok=True)
        paths = [os.path.join(out, name) for name in ("diff.json", "items.csv", "histogram.png")]
        with open(paths[0], "w") as f:
            json.dump({**self.summary(), "movers": self.movers(movers)}, f, indent=2)
        with open(paths[1], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["item_id", "jaccard", "spearman", "shared"])
            for item, j, r, s in zip(self.ids, self.jaccard, self.spearman, self.shared):
                writer.writerow([item, "" if np.isnan(j) else f"{j:.6f}", "" if np.isnan(r) else f"{r:.6f}", int(s)])
        with open(paths[2], "wb") as f:
            f.write(self.histogram_png())
        return paths


def _number(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def neighbour_lists(x: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Exact top-``k`` cosine neighbours (positions, the row itself left out) of every row of
    ``x``, or of ``rows`` only."""
    from itemlens.store.graphs import knn

    if rows is None:
        index, _ = knn.exact_knn(x, k, self_loops=False)
    else:
        index, _ = knn.knn_rows(x, rows, k, self_loops=False)
    return index


def diff(
    lens_a: Lens, name_a: str, lens_b: Lens, name_b: str, *, k: int = 10, sample: int | None = None, seed: int = 0
) -> DiffResult:
    """Compare feature ``name_a`` read by ``lens_a`` with ``name_b`` read by ``lens_b`` (see the
    module). ``sample``: compare that many items (drawn with ``seed``), each against all the
    items both sides have, instead of every item."""
    if k < 1:
        raise ConfigError(f"k must be at least 1, not {k}")
    ids_a, ids_b = lens_a.ids(name_a), lens_b.ids(name_b)
    in_b = set(ids_b)
    pool = [i for i in ids_a if i in in_b]
    only_a = len(ids_a) - len(pool)
    only_b = len(ids_b) - len(pool)
    label_a = f"{name_a} (snapshot {lens_a.snapshot})"
    label_b = f"{name_b} (snapshot {lens_b.snapshot})"
    if len(pool) < 2:
        raise ConfigError(f"{label_a} and {label_b} have {len(pool)} item(s) in common: a diff needs at least 2")
    k = min(k, len(pool) - 1)
    rows = None
    if sample is not None and sample < len(pool):
        rows = np.sort(np.random.default_rng(seed).choice(len(pool), size=sample, replace=False))
    x_a = np.asarray(lens_a.vectors(name_a, pool), dtype=np.float32)
    x_b = np.asarray(lens_b.vectors(name_b, pool), dtype=np.float32)
    index_a = neighbour_lists(x_a, k, rows)
    index_b = neighbour_lists(x_b, k, rows)
    jaccard, spearman, shared = compare_lists(index_a, index_b)
    return DiffResult(
        a=label_a,
        b=label_b,
        k=k,
        pool=pool,
        rows=np.arange(len(pool)) if rows is None else rows,
        neighbours_a=index_a,
        neighbours_b=index_b,
        jaccard=jaccard,
        spearman=spearman,
        shared=shared,
        only_a=only_a,
        only_b=only_b,
        sampled=rows is not None,
    )


def diff_store(
    uri: str | os.PathLike,
    a: str,
    b: str,
    *,
    k: int = 10,
    snapshot: int | None = None,
    sample: int | None = None,
    storage_options: dict[str, str] | None = None,
) -> DiffResult:
    """:func:`diff` of two sides written as text (see :func:`parse_side`)."""
    (lens_a, name_a), (lens_b, name_b) = open_sides(uri, a, b, snapshot=snapshot, storage_options=storage_options)
    return diff(lens_a, name_a, lens_b, name_b, k=k, sample=sample)
