"""Item-item graphs: presets against direct numpy definitions, refresh against rebuild, odd
vectors, neighbours, co-occurrence, exports and the command line."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

import itemlens
from itemlens.errors import ConfigError
from itemlens.store.graphs import GRAPH_SCHEMA, FeatureInputs, GraphSpec, build, graph_stats, knn
from itemlens.store.graphs.build import _refresh_lists
from itemlens.store.writer import StoreWriter
from itemlens.workflows.cli import main as cli
from itemlens.workflows.config import load_config


def _store(tmp_path, features: dict[str, np.ndarray], n: int):
    StoreWriter.open(tmp_path / "lens").close()
    lens = itemlens.connect(tmp_path / "lens")
    ids = [f"item{i:04d}" for i in range(n)]
    for name, x in features.items():
        lens.put_vectors(name, ids, x)
    return lens, ids


def _cos(x):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return u @ u.T


def _knn_dense(x, k, self_loops=True):
    """Published construction: topk of the full similarity matrix, kept values (LATTICE) or ones."""
    s = _cos(x.astype(np.float64))
    if not self_loops:
        np.fill_diagonal(s, -np.inf)
    top = np.argsort(-s, axis=1)[:, :k]
    weighted = np.zeros_like(s)
    np.put_along_axis(weighted, top, np.take_along_axis(s, top, 1), 1)
    binary = (weighted != 0).astype(np.float64)
    return weighted, binary


def _sym(a):
    d = a.sum(1)
    d = np.where(d > 0, d**-0.5, 0.0)
    return d[:, None] * a * d[None, :]


def _rw(a):
    d = a.sum(1)
    return np.where(d > 0, 1.0 / d, 0.0)[:, None] * a


@pytest.mark.parametrize("self_loops", [True, False])
def test_each_preset_equals_a_direct_numpy_implementation(tmp_path, self_loops):
    rng = np.random.default_rng(0)
    n, k = 200, 6
    image, text = rng.normal(size=(n, 24)).astype(np.float32), rng.normal(size=(n, 16)).astype(np.float32)
    lens, ids = _store(tmp_path, {"image": image, "text": text}, n)
    build(lens.uri, {"mm": {"features": {"image": 0.1, "text": 0.9}, "k": k, "self_loops": self_loops}})
    lens.refresh()
    wi, bi = _knn_dense(image, k, self_loops)
    wt, bt = _knn_dense(text, k, self_loops)
    expected = {
        "freedom": 0.1 * _sym(bi) + 0.9 * _sym(bt),  # FREEDOM / DRAGON
        "lattice": 0.1 * _sym(wi) + 0.9 * _sym(wt),  # LATTICE / MGCN
        "row": 0.1 * _rw(wi) + 0.9 * _rw(wt),
        "cosine": 0.1 * wi + 0.9 * wt,
    }
    h = np.hstack([bi.T, bt.T])  # hyperedge j: item j's kNN list
    w = np.concatenate([np.full(n, 0.1), np.full(n, 0.9)])
    dv, de = h @ w, h.sum(0)
    dv_is = np.where(dv > 0, dv**-0.5, 0)
    expected["hypergraph"] = dv_is[:, None] * (h * (w / de)[None, :]) @ h.T * dv_is[None, :]
    for preset, dense in expected.items():
        matrix, order = lens.graph("mm", preset)
        assert order == ids and isinstance(matrix, sp.csr_matrix)
        got = matrix.toarray()
        assert np.array_equal(got != 0, dense != 0), preset  # identical edge sets
        assert np.abs(got - dense).max() < 1e-6, preset
    assert lens.graph("mm")[0].nnz == lens.graph("mm", "freedom")[0].nnz  # the definition's preset


def _inputs(x, ids, hashes):
    return FeatureInputs(
        ids=pa.array(ids, pa.string()),
        item_index=np.array([int(i[1:]) for i in ids], np.int64),
        x=x.astype(np.float32),
        source_hash=pa.array(hashes, pa.string()),
    )


def _apply(old: pa.Table, upsert: pa.Table, deleted: list[str]) -> dict[str, tuple[list, list]]:
    lists = {r["item_id"]: (r["neighbors"], r["scores"]) for r in old.to_pylist()}
    for r in upsert.to_pylist():
        lists[r["item_id"]] = (r["neighbors"], r["scores"])
    for i in deleted:
        lists.pop(i, None)
    return lists


@pytest.mark.parametrize("depth", [None, 10])
def test_a_refresh_recomputes_only_affected_lists_and_equals_a_rebuild(depth):
    rng = np.random.default_rng(1)
    n, k = 1000, 10
    x = rng.normal(size=(n + 30, 32)).astype(np.float32)
    ids = [f"i{j}" for j in range(n + 30)]
    spec = GraphSpec(features=["emb"], k=k, depth=depth, self_loops=False, block=256, device="cpu")
    first, _, recomputed, _, _ = _refresh_lists(
        GRAPH_SCHEMA.empty_table(), _inputs(x[:n], ids[:n], ["h"] * n), spec, "cpu"
    )
    assert recomputed == n
    old = first.append_column("feature", pa.array(["emb"] * n)).select(GRAPH_SCHEMA.names).cast(GRAPH_SCHEMA)

    # 2% changed, 1% deleted, 3% new
    changed = rng.choice(np.arange(n), 20, replace=False)
    deleted = rng.choice(np.setdiff1d(np.arange(n), changed), 10, replace=False)
    y = x.copy()
    y[changed] = rng.normal(size=(20, 32))
    keep = np.setdiff1d(np.arange(n + 30), deleted)
    hashes = ["c" if j in set(changed.tolist()) else ("new" if j >= n else "h") for j in keep.tolist()]
    upsert, gone, recomputed, merged, _ = _refresh_lists(
        old, _inputs(y[keep], [ids[j] for j in keep], hashes), spec, "cpu"
    )
    assert sorted(gone) == sorted(ids[j] for j in deleted)
    # rebuilt from scratch: the lists of the new catalog
    full, _, _, _, _ = _refresh_lists(
        GRAPH_SCHEMA.empty_table(), _inputs(y[keep], [ids[j] for j in keep], hashes), spec, "cpu"
    )
    refreshed = _apply(old, upsert, gone)
    rebuilt = {r["item_id"]: (r["neighbors"], r["scores"]) for r in full.to_pylist()}
    assert refreshed.keys() == rebuilt.keys()
    for item, (neighbors, scores) in rebuilt.items():  # the graph reads the first k
        assert refreshed[item][0][:k] == neighbors[:k], item
        assert np.allclose(refreshed[item][1][:k], scores[:k], atol=1e-5)
    exact = {r["item_id"]: r["exact"] for r in upsert.to_pylist()}
    assert all(e >= k for e in exact.values())  # every stored list vouches for its first k
    # what changed: new and changed items' lists (recomputed), the lists that held a changed or
    # deleted item, and those a new or changed item entered
    before = {r["item_id"]: r["neighbors"] for r in old.to_pylist()}
    moved = set(changed.tolist()) | set(deleted.tolist())
    affected = {ids[j] for j in keep if j < n and any(nb in moved for nb in before[ids[j]])}
    fresh = {ids[j] for j in changed} | set(ids[n:])
    entered = {i for i, (nb, _) in refreshed.items() if i not in fresh and i in before and nb != before[i]}
    assert set(upsert.column("item_id").to_pylist()) == fresh | affected | entered
    assert recomputed + merged == len(fresh | affected | entered)
    if depth is None:  # 2k deep: a list that lost a neighbour still knows its top k
        assert recomputed < len(fresh) + 0.01 * len(keep)
    else:  # k deep: a list that lost one is recomputed, unless a new candidate
        # fills the gap with a score above everything it did not know
        assert len(fresh) + 0.5 * len(affected) < recomputed <= len(fresh | affected)


def test_a_refresh_through_the_store_equals_a_rebuild_and_its_statistics_are_the_graphs(tmp_path):
    rng = np.random.default_rng(7)
    n, k = 600, 5
    x = rng.normal(size=(n, 16)).astype(np.float32)
    lens, ids = _store(tmp_path, {"emb": x}, n)
    spec = {"g": {"features": ["emb"], "k": k, "self_loops": False}}
    build(lens.uri, spec)
    changed = rng.choice(n, n // 50, replace=False)
    x[changed] = rng.normal(size=(len(changed), 16))
    lens.put_vectors("emb", [ids[j] for j in changed], x[changed])
    refreshed, _ = build(lens.uri, spec)
    assert not refreshed["g"].rebuilt and refreshed["g"].recomputed["emb"] == len(changed)
    lens.refresh()
    stored = lens._dataset(lens.graph_info("g").table).to_table()
    refreshed_matrix, order = lens.graph("g", "cosine")
    rebuilt, _ = build(lens.uri, spec, rebuild=True)
    lens.refresh()
    assert rebuilt["g"].rebuilt and lens.graph_info("g").label == "v2"
    rebuilt_matrix, _ = lens.graph("g", "cosine")
    assert order == ids and np.array_equal(refreshed_matrix.indices, rebuilt_matrix.indices)
    assert np.abs(refreshed_matrix - rebuilt_matrix).max() < 1e-6
    # the statistics a refresh reports are those of the graph it stored, and of the rebuild
    assert refreshed["g"].stats == graph_stats(stored, GraphSpec(**spec["g"])) == rebuilt["g"].stats
    assert refreshed["g"].items == rebuilt["g"].items == n
    # ... and those of a direct count on the dense kNN matrix
    _, binary = _knn_dense(x, k, self_loops=False)
    stats = rebuilt["g"].stats["inputs"]["emb"]
    assert stats["edges"] == binary.sum() == n * k
    assert stats["mutual_share"] == round((binary * binary.T).sum() / binary.sum(), 4)
    assert stats["in_degree_histogram"] == np.bincount(binary.sum(axis=0).astype(np.int64)).tolist()


@pytest.mark.parametrize("method", ["exact", "approximate"])
def test_the_smallest_in_degree_is_counted_not_floored_at_zero(tmp_path, method):
    """Items evenly on a circle: each one's 2 nearest are its neighbours on either side, so
    every item is a neighbour of exactly 2 others."""
    angles = np.arange(8) * 2 * np.pi / 8
    lens, _ = _store(tmp_path, {"emb": np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)}, 8)
    spec = {"g": {"features": ["emb"], "k": 2, "self_loops": False, "method": method}}
    in_degree = build(lens.uri, spec)[0]["g"].stats["inputs"]["emb"]["in_degree"]
    assert (in_degree["min"], in_degree["max"], in_degree["zero"]) == (2, 2, 0)


def test_read_time_settings_and_a_definition_gone_back_to_are_published_without_new_lists(tmp_path):
    """Fusion weights and the preset apply when read: changing them needs no new lists but a
    new snapshot that records them; going back to an earlier definition makes it current again."""
    rng = np.random.default_rng(0)
    lens, ids = _store(tmp_path, {"a": rng.normal(size=(30, 4)), "b": rng.normal(size=(30, 4))}, 30)
    spec = {"features": {"a": 0.1, "b": 0.9}, "k": 3, "preset": "freedom"}
    build(lens.uri, {"g": spec})
    lens.refresh()
    first = lens.graph("g")[0]
    _, snapshot = build(lens.uri, {"g": {**spec, "features": {"a": 0.5, "b": 0.5}, "preset": "lattice"}})
    lens.refresh()
    assert snapshot == lens.snapshot and lens.graph_info("g").label == "v1"
    assert lens.graph_info("g").spec["preset"] == "lattice" and lens.graph_info("g").spec["features"]["a"] == 0.5
    assert build(lens.uri, {"g": {**spec, "features": {"a": 0.5, "b": 0.5}, "preset": "lattice"}})[1] is None
    build(lens.uri, {"g": {**spec, "k": 4}})
    _, snapshot = build(lens.uri, {"g": spec})  # v1's definition again: its lists stand
    lens.refresh()
    assert snapshot == lens.snapshot and lens.graph_info("g").label == "v1"
    assert abs(lens.graph("g")[0] - first).max() == 0 and lens.graph_info("g").spec["preset"] == "freedom"


def test_merge_lists_equals_a_stable_sort_of_both_lists():
    rng = np.random.default_rng(8)
    for _ in range(200):
        m, ka, kb, k = rng.integers(0, 5), rng.integers(0, 6), rng.integers(0, 6), rng.integers(1, 9)
        sims_a = rng.integers(0, 4, (m, ka)).astype(np.float32)  # few values: many ties
        sims_a[rng.random((m, ka)) < 0.3] = -np.inf  # empty slots
        sims_a = -np.sort(-sims_a, axis=1)
        sims_b = -np.sort(-rng.integers(0, 4, (m, kb)).astype(np.float32), axis=1)
        index_a, index_b = rng.integers(0, 100, (m, ka)), rng.integers(100, 200, (m, kb))
        sims, index = np.concatenate([sims_a, sims_b], 1), np.concatenate([index_a, index_b], 1)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        got_index, got_sims = knn.merge_lists(index_a, sims_a, index_b, sims_b, k)
        w = min(k, ka + kb)
        assert np.array_equal(got_index[:, :w], np.take_along_axis(index, order, 1))
        assert np.array_equal(got_sims[:, :w], np.take_along_axis(sims, order, 1))
        assert (got_index[:, w:] == knn.NO_NEIGHBOUR).all() and np.isneginf(got_sims[:, w:]).all()


def _counting_kernels(monkeypatch):
    """Count the blocks the numba kernels fold in, bf16-screened and fp32, so that a test knows
    the path it checks was taken."""
    from itemlens.store.graphs import knn_kernels

    folded = {"bf16": 0, "fp32": 0}
    merge = knn_kernels.merge_pairs

    def counting(X, S, rescore, *rest):
        folded["bf16" if rescore else "fp32"] += 1
        return merge(X, S, rescore, *rest)

    monkeypatch.setattr(knn_kernels, "merge_pairs", counting)
    return folded


@pytest.mark.parametrize("self_loops", [True, False])
def test_screened_and_fp32_kernel_blocks_give_the_lists_of_a_dense_search(self_loops, monkeypatch):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 64)).astype(np.float32)
    x[5] = 0  # no direction
    x[100:140] = x[99]  # 41 equal rows: more survivors than a row holds
    folded = _counting_kernels(monkeypatch)
    screened, s_scores = knn.exact_knn(x, 10, self_loops=self_loops, block=256, screen=True)
    assert folded["bf16"] > 40  # of 66 off-diagonal blocks (early ones may take fp32)
    folded.update(bf16=0, fp32=0)
    plain, p_scores = knn.exact_knn(x, 10, self_loops=self_loops, block=256, screen=False)
    assert folded["bf16"] == 0 and folded["fp32"] > 40
    s = _cos(np.where(np.arange(3000)[:, None] == 5, 1.0, x).astype(np.float64))
    s[5], s[:, 5] = -np.inf, -np.inf
    if not self_loops:
        np.fill_diagonal(s, -np.inf)
    reference = np.argsort(-s, axis=1, kind="stable")[:, :10]
    reference[5] = knn.NO_NEIGHBOUR
    # the equal rows, and the rows whose lists hold some of them, may hold any of them
    ties = np.isin(reference, np.arange(99, 140)).any(axis=1)
    ties[99:140] = True
    assert 41 <= ties.sum() < 300
    assert np.array_equal(screened[~ties], reference[~ties]) and np.array_equal(plain[~ties], reference[~ties])
    for lists in (screened, plain):
        assert all(set(lists[i]) <= set(range(99, 140)) for i in range(99, 140))
    expected = np.take_along_axis(s, reference, 1)
    for scores in (s_scores, p_scores):
        found = np.isfinite(expected)
        assert np.array_equal(np.isfinite(scores), found)
        assert np.abs(scores[found] - expected[found]).max() < 1e-5


@pytest.mark.parametrize("self_loops", [True, False])
def test_search_from_sources_equals_a_dense_search(self_loops, monkeypatch):
    """A refresh's one search: every row's best sources above its floor, and every source's own
    list, by bf16 screening and by fp32 products alike, as a dense search gives them."""
    rng = np.random.default_rng(11)
    n, k = 2500, 8
    x = rng.normal(size=(n, 48)).astype(np.float32)
    x[7] = 0  # no direction
    sources = np.sort(rng.choice(n, 120, replace=False))
    sources = np.union1d(sources, [7])  # a zero source: nobody's match
    s = _cos(np.where(np.arange(n)[:, None] == 7, 1.0, x).astype(np.float64))
    s[7], s[:, 7] = -np.inf, -np.inf
    if not self_loops:
        np.fill_diagonal(s, -np.inf)
    floor = np.quantile(s[:, sources], 0.97, axis=1).astype(np.float32)  # a few sources above it
    floor[:50] = np.inf  # rows that take nothing
    floor[50:60] = -np.inf  # rows that take any source
    floor[7] = np.inf  # (a refresh gives a zero row no floor)
    among = np.where(s[:, sources] >= floor[:, None], s[:, sources], -np.inf)
    want_rows = sources[np.argsort(-among, axis=1, kind="stable")[:, :k]]
    want_rows[~np.isfinite(np.sort(among, axis=1)[:, ::-1][:, :k])] = knn.NO_NEIGHBOUR
    want_own = np.argsort(-s[sources], axis=1, kind="stable")[:, :k]
    want_own[sources == 7] = knn.NO_NEIGHBOUR
    folded = _counting_kernels(monkeypatch)
    for screen in (True, False):
        (rows, _), (own, own_scores) = knn.search_from(
            x, sources, k, row_floor=floor, self_loops=self_loops, block=256, screen=screen
        )
        assert np.array_equal(rows, want_rows) and np.array_equal(own, want_own), screen
        expected = np.take_along_axis(s[sources], np.maximum(want_own, 0), 1)
        found = want_own >= 0
        assert np.abs(own_scores[found] - expected[found]).max() < 1e-5
    assert folded["bf16"] > 5 and folded["fp32"] > 5  # both ways were taken


def test_bf16_screening_error_bound_holds_for_every_pair():
    """The margin of row i bounds |bf16 product - exact product| against every row j (and so
    the screen drops no pair that fp32 would keep), also for rows built to round badly."""
    import torch

    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 96))
    x[0] = 0
    x[0, 0] = 1  # a basis vector: rounds exactly
    x[1] = 1 + 2.0**-9  # every coordinate half an ulp off
    x[2] = (1 + 2.0**-9) * np.sign(rng.normal(size=96))
    x[3] = x[1] * np.where(np.arange(96) % 2, 1, 1 + 2.0**-8)
    xu, _ = knn.unit(x.astype(np.float32))
    margins = knn.bf16_margins(xu)
    X16 = torch.from_numpy(xu).to(torch.bfloat16)
    approx = (X16 @ X16.T).double().numpy()  # what the screen reads (rounded to bf16)
    exact = xu.astype(np.float64) @ xu.T.astype(np.float64)
    error = np.abs(approx - exact)
    assert (error <= margins[:, None]).all() and (error <= margins[None, :]).all()
    assert margins.max() < 1.5 * 2.0**-8  # about one unit roundoff: few survivors


def test_the_bound_rounds_to_bf16_as_torch_does_and_unit_rows_are_unit():
    """bf16_margins rounds rows in numba: it must round every finite float32 as torch does,
    halfway cases included, or the bound would be about other numbers than the products."""
    import torch

    from itemlens.store.graphs import knn_kernels

    rng = np.random.default_rng(9)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    halfway = (bits & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    values = np.concatenate(
        [rng.normal(size=200_000).astype(np.float32), bits.view(np.float32), halfway.view(np.float32)]
    )
    values = values[np.isfinite(values)]
    rounded = knn_kernels.round_bf16(values)
    assert np.array_equal(
        rounded.view(np.uint32), torch.from_numpy(values).to(torch.bfloat16).float().numpy().view(np.uint32)
    )
    x = rng.normal(size=(50, 7)).astype(np.float32)
    x[3], x[4], x[5] = 0, np.nan, 3e38  # no direction, no length, float32-overflowing squares
    xu, valid = knn.unit(x)
    assert valid.tolist() == [i not in (3, 4) for i in range(50)] and np.array_equal(valid, knn.valid_rows(x))
    assert np.allclose(np.linalg.norm(xu[valid].astype(np.float64), axis=1), 1, atol=1e-6)
    assert not xu[~valid].any()


def test_bf16_floor_bits_compare_as_the_numbers_they_stand_for():
    import torch

    rng = np.random.default_rng(5)
    values = np.concatenate([rng.uniform(1e-4, 1.0, 2000), [2.0**-8, 0.5, 1.0, np.inf]])
    bits = knn._bf16_floor_bits(values.astype(np.float64))
    as_numbers = torch.from_numpy(bits).view(torch.bfloat16).double().numpy()
    assert (as_numbers <= values).all()  # a floor ...
    assert (values[:-1] - as_numbers[:-1] <= values[:-1] * 2.0**-7).all()  # ... one ulp at most
    assert knn._bf16_floor_bits(np.array([0.3, 0.0])) is None  # zero: no integer order
    assert knn._bf16_floor_bits(np.array([0.3, -0.1])) is None
    # every bf16 pattern against positive floors: integer order is number order
    every = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
    numbers = torch.from_numpy(every).view(torch.bfloat16).float().numpy()
    real = np.isfinite(numbers)
    for floor in bits[::200]:
        floor_number = float(torch.tensor([floor]).view(torch.bfloat16).float())
        assert np.array_equal((every >= floor)[real], (numbers >= floor_number)[real])


def test_zero_and_duplicate_vectors_give_no_nan(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x[3] = 0  # no direction: no neighbours, nobody's neighbour
    x[10] = x[11] = x[12]  # duplicates: neighbours of each other with cosine 1
    lens, ids = _store(tmp_path, {"emb": x}, 50)
    build(lens.uri, {"g": {"features": ["emb"], "k": 4, "self_loops": False}})
    lens.refresh()
    for preset in ("freedom", "lattice", "row", "cosine", "hypergraph"):
        matrix, _ = lens.graph("g", preset)
        assert np.isfinite(matrix.data).all(), preset
        assert matrix[3].nnz == 0 and matrix[:, 3].nnz == 0, preset
    near = dict(lens.neighbors("g", [ids[10]])[0])
    assert near[ids[11]] == pytest.approx(1.0, abs=1e-6) and near[ids[12]] == pytest.approx(1.0, abs=1e-6)
    assert lens.neighbors("g", [ids[3]]) == [[]]


def test_zero_vectors_have_no_neighbours_in_an_approximate_graph_and_its_refresh(tmp_path):
    """A third of the vectors are zero: more lists asked for than vectors with a direction still
    build, and a refresh (new items searched from the stored lists) leaves the zero ones empty,
    as a rebuild does."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x[:20] = 0
    lens, ids = _store(tmp_path, {"emb": x}, 60)
    spec = {"g": {"features": ["emb"], "k": 3, "method": "approximate", "nlist": 50, "self_loops": False}}
    build(lens.uri, spec)
    lens.refresh()
    assert lens.neighbors("g", ids[:20]) == [[]] * 20
    assert all(len(row) == 3 for row in lens.neighbors("g", ids[20:]))
    lens.put_vectors("emb", [f"new{i}" for i in range(10)], rng.normal(size=(10, 8)).astype(np.float32))
    build(lens.uri, spec)
    lens.refresh()
    assert lens.neighbors("g", ids[:20]) == [[]] * 20
    lens.put_vectors("none", ids, np.zeros_like(x))
    with pytest.raises(ConfigError, match="every sampled vector is zero"):
        build(lens.uri, {"h": {"features": ["none"], "k": 3, "method": "approximate"}})


