"""Jobs as they run on a cluster: a killed driver, a killed encoder actor, ``ray job submit``.

Ingests here run as separate driver processes (the ``itemlens`` command line) joined to the
session's Ray head, as ``ray job submit`` runs them; encoder actors log the ids they encode
(``--encode-log``), so the work each run did is counted inside the actors, not by the driver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import itemlens

from .conftest import write_jsonl

pytestmark = pytest.mark.integration

N = 2000
ITEMLENS = str(Path(sys.executable).parent / "itemlens")


def _setup(tmp_path: Path, tiny_llm: str, n: int = N) -> tuple[Path, Path]:
    rows = [{"item_id": f"item-{i:05d}", "title": f"product {i}: " + " ".join(["word"] * (i % 13))} for i in range(n)]
    catalog = write_jsonl(tmp_path / "catalog.jsonl", rows)
    config = tmp_path / "lens.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "features": {
                    "text": {
                        "encoder": "hf-text",
                        "model": tiny_llm,
                        "input": {"template": "{title}"},
                        "resources": {"num_gpus": 0, "batch_size": 50},
                    }
                },
                "decode": {"text_batch_size": 100},
                # commit staged rows every second and write small files, so that a kill keeps some work
                "staging": {"commit_seconds": 1, "fragment_rows": 100},
            }
        )
    )
    return catalog, config


def _command(catalog: Path, config: Path, store: Path, log: Path, address: str) -> list[str]:
    return [
        ITEMLENS,
        "ingest",
        str(catalog),
        "--config",
        str(config),
        "--store",
        str(store),
        "--address",
        address,
        "--encode-log",
        str(log),
        "--no-progress",
    ]


def _logged(log: Path) -> list[str]:
    return [line for p in sorted(log.glob("text.*.encoded.*.log")) for line in p.read_text().splitlines() if line]


def _runs(log: Path) -> set[str]:
    return {p.name.split(".")[1] for p in log.glob("text.*.encoded.*.log")}


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _staged_ids(store: Path) -> set[str]:
    import lance

    found = list((store / "_staging").glob("text__*.lance")) if (store / "_staging").exists() else []
    ids: set[str] = set()
    for path in found:
        try:
            ids |= set(lance.dataset(str(path)).to_table(columns=["item_id"]).column(0).to_pylist())
        except ValueError:  # data files written but never committed: nothing staged
            pass
    return ids


def test_a_driver_killed_halfway_loses_nothing_and_the_rerun_encodes_only_the_rest(
    ray_session, ray_cluster, tmp_path, tiny_llm
):
    catalog, config = _setup(tmp_path, tiny_llm)
    store, log = tmp_path / "lens", tmp_path / "log"
    # a first, published snapshot that readers hold through what follows
    first = write_jsonl(tmp_path / "first.jsonl", [json.loads(line) for line in catalog.read_text().splitlines()[:10]])
    subprocess.run(
        _command(first, config, store, log, ray_cluster["address"]),
        check=True,
        env=ray_cluster["env"],
        capture_output=True,
    )
    reader = itemlens.connect(store)
    assert reader.snapshot == 1 and len(reader.ids("text")) == 10
    before = reader.vectors("text", reader.ids("text"))
    for p in log.glob("*.log"):
        p.unlink()

    driver = subprocess.Popen(
        _command(catalog, config, store, log, ray_cluster["address"]),
        env=ray_cluster["env"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # about half way: half of the items encoded, and some of them committed to staging
        _wait_for(lambda: len(_logged(log)) >= N // 2 and _staged_ids(store), 240, "half of the items")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    encoded_before_kill = set(_logged(log))
    staged = _staged_ids(store)
    assert 0 < len(staged) < N and staged <= encoded_before_kill
    assert itemlens.connect(store).snapshot == 1  # nothing published by the killed job

    (killed_run,) = _runs(log)
    rerun = subprocess.run(
        _command(catalog, config, store, log, ray_cluster["address"]) + ["--report", str(tmp_path / "r.json")],
        env=ray_cluster["env"],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    encoded_by_rerun = [
        line for p in log.glob(f"text.{report['run_id']}.encoded.*.log") for line in p.read_text().split()
    ]
    all_ids = {f"item-{i:05d}" for i in range(N)}
    # the rerun encoded exactly the items that were not staged (the first 10 were already stored)
    assert sorted(encoded_by_rerun) == sorted(all_ids - staged - {f"item-{i:05d}" for i in range(10)})
    assert report["features"]["text"]["recovered"] == len(staged - {f"item-{i:05d}" for i in range(10)})
    assert killed_run != report["run_id"]

    lens = itemlens.connect(store)
    assert lens.snapshot == 2
    ids = lens.ids("text")
    assert len(ids) == N and set(ids) == all_ids  # every item present, once
    assert not lens.errors().num_rows
    # the reader that stayed on snapshot 1 saw it unchanged throughout
    assert reader.snapshot == 1 and (reader.vectors("text", reader.ids("text")) == before).all()


def test_a_killed_encoder_actor_is_replaced_and_the_job_completes(ray_session, ray_cluster, tmp_path, tiny_llm):
    from ray.util.state import list_actors

    catalog, config = _setup(tmp_path, tiny_llm, n=1500)
    store, log = tmp_path / "lens", tmp_path / "log"
    driver = subprocess.Popen(
        _command(catalog, config, store, log, ray_cluster["address"]),
        env=ray_cluster["env"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: len(_logged(log)) >= 300, 240, "the encoder to start")
    actors = [
        a
        for a in list_actors(address=ray_cluster["dashboard"], filters=[("state", "=", "ALIVE")])
        if "EncodeBatches" in a.class_name and a.pid
    ]
    assert actors, "no encoder actor alive"
    os.kill(actors[0].pid, signal.SIGKILL)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr[-3000:]
    lens = itemlens.connect(store)
    ids = lens.ids("text")
    assert len(ids) == 1500 and len(set(ids)) == 1500
    assert len(_logged(log)) >= 1500  # items in flight were encoded again


def test_ray_job_submit_runs_an_ingest_on_a_running_cluster(ray_session, ray_cluster, tmp_path, minilm_path):
    catalog = write_jsonl(
        tmp_path / "catalog.jsonl",
        [{"item_id": "a", "title": "an LED light bulb"}, {"item_id": "b", "title": "a grey yoga bag"}],
    )
    config = tmp_path / "lens.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "features": {
                    "text": {
                        "encoder": "sentence-transformers",
                        "model": minilm_path,
                        "input": {"template": "{title}"},
                        "resources": {"num_gpus": 0},
                    }
                }
            }
        )
    )
    store = tmp_path / "lens"
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}
    job = subprocess.run(
        [
            ray_cluster["ray"],
            "job",
            "submit",
            "--address",
            ray_cluster["dashboard"],
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            ITEMLENS,
            "ingest",
            str(catalog),
            "--config",
            str(config),
            "--store",
            str(store),
            "--no-progress",
        ],
        env=ray_cluster["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    assert "succeeded" in job.stdout and "joined Ray" in job.stdout + job.stderr
    lens = itemlens.connect(store)
    assert sorted(lens.ids("text")) == ["a", "b"]
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(minilm_path, device="cpu").encode(["an LED light bulb"], normalize_embeddings=True)
    assert float(lens.vectors("text", ["a"])[0] @ expected[0]) >= 0.99999
