"""Exports recommender code loads as is, and that cannot be silently misaligned.

The consumers' own code is restated here, not imported: MMRec (github.com/enoche/MMRec) loads
features with ``torch.from_numpy(np.load(f)).type(torch.FloatTensor)`` and builds its item graphs
with the functions copied below from src/models/freedom.py and src/utils/utils.py; GRID
(github.com/snap-research/GRID) reads its semantic-ID file with ``torch.load`` and numbers
collided items with ``deduplicate_rows_in_tensor`` (src/utils/tensor_utils.py). Test data are
made here, in the consumers' file formats (an MMRec .inter and i_id_mapping.csv written the way
MMRec's preprocessing/0rating2inter.ipynb writes them). No Ray.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import itemlens
from itemlens.errors import ConfigError
from itemlens.store import exports
from itemlens.store.semantic_ids import build as build_semantic_ids
from itemlens.store.writer import StoreWriter
from itemlens.workflows.cli import build_parser
from itemlens.workflows.cli import main as cli

N_STORE = 90


@pytest.fixture
def lens(tmp_path):
    """A store of 90 items (image 12-d float32, text 8-d float16) in item-index order item000 .. item089."""
    StoreWriter.open(tmp_path / "lens").close()
    lens = itemlens.connect(tmp_path / "lens")
    rng = np.random.default_rng(21)
    ids = [f"item{i:03d}" for i in range(N_STORE)]
    lens.put_vectors("image", ids, rng.normal(size=(N_STORE, 12)).astype(np.float32))
    lens.put_vectors("text", ids, rng.normal(size=(N_STORE, 8)).astype(np.float16))
    return lens


def write_mmrec_dataset(folder, item_ids, seed=0):
    """An MMRec dataset folder as its preprocessing writes it: interactions of raw ids re-indexed
    by first appearance (0rating2inter.ipynb: pd.unique, then u_id_mapping.csv and
    i_id_mapping.csv with columns asin, itemID), split labels in x_label."""
    rng = np.random.default_rng(seed)
    raw = pd.DataFrame(
        {
            "userID": rng.integers(0, 40, 600),
            "itemID": rng.choice(item_ids, 600),
            "rating": 5.0,
            "timestamp": np.arange(600),
        }
    )
    raw = pd.concat(
        [raw, pd.DataFrame({"userID": 0, "itemID": item_ids, "rating": 5.0, "timestamp": 1000})]
    )  # every item interacted with
    i_id_map = {k: i for i, k in enumerate(pd.unique(raw["itemID"]))}
    u_id_map = {k: i for i, k in enumerate(pd.unique(raw["userID"]))}
    raw["itemID"] = raw["itemID"].map(i_id_map)
    raw["userID"] = raw["userID"].map(u_id_map)
    raw["x_label"] = rng.integers(0, 3, len(raw))
    folder.mkdir(parents=True, exist_ok=True)
    raw[["userID", "itemID", "rating", "timestamp", "x_label"]].to_csv(folder / "data.inter", sep="\t", index=False)
    pd.DataFrame(list(i_id_map.items()), columns=["asin", "itemID"]).to_csv(
        folder / "i_id_mapping.csv", sep="\t", index=False
    )
    return folder / "data.inter", list(i_id_map)  # row i = itemID i


def mmrec_feat(path):
    """MMRec's feature loading (src/common/abstract_recommender.py lines 96-101)."""
    return torch.from_numpy(np.load(path, allow_pickle=True)).type(torch.FloatTensor)


# -- alignment: every way to get it wrong fails or aligns --------------------------------------