def test_neighbors_are_the_cosine_top_k(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    lens, ids = _store(tmp_path, {"emb": x}, 300)
    reports, _ = build(lens.uri, {"g": {"features": ["emb"], "k": 5, "self_loops": False}})
    lens.refresh()
    s = _cos(x.astype(np.float64))
    np.fill_diagonal(s, -np.inf)
    for item, row in zip(ids[:20], lens.neighbors("g", ids[:20], k=3)):
        j = ids.index(item)
        best = np.argsort(-s[j])[:3]
        assert [n for n, _ in row] == [ids[b] for b in best]
        assert np.allclose([w for _, w in row], s[j, best], atol=1e-5)
    stats = lens.graph_info("g").stats["inputs"]["emb"]
    assert stats["edges"] == 300 * 5 and 0 < stats["mutual_share"] < 1
    assert sum(stats["in_degree_histogram"]) == 300
    assert lens.graph_plot("g")[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError):
        lens.neighbors("g", ["nobody"])


def test_approximate_graph_reports_recall_against_exact(tmp_path):
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(40, 32))
    x = (centers[rng.integers(0, 40, 4000)] + 0.3 * rng.normal(size=(4000, 32))).astype(np.float32)
    exact, _ = knn.exact_knn(x, 10)
    found, _, params = knn.approximate_knn(x, 10, nprobe=8)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall > 0.8 and params["kind"] == "IVF_FLAT"
    lens, ids = _store(tmp_path, {"emb": x, "other": x[:, :8]}, 4000)
    spec = {"g": {"features": ["emb", "other"], "k": 10, "method": "approximate", "self_loops": False}}
    reports, _ = build(lens.uri, spec)
    assert 0.8 < reports["g"].stats["recall_at_k"] <= 1.0
    # one input changed for 40 items: they are searched again with the stored index (and the
    # few lists left unsure of their first k), the other input keeps its lists, and the
    # statistics are still those of the stored graph
    lens.put_vectors("emb", ids[:40], x[40:80])
    reports, _ = build(lens.uri, spec)
    assert 40 <= reports["g"].recomputed["emb"] < 400 and reports["g"].recomputed["other"] == 0
    assert reports["g"].merged["other"] == 0 and reports["g"].merged["emb"] > 0
    lens.refresh()
    stored = lens._dataset(lens.graph_info("g").table).to_table()
    stats = graph_stats(stored, GraphSpec(**spec["g"]))
    assert {k: v for k, v in reports["g"].stats.items() if k not in ("recall_at_k", "index")} == stats
    assert stats["inputs"]["other"]["edges"] == 4000 * 10 and 0.8 < reports["g"].stats["recall_at_k"] <= 1.0


