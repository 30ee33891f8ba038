"""``itemlens diff``: per-item neighbour overlap between two feature versions or snapshots,
checked against a direct numpy computation. No Ray needed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

import itemlens
from itemlens.errors import ConfigError, UnknownFeatureError
from itemlens.store.diff import compare_lists, diff, diff_store, parse_side
from itemlens.store.writer import StoreWriter
from itemlens.workflows.cli import main as cli

N, DIM, K = 1500, 24, 10


def _direct(x_a: np.ndarray, x_b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Jaccard@k and Spearman's rho of the shared neighbours, written out the slow way: dense
    float64 cosine matrices, a full argsort per row, Python sets, scipy's spearmanr."""

    def top(x):
        u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
        s = u @ u.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1, kind="stable")[:, :k]

    a, b = top(x_a), top(x_b)
    jaccard, rho = [], []
    for row_a, row_b in zip(a.tolist(), b.tolist()):
        shared = [j for j in row_a if j in set(row_b)]
        jaccard.append(len(set(row_a) & set(row_b)) / len(set(row_a) | set(row_b)))
        rho.append(
            spearmanr([row_a.index(j) for j in shared], [row_b.index(j) for j in shared]).statistic
            if len(shared) >= 2
            else np.nan
        )
    return np.array(jaccard), np.array(rho)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One feature, ``emb``, in five versions (one snapshot each): v1 random vectors; v2 the
    same vectors under another spec; v3 v1's rows shuffled among the items; v4 v1 plus noise;
    v5 v1 in float16 on the first half of the items only."""
    uri = tmp_path_factory.mktemp("diff") / "lens"
    StoreWriter.open(uri).close()
    rng = np.random.default_rng(7)
    ids = [f"item-{i:05d}" for i in range(N)]
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    lens = itemlens.connect(uri)
    lens.put_vectors("emb", ids, x, spec={"model": "one"})
    lens.put_vectors("emb", ids, x, spec={"model": "two"})
    lens.put_vectors("emb", ids, x[rng.permutation(N)], spec={"model": "shuffled"})
    noisy = x + 0.35 * rng.normal(size=x.shape).astype(np.float32)
    lens.put_vectors("emb", ids, noisy, spec={"model": "noisy"})
    lens.put_vectors("emb", ids[: N // 2], x[: N // 2].astype(np.float16), spec={"model": "half"})
    lens.put_captions("caption", ids[:5], ["a", "b", "c", "d", "e"], spec={"model": "writer"})
    return {"uri": uri, "ids": ids, "x": x, "noisy": noisy}


def _aligned(result, ids: list[str]) -> np.ndarray:
    """Positions of ``ids`` in the result's order of compared items."""
    position = {item: n for n, item in enumerate(result.ids)}
    return np.array([position[i] for i in ids])


def test_identical_versions_give_jaccard_1_for_every_item(store):
    result = diff_store(store["uri"], "emb@v1", "emb@v2", k=K)
    assert len(result.ids) == N and result.k == K
    assert np.all(result.jaccard == 1.0) and np.all(result.spearman == 1.0) and np.all(result.shared == K)
    summary = result.summary()
    assert summary["jaccard"]["mean"] == 1.0 and summary["identical_sets"] == N and summary["disjoint_sets"] == 0


def test_shuffled_vectors_give_near_0_and_both_measures_equal_a_direct_numpy_computation(store):
    lens = itemlens.connect(store["uri"])
    shuffled = diff(lens, "emb@v1", lens, "emb@v3", k=K)
    assert shuffled.summary()["jaccard"]["mean"] < 0.02  # chance: about k / N = 0.007
    noisy = diff(lens, "emb@v1", lens, "emb@v4", k=K)
    assert 0.2 < noisy.summary()["jaccard"]["mean"] < 0.9  # a real but partial change
    for result, second in ((shuffled, "emb@v3"), (noisy, "emb@v4")):
        expected_j, expected_rho = _direct(lens.vectors("emb@v1", store["ids"]), lens.vectors(second, store["ids"]), K)
        order = _aligned(result, store["ids"])
        np.testing.assert_allclose(result.jaccard[order], expected_j, rtol=0, atol=1e-12)
        np.testing.assert_allclose(result.spearman[order], expected_rho, rtol=0, atol=1e-9, equal_nan=True)
    # the items that moved most come first: lowest Jaccard
    movers = noisy.movers(20)
    assert [m["jaccard"] for m in movers] == sorted(m["jaccard"] for m in movers)
    assert movers[0]["jaccard"] == pytest.approx(np.nanmin(noisy.jaccard))
    assert len(movers[0]["neighbours_a"]) == K and len(movers[0]["neighbours_b"]) == K


def test_compare_lists_counts_missing_neighbours_and_undefined_correlation():
    a = np.array([[1, 2, 3], [1, 2, 3], [4, 5, 6], [-1, -1, -1], [1, 2, -1]])
    b = np.array([[3, 2, 1], [1, 7, 8], [7, 8, 9], [-1, -1, -1], [2, 1, 9]])
    jaccard, rho, shared = compare_lists(a, b)
    np.testing.assert_allclose(jaccard, [1.0, 1 / 5, 0.0, np.nan, 2 / 3], equal_nan=True)
    np.testing.assert_allclose(rho, [-1.0, np.nan, np.nan, np.nan, -1.0], equal_nan=True)
    assert shared.tolist() == [3, 1, 0, 0, 2]


