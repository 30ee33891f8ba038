"""Several Ray nodes on one machine: the session's head (no encoder resource) joined by worker
nodes started with ``ray start --address`` that declare a custom resource standing in for GPUs.
Encoder actors go where that resource is; a node lost mid-job loses no item; a multi-node run
with an s3:// catalog and store (no shared disk needed) gives the single-node vectors. The worker
nodes run without encoder hosts (workflows/encoder_hosts.py), so that run also checks the
default path, a model loaded in each actor, against the head's hosted one."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import itemlens
from itemlens.workflows.encoder_hosts import HOSTS_ENV

from .conftest import node_ports, write_jsonl
from .test_jobs import ITEMLENS

pytestmark = pytest.mark.integration

SLOT = "encoder_slot"  # the custom resource: one per "GPU"


class Nodes:
    """Worker nodes added to the session's Ray, each a ``ray start --block`` process group."""

    def __init__(self, ray_cluster: dict):
        self.cluster = ray_cluster
        self.procs: dict[str, subprocess.Popen] = {}

    def add(self, name: str, slots: int, cpus: int = 1) -> str:
        import ray

        before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        self.procs[name] = subprocess.Popen(
            [
                self.cluster["ray"],
                "start",
                f"--address={self.cluster['address']}",
                f"--num-cpus={cpus}",
                "--num-gpus=0",
                f"--resources={json.dumps({SLOT: slots})}",
                "--block",
                "--disable-usage-stats",
                *node_ports(),
            ],
            # without encoder hosts: actors on these nodes load their models themselves, the
            # default path, checked against the head's hosted models by the vectors below
            env={k: v for k, v in self.cluster["env"].items() if k != HOSTS_ENV},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = [
                n["NodeID"]
                for n in ray.nodes()
                if n["Alive"] and n["NodeID"] not in before and n["Resources"].get(SLOT) == slots
            ]
            if new:
                return new[0]
            time.sleep(0.5)
        raise RuntimeError(f"node {name} did not join")

    def kill(self, name: str) -> None:
        """The node is lost: its raylet, object store and workers die at once (SIGKILL)."""
        import psutil

        proc = psutil.Process(self.procs.pop(name).pid)
        for p in proc.children(recursive=True) + [proc]:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)


@pytest.fixture(scope="module")
def nodes(ray_session, ray_cluster):
    added = Nodes(ray_cluster)
    try:
        yield added
    finally:
        added.close()


def _config(path: Path, model: str, *, slots: bool, concurrency: int = 2, extra: dict | None = None) -> Path:
    resources = {"num_gpus": 0, "batch_size": 50, "concurrency": concurrency}
    if slots:
        resources["resources"] = {SLOT: 1}
    path.write_text(
        yaml.safe_dump(
            {
                "features": {
                    "text": {
                        "encoder": "hf-text",
                        "model": model,
                        "input": {"template": "{title}"},
                        "resources": resources,
                    }
                },
                "decode": {"text_batch_size": 100, "num_cpus": 0.5},
                "staging": {"commit_seconds": 1, "fragment_rows": 100},
                **(extra or {}),
            }
        )
    )
    return path


def _rows(n: int) -> list[dict]:
    return [{"item_id": f"item-{i:05d}", "title": f"product {i}: " + " ".join(["word"] * (i % 13))} for i in range(n)]


def _encoded_by_node(log: Path) -> dict[str, list[str]]:
    """node id prefix -> the ids its actors encoded (file names: text.<run>.encoded.<node>-<pid>.log)."""
    out: dict[str, list[str]] = {}
    for p in log.glob("text.*.encoded.*.log"):
        node = p.name.split(".")[3].split("-")[0]
        out.setdefault(node, []).extend(line for line in p.read_text().splitlines() if line)
    return out


def _ingest(catalog: str, config: Path, store: str, log: Path, ray_cluster: dict) -> list[str]:
    return [
        ITEMLENS,
        "ingest",
        catalog,
        "--config",
        str(config),
        "--store",
        store,
        "--address",
        ray_cluster["address"],
        "--encode-log",
        str(log),
        "--no-progress",
    ]


