"""Semantic IDs: unique, invertible, deterministic, stable across refreshes, meaningful."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import itemlens
from itemlens.errors import ConfigError
from itemlens.store.semantic_ids import build, quantizers
from itemlens.store.writer import StoreWriter
from itemlens.workflows.cli import main as cli
from itemlens.workflows.config import load_config

CLUSTERS, PER_CLUSTER, DIM = 50, 40, 32


def clustered(seed: int = 0, clusters: int = CLUSTERS, per: int = PER_CLUSTER, dim: int = DIM):
    """Well-separated Gaussian clusters on the unit sphere (as encoders' vectors are)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)) * 4
    labels = np.repeat(np.arange(clusters), per)
    x = centers[labels] + rng.normal(size=(len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def new_store(tmp_path, vectors, name="emb", prefix="item"):
    ids = [f"{prefix}{i:05d}" for i in range(len(vectors))]
    StoreWriter.open(tmp_path / "lens").close()  # an empty store
    lens = itemlens.connect(tmp_path / "lens")
    lens.put_vectors(name, ids, vectors)
    return lens, ids


VAE_SMALL = {"epochs": 30, "hidden": [64], "latent_dim": 16, "batch_size": 256, "lr": 3e-3}


@pytest.mark.parametrize(
    "definition, share",
    [
        ({"method": "rq-kmeans"}, 0.8),
        ({"method": "rq-kmeans", "normalize_residual": True}, 0.8),
        # capacity ceil(2000/64) = 32 < 40 items per cluster: a balanced code must split clusters
        ({"method": "rq-kmeans", "balanced": True}, 0.6),
        ({"method": "rq-vae", "vae": VAE_SMALL}, 0.6),
        ({"method": "rq-vae", "vae": {**VAE_SMALL, "gradient": "rotation"}}, 0.6),
    ],
)
def test_items_of_one_cluster_share_their_first_code(tmp_path, definition, share):
    x, labels = clustered()
    lens, ids = new_store(tmp_path, x)
    build(lens.uri, {"sid": {"features": ["emb"], "levels": 3, "codebook_size": 64, **definition}})
    lens.refresh()
    first = lens.semantic_ids("sid", ids)[:, 0]
    same = first[:, None] == first[None, :]
    within = same[labels[:, None] == labels[None, :]].mean()
    chance = (np.bincount(first) / len(first)) ** 2
    # within a cluster, two items share their first code at least `share` of the time; two
    # items at random share it with probability sum(p_k^2), about 1/50 here
    assert within >= share and within >= 10 * chance.sum(), (within, chance.sum())
    if definition.get("balanced"):
        assert np.bincount(first).max() <= int(np.ceil(len(ids) / 64))


@pytest.mark.parametrize("uniqueness", ["suffix", "nearest-free"])
def test_every_item_has_a_unique_tuple_and_item_for_inverts_it(tmp_path, uniqueness):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 16)).astype(np.float32)
    lens, ids = new_store(tmp_path, x)
    reports, _ = build(
        lens.uri, {"sid": {"features": ["emb"], "levels": 2, "codebook_size": 32, "uniqueness": uniqueness}}
    )
    lens.refresh()
    codes = lens.semantic_ids("sid", ids)
    assert codes.shape == (600, 3 if uniqueness == "suffix" else 2) and codes.dtype == np.int64
    assert len({tuple(c) for c in codes.tolist()}) == 600
    assert reports["sid"].metrics["collision_rate"] > 0.1  # there were collisions to resolve
    assert lens.item_for("sid", codes) == ids
    assert lens.item_for("sid", codes[7]) == ids[7]
    order = rng.permutation(600)[:50].tolist() + [3, 3]  # any order, duplicates included
    assert lens.item_for("sid", lens.semantic_ids("sid", [ids[i] for i in order])) == [ids[i] for i in order]
    if uniqueness == "suffix":
        # the suffix numbers items sharing a tuple 0, 1, 2 ... in item-index order
        prefix = {}
        for row in codes.tolist():
            prefix.setdefault(tuple(row[:2]), []).append(row[2])
        assert all(s == list(range(len(s))) for s in prefix.values())
    else:
        info = lens.semantic_id_info("sid")
        assert info.width == 2 and codes.max() < 32
        # the quantizer's own codes where free; a collision moved to another last-level code
        prefix = lens._dataset(info.table).to_table(columns=["prefix"]).column("prefix").to_pylist()
        assert np.array_equal(np.array(prefix)[:, 0], codes[:, 0]) and (np.array(prefix)[:, 1] != codes[:, 1]).any()
    with pytest.raises(itemlens.UnknownItemsError, match=r"1 code tuple\(s\) have no 'sid@v1' item"):
        lens.item_for("sid", [15, 15, 999] if uniqueness == "suffix" else [99, 99])
    with pytest.raises(KeyError, match="nobody"):
        lens.semantic_ids("sid", ["nobody"])
    assert (lens.semantic_ids("sid", ["nobody", ids[0]], fill=-1)[0] == -1).all()


def _build_in_a_subprocess(tmp_path, tag: str, method: str) -> list[list[int]]:
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import itemlens
        from itemlens.store.semantic_ids import build
        from itemlens.store.writer import StoreWriter
        rng = np.random.default_rng(7)
        x = rng.normal(size=(800, 24)).astype(np.float32)
        ids = [f"i{{i}}" for i in range(800)]
        StoreWriter.open({str(tmp_path / tag)!r}).close()
        lens = itemlens.connect({str(tmp_path / tag)!r})
        lens.put_vectors("emb", ids, x)
        build(lens.uri, {{"sid": {{"features": ["emb"], "levels": 3, "codebook_size": 16, "method": {method!r},
                                   "seed": 3, "vae": {{"epochs": 3, "hidden": [32], "latent_dim": 8}}}}}})
        lens.refresh()
        print(json.dumps(lens.semantic_ids("sid", ids).tolist()))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["rq-kmeans", "rq-vae"])
