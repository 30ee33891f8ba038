"""Lookups at training speed: a pinned feature table held in memory as an id -> row map and
one array, so that ``Lens.vectors`` is a dictionary lookup plus a numpy gather.

A table at a given Lance version never changes, so what is loaded once stays right for the
life of the reader. The cache is bounded by bytes (least recently used tables go first); a
table whose values alone exceed the bound keeps only its id map in memory and takes the rows
it is asked for from Lance.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

#: default bound of a reader's cache (connect(..., cache_bytes=...))
DEFAULT_CACHE_BYTES = 4 * 1024**3


class IdIndex:
    """item_id -> row position: a bucketized hash table probed with numpy gathers.

    Lookups are the hot path of training loops, and on a million ids they are bound by random
    memory accesses. A Python dict costs ~0.8 us per id (the dict's slot, the key object and the
    query object each miss the cache): 0.8 ms per batch of 1,000. pandas' ``get_indexer`` took
    ~7 ms and ``pyarrow.compute.index_in``, which rebuilds its table per call, ~250 ms. Here ids
    are fixed-width bytes, hashed a 64-bit word at a time; a bucket is one cache line (8 32-bit
    fingerprints, 8 rows), so a lookup costs about one miss for the bucket and one for checking
    the stored id, which every hit is checked against: a collision never returns a wrong row.
    Ids that do not fit this layout (a NUL byte, or too long for memory) use a dict instead.
    ``bench/client_lookup.py`` measures both against numpy's gather.
    """

    BUCKET = 8
    MAX_ID_BYTES = 512 * 1024**2  # fixed-width ids beyond this: the dict fallback

    def __init__(self, ids: pa.Array | pa.ChunkedArray):
        values = ids.to_pylist()
        self.size = len(values)
        self._dict: dict[str, int] | None = None
        self.words = _fixed_width(values, self.MAX_ID_BYTES)
        if self.words is None or self.size >= 2**32 - 1:
            self._dict = dict(zip(values, itertools.count()))
            return
        self.width = self.words.shape[1] * 8
        self._rows_as_one = np.dtype((np.void, self.width))  # compare a whole id in one step
        hashes = _hash_words(self.words)
        buckets = 1 << max(1, int(math.ceil(2 * max(self.size, 1) / self.BUCKET) - 1).bit_length())  # load <= 1/2
        self.mask = np.uint64(buckets - 1)
        self.table = np.zeros((buckets, 2 * self.BUCKET), np.uint32)  # fingerprints | row + 1 (0: empty)
        fingerprints = _fingerprints(hashes)
        filled = np.zeros(buckets, np.int64)
        pending = np.arange(self.size)
        target = (hashes & self.mask).astype(np.int64)
        while pending.size:  # fill each bucket in order; what does not fit moves to the next bucket
            pending = pending[np.argsort(target[pending], kind="stable")]
            bucket = target[pending]
            slot = filled[bucket] + np.arange(len(bucket)) - np.searchsorted(bucket, bucket, side="left")
            fits = slot < self.BUCKET
            self.table[bucket[fits], slot[fits]] = fingerprints[pending[fits]]
            self.table[bucket[fits], self.BUCKET + slot[fits]] = pending[fits] + 1
            filled += np.bincount(bucket[fits], minlength=buckets)
            pending = pending[~fits]
            target[pending] = (target[pending] + 1) & int(self.mask)

    def rows(self, ids: list) -> np.ndarray:
        """Row positions of ``ids`` (-1 where unknown). Non-string ids count as ``str(id)``."""
        try:
            has_nul = "\x00" in "".join(ids)
        except TypeError:
            ids = [i if isinstance(i, str) else str(i) for i in ids]
            has_nul = "\x00" in "".join(ids)
        if self._dict is not None:
            return np.fromiter(map(self._dict.get, ids, itertools.repeat(-1)), np.int64, len(ids))
        query = _fixed_width(ids, None, width=self.width + 8)  # one word more: longer ids cannot match
        result = np.full(len(ids), -1, np.int64)
        # Stored ids hold no NUL (else the dict is used), and a trailing NUL would vanish in the
        # padding: ids with one are simply unknown.
        usable = query[:, -1] == 0
        if has_nul:
            usable &= np.fromiter(("\x00" not in i for i in ids), bool, len(ids))
        pending = np.flatnonzero(usable)
        query = query[:, :-1]
        hashes = _hash_words(query)
        bucket = (hashes & self.mask).astype(np.int64)
        fingerprint = _fingerprints(hashes)
        stored = self.words.view(self._rows_as_one).reshape(-1)
        asked = np.ascontiguousarray(query).view(self._rows_as_one).reshape(-1)
        B = self.BUCKET
        while pending.size:
            lines = self.table[bucket[pending]]
            match = lines[:, :B] == fingerprint[pending, None]  # empty slots hold fingerprint 0
            first = match.argmax(axis=1)
            at = np.arange(len(pending))
            candidate = match[at, first]
            row = lines.reshape(-1)[at * (2 * B) + B + first].astype(np.int64) - 1
            same = np.zeros(len(pending), bool)
            same[candidate] = stored[row[candidate]] == asked[pending[candidate]]
            result[pending[same]] = row[same]
            # a fingerprint shared by two ids of one bucket: settle those few exactly
            for i in pending[candidate & ~same]:
                result[i] = self._exact(query[i])
            # a miss in a full bucket may have overflowed to the next one (rare at load 1/2)
            pending = pending[~candidate & (lines[:, -1] != 0)]
            bucket[pending] = (bucket[pending] + 1) & int(self.mask)
        return result

    def _exact(self, words: np.ndarray) -> int:
        """Slow and sure: scan the stored ids (only for fingerprint collisions, ~never)."""
        hit = np.flatnonzero((self.words == words).all(axis=1))
        return int(hit[0]) if hit.size else -1

    @property
    def nbytes(self) -> int:
        if self._dict is not None:
            return self.size * 120  # a dict entry with its key object, roughly
        return self.words.nbytes + self.table.nbytes


_K = np.uint64(0x9E3779B97F4A7C15)


def _fingerprints(hashes: np.ndarray) -> np.ndarray:
    """The hash's high 32 bits (the bucket comes from the low ones), never 0: 0 marks an empty slot."""
    return (hashes >> np.uint64(32)).astype(np.uint32) | np.uint32(1)


