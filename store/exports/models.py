"""The item-item graphs MMRec's models cache, computed as each model's own code computes them.

MMRec's graph models build their item graphs from the rows of ``image_feat.npy`` and
``text_feat.npy`` the first time they run and cache them in the dataset folder with
``torch.save``; on later runs they ``torch.load`` the cache and never look at the features
again for it. An export ``for`` a model writes that cache from the very vectors it writes as the
features, so that copying the folder into MMRec's ``data/<dataset>/`` is the whole step.

Each model, as read in MMRec (github.com/enoche/MMRec, ``src/models/<model>.py`` and
``src/utils/utils.py``):

=========  ========================================  ==============================================
model      cache file(s)                              construction (per modality, on its feature rows)
=========  ========================================  ==============================================
freedom    mm_adj_freedomdsp_{knn_k}_{int(10 *       cosine top-knn_k of the full similarity (self
           mm_image_weight)}.pt                      included), binary; values d_i^-1/2 d_j^-1/2 with
                                                     d = row sums (+1e-7); fused mm_image_weight *
                                                     image + (1 - mm_image_weight) * text; sparse COO
pgl        the same file as freedom                  the same as freedom (pgl.py)
dragon     mm_adj_{knn_k}.pt                         the same as freedom (dragon.py)
lattice    image_adj_{knn_k}.pt, text_adj_{knn_k}.pt  cosine top-knn_k with their cosines, D^-1/2 A
                                                     D^-1/2 (D = row sums), dense [N, N]; not fused
mgcn       image_adj_{knn_k}_True.pt,                cosine top-knn_k with their cosines, sym
           text_adj_{knn_k}_True.pt                  normalization by row sums, sparse COO; not fused
smore      image_adj_{image_knn_k}_True.pt,          as mgcn, with a k per modality (its max-pool
           text_adj_{text_knn_k}_True.pt             fusion runs in the model, uncached)
lgmrec     none: refused                             its graphs come from interactions and learned
                                                     hyperedges, inside the model
=========  ========================================  ==============================================

The kNN is the store's exact cosine kNN (:func:`itemlens.store.graphs.knn.exact_knn`, self included),
on the exported rows only: the model's graph is over the items of its own dataset, which a
stored graph over the whole catalog is not. The normalizations are the presets of
:mod:`itemlens.store.graphs` (``freedom``: binary, D^-1/2 A D^-1/2; ``mgcn``: cosine weights,
the same normalization). Files are float32; sparse ones coalesced COO tensors (the models'
own are uncoalesced sums, the same matrix), all loadable with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from itemlens.errors import ConfigError

ROLES = ("image", "text")  # MMRec's v_feat (vision_feature_file) and t_feat (text_feature_file)


@dataclass(frozen=True)
class ModelGraphs:
    """What one model caches: its parameters (MMRec's config keys, their defaults from the model's
    yaml), where that was read, and how to build its files."""

    name: str
    defaults: dict[str, Any]
    source: str
    files: Callable[[dict[str, Any], dict[str, np.ndarray], Callable], dict[str, Any]] | None
    note: str = ""  # what else the model loads that this export does not write
    refused: str = ""  # why no graph can be exported for it
    param_types: dict[str, type] = field(default_factory=dict)


def _fused_laplacian(file_name: Callable[[dict[str, Any]], str]):
    """FREEDOM's construction (also DRAGON's and PGL's): per modality the binary kNN graph,
    normalized D^-1/2 A D^-1/2 (D = row sums), fused mm_image_weight * image + (1 - w) * text;
    a single modality is used alone (weight 1), as the model does."""

    def files(params, vectors, knn):
        k, w = params["knn_k"], params["mm_image_weight"]
        parts = {role: _normalized(knn(role, k), "freedom") for role in vectors}
        if len(parts) == 2:
            matrix = w * parts["image"] + (1.0 - w) * parts["text"]
        else:
            (matrix,) = parts.values()
        return {file_name(params): _sparse(matrix)}

    return files


def _per_modality(preset: str, dense: bool, file_name: Callable[[str, dict[str, Any]], str], k_of):
    """LATTICE's and MGCN's construction: per modality the cosine kNN graph, D^-1/2 A D^-1/2 (D =
    row sums of the cosines), one file per modality; dense (LATTICE) or sparse COO (MGCN, SMORE)."""

    def files(params, vectors, knn):
        out = {}
        for role in vectors:
            matrix = _normalized(knn(role, k_of(role, params)), preset, weighted=True)
            out[file_name(role, params)] = _dense(matrix) if dense else _sparse(matrix)
        return out

    return files


def _freedom_file(p: dict) -> str:
    """FREEDOM's cache file, which PGL reads too."""
    return f"mm_adj_freedomdsp_{p['knn_k']}_{int(10 * p['mm_image_weight'])}.pt"