def test_same_inputs_and_seed_give_the_same_ids_in_two_processes(tmp_path, method):
    assert _build_in_a_subprocess(tmp_path, "a", method) == _build_in_a_subprocess(tmp_path, "b", method)


def test_a_refresh_keeps_existing_ids_trains_nothing_and_never_reuses_a_tuple(tmp_path):
    x, _ = clustered(seed=2)
    lens, ids = new_store(tmp_path, x)
    definition = {"features": ["emb"], "levels": 3, "codebook_size": 32}
    build(lens.uri, {"sid": definition})
    lens.refresh()
    before_snapshot = lens.snapshot
    before = lens.semantic_ids("sid", ids)
    v1 = lens.semantic_id_info("sid")

    more, _ = clustered(seed=3, per=20)  # 1,000 new items, same kind of data
    new_ids = [f"new{i:05d}" for i in range(len(more))]
    changed = ids[:10]
    lens.put_vectors("emb", new_ids + changed, np.concatenate([more, x[100:110]]))  # 10 items now look like others
    trainings = quantizers.TRAININGS["count"]
    reports, snapshot = build(lens.uri, {"sid": definition})
    assert quantizers.TRAININGS["count"] == trainings  # frozen codebooks: no training
    report = reports["sid"]
    assert not report.trained and report.version == "v1"
    assert (report.new, report.changed, report.retired, report.unchanged) == (1000, 10, 10, 1990)

    lens.refresh()
    after = lens.semantic_ids("sid", ids[10:])
    assert np.array_equal(after, before[10:])  # unchanged items keep their IDs
    everything = lens.semantic_ids("sid", ids + new_ids)
    assert len({tuple(c) for c in everything.tolist()}) == len(ids) + len(new_ids)
    old_tuples = {tuple(c) for c in before.tolist()}
    for row in lens.semantic_ids("sid", changed).tolist():
        assert tuple(row) not in old_tuples  # a changed item gets a tuple never handed out
    for row in before[:10]:  # its old tuple is retired, held by nobody
        with pytest.raises(KeyError):
            lens.item_for("sid", row)
    # a new item whose tuple exists gets the next suffix after every one used before
    suffix_max = {}
    for row in before.tolist():
        suffix_max[tuple(row[:3])] = max(suffix_max.get(tuple(row[:3]), -1), row[3])
    for row in lens.semantic_ids("sid", new_ids).tolist():
        if tuple(row[:3]) in suffix_max:
            assert row[3] > suffix_max[tuple(row[:3])]
    info = lens.semantic_id_info("sid")
    assert info.label == v1.label and info.count == 3000 and info.retired == 10
    # the snapshot before the refresh still reads the old IDs
    assert np.array_equal(itemlens.connect(lens.uri, snapshot=before_snapshot).semantic_ids("sid", ids), before)
    # nothing changed: no new table versions, no snapshot
    assert build(lens.uri, {"sid": definition})[1] is None