def test_a_sample_gives_the_full_comparisons_rows(store):
    lens = itemlens.connect(store["uri"])
    full = diff(lens, "emb@v1", lens, "emb@v4", k=K)
    sample = diff(lens, "emb@v1", lens, "emb@v4", k=K, sample=200, seed=3)
    assert sample.sampled and len(sample.ids) == 200 and len(set(sample.ids)) == 200
    order = _aligned(full, sample.ids)
    np.testing.assert_array_equal(sample.jaccard, full.jaccard[order])
    np.testing.assert_array_equal(sample.spearman, full.spearman[order])


def test_items_on_one_side_only_are_left_out(store):
    result = diff_store(store["uri"], "emb@v1", "emb@v5", k=K)
    assert len(result.pool) == N // 2 and result.only_a == N - N // 2 and result.only_b == 0
    # float16 rows of the same vectors: nearly every list is the same
    assert result.summary()["jaccard"]["mean"] > 0.95


def test_one_feature_in_two_snapshots(store, tmp_path):
    uri = tmp_path / "lens"
    StoreWriter.open(uri).close()
    lens = itemlens.connect(uri)
    rng = np.random.default_rng(1)
    ids = [f"i{i:04d}" for i in range(400)]
    x = rng.normal(size=(400, 8)).astype(np.float32)
    lens.put_vectors("emb", ids, x, spec={"model": "m"})
    changed = x.copy()
    changed[:40] = rng.normal(size=(40, 8))  # 40 items re-encoded by a "refresh"
    lens.put_vectors("emb", ids, changed, spec={"model": "m"})  # the same version, a new snapshot
    assert [f.qualified for f in itemlens.connect(uri).features()] == ["emb@v1"]
    result = diff_store(uri, "emb@s1", "emb@s2", k=5)
    assert result.a == "emb@v1 (snapshot 1)" and result.b == "emb@v1 (snapshot 2)"
    moved = {m["item_id"] for m in result.movers(40)}
    assert len(moved & set(ids[:40])) >= 30  # the changed items moved most
    expected_j, _ = _direct(x, changed, 5)
    np.testing.assert_allclose(result.jaccard[_aligned(result, ids)], expected_j, atol=1e-12)
    with pytest.raises(ConfigError, match="same vectors"):
        diff_store(uri, "emb@v1@s2", "emb@s2", k=5)


def test_sides_are_written_clearly_and_ambiguous_or_wrong_ones_are_refused(store):
    assert (parse_side("text").feature, parse_side("text").snapshot) == ("text", None)
    assert (parse_side("text@v2").feature, parse_side("text@v2").snapshot) == ("text@v2", None)
    assert (parse_side("text@s5").feature, parse_side("text@s5").snapshot) == ("text", 5)
    assert (parse_side("text@v2@s5").feature, parse_side("text@v2@s5").snapshot) == ("text@v2", 5)
    with pytest.raises(ConfigError, match=r"ambiguous.*text@v3.*text@s3"):
        parse_side("text@3")
    for bad in ("text@", "text@x1", "text@s5@v2", "@v1", "te xt", "text@v1@v2"):
        with pytest.raises(ConfigError, match="NAME@vN"):
            parse_side(bad)
    with pytest.raises(UnknownFeatureError, match="emb@v1"):
        diff_store(store["uri"], "nope", "emb@v1")
    with pytest.raises(UnknownFeatureError):
        diff_store(store["uri"], "emb@v9", "emb@v1")
    with pytest.raises(ConfigError, match="captions"):
        diff_store(store["uri"], "caption", "emb@v1")
    with pytest.raises(ConfigError, match="same vectors"):
        diff_store(store["uri"], "emb@v1", "emb@v1")


def test_command_line_prints_the_summary_and_writes_json_csv_and_png(store, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["diff", str(store["uri"]), "emb@v1", "emb@v4", "--k", "5", "--out", str(out), "--movers", "3"]) == 0
    printed = capsys.readouterr().out
    lens = itemlens.connect(store["uri"])
    expected_j, _ = _direct(lens.vectors("emb@v1", store["ids"]), lens.vectors("emb@v4", store["ids"]), 5)
    assert f"Jaccard@5: mean {expected_j.mean():.3f}" in printed and "moved most" in printed
    report = json.loads((out / "diff.json").read_text())
    assert report["k"] == 5 and report["items_compared"] == N and len(report["movers"]) == 50
    assert report["jaccard"]["mean"] == pytest.approx(expected_j.mean(), abs=1e-4)
    assert report["jaccard"]["median"] == pytest.approx(np.median(expected_j), abs=1e-4)
    rows = (out / "items.csv").read_text().splitlines()
    assert rows[0] == "item_id,jaccard,spearman,shared" and len(rows) == N + 1
    assert (out / "histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert cli(["diff", str(store["uri"]), "emb@3", "emb@v1"]) == 2
    assert "ambiguous" in capsys.readouterr().err