def test_an_ids_file_aligns_or_fails_whatever_its_shape(lens, tmp_path):
    wanted = ["item042", "item007", "item000", "item089"]
    expected = lens.vectors("image", wanted).astype(np.float32)

    def exported(folder):
        return np.load(folder / "image_feat.npy")

    # a header line is not an id: refused, naming it, and read as a header when named
    header = tmp_path / "header.txt"
    header.write_text("itemID\n" + "\n".join(wanted) + "\n")
    with pytest.raises(ConfigError, match=r"1 of 5 ids .* not in the store.*'itemID'.*--ids-column itemID"):
        lens.export("mmrec", tmp_path / "a", ids=header, features={"image": "image"})
    assert not (tmp_path / "a").exists()  # refused before anything is written
    lens.export("mmrec", tmp_path / "a", ids=header, ids_column="itemID", features={"image": "image"})
    assert np.array_equal(exported(tmp_path / "a"), expected)

    # MMRec's i_id_mapping.csv (asin<TAB>itemID), its lines not in itemID order: row i = itemID i
    mapping = tmp_path / "i_id_mapping.csv"
    mapping.write_text("asin\titemID\n" + "".join(f"{wanted[i]}\t{i}\n" for i in (2, 0, 3, 1)))
    report = lens.export("mmrec", tmp_path / "b", ids=mapping, features={"image": "image"})
    assert np.array_equal(exported(tmp_path / "b"), expected) and report.rows == 4
    assert "itemID of" in report.order and "i_id_mapping.csv" in report.order
    assert pd.read_csv(tmp_path / "b" / "i_id_mapping.csv", sep="\t").columns.tolist() == ["asin", "itemID"]
    mapping.write_text("asin\titemID\nitem042\t0\nitem007\t2\n")
    with pytest.raises(ConfigError, match=r"itemIDs must be 0 \.\. 1"):
        lens.export("mmrec", tmp_path / "c", ids=mapping)

    # a TSV of several columns: its id column by name, never a guess
    table = tmp_path / "items.tsv"
    table.write_text("title\tsku\tprice\n" + "".join(f"t{n}\t{i}\t{n}.5\n" for n, i in enumerate(wanted)))
    with pytest.raises(ConfigError, match=r"columns 'title', 'sku', 'price'.*--ids-column"):
        lens.export("mmrec", tmp_path / "d", ids=table)
    lens.export("mmrec", tmp_path / "d", ids=table, ids_column="sku", features={"image": "image"})
    assert np.array_equal(exported(tmp_path / "d"), expected)
    csv_file = tmp_path / "items.csv"
    csv_file.write_text("item_id,title\n" + "".join(f"{i},x\n" for i in wanted))
    lens.export("mmrec", tmp_path / "e", ids=csv_file, features={"image": "image"})  # item_id: the store's own
    assert np.array_equal(exported(tmp_path / "e"), expected)

    # unknown ids: an error with how many and which, unless a fill is asked for
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("item001\nnot-a-1\nitem002\nnot-a-2\n")
    with pytest.raises(ConfigError, match=r"2 of 4 ids .* not in the store \(snapshot 2\): 'not-a-1', 'not-a-2'"):
        lens.export("mmrec", tmp_path / "f", ids=unknown)
    report = lens.export("mmrec", tmp_path / "f", ids=unknown, fill=np.nan, features={"image": "image"})
    got = exported(tmp_path / "f")
    assert np.isnan(got[[1, 3]]).all() and np.array_equal(got[[0, 2]], lens.vectors("image", ["item001", "item002"]))
    assert report.present == {"image": 2} and report.filled == {"image": 2}
    assert np.load(tmp_path / "f" / "image_mask.npy").tolist() == [True, False, True, False]
    for fill, written in ((np.nan, "nan"), (np.inf, "inf")):  # strict JSON: no NaN or Infinity
        lens.export("npz", tmp_path / "g", ids=unknown, fill=fill, features={"image": "image"})
        manifest = (tmp_path / "g" / "export.json").read_text()
        assert json.loads(manifest, parse_constant=lambda c: pytest.fail(c))["exports"]["npz"]["fill"] == written
    lens.export("mmrec", tmp_path / "f", ids=wanted, features={"image": "image"})  # a new order, nothing filled
    assert not (tmp_path / "f" / "image_mask.npy").exists()  # the old mask went with its export
    assert np.array_equal(exported(tmp_path / "f"), expected)
    # an empty line would shift every row after it; a repeated id would be two rows of one item
    (tmp_path / "gap.txt").write_text("item001\n\nitem002\n")
    with pytest.raises(ConfigError, match="line 2 has no id"):
        lens.export("npz", tmp_path / "g", ids=tmp_path / "gap.txt")
    (tmp_path / "twice.txt").write_text("item001\nitem002\nitem001\n")
    with pytest.raises(ConfigError, match=r"'item001' \(2x\)"):
        lens.export("npz", tmp_path / "g", ids=tmp_path / "twice.txt")