def test_actors_go_where_the_resource_is_and_a_multi_node_s3_run_gives_the_local_vectors(
    nodes, ray_cluster, s3_server, tmp_path, tiny_llm
):
    import s3fs

    rows = _rows(600)
    catalog = write_jsonl(tmp_path / "catalog.jsonl", rows)
    env = ray_cluster["env"]
    # one node: the session's head alone, a local folder
    single = subprocess.run(
        _ingest(
            str(catalog),
            _config(tmp_path / "one.yaml", tiny_llm, slots=False, concurrency=1),
            str(tmp_path / "lens"),
            tmp_path / "log1",
            ray_cluster,
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr

    a, b = nodes.add("a", slots=1), nodes.add("b", slots=1)
    # several nodes; the catalog and the store on s3, so that no node needs another's disk
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("lens-cluster")
    fs.put(str(catalog), "lens-cluster/catalog.jsonl")
    log = tmp_path / "log2"
    multi = subprocess.run(
        _ingest(
            "s3://lens-cluster/catalog.jsonl",
            _config(tmp_path / "slots.yaml", tiny_llm, slots=True),
            "s3://lens-cluster/lens",
            log,
            ray_cluster,
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert multi.returncode == 0, multi.stderr
    by_node = _encoded_by_node(log)
    assert set(by_node) == {a[:12], b[:12]}  # both worker nodes, never the head
    assert sorted(i for ids in by_node.values() for i in ids) == sorted(r["item_id"] for r in rows)

    ids = [r["item_id"] for r in rows]
    one, many = (
        itemlens.connect(tmp_path / "lens").vectors("text", ids),
        itemlens.connect("s3://lens-cluster/lens").vectors("text", ids),
    )
    cos = (one * many).sum(1) / (np.linalg.norm(one, axis=1) * np.linalg.norm(many, axis=1))
    assert cos.min() >= 0.99999


def test_a_node_lost_mid_job_loses_and_duplicates_no_item(nodes, ray_cluster, tmp_path, tiny_llm):
    import ray

    nodes.close()  # two nodes with the resource: one that stays, one to lose
    keep, lost = nodes.add("keep", slots=2), nodes.add("lost", slots=1)
    n = 2500
    rows = _rows(n)
    catalog = write_jsonl(tmp_path / "catalog.jsonl", rows)
    store, log = tmp_path / "lens", tmp_path / "log"
    job = subprocess.Popen(
        _ingest(str(catalog), _config(tmp_path / "lens.yaml", tiny_llm, slots=True), str(store), log, ray_cluster),
        env=ray_cluster["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while len(_encoded_by_node(log).get(lost[:12], [])) < 300:  # the doomed node is at work
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "the node to be lost never encoded anything"
            time.sleep(0.2)
        nodes.kill("lost")
        out, err = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err
    # the job may finish before the health check (about 3 s here) declares the killed node dead
    deadline = time.monotonic() + 60
    while lost in {x["NodeID"] for x in ray.nodes() if x["Alive"]} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lost not in {x["NodeID"] for x in ray.nodes() if x["Alive"]}

    lens = itemlens.connect(store)
    stored = lens.ids("text")
    assert len(stored) == n and sorted(stored) == sorted(r["item_id"] for r in rows)  # each item once
    assert lens.errors().num_rows == 0
    assert np.isfinite(lens.vectors("text", stored)).all()
    # every stored item was encoded by an actor of one of the two nodes (their encode logs): the
    # items the lost node did not deliver, on the node that stayed. Which actor there took them
    # (the one already there, or the lost actor's replacement on its second slot) is a race: the
    # survivor may finish first, and Ray may declare the node dead only after the job ends.
    # tests/test_jobs.py proves that a killed actor is replaced.
    by_node = _encoded_by_node(log)
    assert set(by_node) == {keep[:12], lost[:12]}
    assert set(by_node[keep[:12]]) | set(by_node[lost[:12]]) == set(stored)