def test_cooccurrence_from_interactions(tmp_path):
    lens, ids = _store(tmp_path, {"emb": np.eye(6, dtype=np.float32) + 0.01}, 6)
    interactions = tmp_path / "interactions.csv"
    interactions.write_text(
        "user_id,item_id\nu1,item0000\nu1,item0001\nu2,item0000\nu2,item0001\nu2,item0002\n"
        "u3,item0002\nu3,item0003\nu3,unknown\nu1,item0000\n"
    )
    build(
        lens.uri,
        {
            "co": {
                "features": ["emb"],
                "k": 2,
                "preset": "cosine",
                "interactions": {"path": str(interactions), "top_n": 2, "weight": 1.0},
            }
        },
    )
    lens.refresh()
    table = lens._dataset(lens.graph_info("co").table).to_table().to_pylist()
    lists = {r["item_id"]: (r["neighbors"], r["scores"]) for r in table if r["feature"] == "cooccurrence"}
    assert lists["item0000"] == ([1, 2], [2.0, 1.0])  # u1 and u2 had 0 and 1 (u1's repeat counted once)
    assert lists["item0003"] == ([2], [1.0]) and "item0004" not in lists
    with pytest.raises(ConfigError, match="no column 'user'"):
        build(
            lens.uri, {"bad": {"features": ["emb"], "interactions": {"path": str(interactions), "user_column": "user"}}}
        )