def test_items_without_a_value_are_refused_or_filled_explicitly(lens, tmp_path):
    lens.put_vectors("audio", ["item003", "item004"], np.ones((2, 4), np.float32))
    ids = ["item004", "item005", "item003"]
    with pytest.raises(ConfigError, match=r"audio@v1 has no vector for 1 of 3 rows: 'item005'"):
        lens.export("npz", tmp_path / "a", ids=ids, features=["audio"])
    lens.export("npz", tmp_path / "a", ids=ids, features=["audio"], fill=0)
    archive = np.load(tmp_path / "a" / "features.npz")
    assert archive["audio_mask"].tolist() == [True, False, True] and not archive["audio"][1].any()
    manifest = json.loads((tmp_path / "a" / "export.json").read_text())["exports"]["npz"]
    assert manifest["artifacts"]["audio"]["filled"] == 1 and manifest["fill"] == 0
    # Parquet carries nulls, not fills: known items without a value need no fill there
    report = lens.export("parquet", tmp_path / "b", features=["audio"])
    frame = pd.read_parquet(tmp_path / "b" / "items.parquet")
    assert frame["audio_present"].sum() == 2 and frame["audio"].isna().sum() == N_STORE - 2
    assert report.filled == {"audio": N_STORE - 2} and report.order.startswith("the store's item index")
    assert report.absent == {"audio": 0}  # no item was recorded as lacking audio: these are just not stored


@pytest.mark.integration
def test_filled_rows_of_items_without_such_input_are_counted_as_absent(example_store, tmp_path):
    """The demo's two sound clips have no photo and its three products no sound: an export
    says so per artifact, apart from rows filled for other reasons."""
    lens = itemlens.connect(example_store["store"], snapshot=1)
    report = lens.export("parquet", tmp_path / "x", features=["image", "audio"])
    assert report.filled == {"image": 2, "audio": 3} and report.absent == {"image": 2, "audio": 3}
    assert "image: 3 present, 2 filled, 2 of them absent inputs" in report.summary()
    manifest = json.loads((tmp_path / "x" / "export.json").read_text())["exports"]["parquet"]
    assert manifest["artifacts"]["image"]["absent"] == 2


def test_mmrec_needs_an_order_roles_and_float32(lens, tmp_path):
    with pytest.raises(ConfigError, match=r"give the order of your data with --inter"):
        lens.export("mmrec", tmp_path / "x")
    report = lens.export("mmrec", tmp_path / "x", store_order=True)
    text = np.load(tmp_path / "x" / "text_feat.npy")
    assert text.dtype == np.float32 and np.array_equal(text, lens.vectors("text", lens.item_order()))
    assert report.files == ["image_feat.npy", "text_feat.npy", "i_id_mapping.csv", "export.json"]
    lens.export("mmrec", tmp_path / "half", store_order=True, dtype="float16")
    assert np.load(tmp_path / "half" / "text_feat.npy").dtype == np.float16
    # a feature's name is not MMRec's file: it gets a role, or the export is refused
    lens.put_vectors("text16", lens.item_order(), np.ones((N_STORE, 3), np.float32))
    with pytest.raises(ConfigError, match=r"would be ignored.*--feature text=text16"):
        lens.export("mmrec", tmp_path / "y", store_order=True, features=["image", "text16"])
    lens.export("mmrec", tmp_path / "y", store_order=True, features={"image": "image", "text": "text16"})
    assert np.load(tmp_path / "y" / "text_feat.npy").shape == (N_STORE, 3)
    # the same format in another order replaces the earlier export: no file keeps the old order
    reverse = lens.item_order()[::-1]
    report = lens.export("mmrec", tmp_path / "y", ids=reverse, features=["image"])
    assert not (tmp_path / "y" / "text_feat.npy").exists() and "text_feat.npy" in " ".join(report.notes)
    assert np.array_equal(np.load(tmp_path / "y" / "image_feat.npy"), lens.vectors("image", reverse))
    manifest = json.loads((tmp_path / "y" / "export.json").read_text())["exports"]["mmrec"]
    assert manifest["files"] == ["image_feat.npy", "i_id_mapping.csv"] and list(manifest["artifacts"]) == ["image"]
    lens.export("mmrec", tmp_path / "y", store_order=True, features={"image": "image", "text": "text16"})
    # two versions of one name, or a name the archive uses itself, would overwrite a column
    lens.put_vectors("text16", lens.item_order(), np.zeros((N_STORE, 3), np.float32), spec={"run": 2})
    with pytest.raises(ConfigError, match=r"text16@v1 and text16@v2 would both be exported as 'text16'"):
        lens.export("npz", tmp_path / "z", store_order=True, features=["text16@v1", "text16@v2"])
    lens.put_vectors("item_id", lens.item_order(), np.ones((N_STORE, 2), np.float32))
    with pytest.raises(ConfigError, match=r"would overwrite the export's own 'item_id' column"):
        lens.export("npz", tmp_path / "z", store_order=True, features=["item_id"])
    # one folder, one order: files of two orders would not line up
    with pytest.raises(ConfigError, match=r"holds a mmrec export aligned to another order"):
        lens.export("mmrec-adj", tmp_path / "y", ids=["item001", "item000"], model="mgcn", model_params={"knn_k": 1})
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "i_id_mapping.csv").write_text("asin\titemID\nitem009\t0\n")
    with pytest.raises(ConfigError, match=r"i_id_mapping.csv exists and maps other items"):
        lens.export("mmrec", tmp_path / "theirs", store_order=True)


