"""The client at training speed: exact lookups, return types, DataLoader workers, captions,
vector indexes, pins and pruning, exports, and readers beside a writer. No Ray needed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import itemlens
from itemlens.errors import ConfigError, SnapshotNotFoundError, StoreError, UnknownItemsError
from itemlens.store.writer import StoreWriter


@pytest.fixture
def store(tmp_path):
    uri = tmp_path / "lens"
    StoreWriter.open(uri).close()
    return uri


def _unit(n: int, dim: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_vectors_are_exact_for_1_1000_and_100000_ids(store, dtype):
    n = 100_000
    ids = [f"sku-{i:06d}" for i in range(n)]
    values = _unit(n, 16, dtype=dtype)
    lens = itemlens.connect(store)
    lens.put_vectors("emb", ids, values, spec={"model": "m"})
    reader = itemlens.connect(store)
    rng = np.random.default_rng(1)
    for size in (1, 1000, 100_000):
        pick = rng.integers(0, n, size=size)  # duplicates included at these sizes
        got = reader.vectors("emb", [ids[i] for i in pick])
        assert got.dtype == dtype and np.array_equal(got, values[pick])
    # the same through Lance row takes, when the table does not fit the cache
    small = itemlens.connect(store, cache_bytes=1024)
    pick = rng.integers(0, n, size=1000)
    assert np.array_equal(small.vectors("emb", [ids[i] for i in pick]), values[pick])


def test_unknown_ids_and_return_types(store):
    import pandas as pd
    import pyarrow as pa
    import torch

    lens = itemlens.connect(store)
    values = _unit(3, 4)
    lens.put_vectors("emb", ["a", "b", "c"], values, spec={"model": "m"})
    with pytest.raises(UnknownItemsError) as info:
        lens.vectors("emb", ["a", "x", "y", "x"])
    assert info.value.missing == ["x", "y"]
    masked = lens.vectors("emb", ["x", "b"], fill=np.nan)
    assert np.isnan(masked[0]).all() and np.array_equal(masked[1], values[1])
    assert torch.equal(lens.vectors("emb", ["c", "a"], output="torch"), torch.from_numpy(values[[2, 0]]))
    table = lens.vectors("emb", ["b"], output="arrow")
    assert isinstance(table, pa.Table) and table.column("item_id").to_pylist() == ["b"]
    frame = lens.vectors("emb", ["c", "b"], output="pandas")
    assert isinstance(frame, pd.DataFrame) and list(frame.index) == ["c", "b"]
    assert np.array_equal(np.stack(frame["vector"].to_numpy()), values[[2, 1]])
    with pytest.raises(ConfigError, match="output"):
        lens.vectors("emb", ["a"], output="list")
    # what vectors() returns is a query as it is: a tensor row, a list of numpy floats
    row = lens.vectors("emb", ["b"], output="torch")[0]
    assert lens.search("emb", row, k=1)[0].item_id == "b"
    assert lens.search("emb", list(values[2]), k=1)[0].item_id == "c"
    with pytest.raises(ConfigError, match="k must be a whole number of at least 1, not 0"):
        lens.search("emb", values[0], k=0)
    lens.put_captions("cap", ["a"], ["a red lamp"])
    with pytest.raises(ConfigError, match="cap@v1 holds captions, not vectors"):
        lens.search("cap", "lamp")


def test_a_put_spec_must_be_plain_json_before_anything_is_written(store):
    import lance

    lens = itemlens.connect(store)
    before = lens.snapshot
    with pytest.raises(ConfigError, match="spec of 'emb' must be plain JSON"):
        lens.put_vectors("emb", ["a"], _unit(1, 4), spec={"run": np.int64(42)})
    with pytest.raises(ConfigError, match="spec of 'emb' must be plain JSON"):
        lens.put_vectors("emb", ["a"], _unit(1, 4), spec={"nan": float("nan")})
    assert itemlens.connect(store).snapshot == before
    assert lance.dataset(str(store / "items.lance")).count_rows() == 0  # no id registered either
    # refused inputs register no id either: a bad name, missing ids or captions, overflow
    with pytest.raises(StoreError, match="feature name 'my-emb' is not allowed"):
        lens.put_vectors("my-emb", ["ghost"], _unit(1, 4))
    with pytest.raises(itemlens.InputError, match="1 ids are missing"):  # an ItemlensError, and a ValueError
        lens.put_vectors("emb", ["a", None], _unit(2, 4))
    with pytest.raises(ValueError, match="1 ids are missing"):
        lens.put_vectors("emb", np.array(["a", np.nan], dtype=object), _unit(2, 4))
    with pytest.raises(ValueError, match="1 captions are missing"):
        lens.put_captions("cap", ["a", "b"], ["a red lamp", None])
    with pytest.raises(ValueError, match=r"NaN or infinite values \(as float32"):
        lens.put_vectors("emb", ["a"], np.array([[1e39, 1.0, 1.0, 1.0]]))  # float64 beyond float32
    assert lance.dataset(str(store / "items.lance")).count_rows() == 0
    lens.put_vectors("emb", ["a"], _unit(1, 4), spec={"model": "m", "run": 42})
    assert [(f.name, f.model) for f in itemlens.connect(store).features()] == [("emb", "m")]
    lens.put_vectors("emb", ["a", "b", "c"], _unit(3, 4), spec={"model": "m", "run": 42})
    assert [s["items"] for s in lens.snapshots()] == [1, 3]  # the items each snapshot knows


class _Rows:
    def __init__(self, lens, ids):
        self.lens, self.ids = lens, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.lens.vectors("emb", [self.ids[i]])[0]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_reads_through_a_dataloader_with_two_workers(store, context):
    import torch

    ids = [f"i{i}" for i in range(64)]
    values = _unit(64, 8)
    lens = itemlens.connect(store)
    lens.put_vectors("emb", ids, values, spec={"model": "m"})
    lens.vectors("emb", ids[:2])  # the parent has its cache and Lance handles open
    loader = torch.utils.data.DataLoader(_Rows(lens, ids), batch_size=8, num_workers=2, multiprocessing_context=context)
    got = torch.cat(list(loader)).numpy()
    assert np.array_equal(got, values)


def test_captions(store):
    lens = itemlens.connect(store)
    lens.put_captions(
        "caption",
        ["a", "b"],
        ["a grey yoga bag", "an LED bulb"],
        spec={"model": "llava-tiny", "prompt": "Describe the product."},
    )
    assert lens.captions("caption", ["b", "a", "b"]) == ["an LED bulb", "a grey yoga bag", "an LED bulb"]
    assert lens.captions("caption", ["zz"], fill="") == [""]
    with pytest.raises(UnknownItemsError, match=r"have no 'caption@v1' caption in this snapshot: 'zz'; pass fill"):
        lens.captions("caption", ["zz"])
    table = lens.captions("caption", ["a"], output="arrow")
    assert table.column("model").to_pylist() == ["llava-tiny"]
    with pytest.raises(ConfigError, match="captions"):
        lens.vectors("caption", ["a"])
    assert [f.kind for f in lens.features()] == ["caption"]


def test_an_index_finds_the_same_top1_as_exact_search(store):
    n = 20_000
    ids = [f"i{i}" for i in range(n)]
    values = _unit(n, 32)
    lens = itemlens.connect(store)
    lens.put_vectors("emb", ids, values, spec={"model": "m"})
    info = lens.create_index("emb", kind="IVF_PQ")
    assert info["kind"] == "IVF_PQ" and info["params"] == {"num_partitions": round(n**0.5), "num_sub_vectors": 4}
    assert 0.0 < info["recall_at_10"] <= 1.0
    assert lens.features()[0].index["recall_at_10"] == info["recall_at_10"]
    for i in np.random.default_rng(2).choice(n, 50, replace=False):
        approx = lens.search("emb", values[i], k=1)[0]
        exact = lens.search("emb", values[i], k=1, exact=True)[0]
        assert approx.item_id == exact.item_id == ids[i]
    # a later write folds new rows into the index and measures recall again
    lens.put_vectors("emb", ["new"], _unit(1, 32, seed=9), spec={"model": "m"})
    assert lens.features()[0].index["rows"] == n + 1
    assert lens.search("emb", _unit(1, 32, seed=9)[0], k=1)[0].item_id == "new"


@pytest.mark.parametrize("kind", ["IVF_PQ", "IVF_HNSW_SQ"])
def test_scores_through_an_index_are_the_cosines_of_an_exact_search(store, kind):
    """An index's own distance is not always a cosine distance (IVF_HNSW_SQ's is an L2 of
    quantized vectors): what a search through it returns must still be the stored cosines."""
    n = 500
    values = np.random.default_rng(0).normal(size=(n, 32)).astype(np.float32)
    lens = itemlens.connect(store)
    lens.put_vectors("emb", [f"i{i}" for i in range(n)], values)
    lens.create_index("emb", kind=kind)
    unit = values / np.linalg.norm(values, axis=1, keepdims=True)
    for query in np.random.default_rng(1).normal(size=(5, 32)):
        cosines = unit @ (query / np.linalg.norm(query))
        for hit in lens.search("emb", query, k=5):
            assert hit.score == pytest.approx(cosines[int(hit.item_id[1:])], abs=1e-5), hit


def test_an_index_on_an_older_version_is_in_the_table_version_the_snapshot_names(store):
    n = 2_000
    ids = [f"i{i}" for i in range(n)]
    lens = itemlens.connect(store)
    lens.put_vectors("emb", ids, _unit(n, 16), spec={"model": "m1"})
    lens.put_vectors("emb", ids[:10], _unit(10, 8), spec={"model": "m2"})  # emb@v2, now current
    info = lens.create_index("emb@v1", kind="IVF_PQ")
    reader = itemlens.connect(store)
    v1 = next(f for f in reader.features() if f.version == "v1")
    assert not v1.current and v1.index["recall_at_10"] == info["recall_at_10"]
    table = reader.doc.features["emb"].versions["v1"].table
    assert "vector_idx" in [i.name for i in reader._dataset(table).describe_indices()]  # in the version named
    assert next(f for f in reader.features() if f.version == "v2").current


def test_recall_of_a_table_smaller_than_k_counts_what_there_is_to_find(tmp_path):
    import lance
    import pyarrow as pa

    from itemlens.store.indexes import recall_at_k

    vectors = pa.FixedSizeListArray.from_arrays(pa.array(_unit(5, 4).reshape(-1)), 4)
    table = lance.write_dataset(pa.table({"item_id": list("abcde"), "vector": vectors}), tmp_path / "t.lance")
    assert recall_at_k(table, "IVF_PQ", k=10) == 1.0  # no index: exact both ways, all 5 found


def test_pins_survive_writes_and_pruning(store):
    lens = itemlens.connect(store)
    for generation in range(1, 5):  # snapshots 1..4, every value rewritten each time
        lens.put_vectors("emb", ["a", "b"], np.full((2, 4), generation, np.float32), spec={"model": "m"})
    with StoreWriter.open(store) as writer:
        writer.pin(2)
    assert [s["snapshot_id"] for s in lens.snapshots() if s["pinned"]] == [2]
    with StoreWriter.open(store) as writer:
        report = writer.prune(keep=1)
    assert report["kept"] == [2, 4] and report["dropped"] == [1, 3] and report["versions_deleted"] > 0
    assert itemlens.connect(store, snapshot=2).vectors("emb", ["a"])[0, 0] == 2
    assert itemlens.connect(store).vectors("emb", ["b"])[0, 0] == 4
    with pytest.raises(SnapshotNotFoundError, match="no snapshot 3"):
        itemlens.connect(store, snapshot=3)
    with StoreWriter.open(store) as writer:
        writer.unpin(2)
        assert writer.prune(keep=1)["dropped"] == [2]
    with pytest.raises(SnapshotNotFoundError):
        itemlens.connect(store, snapshot=2)


def test_pinned_snapshot_in_another_process_after_later_writes(store):
    lens = itemlens.connect(store)
    lens.put_vectors("emb", ["a"], np.ones((1, 4), np.float32), spec={"model": "m"})
    lens.put_vectors("emb", ["a"], np.zeros((1, 4), np.float32), spec={"model": "m"})
    code = f"import itemlens; print(itemlens.connect({str(store)!r}, snapshot=1).vectors('emb', ['a']).sum())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) == 4.0


def test_exports_align_to_the_item_index_or_to_given_ids(store, tmp_path):
    import pandas as pd

    lens = itemlens.connect(store)
    image, text = _unit(3, 4, seed=1), _unit(2, 6, seed=2)
    lens.put_vectors("image", ["c", "a", "b"], image, spec={"model": "clip"})  # item_index c=0, a=1, b=2
    lens.put_vectors("text", ["a", "b"], text, spec={"model": "st"})

    # MMRec's row order is its whole contract: refused without one, the store's when asked for;
    # c has no text: refused unless a fill is asked for, then filled and flagged
    with pytest.raises(ConfigError, match="give the order of your data"):
        lens.export("mmrec", tmp_path / "mmrec")
    with pytest.raises(ConfigError, match=r"text@v1 has no vector for 1 of 3 rows: 'c'"):
        lens.export("mmrec", tmp_path / "mmrec", store_order=True)
    report = lens.export("mmrec", tmp_path / "mmrec", store_order=True, fill=0.0)
    assert set(report.files) >= {"image_feat.npy", "text_feat.npy", "i_id_mapping.csv", "export.json"}
    mapping = pd.read_csv(tmp_path / "mmrec" / "i_id_mapping.csv", sep="\t")
    assert mapping["asin"].tolist() == ["c", "a", "b"] and mapping["itemID"].tolist() == [0, 1, 2]
    assert np.array_equal(np.load(tmp_path / "mmrec" / "image_feat.npy"), image)
    text_feat = np.load(tmp_path / "mmrec" / "text_feat.npy")
    assert np.array_equal(text_feat[1:], text) and not text_feat[0].any()  # c has no text: filled with 0
    assert np.load(tmp_path / "mmrec" / "text_mask.npy").tolist() == [False, True, True]
    assert report.present == {"image": 3, "text": 2} and report.filled == {"image": 0, "text": 1}
    manifest = json.loads((tmp_path / "mmrec" / "export.json").read_text())["exports"]["mmrec"]
    assert manifest["artifacts"]["text"]["filled"] == 1 and manifest["snapshot"] == 2 and manifest["fill"] == 0

    lens.export("npz", tmp_path / "npz", ids=["b", "zz", "a"], fill=np.nan)
    archive = np.load(tmp_path / "npz" / "features.npz")
    assert archive["item_id"].tolist() == ["b", "zz", "a"] and archive["item_index"].tolist() == [2, -1, 1]
    assert np.isnan(archive["image"][1]).all() and archive["image_mask"].tolist() == [True, False, True]

    lens.export("parquet", tmp_path / "pq", features=["text"])
    frame = pd.read_parquet(tmp_path / "pq" / "items.parquet")
    assert frame["item_id"].tolist() == ["c", "a", "b"] and frame["text_present"].tolist() == [False, True, True]
    assert frame["text"][0] is None and np.allclose(np.stack(frame["text"][1:].to_numpy()), text)
    with pytest.raises(ConfigError, match="unknown export format 'hdf5'"):
        lens.export("hdf5", tmp_path / "x")


def test_many_readers_never_see_a_half_written_snapshot(store, tmp_path):
    ids = [f"i{i}" for i in range(2000)]
    lens = itemlens.connect(store)
    lens.put_vectors("emb", ids, np.zeros((2000, 8), np.float32), spec={"model": "m"})
    reader = textwrap.dedent(f"""
        import sys, time, numpy as np, itemlens
        ids = [f"i{{i}}" for i in range(2000)]
        seen, deadline = set(), time.monotonic() + float(sys.argv[1])
        while time.monotonic() < deadline:
            lens = itemlens.connect({str(store)!r})
            values = lens.vectors("emb", ids)
            generations = set(np.unique(values).tolist())
            assert len(generations) == 1, (lens.snapshot, generations)   # one generation per snapshot
            assert generations == {{lens.snapshot - 1}}
            seen.add(lens.snapshot)
        print(len(seen))
    """)
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", reader, "12"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    time.sleep(1.5)
    for generation in range(1, 7):
        lens.put_vectors("emb", ids, np.full((2000, 8), generation, np.float32), spec={"model": "m"})
    for proc in readers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert int(out) >= 2  # each reader saw snapshots change under it


def test_command_line_snapshots_pin_prune_index_export(store, tmp_path):
    lens = itemlens.connect(store)
    for generation in range(3):
        lens.put_vectors("text", [f"i{i}" for i in range(300)], _unit(300, 16, seed=generation), spec={"model": "m"})

    def cli(*args):
        run = subprocess.run([sys.executable, "-m", "itemlens.workflows.cli", *args], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout

    assert "snapshot 1 pinned" in cli("pin", str(store), "1")
    assert "snapshot 2 was not pinned" in cli("unpin", str(store), "2")
    listing = cli("snapshots", str(store))
    assert listing.splitlines()[0].startswith("*    1") and "    3" in listing
    assert "kept snapshots [1, 3]" in cli("prune", str(store), "--keep", "1")
    assert "recall@10 against exact search" in cli("index", str(store), "text", "--num-partitions", "4")
    shown = cli("show", str(store))
    assert "index: IVF_PQ" in shown and "recall@10" in shown
    (tmp_path / "ids.txt").write_text("i5\nnot-there\ni1\n")
    out = cli(
        "export",
        str(store),
        "--format",
        "npz",
        "--out",
        str(tmp_path / "x"),
        "--ids",
        str(tmp_path / "ids.txt"),
        "--fill",
        "nan",
    )
    assert "features.npz" in out
    archive = np.load(tmp_path / "x" / "features.npz")
    assert archive["item_id"].tolist() == ["i5", "not-there", "i1"] and np.isnan(archive["text"][1]).all()


def test_command_line_arguments_that_cannot_work_are_one_message_with_exit_2(store, tmp_path, capsys):
    from itemlens.workflows.cli import main

    itemlens.connect(store).put_vectors("emb", [f"i{i}" for i in range(40)], _unit(40, 8), spec={"model": "m"})
    taken = tmp_path / "taken.txt"
    taken.write_text("a file, not a folder")
    for args, message in (
        (["index", str(store), "emb", "--num-sub-vectors", "3"], "num_sub_vectors 3 must divide the vectors' 8"),
        (["export", str(store), "--format", "npz", "--out", str(taken)], "taken.txt"),
        (["export", str(store), "--format", "npz", "--out", str(tmp_path / "x"), "--ids", str(tmp_path)], "Is a dir"),
    ):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("itemlens: error:") and message in err and "Traceback" not in err, (args, err)
    for args in (
        ["diff", str(store), "emb", "emb", "--sample", "-3"],
        ["diff", str(store), "emb", "emb", "--sample", "0"],
        ["browse", str(store), "--port", "99999"],
        ["prune", str(store), "--keep", "0"],
    ):
        with pytest.raises(SystemExit) as info:  # argparse's usage error
            main(args)
        assert info.value.code == 2 and "out of range" in capsys.readouterr().err, args
