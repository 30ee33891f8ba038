"""End to end through Ray: catalog -> decode tasks -> encoder actors -> staged -> store -> client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import itemlens
from itemlens.errors import CatalogError, ConfigError, QueryError, StoreLockedError, WeightsNotFoundError
from itemlens.extractors.text import TextTemplate
from itemlens.workflows.ingest import ingest

from .conftest import EXAMPLE_CATALOG, image_spec, text_spec, write_jsonl
from .media import write_bad_images

pytestmark = pytest.mark.integration

IMAGES = sorted((EXAMPLE_CATALOG.parent / "images").rglob("*.jpg"))


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture
def catalog(tmp_path, example_rows) -> Path:
    """15 items: the 3 example products (several photos each) and each photo as an item of its own,
    with relative image paths."""
    folder = tmp_path / "catalog"
    shutil.copytree(EXAMPLE_CATALOG.parent / "images", folder / "images")
    rows = [dict(r) for r in example_rows]
    for i, path in enumerate(IMAGES):
        source = example_rows[i % 3]
        rows.append(
            {
                **source,
                "item_id": f"photo-{i:02d}",
                "title": f"{source['title']} photo {i}",
                "images": [str(path.relative_to(EXAMPLE_CATALOG.parent))],
            }
        )
    return write_jsonl(folder / "catalog.jsonl", rows)


def _config(minilm_path, tiny_clip, **features) -> dict:
    base = {"text": text_spec(minilm_path), "image": image_spec(tiny_clip)}
    return {"features": {**base, **features}, "decode": {"batch_size": 4, "text_batch_size": 8}}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_decode_tasks_and_encoder_actors_are_separate_streaming_stages(report) -> None:
    """What Ray ran: decode tasks, then encoder actors, then write tasks, streaming."""
    for feature, prepare in (("image", "prepare_images"), ("text", "prepare_texts")):
        ops = report.features[feature].operators
        kinds = {op["operator"].split("->")[-1]: op["kind"] for op in ops}
        assert kinds[f"MapBatches({prepare})"] == "tasks"
        assert kinds["MapBatches(EncodeBatches)"] == "actors"
        assert kinds["MapBatches(write_fragments)"] == "tasks"
        encoder_op = next(op for op in ops if op["kind"] == "actors")
        assert "prepare" not in encoder_op["operator"]  # decoding is not fused into the actors
        stats = report.features[feature].stats
        assert f"MapBatches({prepare})" in stats and "MapBatches(EncodeBatches)" in stats
        # no all-to-all stage (sort, shuffle, aggregate) gathers the catalog anywhere
        assert not any(word in report.features[feature].plan for word in ("Sort", "Shuffle", "Aggregate", "AllToAll"))
        # what reaches the driver is one row per written data file, not per item
        assert report.features[feature].fragments <= 2


def test_ingest_gives_the_libraries_own_vectors(ray_session, tmp_path, catalog, minilm_path, tiny_clip):
    import open_clip
    import torch
    from PIL import Image
    from sentence_transformers import SentenceTransformer

    store = tmp_path / "lens"
    config = _config(minilm_path, tiny_clip, image_parts=image_spec(tiny_clip, pooling="per_image"))
    report = ingest(catalog, config, store, progress=False)
    assert report.snapshot == 1 and report.items_seen == 15 and report.new_items == 15
    assert {n: (f.encoded, f.errors) for n, f in report.features.items()} == {
        "text": (15, 0),
        "image": (15, 0),
        "image_parts": (15, 0),
    }
    _assert_decode_tasks_and_encoder_actors_are_separate_streaming_stages(report)

    lens = itemlens.connect(store)
    rows = _rows(catalog)
    ids = [r["item_id"] for r in rows]
    # what browse needs to read the catalog's rows again
    assert {k: lens.doc.catalog[k] for k in ("format", "id_column", "items")} == {
        "format": "jsonl",
        "id_column": "item_id",
        "items": 15,
    }

    texts = [TextTemplate("{title}. {bullet_points}").render(r) for r in rows]
    expected_text = SentenceTransformer(minilm_path, device="cpu").encode(texts, normalize_embeddings=True)
    assert _cos(lens.vectors("text", ids), expected_text).min() >= 0.99999
    # encode() embeds new raw inputs online with the stored spec: the same vectors as the ingest
    assert _cos(lens.encode("text", texts[:4]), expected_text[:4]).min() >= 0.99999

    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip", pretrained=tiny_clip["checkpoint"])
    model.eval()

    def clip(paths):
        with torch.no_grad():
            x = torch.stack([preprocess(Image.open(catalog.parent / p)) for p in paths])
            return torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy()

    for row in rows:
        per_image = clip(row["images"])
        pooled = per_image.mean(0)
        assert _cos(lens.vectors("image", [row["item_id"]])[0], pooled) >= 0.9999
        parts = lens.part_vectors("image_parts", [row["item_id"]])[0]
        assert parts.shape == (len(row["images"]), 32)
        assert _cos(parts, per_image).min() >= 0.9999
    online = lens.encode("image_parts", [str(catalog.parent / p) for p in rows[0]["images"]])
    assert _cos(online, clip(rows[0]["images"])).min() >= 0.9999

    hits = lens.search("text", "LED light bulb with warm white light", k=3)
    assert hits[0].item_id in {r["item_id"] for r in rows if r["brand"] == "AmazonBasics"}
    photo = rows[3]["images"][0]
    assert lens.search("image", str(catalog.parent / photo), k=1)[0].item_id == rows[3]["item_id"]
    assert len(lens.search("image", "a grey yoga bag", k=4)) == 4  # text query through the CLIP text tower
    with pytest.raises(QueryError, match="file not found"):  # a mistyped path is not a text query
        lens.search("image", "photos/no-such-photo.jpg")

    again = ingest(catalog, config, store, progress=False)
    assert again.snapshot is None
    assert all(f.encoded == 0 and f.errors == 0 and f.unchanged == 15 for f in again.features.values())
    assert itemlens.connect(store).snapshot == 1


def test_bad_inputs_become_errors_rows_and_every_other_item_is_stored(
    ray_session, tmp_path, catalog, minilm_path, tiny_clip
):
    bad = write_bad_images(catalog.parent / "bad")
    rows = _rows(catalog)[:4]
    for name, filename in bad.items():
        rows.append(
            {
                "item_id": f"bad-{name}",
                "title": f"item with {name} image",
                "bullet_points": [],
                "images": [f"bad/{filename}"],
            }
        )
    rows += [
        {"item_id": "bad-no-image", "title": "no image", "bullet_points": [], "images": None},
        {"item_id": "bad-wrong-type", "title": "wrong type", "bullet_points": [], "images": [17]},
        {
            "item_id": "bad-one-of-two",
            "title": "one good, one missing",
            "bullet_points": [],
            "images": [rows[0]["images"][0], "bad/missing-too.jpg"],
        },
        {"item_id": "empty-text", "title": "", "bullet_points": [" "], "images": rows[0]["images"]},
    ]
    write_jsonl(catalog, rows)
    store = tmp_path / "lens"
    report = ingest(catalog, _config(minilm_path, tiny_clip), store, progress=False)
    lens = itemlens.connect(store)

    ids = [r["item_id"] for r in rows]
    errors = {(r["feature"], r["item_id"]): r for r in lens.errors().to_pylist()}
    absent = {(r["feature"], r["item_id"]): r for r in lens.errors(absent=True).to_pylist()}
    assert not errors.keys() & absent.keys()
    for feature in ("text", "image"):
        stored = {i for i in ids if (feature, i) not in errors and (feature, i) not in absent}
        failed = {i for (f, i) in errors if f == feature}
        missing = set(lens.absent(feature))
        assert stored | failed | missing == set(ids)  # each item in exactly one place
        assert len(stored) + len(failed) + len(missing) == len(ids)
        lens.vectors(feature, sorted(stored))  # all of them readable
    image_errors = {i: (r["stage"], r["reason"]) for (f, i), r in errors.items() if f == "image"}
    assert set(image_errors) == {
        "bad-corrupt",
        "bad-truncated",
        "bad-zero_bytes",
        "bad-bomb",
        "bad-missing",
        "bad-wrong-type",
        "bad-one-of-two",
    }
    # an item without a photo, or without any text, is not a failure: its input is absent
    assert lens.absent("image") == ["bad-no-image"] and lens.absent("text") == ["empty-text"]
    assert {f.name: (f.errors, f.absent) for f in lens.features()} == {"text": (0, 1), "image": (7, 1)}
    assert image_errors["bad-bomb"][0] == "decode" and "decompression-bomb" in image_errors["bad-bomb"][1]
    assert image_errors["bad-missing"][0] == "read" and "file not found" in image_errors["bad-missing"][1]
    assert image_errors["bad-wrong-type"][0] == "input"
    assert "missing-too.jpg" in image_errors["bad-one-of-two"][1]
    # odd but valid images are encoded
    assert lens.vectors("image", ["bad-cmyk", "bad-gray16", "bad-palette_alpha", "bad-transparent"]).shape == (4, 32)
    assert [(f, i) for (f, i) in errors if f == "text"] == []
    assert report.features["image"].errors_by_stage == {"decode": 3, "read": 3, "input": 1}
    assert (report.features["image"].errors, report.features["image"].absent) == (7, 1)
    assert "7 errors, 2 inputs absent" in report.headline()
    with pytest.raises(KeyError, match="bad-corrupt.*decode: not a recognised image format"):
        lens.vectors("image", ["bad-corrupt"])
    # unchanged failures are not retried; --retry-errors retries them
    assert ingest(catalog, _config(minilm_path, tiny_clip), store, progress=False).snapshot is None
    retried = ingest(catalog, _config(minilm_path, tiny_clip), store, progress=False, retry_errors=True)
    assert retried.features["image"].errors == 7 and retried.features["image"].encoded == 0


def test_a_reader_on_snapshot_n_sees_n_while_a_second_ingest_writes_and_a_pin_keeps_n_through_a_prune(
    ray_session, tmp_path, catalog, minilm_path
):
    from itemlens.store.writer import StoreWriter

    store = tmp_path / "lens"
    config = {"features": {"text": text_spec(minilm_path)}}
    ingest(catalog, config, store, progress=False)
    reader = itemlens.connect(store)
    ids = [r["item_id"] for r in _rows(catalog)]
    before = reader.vectors("text", ids)
    with StoreWriter.open(store) as writer:
        writer.pin(1)

    rows = _rows(catalog)
    for row in rows:
        row["title"] = "Changed " + row["title"]
    write_jsonl(catalog, rows)
    done = threading.Event()
    result = {}

    def second_ingest():
        try:
            result["report"] = ingest(catalog, config, store, progress=False)
        finally:
            done.set()

    thread = threading.Thread(target=second_ingest)
    thread.start()
    reads = 0
    while not done.is_set():
        assert np.array_equal(reader.vectors("text", ids), before)
        assert itemlens.connect(store, snapshot=1).vectors("text", ids[:3]).tolist() == before[:3].tolist()
        reads += 1
    thread.join()
    assert result["report"].snapshot == 2 and reads > 0
    assert np.array_equal(reader.vectors("text", ids), before)  # still on snapshot 1
    assert reader.refresh() == 2
    after = reader.vectors("text", ids)
    assert _cos(after, before).max() < 0.9999  # every title changed
    # the pinned snapshot 1 outlives a prune that keeps only the newest
    with StoreWriter.open(store) as writer:
        assert writer.prune(keep=1)["kept"] == [1, 2]
    assert np.array_equal(itemlens.connect(store, snapshot=1).vectors("text", ids), before)


def test_ingest_builds_the_declared_index_derives_semantic_ids_and_graphs_and_a_refresh_keeps_them(
    ray_session, tmp_path, catalog, minilm_path
):
    from itemlens.store.semantic_ids import quantizers

    # the text spec declares a vector index, built once the feature has min_rows vectors
    index = {"kind": "IVF_PQ", "min_rows": 10, "num_partitions": 2}
    config = {
        "features": {"text": text_spec(minilm_path, index=index)},
        "semantic_ids": {"sid": {"features": ["text"], "levels": 2, "codebook_size": 4}},
        "graphs": {"knn": {"features": ["text"], "k": 3}},
    }
    first = ingest(catalog, config, tmp_path / "lens", progress=False)
    assert first.semantic_ids["sid"].trained and first.semantic_ids["sid"].items == 15
    lens = itemlens.connect(tmp_path / "lens")
    info = lens.features()[0].index
    assert first.features["text"].encoded == 15
    assert info["kind"] == "IVF_PQ" and info["params"]["num_partitions"] == 2 and info["rows"] == 15
    assert 0 < info["recall_at_10"] <= 1
    ids = [r["item_id"] for r in _rows(catalog)]
    before = lens.semantic_ids("sid", ids)
    assert len({tuple(c) for c in before.tolist()}) == 15 and lens.item_for("sid", before) == ids

    rows = _rows(catalog)
    rows[4]["title"] = "A completely different product: cast iron frying pan"
    write_jsonl(catalog, rows)
    trainings = quantizers.TRAININGS["count"]
    second = ingest(catalog, config, tmp_path / "lens", progress=False)
    assert quantizers.TRAININGS["count"] == trainings
    report = second.semantic_ids["sid"]
    assert (report.trained, report.changed, report.retired, report.unchanged) == (False, 1, 1, 14)
    lens.refresh()
    after = lens.semantic_ids("sid", ids)
    keep = [i for i in range(15) if i != 4]
    assert np.array_equal(after[keep], before[keep]) and tuple(after[4]) not in {tuple(c) for c in before.tolist()}
    assert lens.doc.report["semantic_ids"]["sid"]["changed"] == 1
    # the graph: built with the first ingest, refreshed with the second; the edited item's list
    # and the lists that held it were recomputed
    assert first.graphs["knn"].rebuilt and second.graphs["knn"].recomputed["text"] >= 1
    assert not second.graphs["knn"].rebuilt and lens.graph("knn")[0].shape == (15, 15)
    assert len(lens.neighbors("knn", [ids[4]])[0]) == 3


def test_a_changed_spec_makes_a_new_version_and_leaves_the_rest_alone(
    ray_session, tmp_path, catalog, minilm_path, tiny_clip
):
    store = tmp_path / "lens"
    ingest(catalog, _config(minilm_path, tiny_clip), store, progress=False)
    v1 = itemlens.connect(store).vectors("text", ["B0799CK52K"])
    changed = _config(minilm_path, tiny_clip, text=text_spec(minilm_path, template="{title}", dtype="float16"))
    report = ingest(catalog, changed, store, progress=False)
    assert report.features["text"].version == "v2" and report.features["text"].encoded == 15
    assert report.features["image"].encoded == 0 and report.features["image"].version == "v1"
    lens = itemlens.connect(store)
    assert lens.vectors("text", ["B0799CK52K"]).dtype == np.float16
    assert np.array_equal(lens.vectors("text@v1", ["B0799CK52K"]), v1)
    assert {f.qualified: f.current for f in lens.features()} == {"image@v1": True, "text@v1": False, "text@v2": True}


def test_parquet_csv_and_jsonl_catalogs_give_the_same_vectors(ray_session, tmp_path, catalog, minilm_path, tiny_clip):
    from sentence_transformers import SentenceTransformer

    rows = [{**r, "image": r["images"][0], "bullet_points": " ".join(r["bullet_points"])} for r in _rows(catalog)]
    for i, r in enumerate(rows):
        del r["images"]
        r["item_id"] = f"{i:05d}"  # ids that look like numbers stay the strings they are, in every format
    folder = catalog.parent
    write_jsonl(folder / "flat.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), folder / "flat.pq")
    import csv

    with open(folder / "flat.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # text only: the readers differ in how they type and render columns, which the text shows;
    # an image path is a string column like any other (and costs a model per ingest). The
    # template also shows the id column, which the job reads anyway.
    template = "{title}. {bullet_points} (sku {item_id})"
    config = {"features": {"text": text_spec(minilm_path, template=template)}, "decode": {"text_batch_size": 8}}
    vectors = {}
    for ext in ("jsonl", "pq", "csv"):
        ingest(folder / f"flat.{ext}", config, tmp_path / ext, progress=False)
        lens = itemlens.connect(tmp_path / ext)
        vectors[ext] = lens.vectors("text", [r["item_id"] for r in rows])
    for ext in ("pq", "csv"):
        assert _cos(vectors[ext], vectors["jsonl"]).min() >= 0.99999
    expected = SentenceTransformer(minilm_path, device="cpu").encode(
        [TextTemplate(template).render(r) for r in rows], normalize_embeddings=True
    )
    assert _cos(vectors["jsonl"], expected).min() >= 0.99999

    # a folder of CSV files: its reader takes the CSV files, not the notes and markers beside them
    from itemlens.workflows.catalog import CatalogSource
    from itemlens.workflows.config import CatalogConfig

    (tmp_path / "csv-folder").mkdir()
    shutil.copy(folder / "flat.csv", tmp_path / "csv-folder" / "part-0.csv")
    (tmp_path / "csv-folder" / "README.md").write_text("# Exported nightly\nColumns: item_id, title, ...\n")
    (tmp_path / "csv-folder" / "_SUCCESS").write_text("")
    source = CatalogSource.open(tmp_path / "csv-folder", CatalogConfig())
    assert sorted(source.read(["item_id"]).to_pandas()["item_id"]) == sorted(r["item_id"] for r in rows)
    # a later file without an optional column: its rows have none (nulls), and the catalog has it
    (tmp_path / "csv-folder" / "part-1.csv").write_text("item_id,title\nlate-1,a lamp\n")
    assert "bullet_points" in source.column_names()
    late = source.read(["item_id", "bullet_points"]).to_pandas().set_index("item_id")["bullet_points"]
    assert late.isna().sum() == 1 and late.isna()["late-1"]
    # a delta whose first file holds only deletions still has the upserts' columns
    delta = tmp_path / "delta"
    delta.mkdir()
    (delta / "a.csv").write_text("item_id,_op\n00001,delete\n")
    (delta / "b.csv").write_text("item_id,title\nnew-1,a chair\n")
    assert CatalogSource.open(delta, CatalogConfig(), delta=True).column_names() == ["item_id", "title"]
    # a file named is read whatever its name, in the format the configuration gives
    shutil.copy(folder / "flat.csv", tmp_path / "export.txt")
    named = CatalogSource.open(tmp_path / "export.txt", CatalogConfig(format="csv"))
    assert sorted(named.read(["item_id"]).to_pandas()["item_id"]) == sorted(r["item_id"] for r in rows)


def test_bad_catalogs_and_weights_fail_before_any_work(ray_session, tmp_path, catalog, minilm_path, tiny_clip):
    store = tmp_path / "lens"
    rows = _rows(catalog)
    dup = write_jsonl(tmp_path / "dup.jsonl", rows + [rows[1], rows[1]])
    with pytest.raises(CatalogError, match=r"1 duplicated item id.*'B0799CK52K' \(3 rows\)"):
        ingest(dup, _config(minilm_path, tiny_clip), store, progress=False)
    with pytest.raises(ConfigError, match="column.*'headline'"):
        ingest(catalog, {"features": {"text": text_spec(minilm_path, template="{headline}")}}, store, progress=False)
    with pytest.raises(ConfigError, match="no id column 'sku'"):
        ingest(
            catalog,
            {"catalog": {"id_column": "sku"}, "features": {"text": text_spec(minilm_path)}},
            store,
            progress=False,
        )
    no_ids = write_jsonl(tmp_path / "noid.jsonl", [rows[0], {**rows[1], "item_id": None}])
    with pytest.raises(CatalogError, match="1 catalog row.*no 'item_id'"):
        ingest(no_ids, _config(minilm_path, tiny_clip), store, progress=False)
    missing = {"features": {"image": {**image_spec(tiny_clip), "checkpoint": str(tmp_path / "gone.pt")}}}
    with pytest.raises(WeightsNotFoundError, match="gone.pt"):
        ingest(catalog, missing, tmp_path / "never-created", progress=False)
    assert not (tmp_path / "never-created").exists()
    assert itemlens.connect(store).snapshot == 0  # nothing was published by the failed runs


def test_a_second_concurrent_ingest_fails_with_a_clear_message(ray_session, tmp_path, catalog, minilm_path):
    store = tmp_path / "lens"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from itemlens.store.writer import StoreWriter
        w = StoreWriter.open({str(store)!r}, command="itemlens ingest other-catalog.parquet")
        print("locked", flush=True)
        time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}.*other-catalog.parquet"):
            ingest(catalog, {"features": {"text": text_spec(minilm_path)}}, store, progress=False)
    finally:
        holder.kill()
        holder.wait()


def test_command_line_ingest_and_show(ray_session, tmp_path, catalog, minilm_path, tiny_clip):
    import yaml

    config = tmp_path / "lens.yaml"
    config.write_text(yaml.safe_dump(_config(minilm_path, tiny_clip)))
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    store = tmp_path / "lens"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "itemlens.workflows.cli",
            "ingest",
            str(catalog),
            "--config",
            str(config),
            "--store",
            str(store),
            "--report",
            str(tmp_path / "report.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "published snapshot 1" in run.stdout and "text" in run.stdout
    assert "itemlens: catalog has 15 items (15 new to the store)" in run.stderr
    assert json.loads((tmp_path / "report.json").read_text())["features"]["image"]["encoded"] == 15
    show = subprocess.run(
        [sys.executable, "-m", "itemlens.workflows.cli", "show", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert show.returncode == 0, show.stderr
    assert "text@v1*" in show.stdout and "image@v1*" in show.stdout and "snapshot 1 of 1" in show.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "itemlens.workflows.cli",
            "ingest",
            str(catalog),
            "--config",
            str(tmp_path / "nope.yaml"),
            "--store",
            str(store),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "configuration file not found" in bad.stderr and "Traceback" not in bad.stderr


def test_the_demo_runs_and_labels_its_stand_ins(example_store):
    out = example_store["output"]  # `make demo`, run once per test run (tests/conftest.py)
    assert "STAND-IN" in out and "published snapshot 1" in out
    assert "search text 'an LED light bulb': B074M5HPBD" in out
    lens = itemlens.connect(example_store["store"], snapshot=1)
    assert all(f.note for f in lens.features())
    # every modality of the example catalog: 3 products (photos, a video each), 2 sound clips
    counts = {f.name: f.count for f in lens.features()}
    assert {n: counts[n] for n in ("text", "image", "video", "audio", "caption_text")} == {
        "text": 5,
        "image": 3,
        "video": 3,
        "audio": 2,
        "caption_text": 3,
    }
    assert sorted(lens.ids("audio")) == ["audiobook-198-209", "sound-robin-13"]
    assert all(lens.captions("caption", lens.ids("caption")))


def test_work_staged_by_a_dead_job_is_merged_not_encoded_again(ray_session, tmp_path, catalog, minilm_path):
    from itemlens.extractors import build_encoder
    from itemlens.extractors.text import text_hash
    from itemlens.store import lance_io
    from itemlens.store.layout import staging_schema
    from itemlens.store.writer import StoreWriter
    from itemlens.workflows.config import load_config
    from itemlens.workflows.plan import plan

    store = tmp_path / "lens"
    config = {"features": {"text": text_spec(minilm_path)}}
    spec = load_config(config).features["text"]
    rows = _rows(catalog)
    dead = rows[:5]
    marker = np.full((5, 384), 0.05, np.float32)  # not what the model would give: proves no re-encoding
    with StoreWriter.open(store) as writer:  # a job that staged 5 items, then died
        version = writer.resolve_version(
            "text", build_encoder(spec).fingerprint(), spec.model_dump(mode="json"), dtype="float32", pooling="mean"
        )
        schema = staging_schema("float32", 384, "mean")
        template = TextTemplate(spec.input.template)
        staged = pa.table(
            {
                "item_id": [r["item_id"] for r in dead],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(marker.reshape(-1)), 384),
                "n_parts": pa.array([1] * 5, pa.int32()),
                "input_hash": [text_hash(template.render(r)) for r in dead],
                "media_key": pa.nulls(5, pa.string()),
                "fingerprint": [version.fingerprint] * 5,
                "computed_at": pa.array(
                    [datetime(2026, 1, 1, tzinfo=timezone.utc)] * 5, schema.field("computed_at").type
                ),
                "error_stage": pa.nulls(5, pa.string()),
                "error_reason": pa.nulls(5, pa.string()),
                "run_id": ["dead-job"] * 5,
            },
            schema=schema,
        )
        writer.commit_staged(version, lance_io.write_fragments(staged, writer.staging_uri(version)), schema)
    assert itemlens.connect(store).snapshot == 0  # staged work is not visible
    # a dry run counts the staged items as done, as the run (which merges them first) does
    planned = plan(catalog, config, store).features["text"]
    assert (planned.new, planned.changed, planned.unchanged) == (10, 0, 5)

    report = ingest(catalog, config, store, progress=False)
    feature = report.features["text"]
    assert (feature.recovered, feature.encoded, feature.unchanged) == (5, 10, 0)
    lens = itemlens.connect(store)
    assert np.array_equal(lens.vectors("text", [r["item_id"] for r in dead]), marker)
    assert lens.vectors("text", [r["item_id"] for r in rows]).shape == (15, 384)
    assert not (store / "_staging").exists() or not any((store / "_staging").iterdir())


def test_more_actors_than_the_cluster_can_feed_are_scaled_down_not_left_waiting(
    ray_session, tmp_path, catalog, minilm_path
):
    config = {"features": {"text": text_spec(minilm_path, resources={"num_gpus": 1, "concurrency": 3})}}
    report = ingest(catalog, config, tmp_path / "lens", progress=False)
    assert report.features["text"].actors == 1 and report.features["text"].encoded == 15