@pytest.mark.parametrize("method", ["exact", "approximate"])
def test_a_graph_with_interactions_counts_and_describes_the_cooccurrence_input(tmp_path, method):
    """The item count and statistics cover every input, co-occurrence included, whichever the
    method: the statistics equal those of the stored table read back."""
    lens, ids = _store(tmp_path, {"emb": np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)}, 6)
    interactions = tmp_path / "interactions.csv"
    interactions.write_text("user_id,item_id\nu1,item0000\nu1,item0001\nu2,item0001\nu2,item0005\n")
    spec = {"co": {"features": ["emb"], "k": 2, "method": method, "interactions": {"path": str(interactions)}}}
    report = build(lens.uri, spec)[0]["co"]
    lens.refresh()
    stored = lens._dataset(lens.graph_info("co").table).to_table()
    assert set(report.stats["inputs"]) == {"emb", "cooccurrence"}
    assert {k: v for k, v in report.stats.items() if k not in ("recall_at_k", "index")} == graph_stats(
        stored, GraphSpec(**spec["co"])
    )
    assert report.stats["inputs"]["cooccurrence"]["edges"] == 4  # 0-1, 1-0, 1-5, 5-1
    assert report.items == len(set(stored.column("item_id").to_pylist())) == lens.graph_info("co").count


