"""A store on object storage: a real S3-compatible server on loopback (moto's server mode,
started by conftest), the same ``itemlens ingest`` command line as for a local folder, the
writer lock on object storage, and no credentials anywhere they could leak."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import itemlens
from itemlens.errors import StoreError, StoreLockedError
from itemlens.store.location import StoreLocation
from itemlens.store.lock import ObjectStoreLock

from .conftest import image_spec, text_spec, write_jsonl
from .test_refresh import _catalog

ITEMLENS = str(Path(sys.executable).parent / "itemlens")


def _s3():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _bucket(name: str) -> str:
    fs = _s3()
    if not fs.exists(name):
        fs.mkdir(name)
    return name


# -- the server and the lock (no Ray) -------------------------------------------------------------


def test_the_test_server_honours_the_conditional_writes_lance_commits_rely_on(s3_server):
    """Lance commits a table version with put-if-absent; the writer lock also uses put-if-match."""
    fs, bucket = _s3(), _bucket("lens-probe")
    fs.pipe_file(f"{bucket}/v1.manifest", b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{bucket}/v1.manifest", b"second", mode="create")
    assert fs.cat_file(f"{bucket}/v1.manifest") == b"first"
    etag = fs.info(f"{bucket}/v1.manifest", refresh=True)["ETag"]
    with pytest.raises(OSError, match="pre-condition"):  # 412 Precondition Failed
        fs.call_s3("put_object", Bucket=bucket, Key="v1.manifest", Body=b"third", IfMatch='"0000"')
    fs.call_s3("put_object", Bucket=bucket, Key="v1.manifest", Body=b"fourth", IfMatch=etag)
    assert fs.cat_file(f"{bucket}/v1.manifest") == b"fourth"


def test_one_writer_at_a_time_on_object_storage(s3_server):
    location = StoreLocation.parse(f"s3://{_bucket('lens-lock')}/one-writer")
    first = ObjectStoreLock(location).acquire(command="itemlens ingest first.jsonl")
    try:
        with pytest.raises(StoreLockedError, match="first.jsonl"):
            ObjectStoreLock(location).acquire()
        with pytest.raises(StoreLockedError, match="after waiting 0.5 s"):
            ObjectStoreLock(location).acquire(wait=0.5)
    finally:
        first.release()
    second = ObjectStoreLock(location).acquire(command="second")
    second.release()
    assert not _s3().exists(location.path("_itemlens_writer.lock").removeprefix("s3://"))


def test_a_dead_writers_lease_runs_out_and_a_writer_whose_lease_was_taken_stops(s3_server):
    location = StoreLocation.parse(f"s3://{_bucket('lens-lock')}/lease")
    dead = ObjectStoreLock(location, lease_seconds=1).acquire(command="dies")
    dead._stop.set()  # its process hangs: no more heartbeats, no release
    dead._thread.join()
    with pytest.raises(StoreLockedError, match="dies"):
        ObjectStoreLock(location, lease_seconds=1).acquire()  # not yet: the lease still runs
    time.sleep(1.5)
    taker = ObjectStoreLock(location, lease_seconds=1).acquire(command="takes over")
    try:
        # the old holder wakes up: its next renewal finds the lock taken, and it must not commit
        dead._stop = threading.Event()
        renew = threading.Thread(target=dead._heartbeat)
        renew.start()
        renew.join(timeout=5)
        with pytest.raises(StoreLockedError, match="took over"):
            dead.check()
        taker.check()
    finally:
        taker.release()


def test_a_writer_that_cannot_renew_its_lease_stops_before_it_runs_out(s3_server, monkeypatch):
    """Renewals failing (the store unreachable) for most of the lease: another writer may take
    the lock without this one seeing it, so this one must not commit."""
    location = StoreLocation.parse(f"s3://{_bucket('lens-lock')}/unreachable")
    lock = ObjectStoreLock(location, lease_seconds=2).acquire(command="cut off")
    try:
        lock.check()
        monkeypatch.setattr(lock, "_replace", lambda etag: (_ for _ in ()).throw(OSError("connection reset")))
        time.sleep(1.7)
        with pytest.raises(StoreLockedError, match="could not renew its lease"):
            lock.check()
    finally:
        monkeypatch.undo()
        lock.release()


def test_put_vectors_on_object_storage_uses_the_stores_own_options(s3_server, monkeypatch):
    """The endpoint and keys given to ``connect`` reach every write of ``put_vectors``, with
    nothing in the environment to fall back on."""
    options = {
        "aws_access_key_id": s3_server["env"]["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": s3_server["secret"],
        "aws_endpoint": s3_server["endpoint"],
        "aws_region": "us-east-1",
        "allow_http": "true",
    }
    uri = f"s3://{_bucket('lens-put')}/options-only"
    for key in s3_server["env"]:
        monkeypatch.delenv(key)
    lens = itemlens.connect(uri, create=True, storage_options=options)
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    lens.put_vectors("emb", ["a", "b", "c"], vectors)
    again = itemlens.connect(uri, storage_options=options)
    assert np.array_equal(again.vectors("emb", ["c", "a"]), vectors[[2, 0]])


def test_a_writer_whose_lease_was_taken_commits_nothing_more(s3_server):
    """Every commit of a store writer checks its lease first: registering ids (which gives out
    item indexes), pins and indexes as well as staging, merges and publishing."""
    from itemlens.store.writer import StoreWriter

    uri = f"s3://{_bucket('lens-lease')}/taken"
    lens = itemlens.connect(uri, create=True)
    lens.put_vectors("emb", ["a", "b"], np.eye(2, dtype=np.float32))
    writer = StoreWriter.open(uri)
    try:
        writer.lock._lost = "another writer took over this store's lock (its lease had run out)"
        version = writer.base.feature_version("emb")
        for commit in (
            lambda: writer.register_ids(["c"]),
            lambda: writer.remove_items([version], ["a"]),
            lambda: writer.build_index(version, "ivf_flat"),
            lambda: writer.pin(1),
        ):
            with pytest.raises(StoreLockedError, match="took over"):
                commit()
    finally:
        writer.lock._lost = None
        writer.close()
    after = itemlens.connect(uri)
    assert sorted(after.ids("emb")) == ["a", "b"] and after._dataset("items").count_rows() == 2
    assert not after.snapshots()[0]["pinned"]


def test_a_torn_lock_object_does_not_lock_the_store_forever(s3_server):
    location = StoreLocation.parse(f"s3://{_bucket('lens-lock')}/torn")
    _s3().pipe_file(location.path("_itemlens_writer.lock").removeprefix("s3://"), b'{"pid": 12')
    lock = ObjectStoreLock(location).acquire(command="after a torn write")
    lock.release()


def test_a_server_that_ignores_conditional_writes_is_refused(s3_server, monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    class IgnoresConditions(MemoryFileSystem):
        def pipe_file(self, path, value, mode="overwrite", **kwargs):
            return super().pipe_file(path, value, **kwargs)  # mode="create" ignored, as some clones do

    fs = IgnoresConditions(skip_instance_cache=True)
    location = StoreLocation.parse("gs://lax-server/store")
    monkeypatch.setattr(StoreLocation, "filesystem", lambda self, rel="": (fs, f"/lax/{rel}"))
    with pytest.raises(StoreError, match="ignored a conditional write"):
        ObjectStoreLock(location).acquire()
    assert not fs.exists("/lax/_itemlens_writer.lock")  # it did not leave its lock behind


def test_credentials_in_a_store_uri_are_refused():
    with pytest.raises(StoreError, match="carries credentials") as info:
        StoreLocation.parse("s3://AKIA:topsecret@bucket/lens")
    assert "topsecret" not in str(info.value)


def test_store_options_reach_fsspec_under_its_own_names():
    from itemlens.store.location import fsspec_options

    assert fsspec_options(
        "s3",
        {
            "aws_access_key_id": "K",
            "AWS_SECRET_ACCESS_KEY": "S",
            "aws_endpoint": "http://e",
            "region": "r",
            "allow_http": "true",
        },
    ) == {"key": "K", "secret": "S", "client_kwargs": {"endpoint_url": "http://e", "region_name": "r"}}
    assert fsspec_options("gs", {"google_service_account": "/sa.json"}) == {"token": "/sa.json"}
    assert fsspec_options("az", {"azure_storage_account_name": "acct", "azure_storage_account_key": "k"}) == {
        "account_name": "acct",
        "account_key": "k",
    }


def test_config_storage_options_read_the_environment(monkeypatch):
    from itemlens.errors import ConfigError
    from itemlens.workflows.config import load_config

    base = {"features": {"t": {"encoder": "sentence-transformers", "model": "m", "input": {"template": "{t}"}}}}
    monkeypatch.setenv("LENS_TEST_SECRET", "from-the-env")
    cfg = load_config({**base, "storage_options": {"aws_secret_access_key": "${LENS_TEST_SECRET}"}})
    assert cfg.storage_options == {"aws_secret_access_key": "from-the-env"}
    assert "from-the-env" not in repr(cfg)
    monkeypatch.delenv("LENS_TEST_SECRET")
    with pytest.raises(ConfigError, match="storage_options.*LENS_TEST_SECRET is not set"):
        load_config({**base, "storage_options": {"aws_secret_access_key": "${LENS_TEST_SECRET}"}})


# -- ingest, refresh and reads against s3:// -----------------------------------------------------


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.integration
def test_an_s3_catalog_media_and_store_give_the_libraries_vectors_refresh_and_leak_no_secret(
    ray_cluster, s3_server, tmp_path, minilm_path, tiny_clip
):
    fs, bucket = _s3(), _bucket("lens-e2e")
    folder = tmp_path / "catalog"
    rows = _catalog(folder, n=24)
    write_jsonl(folder / "catalog.jsonl", rows)
    fs.put(str(folder) + "/", f"{bucket}/catalog/", recursive=True)  # media and catalog, side by side
    config = tmp_path / "lens.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "features": {
                    "text": text_spec(minilm_path, template="{title}"),
                    "image": image_spec(tiny_clip, column="image"),
                },
                "decode": {"batch_size": 8, "text_batch_size": 16},
                # the store's credentials from the config, through environment variables
                "storage_options": {
                    "aws_access_key_id": "${LENS_KEY_ID}",
                    "aws_secret_access_key": "${LENS_SECRET}",
                    "aws_endpoint": s3_server["endpoint"],
                    "aws_region": "us-east-1",
                    "allow_http": "true",
                },
            }
        )
    )
    env = {**ray_cluster["env"], "LENS_KEY_ID": "AKIAITEMLENSTEST0001", "LENS_SECRET": s3_server["secret"]}
    store = f"s3://{bucket}/lens"

    def ingest(catalog: str, store: str, report: str) -> subprocess.CompletedProcess:
        return _run(
            [
                ITEMLENS,
                "ingest",
                catalog,
                "--config",
                str(config),
                "--store",
                store,
                "--address",
                ray_cluster["address"],
                "--report",
                str(tmp_path / report),
                "--no-progress",
                "--verbose",
            ],
            env,
        )

    runs = [ingest(f"s3://{bucket}/catalog/catalog.jsonl", store, "s3.json")]
    remote = itemlens.connect(store)
    ids = [r["item_id"] for r in rows]
    # the vectors of the media and texts read from s3 are those of the local files (the same
    # command line with a local catalog and store: tests/test_cluster.py)
    from sentence_transformers import SentenceTransformer

    texts = SentenceTransformer(minilm_path, device="cpu").encode([r["title"] for r in rows])
    assert _cos(remote.vectors("text", ids), texts).min() >= 0.99999
    photos = remote.encode("image", [str(folder / r["image"]) for r in rows])
    assert _cos(remote.vectors("image", ids), photos).min() >= 0.99999
    assert remote.errors().num_rows == 0

    # refresh: a new title, a new photo, an item gone (the catalog and its media on s3)
    rows[3]["title"] = "a brand new title"
    (folder / "images" / "0005.jpg").write_bytes((folder / "images" / "0009.jpg").read_bytes())
    fs.put(str(folder / "images" / "0005.jpg"), f"{bucket}/catalog/images/0005.jpg")
    gone = rows.pop(7)
    write_jsonl(folder / "catalog.jsonl", rows)
    fs.put(str(folder / "catalog.jsonl"), f"{bucket}/catalog/catalog.jsonl")
    runs.append(ingest(f"s3://{bucket}/catalog/catalog.jsonl", store, "refresh.json"))
    refresh = json.loads((tmp_path / "refresh.json").read_text())
    assert refresh["features"]["text"]["encoded"] == 1
    assert refresh["features"]["image"]["encoded"] == 1
    assert refresh["removed_items"] == 1

    # readers: the old snapshot is unchanged, the new one has the refresh
    before, after = itemlens.connect(store, snapshot=remote.snapshot), itemlens.connect(store)
    assert after.snapshot > before.snapshot
    assert gone["item_id"] in before.ids("text") and gone["item_id"] not in after.ids("text")
    moved = after.vectors("image", ["item-0005", "item-0009"])
    assert _cos(moved[:1], moved[1:])[0] >= 0.99999
    assert after.search("text", "a brand new title", k=1)[0].item_id == rows[3]["item_id"]

    # no secret in what was printed, the job reports, Ray's logs, or any object of the store
    secret = s3_server["secret"]
    for run in runs:
        assert secret not in run.stdout + run.stderr
    for report in ("s3.json", "refresh.json"):
        assert secret not in (tmp_path / report).read_text()
    logs = [p for p in Path(ray_cluster["temp"]).rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err")]
    assert logs and not [p for p in logs if secret.encode() in p.read_bytes()]
    objects = fs.find(f"{bucket}/lens")
    assert len(objects) > 20 and not [o for o in objects if secret.encode() in fs.cat_file(o)]
