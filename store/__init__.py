"""itemlens.store: the LanceDB layout, snapshots, the single writer and the client.

Reading (``connect``, ``Lens.vectors``, ``Lens.search`` with a vector) needs neither Ray nor
torch; semantic-ID and graph algorithms, when they come, import their engines only when
building.
"""

import os

# Lance logs routine events ("No existing dataset ... it will be created") as warnings; keep
# them out of users' consoles unless they ask (LANCE_LOG=info/debug). Read when lance loads.
os.environ.setdefault("LANCE_LOG", "error")

from itemlens.store.client import FeatureInfo, Lens, SearchResult, connect
from itemlens.store.writer import StoreWriter

__all__ = ["FeatureInfo", "Lens", "SearchResult", "StoreWriter", "connect"]