MODELS: dict[str, ModelGraphs] = {
    "freedom": ModelGraphs(
        "FREEDOM",
        {"knn_k": 10, "mm_image_weight": 0.1},
        "MMRec src/models/freedom.py lines 54-100 (file name line 55, fusion line 74, normalization lines 93-100)",
        _fused_laplacian(_freedom_file),
        param_types={"knn_k": int, "mm_image_weight": float},
    ),
    "pgl": ModelGraphs(
        "PGL",
        {"knn_k": 10, "mm_image_weight": 0.1},
        "MMRec src/models/pgl.py lines 52-107 (file name line 53: the same file as FREEDOM)",
        _fused_laplacian(_freedom_file),
        param_types={"knn_k": int, "mm_image_weight": float},
    ),
    "dragon": ModelGraphs(
        "DRAGON",
        {"knn_k": 10, "mm_image_weight": 0.1},
        "MMRec src/models/dragon.py lines 57-83 and 158-179 (file name line 61)",
        _fused_laplacian(lambda p: f"mm_adj_{p['knn_k']}.pt"),
        note="DRAGON also loads user_graph_dict.npy (user_graph_dict_file), a user-user graph from the training "
        "interactions: make it with MMRec's preprocessing/dualgnn-gen-u-u-matrix.py",
        param_types={"knn_k": int, "mm_image_weight": float},
    ),
    "lattice": ModelGraphs(
        "LATTICE",
        {"knn_k": 10},
        "MMRec src/models/lattice.py lines 63-87, src/utils/utils.py lines 119-137 (dense)",
        _per_modality("lattice", True, lambda role, p: f"{role}_adj_{p['knn_k']}.pt", lambda role, p: p["knn_k"]),
        param_types={"knn_k": int},
    ),
    "mgcn": ModelGraphs(
        "MGCN",
        {"knn_k": 10},
        "MMRec src/models/mgcn.py lines 41-69 (sparse = True), src/utils/utils.py lines 139-181",
        _per_modality("mgcn", False, lambda role, p: f"{role}_adj_{p['knn_k']}_True.pt", lambda role, p: p["knn_k"]),
        param_types={"knn_k": int},
    ),
    "smore": ModelGraphs(
        "SMORE",
        {"image_knn_k": 10, "text_knn_k": 10},
        "MMRec src/models/smore.py lines 45-73 (sparse = True), src/utils/utils.py lines 139-181",
        _per_modality(
            "mgcn",
            False,
            lambda role, p: f"{role}_adj_{p[role + '_knn_k']}_True.pt",
            lambda role, p: p[role + "_knn_k"],
        ),
        param_types={"image_knn_k": int, "text_knn_k": int},
    ),
    "lgmrec": ModelGraphs(
        "LGMRec",
        {},
        "MMRec src/models/lgmrec.py lines 39-61 and 102-126",
        None,
        refused="LGMRec caches no item graph: its graphs are the user-item interaction graph (from the .inter "
        "file) and hyperedges it learns itself; export its features alone (--format mmrec without --for)",
    ),
}


def model_names() -> list[str]:
    return sorted(MODELS)


def lookup(model: str) -> ModelGraphs:
    spec = MODELS.get(model.lower())
    if spec is None:
        raise ConfigError(f"unknown model {model!r} for --for; models: {', '.join(model_names())}")
    if spec.refused:
        raise ConfigError(spec.refused)
    return spec


