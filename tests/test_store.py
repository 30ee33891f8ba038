"""The store and its client, without Ray: snapshots, lookups, versions, the writer lock, format."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import itemlens
from itemlens.errors import (
    SnapshotNotFoundError,
    StoreError,
    StoreFormatError,
    StoreLockedError,
    StoreNotFoundError,
    UnknownFeatureError,
    UnknownItemsError,
)
from itemlens.store.layout import FORMAT_VERSION
from itemlens.store.writer import StoreWriter


@pytest.fixture
def store(tmp_path):
    uri = tmp_path / "lens"
    StoreWriter.open(uri).close()
    return uri


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_vectors_come_back_exactly_in_the_order_asked(store):
    lens = itemlens.connect(store)
    ids = [f"item-{i}" for i in range(1000)]
    values = _vectors(1000)
    assert lens.put_vectors("emb", ids, values, spec={"model": "two-tower", "version": 3}) == 1
    rng = np.random.default_rng(1)
    for n in (1, 17, 1000):
        pick = rng.integers(0, 1000, size=n)
        asked = [ids[i] for i in pick]
        assert np.array_equal(lens.vectors("emb", asked), values[pick])
    dup = ["item-5", "item-5", "item-0", "item-5"]
    assert np.array_equal(lens.vectors("emb", dup), values[[5, 5, 0, 5]])
    assert lens.vectors("emb", []).shape == (0, 8)


def test_unknown_ids_raise_naming_them_unless_a_fill_is_given(store):
    lens = itemlens.connect(store)
    lens.put_vectors("emb", ["a", "b"], _vectors(2), spec={"model": "m"})
    with pytest.raises(KeyError) as info:
        lens.vectors("emb", ["a", "zz", "yy", "zz"])
    assert isinstance(info.value, UnknownItemsError)
    assert info.value.missing == ["zz", "yy"] and "'zz'" in str(info.value)
    filled = lens.vectors("emb", ["zz", "a"], fill=np.nan)
    assert np.isnan(filled[0]).all() and np.array_equal(filled[1], _vectors(2)[0])
    with pytest.raises(UnknownFeatureError, match="no feature 'nope'.*emb@v1"):
        lens.vectors("nope", ["a"])


def test_a_pinned_snapshot_keeps_its_values_after_later_writes(store):
    first = itemlens.connect(store)
    first.put_vectors("emb", ["a", "b"], _vectors(2, seed=1), spec={"model": "m"})
    pinned = itemlens.connect(store, snapshot=1)
    latest = itemlens.connect(store)
    latest.put_vectors("emb", ["a", "c"], _vectors(2, seed=2), spec={"model": "m"})
    assert latest.snapshot == 2
    assert np.array_equal(pinned.vectors("emb", ["a"]), _vectors(2, seed=1)[:1])
    assert np.array_equal(
        latest.vectors("emb", ["a", "b", "c"]),
        np.vstack([_vectors(2, seed=2)[0], _vectors(2, seed=1)[1], _vectors(2, seed=2)[1]]),
    )
    with pytest.raises(KeyError):
        pinned.vectors("emb", ["c"])
    stale = itemlens.connect(store, snapshot=1)
    assert stale.refresh() == 2 and stale.vectors("emb", ["c"]).shape == (1, 8)
    assert [s["snapshot_id"] for s in latest.snapshots()] == [1, 2]
    with pytest.raises(SnapshotNotFoundError, match="no snapshot 7"):
        itemlens.connect(store, snapshot=7)


def test_a_new_spec_makes_a_new_version_and_the_old_stays_readable(store):
    lens = itemlens.connect(store)
    lens.put_vectors("emb", ["a", "b"], _vectors(2, seed=1), spec={"model": "m1"})
    lens.put_vectors("emb", ["a", "b"], _vectors(2, 4, seed=2), spec={"model": "m2"})
    infos = {f.qualified: f for f in lens.features()}
    assert set(infos) == {"emb@v1", "emb@v2"}
    assert infos["emb@v2"].current and not infos["emb@v1"].current
    assert lens.vectors("emb", ["a"]).shape == (1, 4)
    assert np.array_equal(lens.vectors("emb@v1", ["a"]), _vectors(2, seed=1)[:1])
    # back to the first spec: v1 is current again, no v3
    lens.put_vectors("emb", ["a"], _vectors(1, seed=3), spec={"model": "m1"})
    assert [f.qualified for f in lens.features() if f.current] == ["emb@v1"]


def test_item_indexes_are_stable_and_never_reused(store):
    lens = itemlens.connect(store)
    lens.put_vectors("emb", ["a", "b"], _vectors(2), spec={"model": "m"})
    lens.put_vectors("emb", ["c", "a"], _vectors(2), spec={"model": "m"})
    index = dict(zip(*lens.items().to_pydict().values()))
    assert index == {"a": 0, "b": 1, "c": 2}


def test_search_with_a_vector(store):
    lens = itemlens.connect(store)
    values = _vectors(50, 16)
    lens.put_vectors("emb", [str(i) for i in range(50)], values, spec={"model": "m"})
    hits = lens.search("emb", values[7], k=5)
    assert hits[0].item_id == "7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 5 and all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_bad_put_vectors_input_is_refused(store):
    lens = itemlens.connect(store)
    with pytest.raises(ValueError, match="unique"):
        lens.put_vectors("emb", ["a", "a"], _vectors(2), spec={})
    with pytest.raises(ValueError, match="NaN"):
        lens.put_vectors("emb", ["a"], np.full((1, 3), np.nan), spec={})
    with pytest.raises(ValueError, match=r"\[len\(ids\), dim\]"):
        lens.put_vectors("emb", ["a", "b"], _vectors(3), spec={})
    with pytest.raises(StoreError, match="feature name"):
        lens.put_vectors("bad name", ["a"], _vectors(1), spec={})
    assert lens.snapshot == 0


def test_not_a_store_and_unknown_format(tmp_path, store):
    with pytest.raises(StoreNotFoundError, match="no itemlens store"):
        itemlens.connect(tmp_path / "nothing-here")
    import lance
    import pyarrow as pa

    lance.write_dataset(
        pa.table({"key": ["format_version"], "value": ["99"]}), str(store / "meta.lance"), mode="overwrite"
    )
    with pytest.raises(StoreFormatError, match=f"format version 99.*reads format {FORMAT_VERSION} only"):
        itemlens.connect(store)
    with pytest.raises(StoreFormatError):
        StoreWriter.open(store)
    other = tmp_path / "plain-lancedb"
    import lancedb

    lancedb.connect(other).create_table("t", pa.table({"x": [1]}))
    with pytest.raises(StoreError, match="not an itemlens store"):
        StoreWriter.open(other)


def test_one_writer_at_a_time(store):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from itemlens.store.writer import StoreWriter
        w = StoreWriter.open({str(store)!r}, command="itemlens ingest held-by-test")
        print("locked", flush=True)
        time.sleep(float(sys.argv[1]))
        w.close()
        """),
            "3",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError) as info:
            StoreWriter.open(store)
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "held-by-test" in message and "--wait-for-lock" in message
        lens = itemlens.connect(store)  # readers are never blocked
        with pytest.raises(StoreLockedError, match="after waiting 0.5 s"):
            lens.put_vectors("emb", ["a"], _vectors(1), spec={}, lock_wait=0.5)
        start = time.monotonic()
        assert lens.put_vectors("emb", ["a"], _vectors(1), spec={}, lock_wait=30) == 1
        assert time.monotonic() - start < 30
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_writer_leaves_no_stale_lock(store):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from itemlens.store.writer import StoreWriter
        w = StoreWriter.open({str(store)!r})
        print("locked", flush=True)
        time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    StoreWriter.open(store).close()