def test_retraining_is_explicit_and_makes_a_new_version(tmp_path):
    x, _ = clustered(seed=4, clusters=10, per=30)
    lens, ids = new_store(tmp_path, x)
    definition = {"features": ["emb"], "levels": 2, "codebook_size": 8}
    build(lens.uri, {"sid": definition})
    reports, _ = build(lens.uri, {"sid": definition}, retrain=True)
    assert reports["sid"].trained and reports["sid"].version == "v2"
    reports, _ = build(lens.uri, {"sid": {**definition, "levels": 3}})  # a changed definition: trains
    assert reports["sid"].trained and reports["sid"].version == "v3"
    lens.refresh()
    assert lens.semantic_ids("sid", ids).shape == (300, 4)
    assert lens.semantic_ids("sid@v1", ids).shape == (300, 3)  # older versions stay readable


def test_a_definition_gone_back_to_is_current_again_and_a_refresh_without_items_retires_all(tmp_path):
    x, _ = clustered(seed=6, clusters=5, per=12)
    lens, ids = new_store(tmp_path, x)
    small = {"features": ["emb"], "levels": 2, "codebook_size": 4}
    build(lens.uri, {"sid": small})
    build(lens.uri, {"sid": {**small, "codebook_size": 8}})
    reports, snapshot = build(lens.uri, {"sid": small})  # v1's definition: its codes stand, it is current again
    lens.refresh()
    assert not reports["sid"].trained and snapshot == lens.snapshot and lens.semantic_id_info("sid").label == "v1"
    assert lens.semantic_ids("sid", ids)[:, :2].max() < 4
    assert build(lens.uri, {"sid": small})[1] is None  # and then nothing changes
    # every item loses one of two inputs: no item has an ID any more, every tuple retires
    lens.put_vectors("other", ids, np.ones((len(ids), 3), np.float32))
    both = {"features": ["emb", "other"], "levels": 2, "codebook_size": 4}
    build(lens.uri, {"both": both})
    with StoreWriter.open(lens.uri) as writer:
        other = writer.base.feature_version("other")
        writer.remove_items([other], ids)
        writer.publish(catalog={}, report={}, current={"other": other})
    reports, _ = build(lens.uri, {"both": both})
    assert (reports["both"].items, reports["both"].retired) == (0, len(ids))


def test_several_weighted_inputs_and_items_missing_one(tmp_path):
    x, labels = clustered(seed=5, clusters=20, per=20)
    lens, ids = new_store(tmp_path, x, name="image")
    rng = np.random.default_rng(5)
    text = rng.normal(size=(len(ids) - 50, 8)).astype(np.float32)
    lens.put_vectors("text", ids[50:], text)  # 50 items have no text vector
    reports, _ = build(lens.uri, {"sid": {"features": {"image": 1.0, "text": 0.1}, "levels": 2, "codebook_size": 16}})
    assert reports["sid"].items == len(ids) - 50 and reports["sid"].missing_inputs == 50
    lens.refresh()
    assert lens.semantic_id_info("sid").input_dim == DIM + 8
    assert (lens.semantic_ids("sid", ids[:50], fill=-1) == -1).all()
    with pytest.raises(KeyError):
        lens.semantic_ids("sid", ids[:1])
    # the same mapping written in the other order is the same definition: nothing changes
    codes = lens.semantic_ids("sid", ids[50:])
    again, _ = build(lens.uri, {"sid": {"features": {"text": 0.1, "image": 1.0}, "levels": 2, "codebook_size": 16}})
    assert (again["sid"].trained, again["sid"].changed, again["sid"].retired) == (False, 0, 0)
    lens.refresh()
    assert lens.semantic_id_info("sid").qualified == "sid@v1"
    assert np.array_equal(lens.semantic_ids("sid", ids[50:]), codes)


