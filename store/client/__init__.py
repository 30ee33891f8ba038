"""The Python client: ``lens = itemlens.connect(uri)`` (see :class:`Lens`).

==================  ==========================================================================
``lens.py``         ``connect``, ``create`` and :class:`Lens`, made of the parts below
``base.py``         the location, the snapshot and its open tables; pruned-snapshot errors
``reading.py``      items, vectors, captions, errors (cached id index + numpy gather)
``encoding.py``     ``encode`` raw inputs with a feature's stored spec; ``search``
``writing.py``      ``put_vectors``, ``put_captions``, ``create_index``
``derived.py``      semantic IDs, graphs and neighbours (cached per reader), exports
==================  ==========================================================================
"""

from itemlens.store.client.base import FeatureInfo
from itemlens.store.client.encoding import SearchResult
from itemlens.store.client.lens import Lens, connect, create

__all__ = ["FeatureInfo", "Lens", "SearchResult", "connect", "create"]
