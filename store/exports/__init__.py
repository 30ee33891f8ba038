"""Exports: the store's features, semantic IDs and graphs in the files recommender code reads.

==================  ==========================================================================
``core.py``         the framework: the registry of formats, alignment of every artifact to one
                    row order, the refusals, ``export.json`` and the report
``align.py``        row orders from the user's own files (ids lists, CSV/TSV, MMRec's
                    i_id_mapping.csv and .inter, RecBole's .inter, tables)
``features.py``     ``mmrec``, ``npz``, ``parquet``
``semantic_ids.py`` ``sid-grid``, ``sid-tokens``, ``sid-parquet``
``graphs.py``       ``pyg``, ``scipy-npz``, ``mmrec-adj``
``models.py``       the graph files each MMRec model caches (``--for freedom|dragon|...``)
==================  ==========================================================================

A new format is one module with a writer ``(aligned, folder, options) -> files`` and one
:func:`register_exporter` call; docs/exports.md is the reference.
"""

from itemlens.store.exports import features, graphs, semantic_ids  # noqa: F401,E402  (they register the formats)
from itemlens.store.exports.core import (
    MANIFEST,
    Aligned,
    ExportFormat,
    ExportReport,
    export,
    export_formats,
    register_exporter,
)

__all__ = ["MANIFEST", "Aligned", "ExportFormat", "ExportReport", "export", "export_formats", "register_exporter"]
