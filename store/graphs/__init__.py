"""Item-item graphs: k-nearest-neighbour lists per feature, normalized when read.

A graph definition (``graphs:`` in the configuration, :class:`GraphSpec`) names its features
(with fusion weights), ``k`` and whether an item counts itself among its neighbours. The store
keeps, per feature, each item's raw neighbour list with cosine scores (table
``graph__<name>__<label>``); presets turn the lists into the matrix a published model builds,
when read or exported. Several features are fused after normalization, each matrix times its
weight, overlapping edges summed (FREEDOM: 0.1 image + 0.9 text). A degree of 0 gives 0 weights,
never NaN. An item-item co-occurrence graph from interactions can be one of the inputs.

==================  ==========================================================================
``spec.py``         the definition and the fingerprint of what changes its lists
``knn.py``          exact (blocked, symmetric) and approximate (faiss IVF) kNN, and the searches
                    a refresh needs; ``knn_kernels.py``: its numba selection kernels
``build.py``        building and refreshing the stored lists (``derive``), ``itemlens graph``
``storage.py``      the lists' table and its one commit per build or refresh
``presets.py``      the registry of presets (edge weights + normalization) and the fused matrix
``cooccurrence.py`` the co-occurrence input from an interactions file
``stats.py``        edges, mutual share, in-degree distribution and its plot
==================  ==========================================================================
"""

from itemlens.store.graphs.build import FeatureInputs, GraphReport, build, derive, read_feature
from itemlens.store.graphs.presets import (
    Preset,
    fused_matrix,
    get_preset,
    hypergraph,
    knn_matrix,
    normalize,
    preset_names,
    register_preset,
)
from itemlens.store.graphs.spec import COOCCURRENCE, GraphSpec, InteractionsSpec
from itemlens.store.graphs.stats import degree_plot, graph_stats, list_stats
from itemlens.store.graphs.storage import GRAPH_SCHEMA

__all__ = [
    "COOCCURRENCE",
    "GRAPH_SCHEMA",
    "FeatureInputs",
    "GraphReport",
    "GraphSpec",
    "InteractionsSpec",
    "Preset",
    "build",
    "degree_plot",
    "derive",
    "fused_matrix",
    "get_preset",
    "graph_stats",
    "hypergraph",
    "knn_matrix",
    "list_stats",
    "normalize",
    "preset_names",
    "read_feature",
    "register_preset",
]
