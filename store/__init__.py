"""itemlens.store: the versioned store, its single writer, the client, and what is derived from
the vectors. Reading (``connect``, ``Lens.vectors``, ``Lens.search`` with a vector) needs
neither Ray nor torch; the derivations import their engines (faiss, torch, numba) only when
they build.

==================  ==========================================================================
``layout.py``       table names and Arrow schemas; ``location.py``: where a store lives
``writer.py``       the single writer: items, feature versions, staging, merges, prune, publish
``snapshots.py``    snapshot documents: one consistent set of table versions
``lock.py``         the writer lock (flock locally, a lease object on object storage)
``lance_io.py``     Lance helpers; ``lookup.py``: stored hashes the pipeline's workers read
``client/``         ``connect`` and the reader (:class:`Lens`)
``vectors.py``      vectors in item-index order, for everything derived from them
``semantic_ids/``   semantic IDs: spec, quantizers (a registry), training and refresh, storage
``graphs/``         item graphs: spec, kNN, presets (a registry), refresh, storage, statistics
``exports/``        files recommender code reads (a registry of formats)
``diff.py``         how two versions of a feature differ, neighbour by neighbour
==================  ==========================================================================
"""

import os

# Lance logs routine events ("No existing dataset ... it will be created") as warnings; keep
# them out of users' consoles unless they ask (LANCE_LOG=info/debug). Read when lance loads.
os.environ.setdefault("LANCE_LOG", "error")

from itemlens.store.client import FeatureInfo, Lens, SearchResult, connect, create  # noqa: E402
from itemlens.store.writer import StoreWriter  # noqa: E402

__all__ = ["FeatureInfo", "Lens", "SearchResult", "StoreWriter", "connect", "create"]