def test_inter_aligns_rows_to_an_mmrec_itemid(lens, tmp_path):
    # the dataset covers 60 of the store's items, in an order of its own
    subset = [f"item{i:03d}" for i in np.random.default_rng(3).permutation(N_STORE)[:60]]
    inter, by_item_id = write_mmrec_dataset(tmp_path / "data" / "baby", subset)
    out = tmp_path / "export"
    report = lens.export("mmrec", out, inter=inter)
    frame = pd.read_csv(inter, sep="\t")
    assert report.rows == frame["itemID"].max() + 1 == 60  # MMRec's RecDataset.item_num
    image, text = mmrec_feat(out / "image_feat.npy"), mmrec_feat(out / "text_feat.npy")
    assert torch.equal(image, torch.from_numpy(lens.vectors("image", by_item_id)))
    assert torch.equal(text, torch.from_numpy(lens.vectors("text", by_item_id).astype(np.float32)))
    mapping = pd.read_csv(out / "i_id_mapping.csv", sep="\t")
    assert mapping["asin"].tolist() == by_item_id and mapping["itemID"].tolist() == list(range(60))
    assert "itemID of" in report.order and "via itemID of" in report.order
    # the same through the command line, which prints what it followed
    assert (
        cli(
            [
                "export",
                lens.uri,
                "--format",
                "mmrec",
                "--out",
                str(tmp_path / "cli"),
                "--inter",
                str(inter),
                "--feature",
                "text",
            ]
        )
        == 0
    )
    assert torch.equal(mmrec_feat(tmp_path / "cli" / "text_feat.npy"), text)
    # without its i_id_mapping.csv an MMRec .inter says nothing about which item an itemID is
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "data.inter").write_text(inter.read_text())
    with pytest.raises(ConfigError, match=r"itemIDs are row indexes .* there is none beside it.*--ids"):
        lens.export("mmrec", tmp_path / "x", inter=alone / "data.inter")
    lens.export("mmrec", tmp_path / "x", inter=alone / "data.inter", ids=inter.parent / "i_id_mapping.csv")
    assert torch.equal(mmrec_feat(tmp_path / "x" / "text_feat.npy"), text)


def test_inter_of_recbole_and_of_any_table(lens, tmp_path):
    recbole = tmp_path / "ml.inter"
    recbole.write_text(
        "user_id:token\titem_id:token\trating:float\n1\titem005\t3\n2\titem001\t4\n1\titem001\t5\n3\titem070\t1\n"
    )
    report = lens.export("npz", tmp_path / "a", inter=recbole)
    assert np.load(tmp_path / "a" / "features.npz")["item_id"].tolist() == ["item005", "item001", "item070"]
    assert "RecBole's internal item id = row + 1" in report.order
    table = tmp_path / "clicks.csv"
    table.write_text("session,product\ns1,item002\ns1,item009\ns2,item002\n")
    with pytest.raises(ConfigError, match="--item-column"):
        lens.export("npz", tmp_path / "b", inter=table)
    lens.export("npz", tmp_path / "b", inter=table, item_column="product")
    assert np.load(tmp_path / "b" / "features.npz")["item_id"].tolist() == ["item002", "item009"]
    pd.DataFrame({"product": ["item004", "item004", "item001"]}).to_parquet(tmp_path / "clicks.parquet")
    lens.export("npz", tmp_path / "c", inter=tmp_path / "clicks.parquet", item_column="product")
    assert np.load(tmp_path / "c" / "features.npz")["item_id"].tolist() == ["item004", "item001"]