def test_interaction_ids_that_look_like_numbers_stay_text(tmp_path):
    StoreWriter.open(tmp_path / "lens").close()
    lens = itemlens.connect(tmp_path / "lens")
    ids = ["0001", "0002", "0003", "0004"]
    lens.put_vectors("emb", ids, np.eye(4, dtype=np.float32) + 0.01)
    interactions = tmp_path / "interactions.csv"
    interactions.write_text("user_id,item_id\n007,0001\n007,0002\n008,0002\n008,0003\n")
    build(lens.uri, {"co": {"features": ["emb"], "k": 2, "interactions": {"path": str(interactions)}}})
    lens.refresh()
    table = lens._dataset(lens.graph_info("co").table).to_table().to_pylist()
    lists = {r["item_id"]: r["neighbors"] for r in table if r["feature"] == "cooccurrence"}
    assert lists == {"0001": [1], "0002": [0, 2], "0003": [1]}


def test_a_hypergraph_keeps_every_knn_edge_even_at_cosine_zero(tmp_path):
    """Orthogonal items: each one's 3 nearest have cosine 0, and are still its hyperedge."""
    n = 6
    lens, ids = _store(tmp_path, {"emb": np.eye(n, dtype=np.float32)}, n)
    build(lens.uri, {"g": {"features": ["emb"], "k": 3, "self_loops": False}})
    lens.refresh()
    h = np.zeros((n, n))  # hyperedge j: item j's kNN list, as stored
    for j, row in enumerate(lens.neighbors("g", ids)):
        assert len(row) == 3
        for neighbour, _ in row:
            h[ids.index(neighbour), j] = 1
    dv, de = h.sum(1), h.sum(0)
    expected = (dv**-0.5)[:, None] * (h / de[None, :]) @ h.T * (dv**-0.5)[None, :]
    got = lens.graph("g", "hypergraph")[0].toarray()
    assert np.array_equal(got != 0, expected != 0) and np.abs(got - expected).max() < 1e-9
    assert lens.graph("g", "freedom")[0].nnz > 0


