"""``itemlens browse`` on a store of a million items: how long its pages take.

Builds (once, under bench/out/) a store of 1,000,000 items with ``put_vectors`` (two features:
``text`` 1,000,000 x 64 and ``image`` 1,000,000 x 32 float32, clustered random vectors; the
image feature's spec names the catalog's photo column) and a Parquet catalog of the same items
(id, title, price, one photo each: the example catalog's photos, so thumbnails are real). Then,
in one process through Starlette's test client (requests go through routing, the client and the
templates, not over a socket):

* the first item page: reads the item ids (the client's id index over 1,000,000 ids) and the
  catalog once (its id -> row index, see workflows/browse/catalog_rows.py);
* the item page, warm: median of several items, each page with two exact neighbour searches
  (``lens.search`` on its own vector, brute force: no vector index) and catalog rows for the item
  and its 20 neighbours;
* the summary page and a page of the item list, median;
* semantic IDs of ``text`` (rq-kmeans, 3 levels of 256 codes, built once): the first page of the
  code tree (reads and sorts every item's codes once), then the root and a level-1 prefix, median;
* the diff page of ``text`` against ``image`` (a 500-item sample, each against all items);
* beside them, the obvious way to get one catalog row per request: a Parquet read filtered on
  the id (``pyarrow.parquet.read_table(filters=...)``), against the index's look-up.

    python bench/browse.py [--rows 1000000] [--trials 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def clustered(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, rows)] + 0.35 * rng.normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(folder: Path, rows: int) -> tuple[Path, Path, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import itemlens
    from itemlens.store.writer import StoreWriter

    store, catalog = folder / "lens", folder / "catalog" / "catalog.parquet"
    ids = [f"item-{i:07d}" for i in range(rows)]
    if (store / "snapshots.lance").exists() and catalog.exists():
        return store, catalog, ids
    photos = sorted((ROOT / "examples" / "catalog" / "images").rglob("*.jpg"))
    catalog.parent.mkdir(parents=True, exist_ok=True)
    relative = [os.path.relpath(p, catalog.parent) for p in photos]
    pq.write_table(
        pa.table(
            {
                "item_id": ids,
                "title": [f"product number {i}" for i in range(rows)],
                "price": np.round(np.random.default_rng(0).uniform(1, 100, rows), 2),
                "images": [[relative[i % len(relative)]] for i in range(rows)],
            }
        ),
        catalog,
        row_group_size=65536,
    )
    StoreWriter.open(store).close()
    lens = itemlens.connect(store)
    started = time.perf_counter()
    lens.put_vectors("text", ids, clustered(rows, 64, 1), spec={"bench": "text"})
    lens.put_vectors("image", ids, clustered(rows, 32, 2), spec={"bench": "image", "input": {"image": "images"}})
    print(f"built {rows:,} items in {time.perf_counter() - started:.0f} s")
    return store, catalog, ids


def timed(get, url: str) -> float:
    started = time.perf_counter()
    answer = get(url)
    seconds = time.perf_counter() - started
    assert answer.status_code == 200, (url, answer.status_code, answer.text[-500:])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trials", type=int, default=7)
    args = parser.parse_args()

    import pyarrow.parquet as pq
    from starlette.testclient import TestClient

    from itemlens.workflows.browse import create_app

    store, catalog, ids = build(OUT / f"browse-{args.rows}", args.rows)
    import itemlens
    from itemlens.store import semantic_ids

    if "sid" not in itemlens.connect(store).doc.semantic_ids:
        started = time.perf_counter()
        semantic_ids.build(str(store), {"sid": {"features": ["text"], "levels": 3, "codebook_size": 256}})
        print(f"semantic IDs of {args.rows:,} items in {time.perf_counter() - started:.0f} s")
    rng = np.random.default_rng(3)
    picks = [ids[i] for i in rng.choice(len(ids), size=args.trials + 1, replace=False)]

    started = time.perf_counter()
    app = create_app(store, catalog=str(catalog))
    client = TestClient(app, base_url="http://127.0.0.1")
    open_seconds = time.perf_counter() - started
    first = timed(client.get, f"/item/{picks[0]}")
    item = [timed(client.get, f"/item/{p}") for p in picks[1:]]
    summary = [timed(client.get, "/") for _ in range(args.trials)]
    listing = [timed(client.get, f"/items?page={int(rng.integers(1, len(ids) // 48))}") for _ in range(args.trials)]
    sid_first = timed(client.get, "/sid/sid")
    sid_root = [timed(client.get, "/sid/sid") for _ in range(args.trials)]
    prefixes = [int(p) for p in rng.integers(0, 256, args.trials)]
    sid_prefix = [timed(client.get, f"/sid/sid?prefix={p}") for p in prefixes]
    diff_first = timed(client.get, "/diff?a=text&b=image&k=10")

    rows = app.state.browser.catalogs[0]
    lookup = []
    for p in picks:
        t = time.perf_counter()
        rows.rows([p])
        lookup.append(time.perf_counter() - t)
    filtered = []
    for p in picks[: min(3, len(picks))]:
        t = time.perf_counter()
        pq.read_table(catalog, filters=[("item_id", "=", p)])
        filtered.append(time.perf_counter() - t)

    result = {
        "rows": args.rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "open_app_s": round(open_seconds, 3),
        "first_item_page_s": round(first, 3),
        "catalog_index_build_s": round(rows.build_seconds or 0.0, 2),
        "catalog_arrow_bytes": rows.disk_bytes,
        "item_page_median_s": round(statistics.median(item), 3),
        "item_page_max_s": round(max(item), 3),
        "summary_page_median_s": round(statistics.median(summary), 3),
        "items_list_page_median_s": round(statistics.median(listing), 3),
        "sid_first_page_s": round(sid_first, 3),
        "sid_root_page_median_s": round(statistics.median(sid_root), 3),
        "sid_prefix_page_median_s": round(statistics.median(sid_prefix), 3),
        "diff_page_first_s": round(diff_first, 2),
        "catalog_row_index_median_ms": round(1000 * statistics.median(lookup), 3),
        "catalog_row_parquet_filter_median_ms": round(1000 * statistics.median(filtered), 1),
    }
    print(json.dumps(result, indent=2))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"browse-{args.rows}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
