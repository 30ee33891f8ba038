"""Client lookups and search at a million rows.

For each feature shape (1,000,000 x 128 float32; 1,000,000 x 768 float16), 1,000 random ids per
call, measured interleaved in one loop (this VM's speed drifts, so side-by-side samples are what
compare fairly):

* floor: numpy fancy indexing of the same array in memory, given row numbers (the gather alone);
* itemlens: ``lens.vectors(name, ids)`` on a pinned snapshot (id -> row map, then the gather);
* dict: the obvious hand-rolled map, a Python dict of id -> row, then the same gather;
* lancedb: ``table.search().where("item_id IN (...)")`` on the same table, which has a BTREE
  index on item_id (fewer samples: it is slow).

Also the cold open of a pinned snapshot (a fresh process: connect, then the first lookup, which
reads the table once), and, for the 128-d feature, an IVF_PQ index: build time, recall@10
against exact search, and queries per second with and without it. The vectors are clustered
(1,000 centres plus noise) so that the index meets data shaped like embeddings.

    python bench/client_lookup.py [--rows 1000000] [--trials 300]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def clustered(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, rows)] + 0.35 * rng.normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(store: Path, rows: int, dim: int, dtype) -> tuple[list[str], float]:
    import itemlens
    from itemlens.store.writer import StoreWriter

    ids = [f"item-{i:07d}" for i in range(rows)]
    if (store / "meta.lance").exists():
        return ids, float("nan")
    StoreWriter.open(store).close()
    vectors = clustered(rows, dim).astype(dtype)
    start = time.perf_counter()
    itemlens.connect(store).put_vectors("emb", ids, vectors, spec={"bench": f"{rows}x{dim}"})
    return ids, time.perf_counter() - start


def cold_open(store: Path, ids: list[str]) -> float:
    code = (
        "import time, itemlens\n"
        f"ids = {ids[:1000]!r}\n"
        "t = time.perf_counter()\n"
        f"lens = itemlens.connect({str(store)!r}, snapshot=1)\n"
        "lens.vectors('emb', ids)\n"
        "print(time.perf_counter() - t)\n"
    )
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def lookups(store: Path, ids: list[str], trials: int) -> dict:
    import lancedb

    import itemlens

    lens = itemlens.connect(store, snapshot=1)
    lens.vectors("emb", ids[:1])  # load once (the cold open is measured apart)
    values = lens._entry(lens._version("emb")).values  # the same array, in memory: the floor's input
    table_name = lens.doc.feature_version("emb").table
    table = lancedb.connect(str(store)).open_table(table_name, version=lens.doc.tables[table_name])
    as_dict = dict(zip(ids, itertools.count()))
    keys = np.array(ids)
    rng = np.random.default_rng(1)
    samples: dict[str, list[float]] = {"floor": [], "itemlens": [], "dict": [], "lancedb": []}
    for trial in range(trials):
        rows = rng.integers(0, len(ids), 1000)
        asked = keys[rows].tolist()
        t = time.perf_counter()
        values[rows]
        samples["floor"].append(time.perf_counter() - t)
        t = time.perf_counter()
        got = lens.vectors("emb", asked)
        samples["itemlens"].append(time.perf_counter() - t)
        t = time.perf_counter()
        values[np.fromiter(map(as_dict.get, asked, itertools.repeat(-1)), np.int64, len(asked))]
        samples["dict"].append(time.perf_counter() - t)
        if trial % 10 == 0:
            where = "item_id IN (" + ", ".join(f"'{i}'" for i in asked) + ")"
            t = time.perf_counter()
            table.search().where(where).select(["item_id", "vector"]).limit(len(asked)).to_arrow()
            samples["lancedb"].append(time.perf_counter() - t)
        if trial == 0:
            assert np.array_equal(got, values[rows])
    med = {k: float(np.median(v)) * 1e6 for k, v in samples.items()}
    return {
        "median_us": {k: round(v, 1) for k, v in med.items()},
        "x_floor": {k: round(v / med["floor"], 2) for k, v in med.items()},
        "lancedb_over_itemlens": round(med["lancedb"] / med["itemlens"], 1),
        "samples": {k: len(v) for k, v in samples.items()},
    }


def ann(store: Path, queries: int = 200) -> dict:
    import itemlens

    lens = itemlens.connect(store)
    info = lens.create_index("emb", kind="IVF_PQ")
    entry = lens._entry(lens._version("emb"))
    rng = np.random.default_rng(3)
    qs = entry.values[rng.integers(0, len(entry.values), queries)].astype(np.float32)
    out = {"index": info}
    for label, exact, count in (("indexed", False, queries), ("exact", True, max(queries // 10, 5))):
        start = time.perf_counter()
        for q in qs[:count]:
            lens.search("emb", q, k=10, exact=exact)
        out[f"{label}_qps"] = round(count / (time.perf_counter() - start), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "rows": args.rows, "ids_per_call": 1000}
    for dim, dtype in ((128, np.float32), (768, np.float16)):
        store = OUT / f"lookup-{args.rows}x{dim}-{np.dtype(dtype).name}"
        ids, build_s = build(store, args.rows, dim, dtype)
        shape = f"{dim}x{np.dtype(dtype).name}"
        result[shape] = {
            "put_vectors_s": round(build_s, 1),
            "cold_open_s": round(cold_open(store, ids), 2),
            **lookups(store, ids, args.trials),
        }
        if dim == 128:
            result[shape]["ann"] = ann(store)
        print(json.dumps({shape: result[shape]}, indent=2), flush=True)
    (OUT / "client_lookup.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