# -- graphs for a named model: each model's own construction, restated --------------------------


def freedom_knn_adj(embeddings, knn_k):
    """FREEDOM.get_knn_adj_mat and compute_normalized_laplacian (freedom.py lines 79-100; DRAGON
    and PGL have the same code)."""
    context_norm = embeddings.div(torch.norm(embeddings, p=2, dim=-1, keepdim=True))
    sim = torch.mm(context_norm, context_norm.transpose(1, 0))
    _, knn_ind = torch.topk(sim, knn_k, dim=-1)
    adj_size = sim.size()
    indices0 = torch.unsqueeze(torch.arange(knn_ind.shape[0]), 1).expand(-1, knn_k)
    indices = torch.stack((torch.flatten(indices0), torch.flatten(knn_ind)), 0)
    adj = torch.sparse_coo_tensor(indices, torch.ones(indices.shape[1]), adj_size)
    row_sum = 1e-7 + torch.sparse.sum(adj, -1).to_dense()
    r_inv_sqrt = torch.pow(row_sum, -0.5)
    values = r_inv_sqrt[indices[0]] * r_inv_sqrt[indices[1]]
    return torch.sparse_coo_tensor(indices, values, adj_size)


def freedom_mm_adj(v_feat, t_feat, knn_k, mm_image_weight):
    """FREEDOM.__init__'s fusion (freedom.py lines 67-76)."""
    if v_feat is None:
        return freedom_knn_adj(t_feat, knn_k)
    if t_feat is None:
        return freedom_knn_adj(v_feat, knn_k)
    return mm_image_weight * freedom_knn_adj(v_feat, knn_k) + (1.0 - mm_image_weight) * freedom_knn_adj(t_feat, knn_k)


def build_sim(context):
    """src/utils/utils.py lines 134-137."""
    context_norm = context.div(torch.norm(context, p=2, dim=-1, keepdim=True))
    return torch.mm(context_norm, context_norm.transpose(1, 0))


def lattice_adj(embeddings, topk):
    """LATTICE: build_knn_neighbourhood then compute_normalized_laplacian (utils.py lines 119-131)."""
    adj = build_sim(embeddings)
    knn_val, knn_ind = torch.topk(adj, topk, dim=-1)
    adj = (torch.zeros_like(adj)).scatter_(-1, knn_ind, knn_val)
    rowsum = torch.sum(adj, -1)
    d_inv_sqrt = torch.pow(rowsum, -0.5)
    d_inv_sqrt[torch.isinf(d_inv_sqrt)] = 0.0
    d_mat_inv_sqrt = torch.diagflat(d_inv_sqrt)
    return torch.mm(torch.mm(d_mat_inv_sqrt, adj), d_mat_inv_sqrt)


def mgcn_adj(embeddings, topk):
    """MGCN and SMORE: build_knn_normalized_graph(is_sparse=True, norm_type='sym') with
    get_sparse_laplacian (utils.py lines 139-181; torch_scatter's scatter_add as index_add)."""
    adj = build_sim(embeddings)
    knn_val, knn_ind = torch.topk(adj, topk, dim=-1)
    row = [r for r in range(len(knn_ind)) for _ in knn_ind[r]]
    col = [int(c) for r in range(len(knn_ind)) for c in knn_ind[r]]
    i = torch.LongTensor([row, col])
    v = knn_val.flatten()
    deg = torch.zeros(adj.shape[0]).index_add_(0, i[0], v)
    deg_inv_sqrt = deg.pow_(-0.5)
    deg_inv_sqrt.masked_fill_(deg_inv_sqrt == float("inf"), 0)
    edge_weight = deg_inv_sqrt[i[0]] * v * deg_inv_sqrt[i[1]]
    return torch.sparse_coo_tensor(i, edge_weight, adj.shape)