def test_metrics_plot_and_exports(tmp_path):
    x, _ = clustered(seed=6, clusters=10, per=30)
    lens, ids = new_store(tmp_path, x)
    lens.put_vectors("other", ["extra1", "extra2"], np.ones((2, 4), np.float32))  # items with no ID
    build(lens.uri, {"sid": {"features": ["emb"], "levels": 2, "codebook_size": 8}})
    lens.refresh()
    info = lens.semantic_id_info("sid")
    m = info.metrics
    codes = lens.semantic_ids("sid", ids)
    unique = len({tuple(c) for c in codes[:, :2].tolist()})
    assert m["collision_rate"] == pytest.approx((300 - unique) / 300, abs=1e-6)
    assert len(m["utilization"]) == 2 and len(m["perplexity"]) == 2 and 0 < m["reconstruction_error"] < 1
    assert m["largest_group"] == max(np.unique(codes[:, :2], axis=0, return_counts=True)[1])
    assert lens.semantic_id_plot("sid")[:8] == b"\x89PNG\r\n\x1a\n"

    import torch

    out = tmp_path / "grid"
    with pytest.raises(ConfigError, match="give the order of your data"):
        lens.export("sid-grid", out)
    with pytest.raises(ConfigError, match=r"sid@v1 has no semantic ID for 2 of 302 rows: 'extra1', 'extra2'"):
        lens.export("sid-grid", out, store_order=True, dedup="store")
    lens.export("sid-grid", out, store_order=True, dedup="store", fill=-1)
    grid = torch.load(out / "sid_semantic_ids.pt", weights_only=True).numpy()
    mapping = pd.read_csv(out / "i_id_mapping.csv", sep="\t")
    assert grid.shape == (3, len(mapping)) and list(mapping["itemID"]) == list(range(len(mapping)))
    rows = {item: i for i, item in enumerate(mapping["asin"])}
    assert np.array_equal(grid[:, [rows[i] for i in ids]].T, codes)
    assert (grid[:, rows["extra1"]] == -1).all() and not np.load(out / "sid_mask.npy")[rows["extra1"]]

    out = tmp_path / "tokens"
    lens.export("sid-tokens", out, ids=["extra2", ids[5], ids[0]], fill=-1)
    tokens = np.load(out / "sid_tokens.npy")
    assert (tokens[0] == -1).all()
    assert tokens[2].tolist() == [codes[0, 0], codes[0, 1] + 8, codes[0, 2] + 16]
    lines = (out / "sid_tokens.txt").read_text().splitlines()
    assert lines[0] == "" and lines[2] == f"<a_{codes[0, 0]}><b_{codes[0, 1]}><c_{codes[0, 2]}>"
    vocab = json.loads((out / "sid_vocab.json").read_text())
    # the vocabulary is the version's, whatever rows are exported
    assert vocab["offsets"] == [0, 8, 16] and vocab["vocab_size"] == 16 + codes[:, 2].max() + 1

    out = tmp_path / "parquet"
    lens.export("sid-parquet", out)
    frame = pd.read_parquet(out / "semantic_ids.parquet").set_index("item_id")
    assert list(frame.loc[ids[3], "sid"]) == codes[3].tolist() and frame.loc["extra1", "sid"] is None
    with pytest.raises(ConfigError, match="no semantic IDs"):
        itemlens.connect(lens.uri, snapshot=1).export("sid-grid", tmp_path / "none", store_order=True)


def test_command_line_semantic_ids_show_and_export(tmp_path, capsys):
    x, _ = clustered(seed=8, clusters=10, per=30)
    lens, ids = new_store(tmp_path, x, name="text")
    config = tmp_path / "lens.yaml"
    config.write_text(
        textwrap.dedent("""
        features:
          text: {encoder: sentence-transformers, model: all-MiniLM-L6-v2, input: {template: "{title}"}}
        semantic_ids:
          sid: {features: [text], levels: 2, codebook_size: 8}
    """)
    )
    assert cli(["semantic-ids", lens.uri, "--config", str(config)]) == 0
    assert "sid@v1: trained, 300 items" in capsys.readouterr().out
    assert cli(["show", lens.uri, "--plots", str(tmp_path / "plots")]) == 0
    shown = capsys.readouterr().out
    assert "sid@v1*" in shown and "rq-kmeans" in shown and "2x8" in shown
    assert (tmp_path / "plots" / "sid_code_usage.png").stat().st_size > 1000
    assert cli(["export", lens.uri, "--format", "sid-parquet", "--out", str(tmp_path / "x")]) == 0
    assert pd.read_parquet(tmp_path / "x" / "semantic_ids.parquet").shape[0] == 300
    assert cli(["semantic-ids", lens.uri, "--config", str(config), "--name", "nope"]) == 2
    assert "defines semantic IDs sid; not nope" in capsys.readouterr().err


def test_bad_definitions_are_refused_before_any_work(tmp_path):
    features = {"text": {"encoder": "sentence-transformers", "model": "m", "input": {"template": "{t}"}}}
    with pytest.raises(ConfigError, match=r"semantic_ids.sid.features: 'txt' is not a feature"):
        load_config({"features": features, "semantic_ids": {"sid": {"features": ["txt"]}}})
    with pytest.raises(ConfigError, match=r"semantic_ids.sid.method = 'rq-pq'"):
        load_config({"features": features, "semantic_ids": {"sid": {"features": ["text"], "method": "rq-pq"}}})
    x, _ = clustered(seed=9, clusters=2, per=5)
    lens, _ = new_store(tmp_path, x)
    with pytest.raises(ConfigError, match="needs at least 256 vectors; got 10"):
        build(lens.uri, {"sid": {"features": ["emb"]}})
    with pytest.raises(ConfigError, match="no feature 'nope'"):
        build(lens.uri, {"sid": {"features": ["nope"], "codebook_size": 2}})
