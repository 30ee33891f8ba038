"""Derived artifacts past the driver's memory: ``itemlens semantic-ids``, ``itemlens graph``
(approximate) and ``itemlens export`` on a local Ray with worker nodes, the driver's memory
capped below the size of the feature, give what the single-process path gives; and the
approximate graph's refresh equals a rebuild with the same index where it searched.

How the driver is capped: each command runs as its own process in a memory cgroup of its own
(a child of this process's cgroup, cgroup v1 ``memory.limit_in_bytes`` or v2 ``memory.max``),
limited to what the command's libraries take at start (measured: the peak RSS of the same
command on a store of 1,000 items) plus half the feature's size. Going over it gets the process
killed by the kernel (a real cap, unlike RLIMIT_AS, which Ray's, torch's and numba's virtual
reservations make unusable). Where no cgroup can be made (not root, no writable memory
controller) the commands run uncapped. Either way the process's peak anonymous memory (what it
allocated itself, sampled from /proc) must stay under the same command's peak on 1,000 items
plus half the feature's size: a driver that held the feature would go over it, with or without
a cap (under a cap, the kernel reclaims the libraries' mapped code, so RSS alone would not show it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

import itemlens

from .conftest import node_ports

# The feature: 102 MB of float32. The driver holds a few numbers per item, never a vector, so
# wide vectors make the feature large against what the driver needs (a cap that tells them apart).
N, DIM = 50_000, 512
SID = {"features": ["emb"], "levels": 3, "codebook_size": 64, "sample": 20_000, "seed": 3}
GRAPH = {"features": ["emb"], "k": 10, "method": "approximate", "nprobe": 8, "self_loops": True}

# One process runs one or more itemlens commands in turn (the libraries are loaded once) and
# prints its peak RSS and its peak anonymous memory, sampled from /proc every 10 ms. The bound
# is on the anonymous memory: what the process itself allocated. RSS also counts the
# libraries' mapped code, which a memory cap's reclaim shrinks, so under the cap a driver
# holding the whole feature could still show a smaller RSS than the uncapped baseline.
RUN = (
    "import json, resource, sys, threading, time\n"
    "peak = [0]\n"
    "def sample():\n"
    "    while True:\n"
    "        with open('/proc/self/status') as f:\n"
    "            anon = [int(line.split()[1]) for line in f if line.startswith('RssAnon:')]\n"
    "        peak[0] = max(peak[0], anon[0] if anon else 0)\n"
    "        time.sleep(0.01)\n"
    "threading.Thread(target=sample, daemon=True).start()\n"
    "from itemlens.workflows.cli import main\n"
    "for args in json.loads(sys.argv[1]):\n"
    "    code = main(args)\n"
    "    if code:\n"
    "        sys.exit(code)\n"
    "time.sleep(0.05)\n"
    "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, peak[0], flush=True)\n"
)


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(500, d)).astype(np.float32)
    return centres[rng.integers(0, 500, n)] + 0.5 * rng.normal(size=(n, d)).astype(np.float32)


def make_store(path: Path, x: np.ndarray) -> list[str]:
    ids = [f"item{i:07d}" for i in range(len(x))]
    lens = itemlens.create(path)
    for start in range(0, len(x), 100_000):  # put in parts: the test process holds x anyway
        lens.put_vectors("emb", ids[start : start + 100_000], x[start : start + 100_000])
    return ids


class MemoryCap:
    """A memory cgroup of its own for one command (None where none can be made)."""

    def __init__(self, limit: int):
        self.limit, self.path, self.v2 = limit, None, False
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        v1 = [line.split(":", 2)[2] for line in lines if line.split(":")[1] == "memory"]
        if v1 and Path("/sys/fs/cgroup/memory").is_dir():
            base, knob = Path("/sys/fs/cgroup/memory") / v1[0].lstrip("/"), "memory.limit_in_bytes"
        else:
            own = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
            base, knob, self.v2 = Path("/sys/fs/cgroup") / (own[0].lstrip("/") if own else ""), "memory.max", True
        path = base / f"itemlens-test-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
            (path / knob).write_text(str(limit))
            if not self.v2 and (path / "memory.memsw.limit_in_bytes").exists():
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
            self.path = path
        except OSError:
            if path.is_dir():
                path.rmdir()

    def enter(self) -> None:  # in the child, before exec
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def close(self) -> None:
        if self.path is not None:
            for _ in range(20):
                try:
                    self.path.rmdir()
                    return
                except OSError:
                    time.sleep(0.5)


class Peak(NamedTuple):
    rss: float  # MiB
    anon: float  # MiB


def itemlens_cli(*commands: list[str], env: dict, limit: int | None = None) -> tuple[str, Peak]:
    """Run ``itemlens ARGS`` for each of ``commands`` in one process (in a memory cgroup
    limited to ``limit`` bytes); return its output and its peaks."""
    cap = MemoryCap(limit) if limit else None
    try:
        proc = subprocess.run(
            [sys.executable, "-c", RUN, json.dumps(commands)],
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=cap.enter if cap else None,
            timeout=900,
            check=False,
        )
    finally:
        if cap:
            cap.close()
    assert proc.returncode == 0, (
        f"itemlens {' / '.join(' '.join(args) for args in commands)} failed ({proc.returncode}"
        f"{', killed: over its memory cap' if proc.returncode < 0 else ''}):\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    peak = [line for line in proc.stdout.splitlines() if line.startswith("PEAK_KB ")][-1].split()
    return proc.stdout, Peak(int(peak[1]) / 1024, int(peak[2]) / 1024)


@pytest.fixture(scope="module")
def worker_nodes(ray_session, ray_cluster):
    """Two worker nodes of one CPU each joined to the session's Ray (``ray start --address``)."""
    import ray

    procs = []
    for _ in range(2):
        before = sum(1 for n in ray.nodes() if n["Alive"])
        procs.append(
            subprocess.Popen(
                [
                    ray_cluster["ray"],
                    "start",
                    f"--address={ray_cluster['address']}",
                    "--num-cpus=1",
                    "--num-gpus=0",
                    "--object-store-memory=500000000",
                    "--block",
                    "--disable-usage-stats",
                    *node_ports(),
                ],
                env=ray_cluster["env"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        deadline = time.monotonic() + 90
        while sum(1 for n in ray.nodes() if n["Alive"]) <= before:
            assert time.monotonic() < deadline, "a worker node did not join"
            time.sleep(0.5)
    yield procs
    import signal

    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.integration
def test_semantic_ids_graph_and_export_under_a_driver_memory_cap(tmp_path, ray_cluster, worker_nodes):
    x = clustered(N, DIM)
    ids = make_store(tmp_path / "ray", x)
    shutil.copytree(tmp_path / "ray", tmp_path / "local")
    (tmp_path / "tiny").mkdir()
    make_store(tmp_path / "tiny" / "lens", x[:1000])
    config = tmp_path / "derived.yaml"
    config.write_text(yaml.safe_dump({"semantic_ids": {"sid": SID}, "graphs": {"g": GRAPH}}))
    env = {k: v for k, v in ray_cluster["env"].items() if k != "RAY_ADDRESS"}  # local runs: no Ray
    address = ["--address", ray_cluster["address"]]

    # what the commands' libraries take at start: the graph command (Ray, faiss, torch, numba) on 1,000 items
    _, baseline = itemlens_cli(
        ["semantic-ids", str(tmp_path / "tiny" / "lens"), "--config", str(config), *address],
        ["graph", str(tmp_path / "tiny" / "lens"), "--config", str(config), *address],
        env=env,
    )
    feature_mb = x.nbytes / 2**20
    limit = int((baseline.rss + feature_mb / 2) * 2**20)
    bound = baseline.anon + feature_mb / 2

    out, peak = itemlens_cli(
        ["semantic-ids", str(tmp_path / "ray"), "--config", str(config), *address],
        ["graph", str(tmp_path / "ray"), "--config", str(config), *address],
        env=env,
        limit=limit,
    )
    assert out.count("Ray tasks") == 2 and peak.anon < bound, (out, peak, bound)
    # the single-process path, uncapped, on a copy of the same store
    out, _ = itemlens_cli(
        ["semantic-ids", str(tmp_path / "local"), "--config", str(config)],
        ["graph", str(tmp_path / "local"), "--config", str(config)],
        env=env,
    )
    assert out.count("ran on driver") == 2, out

    on_ray, local = itemlens.connect(tmp_path / "ray"), itemlens.connect(tmp_path / "local")
    # semantic IDs: the same sample, codebooks and codes
    assert on_ray.semantic_id_info("sid").metrics["training_sample"] == SID["sample"]
    weights = [
        lens._dataset(lens.semantic_id_info("sid").quantizer_table).to_table().to_pylist()[0]["value"]
        for lens in (on_ray, local)
    ]
    assert weights[0] == weights[1]
    codes = on_ray.semantic_ids("sid", ids)
    assert np.array_equal(codes, local.semantic_ids("sid", ids))
    assert len({tuple(c) for c in codes.tolist()}) == N  # unique

    # the graph: the same lists, and recall@10 against exact search as the report states
    rows = [
        lens._dataset(lens.graph_info("g").table)
        .to_table(columns=["item_index", "neighbors", "scores"])
        .sort_by("item_index")
        for lens in (on_ray, local)
    ]
    assert rows[0].equals(rows[1])
    stored_recall = on_ray.graph_info("g").stats["recall_at_k"]
    picks = np.random.default_rng(7).choice(N, 300, replace=False)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    truth = np.argsort(-(unit[picks] @ unit.T), axis=1)[:, :10]
    lists = rows[0].column("neighbors").to_pylist()
    measured = np.mean([len(set(truth[i].tolist()) & set(lists[p][:10])) / 10 for i, p in enumerate(picks)])
    assert abs(measured - stored_recall) < 0.05 and measured > 0.8, (measured, stored_recall)

    # exports: under the cap, byte-equal to the single-process store's
    formats = {
        "mmrec": ["--feature", "text=emb", "--store-order"],
        "npz": [],
        "parquet": [],
        "sid-parquet": [],
        "sid-tokens": [],
    }
    for name, limit_now in (("ray", limit), ("local", None)):
        out = str(tmp_path / f"out-{name}")
        itemlens_cli(
            *(["export", str(tmp_path / name), "--format", f, "--out", out, *extra] for f, extra in formats.items()),
            env=env,
            limit=limit_now,
        )
    files = sorted(p.name for p in (tmp_path / "out-ray").iterdir() if p.name != "export.json")
    assert {"text_feat.npy", "features.npz", "items.parquet", "semantic_ids.parquet", "sid_tokens.npy"} <= set(files)
    for name in files:
        assert (tmp_path / "out-ray" / name).read_bytes() == (tmp_path / "out-local" / name).read_bytes(), name
    assert np.array_equal(np.load(tmp_path / "out-ray" / "text_feat.npy"), x)
    assert np.array_equal(np.load(tmp_path / "out-ray" / "features.npz")["emb"], x)
    table = pq.read_table(tmp_path / "out-ray" / "semantic_ids.parquet")
    assert np.array_equal(np.array(table.column("sid").to_pylist()), codes)


@pytest.mark.integration
def test_rq_vae_and_nearest_free_codes_on_ray_equal_the_single_process_ones(tmp_path, ray_cluster, worker_nodes):
    x = np.random.default_rng(1).normal(size=(12_000, 32)).astype(np.float32)  # spread: room for nearest-free
    ids = make_store(tmp_path / "ray", x)
    shutil.copytree(tmp_path / "ray", tmp_path / "local")
    vae = {
        "features": ["emb"],
        "method": "rq-vae",
        "levels": 3,
        "codebook_size": 32,
        "sample": 3000,
        "device": "cpu",
        "vae": {"epochs": 3, "hidden": [32], "latent_dim": 8, "batch_size": 512},
    }
    free = {"features": ["emb"], "levels": 2, "codebook_size": 256, "sample": 5000, "uniqueness": "nearest-free"}
    config = tmp_path / "sid.yaml"
    config.write_text(yaml.safe_dump({"semantic_ids": {"vae": vae, "free": free}}))
    env = {k: v for k, v in ray_cluster["env"].items() if k != "RAY_ADDRESS"}
    out, _ = itemlens_cli(
        ["semantic-ids", str(tmp_path / "ray"), "--config", str(config), "--address", ray_cluster["address"]],
        ["semantic-ids", str(tmp_path / "local"), "--config", str(config)],
        env=env,
    )
    assert out.count("Ray tasks") == 2 and out.count("ran on driver") == 2
    for name in ("vae", "free"):
        codes = itemlens.connect(tmp_path / "ray").semantic_ids(name, ids)
        assert np.array_equal(codes, itemlens.connect(tmp_path / "local").semantic_ids(name, ids))
        assert len({tuple(c) for c in codes.tolist()}) == len(ids)  # unique (free: without a suffix)
    assert codes.shape[1] == 2


@pytest.mark.integration
def test_a_derived_job_reports_where_it_ran_and_the_driver_peak(tmp_path, ray_cluster, worker_nodes):
    """``itemlens graph --address`` prints where each pass ran and the driver's peak."""
    x = clustered(3000, 16, seed=2)
    make_store(tmp_path / "lens", x)
    config = tmp_path / "g.yaml"
    config.write_text(yaml.safe_dump({"graphs": {"g": {**GRAPH, "nprobe": 4}}}))
    out, _ = itemlens_cli(
        ["graph", str(tmp_path / "lens"), "--config", str(config), "--address", ray_cluster["address"]],
        env=dict(ray_cluster["env"]),
    )
    line = next(line for line in out.splitlines() if line.startswith("g@v1"))
    assert "Ray tasks" in line and "driver peak" in line
    doc = itemlens.connect(tmp_path / "lens").doc.report["graphs"]["g"]
    assert doc["ran_on"].endswith("CPUs)") and doc["driver_peak_mb"] > 0


def test_vectors_at_item_indexes_and_beyond_the_cache(tmp_path):
    from itemlens.errors import UnknownItemsError

    x = clustered(5000, 128, seed=4)
    ids = make_store(tmp_path / "lens", x)
    lens = itemlens.connect(tmp_path / "lens")
    index = dict(zip(lens.items().column("item_id").to_pylist(), lens.items().column("item_index").to_pylist()))
    picks = np.random.default_rng(0).integers(0, len(ids), 2000)
    indexes = np.array([index[ids[i]] for i in picks])
    small = itemlens.connect(tmp_path / "lens", cache_bytes=1)  # nothing fits: rows come from Lance
    for reader in (lens, small):
        assert np.array_equal(reader.vectors_at("emb", indexes), x[picks])
        assert np.array_equal(reader.vectors("emb", [ids[i] for i in picks]), x[picks])
        with pytest.raises(
            UnknownItemsError, match=r"^1 item index\(es\) have no 'emb@v1' vector .*: 1000000;"
        ) as info:
            reader.vectors_at("emb", [indexes[0], 10**6, 10**6])
        assert info.value.missing == [10**6]
        filled = reader.vectors_at("emb", [indexes[0], -1], fill=np.nan)
        assert np.array_equal(filled[0], x[picks[0]]) and np.isnan(filled[1]).all()
    assert small._cache.nbytes < x.nbytes / 10


def test_feature_exports_are_written_chunk_by_chunk_as_numpy_writes_them(tmp_path, monkeypatch):
    from itemlens.store.exports import core

    monkeypatch.setattr(core, "CHUNK_ROWS", 700)  # several chunks, the last one short
    from itemlens.store.exports import features

    monkeypatch.setattr(features, "CHUNK_ROWS", 700)
    x = clustered(5000, 128, seed=5)
    ids = make_store(tmp_path / "lens", x)
    lens = itemlens.connect(tmp_path / "lens")
    order = [ids[i] for i in np.random.default_rng(1).permutation(len(ids))[:3000]] + ["unknown-1"]
    lens.export("mmrec", tmp_path / "a", ids=order, features={"text": "emb"}, fill=0.0)
    expected = np.concatenate([x[[int(i[4:]) for i in order[:-1]]], np.zeros((1, 128), np.float32)])
    np.save(tmp_path / "expected.npy", expected)
    assert (tmp_path / "a" / "text_feat.npy").read_bytes() == (tmp_path / "expected.npy").read_bytes()
    lens.export("npz", tmp_path / "b", ids=order, fill=0.0)
    with np.load(tmp_path / "b" / "features.npz") as archive:
        assert np.array_equal(archive["emb"], expected) and archive["emb_mask"].sum() == 3000
        assert archive["item_id"].tolist() == order
    lens.export("npz", tmp_path / "c", ids=order, fill=0.0)
    assert (tmp_path / "b" / "features.npz").read_bytes() == (tmp_path / "c" / "features.npz").read_bytes()
    lens.export("parquet", tmp_path / "d", ids=order, fill=0.0)
    table = pq.read_table(tmp_path / "d" / "items.parquet")
    assert pq.ParquetFile(tmp_path / "d" / "items.parquet").metadata.num_row_groups == 5
    assert np.array_equal(np.array(table.column("emb").to_pylist()[:3000]), expected[:3000])
    assert table.column("emb").to_pylist()[-1] is None
    # the reader never cached the table's values: the export read them by chunks
    assert lens._cache.nbytes < x.nbytes / 4