def assert_same_sparse(got, expected):
    got, expected = got.coalesce(), expected.coalesce()
    assert got.is_sparse and got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.equal(got.indices(), expected.indices())  # the same edges
    assert torch.allclose(got.values(), expected.values(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "model, params, checks",
    [
        ("freedom", None, {"mm_adj_freedomdsp_10_1.pt": lambda v, t: freedom_mm_adj(v, t, 10, 0.1)}),
        (
            "freedom",
            {"knn_k": 5, "mm_image_weight": 0.3},
            {"mm_adj_freedomdsp_5_3.pt": lambda v, t: freedom_mm_adj(v, t, 5, 0.3)},
        ),
        ("pgl", None, {"mm_adj_freedomdsp_10_1.pt": lambda v, t: freedom_mm_adj(v, t, 10, 0.1)}),
        ("dragon", {"knn_k": 7}, {"mm_adj_7.pt": lambda v, t: freedom_mm_adj(v, t, 7, 0.1)}),
        (
            "lattice",
            None,
            {"image_adj_10.pt": lambda v, t: lattice_adj(v, 10), "text_adj_10.pt": lambda v, t: lattice_adj(t, 10)},
        ),
        (
            "mgcn",
            None,
            {"image_adj_10_True.pt": lambda v, t: mgcn_adj(v, 10), "text_adj_10_True.pt": lambda v, t: mgcn_adj(t, 10)},
        ),
        (
            "smore",
            {"image_knn_k": "5,20", "text_knn_k": 15},
            {
                "image_adj_5_True.pt": lambda v, t: mgcn_adj(v, 5),
                "image_adj_20_True.pt": lambda v, t: mgcn_adj(v, 20),
                "text_adj_15_True.pt": lambda v, t: mgcn_adj(t, 15),
            },
        ),
    ],
)
def test_graph_files_equal_the_models_own_construction(lens, tmp_path, model, params, checks):
    subset = [f"item{i:03d}" for i in np.random.default_rng(4).permutation(N_STORE)[:70]]
    inter, _ = write_mmrec_dataset(tmp_path / "data", subset, seed=1)
    out = tmp_path / "out"
    report = lens.export("mmrec", out, inter=inter, model=model, model_params=params)
    assert set(checks) <= set(report.files)
    # what the model reads: its feature files, then its cache
    v_feat, t_feat = mmrec_feat(out / "image_feat.npy"), mmrec_feat(out / "text_feat.npy")
    for name, restated in checks.items():
        got = torch.load(out / name, weights_only=True)
        expected = restated(v_feat, t_feat)
        if expected.is_sparse:
            assert_same_sparse(got, expected)
        else:  # LATTICE keeps its graphs dense
            assert not got.is_sparse and got.dtype == torch.float32
            assert torch.equal(got != 0, expected != 0) and torch.allclose(got, expected, rtol=1e-5, atol=1e-7)
    manifest = json.loads((out / "export.json").read_text())["exports"]["mmrec"]
    assert manifest["model"]["source"].startswith(f"MMRec src/models/{model}.py")
    if model == "dragon":
        assert any("user_graph_dict.npy" in n for n in report.notes)


def test_graph_files_for_one_modality_and_graph_only_and_refusals(lens, tmp_path):
    ids = [f"item{i:03d}" for i in range(0, N_STORE, 2)]
    lens.export("mmrec-adj", tmp_path / "a", ids=ids, model="freedom", features={"text": "text"})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "export.json",
        "i_id_mapping.csv",
        "mm_adj_freedomdsp_10_1.pt",
    ]
    t_feat = torch.from_numpy(lens.vectors("text", ids).astype(np.float32))
    # FREEDOM without image features uses the text graph alone, at weight 1
    assert_same_sparse(
        torch.load(tmp_path / "a" / "mm_adj_freedomdsp_10_1.pt", weights_only=True),
        freedom_mm_adj(None, t_feat, 10, 0.1),
    )
    with pytest.raises(ConfigError, match="LGMRec caches no item graph.*interaction"):
        lens.export("mmrec", tmp_path / "b", ids=ids, model="lgmrec")
    with pytest.raises(ConfigError, match=r"FREEDOM has no parameter k; its graph parameters are knn_k"):
        lens.export("mmrec", tmp_path / "b", ids=ids, model="freedom", model_params={"k": 3})
    lens.put_vectors("image", ["item000"], np.zeros((1, 12), np.float32))
    with pytest.raises(ConfigError, match=r"1 row\(s\) have a zero or non-finite vector \(rows \[0\]\)"):
        lens.export("mmrec", tmp_path / "b", ids=ids, model="mgcn")
    lens.put_vectors("audio", ids[:3], np.ones((3, 2), np.float32))
    with pytest.raises(ConfigError, match="no vector for .* the model takes the cosine of every row"):
        lens.export("mmrec", tmp_path / "b", ids=ids, model="mgcn", features={"image": "audio"}, fill=0)
    with pytest.raises(ConfigError, match="use it with format mmrec"):
        lens.export("pyg", tmp_path / "b", ids=ids, model="mgcn")
    assert not (tmp_path / "b").exists()


