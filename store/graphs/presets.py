"""Presets: the stored raw kNN lists as the matrix a published model builds.

A preset names how an input's kNN edges are weighted (binary or cosine) and normalized; several
inputs are fused after normalization, each times its weight. Presets are registered by name
(:func:`register_preset`), so a model whose graph differs is one registration (see
docs/graphs.md for the table of built-in presets and the models they follow)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from itemlens.errors import ConfigError
from itemlens.store.graphs.storage import of_feature

if TYPE_CHECKING:  # pragma: no cover
    from itemlens.store.graphs.spec import GraphSpec

#: the input name of an interactions graph (also in spec.py)
COOCCURRENCE = "cooccurrence"


@dataclass(frozen=True)
class Preset:
    """How one input's kNN lists become a model's matrix: the edges' weights, then a
    normalization (a callable ``csr -> csr`` for one the built-in ones do not cover)."""

    weights: Literal["binary", "cosine"]  # binary: every kNN edge 1; cosine: its score
    normalization: str | Callable[[Any], Any]  # "sym": D^-1/2 A D^-1/2 (D = row sums), "rw": D^-1 A,
    #                                             "none", "hypergraph" (HGNN's, over all inputs)
    follows: str = ""  # the models whose code builds this graph


_PRESETS: dict[str, Preset] = {}


def register_preset(name: str, preset: Preset, *, replace: bool = False) -> None:
    """Add a preset (``graphs: {g: {preset: NAME}}``, ``lens.graph(g, NAME)``, ``--preset NAME``).
    A second registration of a name is an error unless ``replace=True``."""
    if name in _PRESETS and not replace:
        raise ConfigError(f"graph preset {name!r} is already registered; pass replace=True to replace it")
    _PRESETS[name] = preset


def preset_names() -> list[str]:
    return list(_PRESETS)


def get_preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise ConfigError(f"unknown graph preset {name!r}; presets: {', '.join(_PRESETS)}")
    return _PRESETS[name]


register_preset("freedom", Preset("binary", "sym", "FREEDOM (Zhou & Shen 2023), PGL"))
register_preset("dragon", Preset("binary", "sym", "DRAGON (Zhou et al. 2023)"))
register_preset("lattice", Preset("cosine", "sym", "LATTICE (Zhang et al. 2021)"))
register_preset("mgcn", Preset("cosine", "sym", "MGCN (Yu et al. 2023), SMORE"))
register_preset("row", Preset("cosine", "rw", "the rw option of LATTICE's and MGCN's code"))
register_preset("cosine", Preset("cosine", "none", "the raw cosine scores"))
register_preset("hypergraph", Preset("binary", "hypergraph", "MMHCL's item hypergraph, HGNN's normalization"))


def knn_matrix(table: pa.Table, feature: str, size: int, k: int | None = None):
    """The kNN lists of one input as a CSR matrix [size, size] of scores (row i: item i's
    first ``k`` neighbours; all stored ones when k is None)."""
    import scipy.sparse as sp

    part = of_feature(table, feature)
    if part.num_rows == 0:
        return sp.csr_matrix((size, size))
    rows = part.column("item_index").to_numpy()
    neighbors = part.column("neighbors").combine_chunks()
    lengths = np.diff(neighbors.offsets.to_numpy())
    r = np.repeat(rows, lengths)
    c = neighbors.flatten().to_numpy()
    v = part.column("scores").combine_chunks().flatten().to_numpy()
    if k is not None:
        rank = np.arange(len(c)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        first = rank < k
        r, c, v = r[first], c[first], v[first]
    return sp.csr_matrix((v.astype(np.float64), (r, c)), shape=(size, size))


def _incidence(a):
    """1 for every stored edge of a kNN matrix, whatever its score (a cosine of exactly 0 is
    still an edge: it is among the item's k nearest)."""
    b = a.astype(np.float64, copy=True)
    b.data[:] = 1.0
    return b


def depth_read(definition: GraphSpec, feature: str) -> int | None:
    return None if feature == COOCCURRENCE else definition.k


def normalize(a, preset: str):
    """One input's kNN matrix as ``preset`` defines it (see the module's table)."""
    import scipy.sparse as sp

    chosen = get_preset(preset)
    norm = chosen.normalization
    a = a.tocsr(copy=True)
    if chosen.weights == "binary":
        a.data[:] = 1.0
    if callable(norm):
        return norm(a).tocsr()
    if norm == "none":
        return a
    degree = np.asarray(a.sum(axis=1)).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        if norm == "sym":
            d = np.where(degree > 0, degree**-0.5, 0.0)
            return (sp.diags(d) @ a @ sp.diags(d)).tocsr()
        if norm == "rw":
            d = np.where(degree > 0, 1.0 / degree, 0.0)
            return (sp.diags(d) @ a).tocsr()
    raise ConfigError(f"unknown normalization {norm!r}")


def hypergraph(incidences: list, weights: list[float] | None = None):
    """HGNN's normalized item-item matrix of a hypergraph with incidence H = [B_1 | B_2 ...]
    (B[i, j] = 1 when item i is in hyperedge j, the kNN list of item j); a feature weight
    scales its hyperedges (W). Dv^-1/2 H W De^-1 H^T Dv^-1/2, zero degrees giving 0."""
    import scipy.sparse as sp

    h = sp.hstack(incidences).tocsr()
    w = np.concatenate([np.full(b.shape[1], wt) for b, wt in zip(incidences, weights or [1.0] * len(incidences))])
    dv = np.asarray(h @ w).ravel()
    de = np.asarray(h.sum(axis=0)).ravel()
    with np.errstate(divide="ignore"):
        dv_inv = np.where(dv > 0, dv**-0.5, 0.0)
        de_inv = np.where(de > 0, 1.0 / de, 0.0)
    return (sp.diags(dv_inv) @ h @ sp.diags(w * de_inv) @ h.T @ sp.diags(dv_inv)).tocsr()


def fused_matrix(table: pa.Table, spec: dict[str, Any], size: int, preset: str | None = None):
    """The graph a model reads: each input normalized by ``preset``, times its weight, summed."""
    from itemlens.store.graphs.spec import GraphSpec

    definition = GraphSpec.model_validate(spec)
    preset = preset or definition.preset
    weights = definition.weights
    if get_preset(preset).normalization == "hypergraph":
        # B_f = A_f^T: column j holds item j's neighbours
        return hypergraph(
            [_incidence(knn_matrix(table, f, size, depth_read(definition, f))).T.tocsr() for f in weights],
            list(weights.values()),
        )
    total = None
    for feature, weight in weights.items():
        part = normalize(knn_matrix(table, feature, size, depth_read(definition, feature)), preset) * weight
        total = part if total is None else total + part
    return total.tocsr()
