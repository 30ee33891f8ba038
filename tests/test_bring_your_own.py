"""Vectors computed elsewhere (a two-tower model's item tower, an LLM's embeddings) put into an
empty store, then semantic IDs and a graph derived from them with a configuration that holds
only those sections, as a team does that does not ingest a catalog. No Ray."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import itemlens
from itemlens.errors import ConfigError, StoreNotFoundError
from itemlens.workflows.cli import main as cli


def test_create_then_put_then_derive_from_a_section_only_config(tmp_path, capsys):
    store = tmp_path / "lens"
    with pytest.raises(StoreNotFoundError):
        itemlens.connect(store)
    lens = itemlens.create(store)  # an empty store, no catalog
    assert lens.snapshot == 0 and lens.features() == []
    assert itemlens.create(store).uri == lens.uri  # creating an existing store opens it
    rng = np.random.default_rng(0)
    ids = [f"song-{i:03d}" for i in range(60)]
    centers = rng.normal(size=(6, 16))
    vectors = (centers[np.arange(60) % 6] + 0.05 * rng.normal(size=(60, 16))).astype(np.float32)
    lens.put_vectors("twotower", ids, vectors, spec={"model": "my-two-tower", "run": 7})
    assert itemlens.connect(tmp_path / "other", create=True).snapshot == 0

    config = tmp_path / "derived.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "semantic_ids": {"sid": {"features": ["twotower"], "levels": 2, "codebook_size": 8}},
                "graphs": {"g": {"features": ["twotower"], "k": 5, "preset": "cosine"}},
            }
        )
    )
    assert cli(["semantic-ids", str(store), "--config", str(config)]) == 0
    assert cli(["graph", str(store), "--config", str(config)]) == 0
    capsys.readouterr()
    lens = itemlens.connect(store)
    codes = lens.semantic_ids("sid", ids)
    assert codes.shape == (60, 3) and len({tuple(c) for c in codes.tolist()}) == 60  # unique
    # the five nearest of an item (itself among them) are all of its own cluster
    near = [n for n, _ in lens.neighbors("g", ["song-000"])[0]]
    assert len(near) == 5 and "song-000" in near and all(int(n[-3:]) % 6 == 0 for n in near)

    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"graphs": {"g2": {"features": ["nope"], "k": 3}}}))
    assert cli(["graph", str(store), "--config", str(missing)]) == 2
    assert "has no feature 'nope'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown field"):
        from itemlens.workflows.config import load_derived_config

        load_derived_config({"graphs": {}, "catalog": {"id_column": "id"}})


def test_neighbors_build_the_graph_once_per_reader(tmp_path, monkeypatch):
    from itemlens.store import graphs

    lens = itemlens.create(tmp_path / "lens")
    rng = np.random.default_rng(1)
    ids = [f"i{i}" for i in range(40)]
    lens.put_vectors("v", ids, rng.normal(size=(40, 8)).astype(np.float32), spec={"m": 1})
    graphs.build(lens.uri, {"g": {"features": ["v"], "k": 4}})
    lens = itemlens.connect(lens.uri)
    calls = []
    real = graphs.fused_matrix
    monkeypatch.setattr(graphs, "fused_matrix", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = lens.neighbors("g", ids[:3])
    assert [lens.neighbors("g", [i])[0] for i in ids[:3]] == first
    assert len(calls) == 1  # one build, then row look-ups
    lens.neighbors("g", ids[:3], preset="lattice")
    assert len(calls) == 2  # another preset is another matrix
    matrix, order = lens.graph("g")
    matrix.data[:] = 0  # a caller's copy: the reader's stays intact
    assert lens.neighbors("g", ids[:1]) == first[:1]
    # more items under the same graph table version: the reader builds the matrix again
    lens.put_vectors("w", ["new"], np.ones((1, 2), np.float32))
    matrix, order = lens.graph("g")
    assert matrix.shape == (41, 41) and order[-1] == "new" and lens.neighbors("g", ["new"]) == [[]]
    with pytest.raises(KeyError, match=r"no 'g' neighbour list in this snapshot: 'nope' \(not in the store\)$"):
        lens.neighbors("g", ["nope"])  # neighbors() has no fill: the message offers none