def test_a_models_graph_cache_never_goes_stale_beside_new_features(lens, tmp_path):
    ids = [f"item{i:03d}" for i in range(40)]
    out = tmp_path / "baby"
    lens.export("mmrec", out, ids=ids, model="freedom")
    lens.export("mmrec", out, ids=ids)  # the same features: the cache still holds
    lens.put_vectors("text", ids[:5], np.ones((5, 8), np.float16))
    # new text features beside the old cache: FREEDOM would load the cache and never rebuild it
    with pytest.raises(ConfigError, match=r"graph caches \(mm_adj_freedomdsp_10_1.pt\) built from the text_feat.npy"):
        lens.export("mmrec", out, ids=ids)
    lens.export("mmrec-adj", tmp_path / "graph-only", ids=ids, model="freedom")
    # a cache written beside feature files it was not built from would pair them
    with pytest.raises(ConfigError, match=r"holds text_feat.npy with other values than the features"):
        lens.export("mmrec-adj", out, ids=ids, model="freedom")
    lens.export("mmrec", out, ids=ids, model="freedom")  # features and cache together
    t_feat, v_feat = mmrec_feat(out / "text_feat.npy"), mmrec_feat(out / "image_feat.npy")
    assert_same_sparse(
        torch.load(out / "mm_adj_freedomdsp_10_1.pt", weights_only=True), freedom_mm_adj(v_feat, t_feat, 10, 0.1)
    )


# -- semantic IDs: what GRID's loader takes ------------------------------------------------------


def grid_deduplicate_rows_in_tensor(data):
    """GRID's deduplicate_rows_in_tensor (src/utils/tensor_utils.py lines 146-170), on a tensor."""
    unique_rows, inverse_indices, counts = torch.unique(data, dim=0, return_inverse=True, return_counts=True)
    output_indices = torch.zeros_like(inverse_indices)
    duplicate_indices = torch.where(counts > 1)[0]
    for i in range(len(duplicate_indices)):
        num_of_collisions = counts[duplicate_indices[i]]
        indices_to_change = torch.where(inverse_indices == duplicate_indices[i])[0]
        range_to_add = torch.arange(1, num_of_collisions + 1)
        output_indices = output_indices.scatter(0, indices_to_change, range_to_add)
    return torch.cat((data, output_indices.unsqueeze(1)), dim=1).long()


