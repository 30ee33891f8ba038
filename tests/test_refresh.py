"""Incremental refresh: a changed catalog costs what changed, loses and duplicates nothing, and
gives the vectors a full ingest of the new catalog would; deltas; readers on older snapshots."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import itemlens
from itemlens.errors import CatalogError
from itemlens.workflows.ingest import ingest

from .conftest import image_spec, text_spec, write_jsonl

pytestmark = pytest.mark.integration

N = 40


def _image(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).resize((48, 40), Image.NEAREST).save(path, quality=95)
    return path.name


def _catalog(folder: Path, n: int = N) -> list[dict]:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    words = "red blue green lamp bag bottle soft warm steel glass cotton small large".split()
    rng = random.Random(0)
    return [
        {
            "item_id": f"item-{i:04d}",
            "title": " ".join(rng.sample(words, 4)) + f" {i}",
            "image": "images/" + _image(folder / "images" / f"{i:04d}.jpg", i),
        }
        for i in range(n)
    ]


def _config(minilm_path, tiny_clip) -> dict:
    return {
        "features": {
            "text": text_spec(minilm_path, template="{title}"),
            "image": image_spec(tiny_clip, column="image"),
        },
        "decode": {"batch_size": 8, "text_batch_size": 16},
    }


def _logged(folder: Path, feature: str, run_id: str) -> list[str]:
    return [
        line.strip()
        for p in sorted(folder.glob(f"{feature}.{run_id}.encoded.*.log"))
        for line in p.read_text().splitlines()
    ]


def _read(folder: Path, feature: str, run_id: str) -> list[str]:
    return [
        Path(line.strip()).name
        for p in sorted(folder.glob(f"{feature}.{run_id}.reads.*.log"))
        for line in p.read_text().splitlines()
    ]


def test_a_refresh_encodes_exactly_what_changed_and_equals_a_full_ingest(ray_session, tmp_path, minilm_path, tiny_clip):
    folder = tmp_path / "catalog"
    rows = _catalog(folder)
    config = _config(minilm_path, tiny_clip)
    store, log = tmp_path / "lens", tmp_path / "encode-log"
    first = ingest(write_jsonl(folder / "v1.jsonl", rows), config, store, progress=False, encode_log=log)
    assert first.snapshot == 1 and sorted(_logged(log, "text", first.run_id)) == [r["item_id"] for r in rows]
    before = itemlens.connect(store)
    old_text = before.vectors("text", [r["item_id"] for r in rows])

    # 5% of titles change, 2% of images (new bytes at the same path), 1% are deleted, 3% are new
    rng = random.Random(1)
    ids = [r["item_id"] for r in rows]
    retitled = set(rng.sample(ids, 5))
    reimaged = set(rng.sample(sorted(set(ids) - retitled), 2))
    deleted = set(rng.sample(sorted(set(ids) - retitled - reimaged), 1))
    changed_rows = []
    for row in rows:
        if row["item_id"] in deleted:
            continue
        row = dict(row)
        if row["item_id"] in retitled:
            row["title"] += " (new edition)"
        if row["item_id"] in reimaged:
            _image(folder / row["image"], seed=1000 + int(row["item_id"][-4:]))
        changed_rows.append(row)
    added = _catalog(tmp_path / "more", n=N + 3)[N:]
    for row in added:
        target = folder / "images" / Path(row["image"]).name
        target.write_bytes((tmp_path / "more" / row["image"]).read_bytes())
    new_catalog = write_jsonl(folder / "v2.jsonl", changed_rows + added)
    new_ids = {r["item_id"] for r in added}

    # --dry-run says what the refresh will do, per feature and reason, and does nothing
    from itemlens.workflows.plan import plan

    planned = plan(new_catalog, config, store)
    assert (planned.items_seen, planned.new_items, planned.removed_items) == (N + 2, 3, 1)
    assert {n: (f.new, f.changed, f.dependent, f.unchanged) for n, f in planned.features.items()} == {
        "text": (3, 5, 0, N - 6),
        "image": (3, 2, 0, N - 3),
    }
    assert sorted(planned.features["text"].examples["changed"]) == sorted(retitled)
    assert itemlens.connect(store).snapshot == 1  # nothing published ...
    assert {p.name.split(".")[1] for p in log.glob("*.log")} == {first.run_id}  # ... nothing encoded

    refresh = ingest(new_catalog, config, store, progress=False, encode_log=log)
    assert refresh.snapshot == 2
    assert (refresh.items_seen, refresh.new_items, refresh.removed_items) == (N + 3 - 1, 3, 1)
    text, image = refresh.features["text"], refresh.features["image"]
    assert (text.encoded, text.inserted, text.updated, text.errors) == (8, 3, 5, 0)
    assert (image.encoded, image.inserted, image.updated, image.errors) == (5, 3, 2, 0)
    # ... and what the encoder actors themselves logged agrees, id for id
    assert sorted(_logged(log, "text", refresh.run_id)) == sorted(retitled | new_ids)
    assert sorted(_logged(log, "image", refresh.run_id)) == sorted(reimaged | new_ids)
    # unchanged images were not even read: their size and mtime matched the stored media key
    by_id = {r["item_id"]: Path(r["image"]).name for r in changed_rows + added}
    assert sorted(_read(log, "image", refresh.run_id)) == sorted(by_id[i] for i in reimaged | new_ids)
    assert len(_read(log, "image", first.run_id)) == N

    # the refreshed store holds what a full ingest of the new catalog into an empty store holds
    fresh = ingest(new_catalog, config, tmp_path / "fresh", progress=False)
    assert fresh.features["text"].encoded == N + 2
    lens, full = itemlens.connect(store), itemlens.connect(tmp_path / "fresh")
    current = sorted(r["item_id"] for r in changed_rows + added)
    for feature in ("text", "image"):
        assert sorted(lens.ids(feature)) == current
        a, b = lens.vectors(feature, current), full.vectors(feature, current)
        assert np.min(np.sum(a * b, axis=1)) >= 0.99999
    assert not lens.errors().num_rows

    # a reader that stayed on snapshot 1 sees it unchanged, deleted item and old titles included
    assert before.snapshot == 1
    np.testing.assert_array_equal(before.vectors("text", ids), old_text)
    assert sorted(itemlens.connect(store, snapshot=1).ids("text")) == ids


def test_a_delta_upserts_and_deletes_and_leaves_the_rest(ray_session, tmp_path, minilm_path, tiny_clip):
    folder = tmp_path / "catalog"
    rows = _catalog(folder, n=12)
    config = {"features": {"text": text_spec(minilm_path, template="{title}")}}
    store = tmp_path / "lens"
    ingest(write_jsonl(folder / "full.jsonl", rows), config, store, progress=False)

    delta = write_jsonl(
        folder / "delta.jsonl",
        [
            {"item_id": "item-0001", "title": "a brand new title", "_op": "upsert"},
            {"item_id": "item-0100", "title": "an item that was not there"},  # _op missing: upsert
            {"item_id": "item-0002", "_op": "delete"},
            {"item_id": "item-0003", "_op": "DELETE"},
        ],
    )
    report = ingest(delta, config, store, progress=False, delta=True)
    assert report.delta and (report.items_seen, report.new_items, report.removed_items) == (2, 1, 2)
    assert report.features["text"].encoded == 2
    lens = itemlens.connect(store)
    expected = sorted({r["item_id"] for r in rows} - {"item-0002", "item-0003"} | {"item-0100"})
    assert sorted(lens.ids("text")) == expected
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_path, device="cpu")
    got = lens.vectors("text", ["item-0001", "item-0005"])
    want = model.encode(["a brand new title", rows[5]["title"]], normalize_embeddings=True)
    assert np.min(np.sum(got * want, axis=1)) >= 0.99999

    # a delta split over files, only the second with an _op column: its deletions still count
    from itemlens.workflows.catalog import CatalogSource
    from itemlens.workflows.config import CatalogConfig

    write_jsonl(folder / "split" / "part-0.jsonl", [{"item_id": "item-0006", "title": "renamed"}])
    write_jsonl(folder / "split" / "part-1.jsonl", [{"item_id": "item-0007", "_op": "delete"}])
    split = CatalogSource.open(folder / "split", CatalogConfig(), delta=True)
    assert split.deleted_ids() == ["item-0007"]
    assert split.read(["item_id", "title"]).take_all() == [{"item_id": "item-0006", "title": "renamed"}]

    clash = write_jsonl(
        folder / "clash.jsonl", [{"item_id": "item-0004", "title": "x"}, {"item_id": "item-0004", "_op": "delete"}]
    )
    with pytest.raises(CatalogError, match="both upserts and deletes 'item-0004'"):
        ingest(clash, config, store, progress=False, delta=True)
    bad = write_jsonl(folder / "bad.jsonl", [{"item_id": "item-0004", "_op": "remove"}])
    with pytest.raises(CatalogError, match="'remove'"):
        ingest(bad, config, store, progress=False, delta=True)
    with pytest.raises(CatalogError, match="is it a delta"):  # a delta given as a full catalog
        ingest(delta, config, store, progress=False)
    assert itemlens.connect(store).snapshot == 2

    # a delta of deletions only (no other column) removes them and encodes nothing
    only = write_jsonl(folder / "deletions.jsonl", [{"item_id": "item-0004", "_op": "delete"}])
    report = ingest(only, config, store, progress=False, delta=True)
    assert (report.items_seen, report.removed_items, report.snapshot) == (0, 1, 3)
    assert "item-0004" not in itemlens.connect(store).ids("text")


def test_the_job_report_is_printed_stored_and_shown(ray_session, tmp_path, minilm_path, capsys):
    from itemlens.workflows.cli import main

    folder = tmp_path / "catalog"
    rows = _catalog(folder, n=6) + [{"item_id": "empty", "title": " . ", "image": None}]
    config = tmp_path / "lens.yaml"
    import yaml

    config.write_text(yaml.safe_dump({"features": {"text": text_spec(minilm_path, template="{title}")}}))
    catalog = write_jsonl(folder / "c.jsonl", rows)
    report_file = tmp_path / "report.json"
    assert (
        main(
            [
                "ingest",
                str(catalog),
                "--config",
                str(config),
                "--store",
                str(tmp_path / "lens"),
                "--no-progress",
                "--report",
                str(report_file),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "ingest of 7 items (7 new, 0 removed): 6 values encoded, 1 errors" in out
    doc = json.loads(report_file.read_text())
    assert doc["features"]["text"]["errors_by_stage"] == {"input": 1}
    assert list(doc["features"]["text"]["errors_by_reason"].values()) == [1]
    assert {"register_items", "feature:text", "publish", "total"} <= set(doc["timings"])
    assert main(["show", str(tmp_path / "lens")]) == 0
    shown = capsys.readouterr().out
    assert "last job: ingest of 7 items (7 new, 0 removed)" in shown


def test_a_file_that_could_not_be_read_is_read_again_next_time(ray_session, tmp_path, tiny_clip):
    folder = tmp_path / "catalog"
    rows = _catalog(folder, n=3)
    catalog = write_jsonl(folder / "c.jsonl", rows)
    config = {"features": {"image": image_spec(tiny_clip, column="image")}, "decode": {"max_image_bytes": 100}}
    store = tmp_path / "lens"
    first = ingest(catalog, config, store, progress=False)
    assert first.features["image"].errors_by_stage == {"read": 3}  # larger than the limit
    # the files did not change (same size and mtime), but a read error keeps no media key:
    # with the limit raised they are read, and encoded
    again = ingest(catalog, {**config, "decode": {}}, store, progress=False)
    assert (again.features["image"].encoded, again.features["image"].errors) == (3, 0)
    assert sorted(itemlens.connect(store).ids("image")) == [r["item_id"] for r in rows]