def test_graph_exports_load_with_their_libraries(tmp_path):
    import torch

    rng = np.random.default_rng(5)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    lens, ids = _store(tmp_path, {"emb": x}, 100)
    lens.put_vectors("other", ["extra"], np.ones((1, 2), np.float32))  # an item with no list
    build(lens.uri, {"g": {"features": ["emb"], "k": 4}})
    lens.refresh()
    matrix, order = lens.graph("g")

    # "extra" has no list: an empty row only when asked for (fill 0)
    with pytest.raises(ConfigError, match=r"graph g@v1 has no neighbours for 1 of 101 rows: 'extra'"):
        lens.export("pyg", tmp_path / "pyg")
    lens.export("pyg", tmp_path / "pyg", fill=0)
    edge_index = np.load(tmp_path / "pyg" / "g_freedom_edge_index.npy")
    weight = np.load(tmp_path / "pyg" / "g_freedom_edge_weight.npy")
    rebuilt = sp.csr_matrix((weight, (edge_index[0], edge_index[1])), shape=matrix.shape)
    assert abs(rebuilt - matrix).max() < 1e-6 and edge_index.shape == (2, 400)

    # the preset is in the file name: two presets in one folder do not overwrite each other
    lens.export("scipy-npz", tmp_path / "npz", preset="lattice", fill=0)
    lens.export("scipy-npz", tmp_path / "npz", fill=0)
    assert abs(sp.load_npz(tmp_path / "npz" / "g_lattice.npz") - lens.graph("g", "lattice")[0]).max() < 1e-6
    assert abs(sp.load_npz(tmp_path / "npz" / "g_freedom.npz") - matrix).max() < 1e-6

    lens.export("mmrec-adj", tmp_path / "mmrec", store_order=True, fill=0)
    adj = torch.load(tmp_path / "mmrec" / "g_freedom_adj_4.pt", weights_only=True)
    assert adj.is_sparse and abs(sp.csr_matrix(adj.to_dense().numpy()) - matrix).max() < 1e-6

    wanted = [ids[7], "extra", "not-in-store", ids[2]]
    with pytest.raises(ConfigError, match=r"1 of 4 ids of the ids given are not in the store .*'not-in-store'"):
        lens.export("scipy-npz", tmp_path / "given", ids=wanted)
    report = lens.export("scipy-npz", tmp_path / "given", ids=wanted, fill=0)
    given = sp.load_npz(tmp_path / "given" / "g_freedom.npz").toarray()
    dense = matrix.toarray()
    assert given.shape == (4, 4) and given[0, 3] == pytest.approx(dense[7, 2], abs=1e-6)
    assert not given[1].any() and not given[2].any()
    manifest = json.loads((tmp_path / "given" / "export.json").read_text())["exports"]["scipy-npz"]
    assert manifest["artifacts"]["g"]["filled"] == report.filled["g"] == 2 + int(not given[3].any())
    with pytest.raises(ConfigError, match="the only fill of a graph row is none"):
        lens.export("scipy-npz", tmp_path / "other", ids=wanted, fill=float("nan"))