def test_work_merged_by_a_job_that_died_before_publishing_is_published_next_time(store, monkeypatch):
    lens = itemlens.connect(store)
    lens.put_vectors("emb", ["a"], _vectors(1, seed=1), spec={"model": "m"})
    monkeypatch.setattr(StoreWriter, "publish", lambda self, **kw: (_ for _ in ()).throw(RuntimeError("died")))
    with pytest.raises(RuntimeError, match="died"):
        lens.put_vectors("emb", ["b"], _vectors(1, seed=2), spec={"model": "m"})
    monkeypatch.undo()
    assert itemlens.connect(store).snapshot == 1
    version = itemlens.connect(store).features()[0]
    with StoreWriter.open(store) as writer:  # a rerun that has nothing new to write itself
        writer.resolve_version("emb", version.fingerprint, version.spec, dtype="float32", pooling="mean")
        doc = writer.publish(catalog={}, report={})
    assert doc is not None and doc.snapshot_id == 2
    assert np.array_equal(itemlens.connect(store).vectors("emb", ["b"]), _vectors(1, seed=2))


def test_a_merge_left_by_a_dead_job_is_published_with_its_errors_by_any_next_writer(store):
    """A job merged feature X (item a now fails, b has a new value) and died before publishing;
    the next writer is a put of another feature. Its snapshot must name X's merged table beside
    the errors table that holds a's failure: a has an errors row and no value, b its new value."""
    import pyarrow as pa

    from itemlens.store import lance_io
    from itemlens.store.layout import staging_rows, staging_schema

    lens = itemlens.connect(store)
    lens.put_vectors("x", ["a", "b"], np.ones((2, 4), np.float32), spec={"m": 1})
    writer = StoreWriter.open(store)
    old = writer.base.feature_version("x")
    version = writer.resolve_version("x", old.fingerprint, old.spec, dtype="float32", pooling="mean")
    schema = staging_schema("float32", 4, "mean", "vector")
    rows = staging_rows(
        schema,
        pa.array(["a", "b"]),
        pa.FixedSizeListArray.from_arrays(pa.array(np.full(8, 2, np.float32)), 4),
        n_parts=np.ones(2, np.int32),
        input_hash=pa.array(["h1", "h2"]),
        fingerprint=version.fingerprint,
        run_id=writer.run_id,
        error_stage=pa.array(["decode", None]),
        error_reason=pa.array(["corrupt", None]),
    )
    writer.commit_staged(version, lance_io.write_fragments(rows, writer.staging_uri(version)), schema)
    writer.merge_staged(version)
    writer.close()  # died: nothing published
    lens.put_vectors("y", ["c"], np.ones((1, 4), np.float32))
    assert lens.ids("x") == ["b"] and [r["item_id"] for r in lens.errors("x").to_pylist()] == ["a"]
    assert np.array_equal(lens.vectors("x", ["b"]), np.full((1, 4), 2, np.float32))
    x = next(f for f in lens.features() if f.name == "x")
    assert (x.count, x.errors) == (1, 1)


