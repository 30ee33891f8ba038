"""The Python client: ``lens = itemlens.connect(uri)``.

A :class:`Lens` stays on one snapshot (a consistent view) until :meth:`Lens.refresh` moves
it to the newest; ``connect(uri, snapshot=N)`` pins N. Reading needs neither Ray nor torch:
torch is imported only to encode raw queries (``search`` with text or an image, ``encode``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from itemlens.store import lance_io
from itemlens.store.cache import DEFAULT_CACHE_BYTES
from itemlens.store.layout import META_TABLE
from itemlens.store.location import StoreLocation
from itemlens.store.snapshots import SnapshotDoc, read_doc
from itemlens.store.writer import check_store_format

if TYPE_CHECKING:  # pragma: no cover
    pass
from itemlens.store.client.derived import Derived
from itemlens.store.client.encoding import Encoding
from itemlens.store.client.reading import Reading
from itemlens.store.client.writing import Writing


def connect(
    uri: str | os.PathLike,
    snapshot: int | None = None,
    *,
    storage_options: dict[str, str] | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    create: bool = False,
) -> Lens:
    """Open the store at ``uri`` on its latest snapshot (or on ``snapshot``).

    ``create=True`` makes an empty store there first when there is none (for ``put_vectors``
    of vectors computed elsewhere); otherwise a missing store is an error.
    ``cache_bytes`` bounds what the reader keeps in memory for fast lookups (4 GiB by default):
    a feature table whose vectors fit is read once and looked up as an array; a larger one
    keeps only its id map and takes rows from Lance.
    """
    location = StoreLocation.parse(uri, storage_options)
    if create:
        create_store(location)
    check_store_format(location)
    doc = read_doc(location, snapshot)
    return Lens(location, doc or SnapshotDoc(), cache_bytes=cache_bytes)


def create(uri: str | os.PathLike, *, storage_options: dict[str, str] | None = None) -> Lens:
    """Make an empty store at ``uri`` (a folder, or an s3:// gs:// az:// URI) if there is none,
    and open it. An existing itemlens store is opened as it is; a LanceDB database that is
    not an itemlens store is refused."""
    return connect(uri, storage_options=storage_options, create=True)


def create_store(location: StoreLocation) -> None:
    """An empty itemlens store at ``location`` (its own tables and format record), under the
    writer lock; nothing when one is there."""
    from itemlens.store.writer import StoreWriter

    if lance_io.open_dataset(location.table_uri(META_TABLE), storage_options=location.options()) is None:
        StoreWriter.open(location.uri, storage_options=location.options(), command="create").close()


class Lens(Reading, Encoding, Writing, Derived):
    """A reader on one snapshot of a store.

    Safe in PyTorch DataLoader workers: pickled into a spawned worker it carries only its
    location, snapshot and settings; in a forked worker it drops the parent's Lance handles
    (Lance is not fork-safe) and keeps the arrays it had loaded (plain memory, shared
    copy-on-write).
    """