def test_command_line_graph_show_and_refresh(tmp_path, capsys):
    rng = np.random.default_rng(6)
    lens, ids = _store(tmp_path, {"text": rng.normal(size=(120, 8)).astype(np.float32)}, 120)
    config = tmp_path / "lens.yaml"
    config.write_text(
        textwrap.dedent("""
        features:
          text: {encoder: sentence-transformers, model: all-MiniLM-L6-v2, input: {template: "{title}"}}
        graphs:
          knn: {features: [text], k: 5, preset: lattice}
    """)
    )
    assert cli(["graph", lens.uri, "--config", str(config)]) == 0
    assert "knn@v1: built, 120 items" in capsys.readouterr().out
    lens.put_vectors("text", ids[:3], rng.normal(size=(3, 8)).astype(np.float32))
    assert cli(["graph", lens.uri, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "knn@v1: refreshed, 120 items; recomputed" in out
    assert cli(["show", lens.uri, "--plots", str(tmp_path / "plots")]) == 0
    shown = capsys.readouterr().out
    assert "knn@v1*" in shown and "lattice" in shown and "mutual" in shown
    assert (tmp_path / "plots" / "knn_degrees.png").stat().st_size > 1000
    assert cli(["export", lens.uri, "--format", "pyg", "--out", str(tmp_path / "x"), "--preset", "row"]) == 0
    weights = np.load(tmp_path / "x" / "knn_row_edge_weight.npy")
    rows = np.load(tmp_path / "x" / "knn_row_edge_index.npy")[0]
    assert np.allclose(np.bincount(rows, weights), 1.0)  # rows sum to 1
    with pytest.raises(ConfigError, match=r"graphs.g.features: 'image' is not a feature"):
        load_config(
            {
                "features": {"text": {"encoder": "sentence-transformers", "model": "m", "input": {"template": "{t}"}}},
                "graphs": {"g": {"features": ["image"]}},
            }
        )


@pytest.mark.parametrize("method", [{}, {"method": "approximate", "nlist": 1, "nprobe": 1}])
def test_refreshes_that_delete_add_and_delete_again_keep_every_list_exact(tmp_path, method):
    """A list an earlier refresh shortened is not a list that held every item, and what a list
    vouched for shrinks with what leaves it: three refreshes in a row (deletions, additions,
    deletions) leave every first k, and every prefix the graph says is exact, equal to a
    brute-force search (an approximate graph of one IVF list searches exactly)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    lens, ids = _store(tmp_path, {"emb": x}, 300)
    vectors = dict(zip(ids, x))
    spec = {"g": {"features": ["emb"], "k": 3, "depth": 6, "self_loops": False, **method}}
    build(lens.uri, spec)

    def delete(count):
        gone = [ids_now[i] for i in rng.choice(len(ids_now), count, replace=False)]
        with StoreWriter.open(lens.uri) as writer:
            version = writer.base.feature_version("emb")
            writer.remove_items([version], gone)
            writer.publish(catalog=dict(writer.base.catalog), report={"summary": "delete"}, current={"emb": version})
        for item in gone:
            del vectors[item]

    for step in ("delete", "add", "delete"):
        ids_now = list(vectors)
        if step == "delete":
            delete(60)
        else:
            new = rng.normal(size=(60, 8)).astype(np.float32)
            lens.put_vectors("emb", [f"new{i}" for i in range(60)], new)
            vectors.update(zip([f"new{i}" for i in range(60)], new))
        build(lens.uri, spec)
        lens.refresh()
        table = lens._dataset(lens.graph_info("g").table).to_table().to_pylist()
        index = {r["item_id"]: r["item_index"] for r in table}
        order = sorted(vectors, key=index.get)
        s = _cos(np.stack([vectors[i] for i in order]).astype(np.float64))
        np.fill_diagonal(s, -np.inf)
        truth = {order[a]: [index[order[b]] for b in np.argsort(-s[a])[:6]] for a in range(len(order))}
        for row in table:
            assert row["neighbors"][:3] == truth[row["item_id"]][:3], (step, row["item_id"])
            assert row["neighbors"][: row["exact"]] == truth[row["item_id"]][: row["exact"]], (step, row["item_id"])


@pytest.mark.parametrize("self_loops", [True, False])
def test_an_approximate_refresh_equals_a_rebuild_with_the_same_index_and_touches_only_affected_lists(
    tmp_path, self_loops
):
    """2% of the items change: they are searched with the stored index; every list's vouched
    prefix (``exact``), and the whole list of every item searched, equal a rebuild with that
    index; lists the refresh did not count as touched are stored as they were."""
    import lance

    from itemlens.store.graphs import ivf
    from itemlens.store.graphs.build import _stored_centroids
    from itemlens.store.semantic_ids.build import _commit_overwrite
    from itemlens.store.vectors import LocalRunner, feature_rows

    n = 20_000
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(100, 24))
    x = (centres[rng.integers(0, 100, n)] + 0.4 * rng.normal(size=(n, 24))).astype(np.float32)
    lens, ids = _store(tmp_path, {"emb": x}, n)
    spec = {"g": {"features": ["emb"], "k": 10, "method": "approximate", "nprobe": 6, "self_loops": self_loops}}
    build(lens.uri, spec)
    lens.refresh()
    before = lens._dataset(lens.graph_info("g").table).to_table().sort_by("item_index")

    changed = np.sort(rng.choice(n, n // 50, replace=False))
    moved_to = x[rng.choice(n, len(changed), replace=False)] + 0.05 * rng.normal(size=(len(changed), 24))
    lens.put_vectors("emb", [ids[i] for i in changed], moved_to.astype(np.float32))  # (no two alike: no ties)
    reports, _ = build(lens.uri, spec)
    report = reports["g"]
    lens.refresh()
    after = lens._dataset(lens.graph_info("g").table).to_table().sort_by("item_index")

    # a rebuild with the stored index (centroids), over the same vectors
    centroids = _stored_centroids(lens.location.table_uri("graphivf__g__v1"), None)["emb"]
    with StoreWriter.open(lens.uri) as writer:
        version = writer.base.feature_version("emb")
        rows = feature_rows(writer, version, writer.base.tables[version.table], LocalRunner())
        target = str(tmp_path / "rebuilt.lance")
        lists = ivf.build_lists(LocalRunner(), "emb", rows, GraphSpec(**spec["g"]), target, None, n, centroids)
        _commit_overwrite(target, lists.fragments, ivf.APPROX_SCHEMA, None)
    rebuilt = lance.dataset(target).to_table().sort_by("item_index")

    got, want = after.column("neighbors").to_pylist(), rebuilt.column("neighbors").to_pylist()
    exact = after.column("exact").to_numpy()
    depth = GraphSpec(**spec["g"]).list_depth
    searched = exact == depth
    assert searched[changed].all()
    for i in np.flatnonzero(searched):
        assert got[i] == want[i]  # searched: the rebuild's list
    for i in range(n):
        assert got[i][: exact[i]] == want[i][: exact[i]]  # every list: its vouched prefix
    assert (exact >= 10).all()

    # only the affected lists were touched, and counted
    old = before.column("neighbors").to_pylist()
    differs = sum(a != b for a, b in zip(old, got))
    touched = report.recomputed["emb"] + report.merged["emb"]
    # (a changed item leaves about depth lists and enters about as many: here half the lists)
    assert report.recomputed["emb"] >= len(changed) and differs <= touched < n
    assert report.recomputed["emb"] < n // 10  # searched: the changed items and a few more
    kept = np.setdiff1d(np.arange(n), changed)
    assert after.column("probes").take(pa.array(kept)).equals(before.column("probes").take(pa.array(kept)))
