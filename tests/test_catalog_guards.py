"""A catalog that would hurt the store is stopped before it can: an empty or truncated catalog
does not empty the store, a catalog replaced during a job publishes nothing, ids of the wrong
type and unreadable files are one message before any write, and special files, extreme images
and dicts in text columns are errors rows of their own. Each case here failed before it was fixed
(see the reliability issue); the fault-injection tests are in tests/test_faults.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import itemlens
from itemlens.errors import CatalogError, StoreError
from itemlens.workflows.catalog import CatalogChangedError
from itemlens.workflows.feature_job import FeatureJob
from itemlens.workflows.ingest import ingest
from itemlens.workflows.plan import plan

from .conftest import image_spec, text_spec, write_jsonl

pytestmark = pytest.mark.integration

ITEMLENS = str(Path(sys.executable).parent / "itemlens")


def _rows(n: int, prefix: str = "item") -> list[dict]:
    return [{"item_id": f"{prefix}-{i:03d}", "title": f"product number {i}"} for i in range(n)]


def _items(store: Path) -> int:
    import lance

    return lance.dataset(str(store / "items.lance")).count_rows()


def test_an_empty_or_truncated_catalog_does_not_empty_the_store(ray_session, tmp_path, minilm_path):
    """End to end (the rule itself, share and allowances, is tested without Ray in
    tests/test_hostile_input.py)."""
    config = {"features": {"text": text_spec(minilm_path, template="{title}")}}
    store = tmp_path / "lens"
    ingest(write_jsonl(tmp_path / "c.jsonl", _rows(20)), config, store, progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    for allow in (None, "all"):  # not even --allow-removals all lets an empty catalog through
        with pytest.raises(CatalogError, match="the catalog is empty"):
            ingest(empty, config, store, progress=False, allow_removals=allow)
    truncated = write_jsonl(tmp_path / "truncated.jsonl", _rows(20)[:6])  # 14 of 20 would go
    with pytest.raises(CatalogError, match=r"would remove 14 of the 20 items that text@v1 holds"):
        ingest(truncated, config, store, progress=False)
    assert "REFUSED" in plan(truncated, config, store).summary()
    with pytest.raises(CatalogError, match="more than --allow-removals 10"):
        ingest(truncated, config, store, progress=False, allow_removals=10)
    lens = itemlens.connect(store)
    assert lens.snapshot == 1 and len(lens.ids("text")) == 20 and _items(store) == 20
    # an explicit allowance lets the truncation through
    report = ingest(truncated, config, store, progress=False, allow_removals=14)
    assert report.removed_items == 14 and sorted(itemlens.connect(store).ids("text")) == sorted(
        r["item_id"] for r in _rows(6)
    )


def test_special_files_and_extreme_images_are_errors_rows_within_budget(ray_session, tmp_path, tiny_clip):
    folder = tmp_path / "catalog"
    folder.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(folder / "ok.png")
    os.mkfifo(folder / "fifo.jpg")
    Image.new("RGB", (1, 100_000), (200, 10, 10)).save(folder / "strip.png")  # 100k pixels, 475 bytes
    rows = [
        {"item_id": "ok", "images": ["ok.png"]},
        {"item_id": "fifo", "images": ["fifo.jpg"]},
        {"item_id": "dev", "images": ["/dev/zero"]},
        {"item_id": "strip", "images": ["strip.png"]},
    ]
    config = {"features": {"image": image_spec(tiny_clip)}, "decode": {"read_timeout": 5}}
    started = time.monotonic()
    report = ingest(write_jsonl(folder / "c.jsonl", rows), config, tmp_path / "lens", progress=False)
    assert time.monotonic() - started < 120  # the FIFO did not hang the job
    assert (report.features["image"].encoded, report.features["image"].errors) == (1, 3)
    errors = {r["item_id"]: (r["stage"], r["reason"]) for r in itemlens.connect(tmp_path / "lens").errors().to_pylist()}
    assert errors["fifo"][0] == "read" and "a FIFO" in errors["fifo"][1]
    assert errors["dev"][0] == "read" and "character device" in errors["dev"][1]
    assert errors["strip"][0] == "decode" and "aspect ratio" in errors["strip"][1]


def test_a_catalog_replaced_during_a_job_publishes_nothing_and_the_next_run_is_right(
    ray_session, tmp_path, minilm_path, monkeypatch
):
    config = {"features": {"text": text_spec(minilm_path, template="{title}")}}
    store = tmp_path / "lens"
    catalog = write_jsonl(tmp_path / "c.jsonl", _rows(30))
    ingest(catalog, config, store, progress=False)
    reader = itemlens.connect(store)
    before = reader.vectors("text", reader.ids("text"))

    # the next catalog: 6 items gone, 10 new. As the feature's pipeline is about to read it, the
    # file is replaced by yet another catalog (what a nightly export overwriting it in place
    # does): registration read one catalog, the pipeline would read another
    second = _rows(24) + _rows(10, prefix="new")
    third = _rows(18) + _rows(10, prefix="other")
    write_jsonl(catalog, second)
    original = FeatureJob.run
    swapped = []

    def swap_then_run(job):
        if not swapped:
            time.sleep(0.01)  # a new mtime and ctime, whatever the clock's granularity
            write_jsonl(catalog, third)
            swapped.append(job.version.name)
        return original(job)

    monkeypatch.setattr(FeatureJob, "run", swap_then_run)
    with pytest.raises(CatalogChangedError, match="changed while the job ran.*nothing was published"):
        ingest(catalog, config, store, progress=False)
    monkeypatch.undo()
    # the store is unchanged for readers: no snapshot, the same vectors
    assert itemlens.connect(store).snapshot == 1
    assert np.array_equal(itemlens.connect(store).vectors("text", reader.ids("text")), before)

    # the next run on the catalog as it now is publishes exactly that catalog, every item once
    report = ingest(catalog, config, store, progress=False)
    assert (report.items_seen, report.new_items, report.removed_items) == (28, 10, 12)
    lens = itemlens.connect(store)
    assert sorted(lens.ids("text")) == sorted(r["item_id"] for r in third) and not lens.errors().num_rows
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_path, device="cpu")
    want = model.encode([r["title"] for r in third], normalize_embeddings=True)
    got = lens.vectors("text", [r["item_id"] for r in third])
    assert np.min(np.sum(got * want, axis=1)) >= 0.99999


def test_ids_of_mixed_types_are_refused_before_anything_is_written_and_dicts_are_not_text(
    ray_session, tmp_path, minilm_path
):
    config = {"features": {"text": text_spec(minilm_path, template="{title}. {specs}")}}
    store = tmp_path / "lens"
    # integer ids are fine (stored as their decimal strings); a dict in a text column is an
    # input error of its item, naming the column
    ints = write_jsonl(
        tmp_path / "ints.jsonl",
        [{"item_id": 7, "title": "lamp", "specs": "40 W"}, {"item_id": 8, "title": "bulb", "specs": {"watts": 40}}],
    )
    report = ingest(ints, config, store, progress=False)
    assert report.features["text"].errors_by_stage == {"input": 1}
    lens = itemlens.connect(store)
    assert lens.ids("text") == ["7"]
    (error,) = lens.errors().to_pylist()
    assert error["item_id"] == "8" and "column 'specs' holds a dict" in error["reason"]

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        '{"item_id": 7, "title": "a", "specs": "x"}\n{"item_id": "abc", "title": "b", "specs": "x"}\n'
        '{"item_id": 8.5, "title": "c", "specs": "x"}\n'
    )
    with pytest.raises(CatalogError, match="ids must all be strings or all integers"):
        ingest(mixed, config, store, progress=False)
    floats = write_jsonl(tmp_path / "floats.jsonl", [{"item_id": 1.5, "title": "x", "specs": "y"}])
    with pytest.raises(CatalogError, match="double values, e.g. 1.5"):
        ingest(floats, config, store, progress=False)
    assert _items(store) == 2 and itemlens.connect(store).snapshot == 1  # nothing was written


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([ITEMLENS, *args], capture_output=True, text=True, env=env, timeout=300)


def test_unreadable_catalogs_and_bad_store_uris_are_one_message_with_exit_2(
    ray_session, ray_cluster, tmp_path, minilm_path
):
    config = tmp_path / "lens.yaml"
    config.write_text(yaml.safe_dump({"features": {"text": text_spec(minilm_path, template="{title}")}}))
    env = {**ray_cluster["env"], "RAY_ADDRESS": ray_cluster["address"]}
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"item_id": "1", "title": "a"}\n{"item_id": "2", "title": \n')
    good = tmp_path / "good.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"item_id": ["a", "b"], "title": ["x", "y"]}), good)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    store = tmp_path / "lens"
    for catalog, message in (
        (malformed, "malformed.jsonl, line 2: not valid JSON"),
        (truncated, "truncated.parquet: Parquet magic bytes not found"),
    ):
        run = _cli("ingest", str(catalog), "--config", str(config), "--store", str(store), "--no-progress", env=env)
        assert run.returncode == 2, run.stderr[-2000:]
        assert message in run.stderr and "Traceback" not in run.stderr
    assert not (store / "items.lance").exists() or _items(store) == 0

    secret = "s3cr3t-in-a-uri"
    run = _cli(
        "ingest",
        str(good),
        "--config",
        str(config),
        "--store",
        f"file://user:{secret}@localhost{tmp_path}/x",
        "--no-progress",
        env=env,
    )
    assert run.returncode == 2 and "carries credentials" in run.stderr
    assert secret not in run.stdout + run.stderr and not list(Path.cwd().glob("user:*"))
    # file://localhost/ABS is the local path ABS, not ./localhost/ABS
    run = _cli(
        "ingest",
        str(good),
        "--config",
        str(config),
        "--store",
        f"file://localhost{tmp_path}/by-uri",
        "--no-progress",
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(itemlens.connect(tmp_path / "by-uri").ids("text")) == ["a", "b"]


def test_a_store_on_unreachable_object_storage_is_a_message_not_a_traceback(tmp_path):
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    run = _cli("show", "s3://no-such-bucket/lens", env=env)
    assert run.returncode == 2 and run.stderr.startswith("itemlens: error: cannot open s3://no-such-bucket/lens")
    assert "Traceback" not in run.stderr
    with pytest.raises(StoreError):
        itemlens.connect("s3://no-such-bucket/lens", storage_options={"aws_endpoint": "http://127.0.0.1:9"})


@pytest.fixture
def short_tmpdir():
    """A temporary folder with a short path (Ray's socket paths have a length limit)."""
    folder = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


def test_a_killed_drivers_local_ray_is_ended_by_the_next_run(tmp_path, minilm_path, short_tmpdir):
    """Drivers here start their own local Ray (not the session's), as a laptop user's do. They
    keep their records (and Ray its files) in a temporary folder of their own: the drivers that
    other tests start at the same time (`TEST_WORKERS=2 make test`) must not end this Ray
    first, as they would end any local Ray whose driver is gone."""
    from itemlens.workflows.runtime import _session_processes

    rows = [{"item_id": f"i{i}", "title": f"product {i} " + "word " * (i % 13)} for i in range(200)]
    catalog = write_jsonl(tmp_path / "c.jsonl", rows)
    config = tmp_path / "lens.yaml"
    config.write_text(yaml.safe_dump({"features": {"text": text_spec(minilm_path, template="{title}")}}))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", TMPDIR=str(short_tmpdir))
    command = [
        ITEMLENS,
        "ingest",
        str(catalog),
        "--config",
        str(config),
        "--store",
        str(tmp_path / "lens"),
        "--no-progress",
    ]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = short_tmpdir / f"itemlens-ray-{os.getuid()}" / f"{driver.pid}.json"  # runtime.py's _RECORDS
    deadline = time.monotonic() + 120
    while not record.exists():
        assert time.monotonic() < deadline and driver.poll() is None, "the driver did not start Ray"
        time.sleep(0.2)
    time.sleep(1)  # Ray's node is up
    session = json.loads(record.read_text())
    driver.kill()
    driver.wait()
    # Whether some of its processes outlive it depends on timing (rarely, since a local Ray gets
    # no runtime_env); the reaping itself is checked deterministically below.
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # a local run says nothing users read as failures: not Ray's token-authentication notice,
    # nor its core worker's line about Ray Data's actor arguments (see workflows/runtime.py)
    assert "Token authentication" not in rerun.stderr and "has constructor arguments" not in rerun.stderr
    assert not _session_processes(session["node_id"], session["session_dir"])
    assert not record.exists()


def test_the_reaper_ends_the_processes_of_a_dead_drivers_session_and_nothing_else(short_tmpdir, monkeypatch):
    """A record whose driver is gone: the processes of its node (by RAY_NODE_ID in their
    environment) are ended and the record removed; a live driver's record and other processes stay."""
    from itemlens.workflows import runtime

    monkeypatch.setattr(runtime, "_RECORDS", short_tmpdir)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "RAY_NODE_ID": "n1"}
    )
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "RAY_NODE_ID": "n2"}
    )
    try:
        dead = {"driver": gone.pid, "started": "0", "node_id": "n1", "session_dir": "/nonexistent/session_1"}
        alive = {
            "driver": os.getpid(),
            "started": runtime._started(os.getpid()),
            "node_id": "n2",
            "session_dir": "/x/s2",
        }
        (short_tmpdir / f"{gone.pid}.json").write_text(json.dumps(dead))
        (short_tmpdir / f"{os.getpid()}.json").write_text(json.dumps(alive))
        assert runtime.reap_orphaned_ray() == [orphan.pid]
        assert orphan.wait(timeout=10) == -9 and bystander.poll() is None
        assert sorted(p.name for p in short_tmpdir.iterdir()) == [f"{os.getpid()}.json"]
    finally:
        for proc in (orphan, bystander):
            proc.kill()
            proc.wait()
