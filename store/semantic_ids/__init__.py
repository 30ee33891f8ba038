"""Semantic IDs: items as short tuples of codes, unique and stable across refreshes.

A semantic-ID definition (``semantic_ids:`` in the configuration, :class:`SemanticIdSpec`) names
its input features (one, or several concatenated with weights), a quantizer and how colliding
tuples are made unique:

- ``suffix`` (TIGER, GRID): one extra code numbering the items that share a tuple 0, 1, 2 ...
  in the order of their stable item index; a later item with that tuple gets the next number
  never handed out before.
- ``nearest-free`` (LC-Rec, FORGE): the tuple keeps its length; an item whose tuple is taken
  moves to the nearest last-level code whose tuple is free.

==================  ==========================================================================
``spec.py``         the definition and the fingerprint of what changes the IDs
``quantizers/``     the registry of quantizers: ``rq-kmeans`` and ``rq-vae`` (and their k-means)
``build.py``        training a version on a sample and refreshing it with the frozen quantizer
                    (``derive``), by blocks on a runner (this process or Ray tasks); uniqueness
                    on the codes alone (``make_unique``); ``itemlens semantic-ids``
``unique_kernels``  the numba kernel of nearest-free uniqueness
``storage.py``      the codes and quantizer tables; token strings and offsets
``metrics.py``      collisions, utilization, perplexity, reconstruction error, the usage plot
==================  ==========================================================================
"""

from itemlens.store.semantic_ids.build import Plan, SemanticIdReport, build, derive, make_unique, plan_inputs
from itemlens.store.semantic_ids.metrics import code_metrics, usage_plot
from itemlens.store.semantic_ids.spec import SemanticIdSpec, VaeParams, check_inputs
from itemlens.store.semantic_ids.storage import (
    CODES_FIELDS,
    QUANTIZER_SCHEMA,
    codes_schema,
    token_offsets,
    token_strings,
)

__all__ = [
    "CODES_FIELDS",
    "QUANTIZER_SCHEMA",
    "Plan",
    "SemanticIdReport",
    "SemanticIdSpec",
    "VaeParams",
    "build",
    "check_inputs",
    "code_metrics",
    "codes_schema",
    "derive",
    "make_unique",
    "plan_inputs",
    "token_offsets",
    "token_strings",
    "usage_plot",
]
