"""Fault injection: a driver killed with SIGKILL right after each commit point of a refresh (new,
changed, removed and failing items; semantic IDs and a graph derived in the same job) and of a
prune. After each kill every listed snapshot is readable, and the next run leaves the store
exactly as an uninterrupted run does: the same values, every item in one place, the same report.

The commit points come from the store's own hook (store/faults.py): a clean run lists them and
leaves a copy of the store as a kill at each of them would leave it; every copy is recovered,
and at some points the driver is also killed for real and its store recovered alike."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import itemlens
from itemlens.workflows.ingest import ingest

from .conftest import write_jsonl

ITEMLENS = str(Path(sys.executable).parent / "itemlens")


def _catalogs(folder: Path) -> tuple[Path, Path]:
    words = "red blue lamp bag bottle soft warm steel glass cotton small large".split()
    first = [
        {"item_id": f"item-{i:02d}", "title": f"{words[i % 12]} {words[(i * 5) % 12]} thing {i}"} for i in range(24)
    ]
    second = [dict(r) for r in first if r["item_id"] not in {"item-03", "item-07", "item-11", "item-19"}]
    for row in second:
        if row["item_id"] in {"item-01", "item-05", "item-09", "item-13"}:
            row["title"] += " (new edition)"
        if row["item_id"] == "item-15":
            row["title"] = {"not": "text"}  # an input error in the refresh
    second += [{"item_id": f"new-{i}", "title": f"{words[i]} {words[-i]} novelty {i}"} for i in range(4)]
    return write_jsonl(folder / "first.jsonl", first), write_jsonl(folder / "second.jsonl", second)


def _config(path: Path, tiny_llm: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "features": {
                    "text": {
                        "encoder": "hf-text",
                        "model": tiny_llm,
                        "input": {"template": "{title}"},
                        "resources": {"num_gpus": 0, "batch_size": 4},
                    }
                },
                "decode": {"text_batch_size": 6},
                # small staging files committed at once: several staging commits in one run
                "staging": {"commit_seconds": 0.001, "fragment_rows": 6},
                "semantic_ids": {
                    "sid": {"features": ["text"], "levels": 2, "codebook_size": 4, "kmeans_iterations": 5}
                },
                "graphs": {"g": {"features": ["text"], "k": 3}},
            }
        )
    )
    return path


def _state(store: Path, snapshot: int | None = None) -> dict:
    """What a reader of ``snapshot`` sees, every table read (a missing table version raises)."""
    lens = itemlens.connect(store, snapshot=snapshot)
    ids = sorted(lens.ids("text"))
    errors = sorted((r["feature"], r["item_id"], r["stage"]) for r in lens.errors().to_pylist())
    both = set(ids) & {item for _, item, _ in errors}
    assert not both, f"items with a value and an errors row: {sorted(both)}"
    sid_ids = [i for i in ids if i in set(lens.items().column("item_id").to_pylist())]
    return {
        "snapshot": lens.snapshot,
        "ids": ids,
        "vectors": lens.vectors("text", ids),
        "errors": errors,
        "sid": lens.semantic_ids("sid", sid_ids, fill=-1).tolist(),
        "graph": [[n for n, _ in row] for row in lens.neighbors("g", ids)] if ids else [],
    }


def _same(a: dict, b: dict) -> None:
    assert a["ids"] == b["ids"] and a["errors"] == b["errors"]
    np.testing.assert_allclose(a["vectors"], b["vectors"], atol=1e-6)
    assert a["sid"] == b["sid"] and a["graph"] == b["graph"]


def _run(args: list[str], env: dict, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([ITEMLENS, *args], env={**env, **extra}, capture_output=True, text=True, timeout=600)


#: the commit points at which the test kills the driver for real (one early, one in the middle
#: of the merge, one in the derived artifacts); at every point, the store as a kill there would
#: leave it is also copied by the hook, and each copy is recovered the same way
KILLED = ("register:items", "merge:values", "semantic-ids:codes")


@pytest.mark.integration
def test_a_driver_killed_at_every_commit_point_loses_and_duplicates_nothing(
    ray_session, ray_cluster, tmp_path, tiny_llm
):
    first, second = _catalogs(tmp_path / "catalog")
    config = _config(tmp_path / "lens.yaml", tiny_llm)
    base = tmp_path / "base"
    assert ingest(first, config, base, progress=False).snapshot == 1
    env = {**ray_cluster["env"], "RAY_ADDRESS": ray_cluster["address"]}
    command = ["ingest", str(second), "--config", str(config), "--no-progress"]

    # the clean run: its commit points, and the store as a SIGKILL at each of them would leave it
    reference, log, copies = tmp_path / "reference", tmp_path / "commits.log", tmp_path / "at-commit"
    shutil.copytree(base, reference)
    clean = _run(
        command + ["--store", str(reference), "--report", str(tmp_path / "r.json")],
        env,
        ITEMLENS_COMMIT_LOG=str(log),
        ITEMLENS_COPY_AT_COMMIT=f"{reference}|{copies}",
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    expected, report = _state(reference), json.loads((tmp_path / "r.json").read_text())
    assert (report["items_seen"], report["new_items"], report["removed_items"]) == (24, 4, 4)
    assert len(expected["errors"]) == 1 and expected["snapshot"] == 2
    points = [tuple(line.split(" ", 1)) for line in log.read_text().splitlines()]
    # every kind of commit a refresh makes is among them
    assert {
        "register:items",
        "remove:values",
        "staging:commit",
        "merge:values",
        "merge:errors",
        "merge:staging-dropped",
        "semantic-ids:codes",
        "semantic-ids:quantizer",
        "graph:write",
        "publish",
    } <= {name for _, name in points}
    assert len(list(copies.iterdir())) == len(points)

    def recovered(store: Path, name: str) -> None:
        for snapshot in itemlens.connect(store).snapshots():  # every listed snapshot reads
            _state(store, snapshot["snapshot_id"])
        assert itemlens.connect(store).snapshot == (2 if name == "publish" else 1), name
        rerun = ingest(second, config, store, progress=False)
        if name != "publish":
            assert (rerun.items_seen, rerun.new_items, rerun.removed_items) == (24, 4, 4), name
            assert rerun.snapshot == 2, name
        _same(_state(store), expected)

    # every commit point: the store as a kill there leaves it, recovered by the next run
    for number, name in points:
        store = copies / f"{int(number):03d}-{name.replace(':', '-')}"
        recovered(store, name)
        shutil.rmtree(store)
    # and for real, at some of them: a driver killed with SIGKILL (its Ray work cut off too)
    first_at = {}
    for number, name in points:
        first_at.setdefault(name, int(number))
    for name in KILLED:
        store = tmp_path / f"killed-{first_at[name]}"
        shutil.copytree(base, store)
        killed = _run(command + ["--store", str(store)], env, ITEMLENS_KILL_AT_COMMIT=str(first_at[name]))
        assert killed.returncode == -signal.SIGKILL, (name, killed.stderr[-2000:])
        recovered(store, name)
        shutil.rmtree(store)

    # a prune killed at each of its commit points: no listed snapshot loses its tables
    prune_log = tmp_path / "prune.log"
    pruned = tmp_path / "pruned"
    shutil.copytree(reference, pruned)
    assert _run(["prune", str(pruned), "--keep", "1"], env, ITEMLENS_COMMIT_LOG=str(prune_log)).returncode == 0
    prune_points = {
        line.split(" ", 1)[1]: int(line.split(" ", 1)[0]) for line in reversed(prune_log.read_text().splitlines())
    }
    assert {"prune:snapshots", "prune:versions"} <= set(prune_points)
    for name, number in prune_points.items():
        store = tmp_path / f"prune-killed-{number}"
        shutil.copytree(reference, store)
        killed = _run(["prune", str(store), "--keep", "1"], env, ITEMLENS_KILL_AT_COMMIT=str(number))
        assert killed.returncode == -signal.SIGKILL, (name, killed.stderr[-2000:])
        for snapshot in itemlens.connect(store).snapshots():
            _same(_state(store, snapshot["snapshot_id"]), expected)
        assert _run(["prune", str(store), "--keep", "1"], env).returncode == 0
        assert [s["snapshot_id"] for s in itemlens.connect(store).snapshots()] == [2]
        _same(_state(store), expected)
        shutil.rmtree(store)


def test_a_reader_on_a_pruned_snapshot_is_told_which_snapshots_remain(tmp_path):
    from itemlens.errors import SnapshotNotFoundError
    from itemlens.store.writer import StoreWriter

    StoreWriter.open(tmp_path / "lens").close()
    itemlens.connect(tmp_path / "lens").put_vectors("t", ["a", "b"], np.ones((2, 4), np.float32), spec={"run": 1})
    old = itemlens.connect(tmp_path / "lens")
    itemlens.connect(tmp_path / "lens").put_vectors("t", ["a", "c"], np.zeros((2, 4), np.float32), spec={"run": 1})
    with StoreWriter.open(tmp_path / "lens") as writer:
        assert writer.prune(keep=1)["dropped"] == [1]
    with pytest.raises(SnapshotNotFoundError, match="snapshot 1 .* was pruned .* has snapshots 2"):
        old.ids("t")
    with pytest.raises(SnapshotNotFoundError, match="no snapshot 1"):
        itemlens.connect(tmp_path / "lens", snapshot=1)
    assert old.refresh() == 2 and sorted(old.ids("t")) == ["a", "b", "c"]