def test_sid_grid_is_what_grid_loads_with_its_dedup_numbering(lens, tmp_path):
    lens.put_vectors("audio", ["extra"], np.ones((1, 4), np.float32))  # an item without a semantic ID
    build_semantic_ids(lens.uri, {"sid": {"features": ["image"], "levels": 2, "codebook_size": 4}})
    lens.refresh()
    info = lens.semantic_id_info("sid")
    rows = [f"item{i:03d}" for i in np.random.default_rng(5).permutation(N_STORE)]
    out = tmp_path / "grid"
    report = lens.export("sid-grid", out, ids=rows)
    assert report.files == ["sid_semantic_ids.pt", "i_id_mapping.csv", "export.json"]
    grid = torch.load(out / "sid_semantic_ids.pt", weights_only=True)  # GRID: torch.load(semantic_id_path)
    assert grid.dtype == torch.int64 and grid.shape == (3, N_STORE)  # [levels + 1, N], column = item
    codes = lens.semantic_ids("sid", rows)
    assert torch.equal(grid[:2], torch.from_numpy(codes[:, :2].T))
    expected = grid_deduplicate_rows_in_tensor(torch.from_numpy(codes[:, :2]))
    assert torch.equal(grid, expected.T)
    collided = int((expected[:, 2] > 0).sum())
    assert collided > 10 and int((grid[2] == 0).sum()) == N_STORE - collided  # collisions are real here
    # the store's numbering (0 .. n-1 among collided items) differs, and is there when asked for by name
    assert not torch.equal(grid[2], torch.from_numpy(codes[:, 2]))
    lens.export("sid-grid", tmp_path / "store", ids=rows, dedup="store")
    assert torch.equal(
        torch.load(tmp_path / "store" / "sid_semantic_ids.pt", weights_only=True), torch.from_numpy(codes.T)
    )
    detail = json.loads((out / "export.json").read_text())["exports"]["sid-grid"]["artifacts"]["sid"]
    assert (detail["levels"], detail["codebook_size"], detail["width"]) == (2, 4, 3) and "GRID" in detail["dedup"]
    assert detail["dedup_max"] == int(expected[:, 2].max()) > 4
    assert f"set it to at least {detail['dedup_max'] + 1}" in report.notes[0]
    assert info.width == 3

    # an item without an ID: no silent padding token
    with_extra = rows[:5] + ["extra"]
    with pytest.raises(ConfigError, match=r"no semantic ID for 1 of 6 rows: 'extra'.*-1 is GRID's padding"):
        lens.export("sid-grid", tmp_path / "x", ids=with_extra)
    for bad in (0, 3, 1.5):
        with pytest.raises(ConfigError, match="use a negative integer, which no code is"):
            lens.export("sid-grid", tmp_path / "x", ids=with_extra, fill=bad)
    lens.export("sid-grid", tmp_path / "x", ids=with_extra, fill=-7)
    filled = torch.load(tmp_path / "x" / "sid_semantic_ids.pt", weights_only=True)
    assert (filled[:, 5] == -7).all() and (filled[:, :5] >= 0).all()
    assert np.load(tmp_path / "x" / "sid_mask.npy").tolist() == [True] * 5 + [False]
    with pytest.raises(ConfigError, match=r"sid-grid rows are the consumer's item index"):
        lens.export("sid-grid", tmp_path / "y")

    # sid-tokens states its offsets, so that nobody adds them twice
    lens.export("sid-tokens", tmp_path / "tokens", ids=rows[:3])
    vocab = json.loads((tmp_path / "tokens" / "sid_vocab.json").read_text())
    assert vocab["offsets"] == [0, 4, 8] and vocab["offsets_applied"] == {
        "sid_tokens.npy": True,
        "sid_tokens.txt": False,
    }
    assert np.array_equal(np.load(tmp_path / "tokens" / "sid_tokens.npy"), codes[:3] + np.array([0, 4, 8]))

    # two versions of one name would write the same files: refused, not the last one kept
    build_semantic_ids(lens.uri, {"sid": {"features": ["image"], "levels": 2, "codebook_size": 8}})
    lens.refresh()
    assert lens.semantic_id_info("sid").qualified == "sid@v2"
    with pytest.raises(ConfigError, match=r"sid@v2 and sid@v1 are two versions of 'sid'"):
        lens.export("sid-tokens", tmp_path / "both", ids=rows[:3], semantic_ids=["sid", "sid@v1"])


# -- the command line --------------------------------------------------------------------------


def test_command_line_lists_every_format_and_prints_the_alignment(lens, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(
        exports.core._FORMATS,
        "my-format",
        exports.ExportFormat("my-format", lambda a, o, p: [], "features", False, True),
    )
    export_parser = build_parser()._subparsers._group_actions[0].choices["export"]
    assert set(export_parser._option_string_actions["--format"].choices) == set(exports.export_formats())
    assert "my-format" in export_parser.format_help()
    monkeypatch.delitem(exports.core._FORMATS, "my-format")

    ids = tmp_path / "ids.txt"
    ids.write_text("item010\nitem020\nnope\n")
    assert cli(["export", lens.uri, "--for", "freedom", "--out", str(tmp_path / "x"), "--ids", str(ids)]) == 2
    assert "1 of 3 ids of the lines of" in capsys.readouterr().err
    ids.write_text("".join(f"item{i:03d}\n" for i in range(30)))
    assert (
        cli(
            [
                "export",
                lens.uri,
                "--for",
                "freedom",
                "--model-param",
                "knn_k=4",
                "--out",
                str(tmp_path / "x"),
                "--ids",
                str(ids),
                "--feature",
                "image=image",
                "text=text",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "mm_adj_freedomdsp_4_1.pt" in printed and "30 rows in the order of the lines of" in printed
    assert "image: 30 present, 0 filled" in printed and "text: 30 present, 0 filled" in printed
    assert (tmp_path / "x" / "image_feat.npy").is_file()