def _hash_words(words: np.ndarray) -> np.ndarray:
    """64-bit hash of each row of 64-bit words, finished with MurmurHash3's mixer so that
    every input bit reaches the bits the table uses."""
    with np.errstate(over="ignore"):
        h = words[:, 0] * _K
        for column in range(1, words.shape[1]):
            h = (h ^ (h >> np.uint64(29)) ^ words[:, column]) * _K
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return h


def _fixed_width(ids: list[str], max_bytes: int | None, width: int | None = None) -> np.ndarray | None:
    """UTF-8 ids as zero-padded 64-bit words [n, width/8]. When sizing a new table (no
    ``width``): None if an id holds a NUL byte (it would be indistinguishable from padding) or
    the matrix would exceed ``max_bytes``."""
    dtype = f"S{width}" if width else "S"  # a query is cut to width: its extra word stays nonzero
    try:
        encoded = np.array(ids, dtype=dtype)  # ASCII, in C: the common case
    except UnicodeEncodeError:
        encoded = np.array([str(i).encode() for i in ids], dtype=dtype)
    if width is None:
        width = max(8, -(-encoded.dtype.itemsize // 8) * 8)
        if max_bytes is not None and width * len(ids) > max_bytes:
            return None
        if "\x00" in "".join(ids):
            return None
        encoded = encoded.astype(f"S{width}")
    return encoded.reshape(-1).view(np.uint64).reshape(len(ids), width // 8)


@dataclass
class CachedTable:
    index: IdIndex
    values: np.ndarray | None  # [rows, ...] in the stored dtype; None: take rows from Lance

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + (self.values.nbytes if self.values is not None else 0)


class TableCache:
    """A least-recently-used cache of CachedTable, bounded by bytes. One per reader."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, CachedTable] = OrderedDict()

    def get(self, key: Hashable, load: Callable[[int], CachedTable]) -> CachedTable:
        """The entry for ``key``; ``load(budget)`` builds it, holding values only if they fit."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        entry = load(self.max_bytes)
        self._entries[key] = entry
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)
        return entry

    def peek(self, key: Hashable) -> CachedTable | None:
        """The entry for ``key`` if it is cached (nothing is loaded)."""
        return self._entries.get(key)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()


def load_table(dataset, value_column: str, budget: int) -> CachedTable:
    """Read a pinned table's ids (and its values, if they fit in ``budget``) once."""
    ids = dataset.to_table(columns=["item_id"]).column("item_id")
    index = IdIndex(ids)
    value_type = dataset.schema.field(value_column).type
    if not pa.types.is_fixed_size_list(value_type):  # captions, per-image lists: one object per row
        values = dataset.to_table(columns=[value_column]).column(value_column).to_pylist()
        objects = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):
            objects[i] = value
        return CachedTable(index, objects)
    row_bytes = value_type.list_size * value_type.value_type.bit_width // 8
    if budget <= 0 or index.nbytes + row_bytes * index.size > budget:
        return CachedTable(index, None)
    column = dataset.to_table(columns=[value_column]).column(value_column).combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, value_type.list_size)
    return CachedTable(index, values)