def parameter_grid(spec: ModelGraphs, given: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every combination of the given parameter values (a value may be a list, or a
    comma-separated string: MMRec grid-searches some of them), over the model's defaults."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(spec.defaults))
    if unknown:
        raise ConfigError(
            f"{spec.name} has no parameter {', '.join(unknown)}; its graph parameters are "
            f"{', '.join(f'{k} (default {v})' for k, v in spec.defaults.items())}"
        )
    values = {}
    for key, default in spec.defaults.items():
        raw = given.get(key, default)
        items = raw.split(",") if isinstance(raw, str) else (list(raw) if isinstance(raw, (list, tuple)) else [raw])
        kind = spec.param_types[key]
        try:
            parsed = [kind(str(v).strip()) if kind is int else kind(v) for v in items]
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(f"{spec.name} parameter {key}: {raw!r} is not {what}") from None
        for v in parsed:
            if kind is int and v < 1:
                raise ConfigError(f"{spec.name} parameter {key} must be at least 1, not {v}")
            if key == "mm_image_weight" and not 0.0 <= v <= 1.0:
                raise ConfigError(f"{spec.name} parameter mm_image_weight must be in [0, 1], not {v}")
        values[key] = parsed
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


def build(
    model: str, vectors: dict[str, np.ndarray], params: dict[str, Any] | None = None, *, device: str = "cpu"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The cache files of ``model`` (name -> torch tensor) from its feature rows ``vectors``
    (role -> float32 [N, d], rows in export order), for every combination of ``params``; and
    the combinations. Rows the model could not compute a cosine for are refused."""
    spec = lookup(model)
    roles = [r for r in ROLES if r in vectors]
    if not roles or set(vectors) - set(ROLES):
        raise ConfigError(
            f"{spec.name} reads image_feat.npy and text_feat.npy: give features for the roles image "
            f"and/or text (--feature image=NAME text=NAME), not {', '.join(sorted(vectors)) or 'none'}"
        )
    grid = parameter_grid(spec, params)
    n = len(next(iter(vectors.values())))
    for role in roles:
        norms = np.linalg.norm(vectors[role].astype(np.float64), axis=1)
        bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
        if len(bad):
            raise ConfigError(
                f"{spec.name} takes the cosine of every row of {role}_feat.npy; {len(bad)} row(s) have "
                f"a zero or non-finite vector (rows {bad[:5].tolist()}): the model's graph would hold "
                "NaN there"
            )
    largest = {role: max(_k_for(spec, role, p) for p in grid) for role in roles}
    for k in largest.values():
        if k > n:
            raise ConfigError(f"{spec.name}: k = {k} neighbours, but only {n} rows (torch.topk would fail)")
    from itemlens.store.graphs import knn as store_knn

    lists = {role: store_knn.exact_knn(vectors[role], largest[role], self_loops=True, device=device) for role in roles}

    def knn(role: str, k: int):
        """The cosine kNN matrix (scipy CSR [N, N], row i: its k best, itself included)."""
        import scipy.sparse as sp

        index, sims = lists[role]
        index, sims = index[:, :k], sims[:, :k]
        rows = np.repeat(np.arange(n), k)
        return sp.csr_matrix((sims.reshape(-1).astype(np.float64), (rows, index.reshape(-1))), shape=(n, n))

    files: dict[str, Any] = {}
    for params_ in grid:
        files.update(spec.files(params_, {r: vectors[r] for r in roles}, knn))
    return files, grid


def _k_for(spec: ModelGraphs, role: str, params: dict[str, Any]) -> int:
    return params[f"{role}_knn_k"] if f"{role}_knn_k" in params else params["knn_k"]


def _normalized(a, preset: str, weighted: bool = False):
    """``a`` normalized as the store's ``preset`` does; refused where a model would divide by a
    row sum that is not positive (its pow(-0.5) gives NaN there, the preset 0)."""
    from itemlens.store.graphs import normalize

    if weighted:
        sums = np.asarray(a.sum(axis=1)).ravel()
        if (sums <= 0).any():
            raise ConfigError(
                f"{int((sums <= 0).sum())} row(s) of the cosine kNN graph sum to <= 0: the model's "
                "D^-1/2 would be NaN there"
            )
    return normalize(a, preset)


def _sparse(matrix):
    """A scipy matrix as a coalesced float32 torch sparse COO tensor."""
    import torch

    coo = matrix.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(
        indices, torch.from_numpy(coo.data.astype(np.float32)), coo.shape, check_invariants=True
    ).coalesce()


def _dense(matrix):
    import torch

    return torch.from_numpy(np.asarray(matrix.toarray(), dtype=np.float32))