def test_other_sizes_and_dtypes_make_new_versions(store):
    lens = itemlens.connect(store)
    lens.put_vectors("emb", ["a"], _vectors(1, dim=4), spec={"model": "m"})
    lens.put_vectors("emb", ["a"], _vectors(1, dim=8), spec={"model": "m"})
    lens.put_vectors("emb", ["a"], _vectors(1, dim=8).astype(np.float16), spec={"model": "m"})
    assert [(f.version, f.dim, f.dtype) for f in lens.features()] == [
        ("v1", 4, "float32"),
        ("v2", 8, "float32"),
        ("v3", 8, "float16"),
    ]
    assert lens.vectors("emb", ["a"]).dtype == np.float16
    assert lens.vectors("emb@v1", ["a"]).shape == (1, 4)


def test_feature_tables_index_item_ids(store):
    import lance

    lens = itemlens.connect(store)
    lens.put_vectors("emb", ["a", "b"], _vectors(2), spec={"model": "m"})
    table = lens.doc.feature_version("emb").table
    indices = lance.dataset(str(store / f"{table}.lance")).describe_indices()
    assert [list(i.field_names) for i in indices] == [["item_id"]]


def test_an_interrupted_store_creation_is_finished_and_errors_of_an_empty_store_are_empty(tmp_path):
    import lance
    import pyarrow as pa

    from itemlens.store.layout import ITEMS_SCHEMA

    uri = tmp_path / "half"
    lance.write_dataset(ITEMS_SCHEMA.empty_table(), str(uri / "items.lance"))  # died after the first table
    StoreWriter.open(uri).close()
    lens = itemlens.connect(uri)
    assert lens.snapshot == 0 and lens.errors().num_rows == 0
    assert lens.errors().schema.names == ["feature", "item_id", "stage", "reason", "at"]
    del pa


