"""The id -> row table behind fast lookups, including its rare paths (forced here)."""

import itertools

import numpy as np
import pyarrow as pa
import pytest

from itemlens.store import cache
from itemlens.store.cache import IdIndex

TRICKY = ["", "a", "ab", "ba", "é", "ü-1", "x" * 5000, "item-1", "item-01", "itém-1", "12", "😀", "a b"]


def _check(ids: list[str], queries: list) -> None:
    index = IdIndex(pa.array(ids, pa.string()))
    truth = dict(zip(ids, itertools.count()))
    expected = [truth.get(q if isinstance(q, str) else str(q), -1) for q in queries]
    assert index.rows(queries).tolist() == expected


def test_every_stored_id_is_found_and_nothing_else():
    ids = TRICKY + [f"id{i}" for i in range(50_000)]
    queries = ids[::-1] + ["nope", "a\x00", "x" * 5001, "ITEM-1", "id50000", 12, "", "😀"]
    _check(ids, queries)
    _check(["only"], ["only", "x", "onl", "only1", ""])
    _check([], ["x"])


def test_ids_with_nul_bytes_use_the_dict():
    index = IdIndex(pa.array(["a\x00", "a", "b"]))
    assert index._dict is not None
    assert index.rows(["a", "a\x00", "b", "c"]).tolist() == [1, 0, 2, -1]


def test_overflowing_buckets_and_shared_fingerprints(monkeypatch):
    # every id in one bucket, with one fingerprint: all of the table's slow paths at once
    monkeypatch.setattr(cache, "_hash_words", lambda words: np.zeros(len(words), np.uint64))
    ids = [f"id{i}" for i in range(100)]
    _check(ids, ids + ["id100", "x"])


def test_random_lookups_agree_with_a_dict():
    rng = np.random.default_rng(0)
    ids = [f"sku-{v}" for v in rng.integers(0, 10**12, 20_000)]
    ids = list(dict.fromkeys(ids))
    queries = [ids[i] for i in rng.integers(0, len(ids), 5000)] + [f"sku-{v}" for v in rng.integers(0, 10**12, 200)]
    _check(ids, queries)


@pytest.mark.parametrize("size", [1, 7, 8, 9, 1000])
def test_small_tables(size):
    ids = [str(i) for i in range(size)]
    _check(ids, ids + [str(size)])