def test_staging_for_versions_no_longer_configured_is_dropped(store):
    import pyarrow as pa

    from itemlens.store import lance_io

    with StoreWriter.open(store) as writer:
        old = writer.resolve_version("emb", "0123456789abcdef", {"model": "old"}, dtype="float32", pooling="mean")
        keep = writer.resolve_version("txt", "fedcba9876543210", {"model": "new"}, dtype="float32", pooling="mean")
        for version in (old, keep):
            table = pa.table({"item_id": ["a"]})
            lance_io.commit_fragments(
                writer.staging_uri(version), lance_io.write_fragments(table, writer.staging_uri(version)), table.schema
            )
        assert writer.discard_other_staging([keep]) == ["emb__0123456789abcdef.lance"]
    assert sorted(p.name for p in (store / "_staging").iterdir()) == ["txt__fedcba9876543210.lance"]


def _stage_captions(writer, version, ids, tokens):
    import pyarrow as pa

    from itemlens.store import lance_io
    from itemlens.store.layout import staging_rows, staging_schema

    schema = staging_schema("float32", None, "mean", "caption")
    rows = staging_rows(
        schema,
        pa.array(ids, pa.string()),
        pa.array([f"caption of {i}" for i in ids]),
        n_parts=np.ones(len(ids), np.int32),
        input_hash=pa.array(ids, pa.string()),
        fingerprint=version.fingerprint,
        run_id=writer.run_id,
        vision_tokens=pa.array(tokens, pa.int32()),
        generated_tokens=pa.array([t // 10 for t in tokens], pa.int32()),
    )
    writer.commit_staged(version, lance_io.write_fragments(rows, writer.staging_uri(version)), schema)
    writer.merge_staged(version)


def test_a_captions_token_counts_reach_its_feature_table_old_tables_gain_the_columns(store):
    """The counts the captioner staged (vision tokens read, tokens generated) are stored with
    each caption; a caption table written before those columns existed gains them (null for its
    old rows) at its next merge instead of refusing it."""
    import lance

    with StoreWriter.open(store) as writer:
        writer.register_ids(["a", "b", "c"])
        version = writer.resolve_version(
            "caption", "f" * 16, {"model": "m"}, dtype="float32", pooling="mean", kind="caption", encoder={}
        )
        _stage_captions(writer, version, ["a", "b"], [256, 1024])
        table = writer.open_table(version.table)
        got = table.to_table(columns=["item_id", "vision_tokens", "generated_tokens"]).sort_by("item_id")
        assert got.to_pylist() == [
            {"item_id": "a", "vision_tokens": 256, "generated_tokens": 25},
            {"item_id": "b", "vision_tokens": 1024, "generated_tokens": 102},
        ]
        # a table of the earlier layout: no count columns
        table.drop_columns(["vision_tokens", "generated_tokens"])
        _stage_captions(writer, version, ["c"], [64])
        got = lance.dataset(writer._uri(version.table)).to_table().sort_by("item_id")
        assert got.column("item_id").to_pylist() == ["a", "b", "c"]
        assert got.column("vision_tokens").to_pylist() == [None, None, 64]
        assert got.column("caption").to_pylist() == ["caption of a", "caption of b", "caption of c"]
