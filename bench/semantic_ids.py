"""Semantic IDs: RQ-KMeans and RQ-VAE against a plain faiss residual k-means, in one run.

    .venv/bin/python bench/semantic_ids.py [--rows 100000] [--dim 384] [--levels 3] [--codes 256]

Data: unit vectors from a mixture of 1,000 Gaussian clusters of random sizes (content
embeddings are clustered like this), seeded. For each method: training time (fit and the
codes of the training set), collision rate before the suffix, per-level utilization, relative
reconstruction error; for itemlens also the whole `semantic-ids` build through the store
(read vectors, train, assign suffixes, metrics, plot, write). The plain baseline is what a
user would write: faiss.Kmeans per level on the residual, same iterations and seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def data(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(1000, dim))
    sizes = rng.dirichlet(np.ones(1000) * 0.5)
    labels = rng.choice(1000, size=rows, p=sizes)
    x = centers[labels] + rng.normal(size=(rows, dim)) * rng.uniform(0.3, 1.0, size=(rows, 1))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def plain_faiss(x: np.ndarray, levels: int, k: int, niter: int, seed: int):
    import faiss

    r = x.copy()
    codes, books = [], []
    for level in range(levels):
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed + level, max_points_per_centroid=256)
        km.train(r)
        _, c = km.index.search(r, 1)
        codes.append(c[:, 0])
        books.append(km.centroids)
        r = r - km.centroids[c[:, 0]]
    codes = np.stack(codes, 1).astype(np.int64)
    return codes, sum(books[i][codes[:, i]] for i in range(levels))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codes", type=int, default=256)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--vae-epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the two k-means methods (median)")
    parser.add_argument("--kmeans-only", action="store_true", help="only rq-kmeans against plain faiss")
    args = parser.parse_args()

    from itemlens.store.semantic_ids.metrics import code_metrics
    from itemlens.store.semantic_ids.quantizers.rq_kmeans import RQKMeans
    from itemlens.store.semantic_ids.quantizers.rq_vae import RQVAE

    x = data(args.rows, args.dim)
    print(
        f"{args.rows} x {args.dim} float32, {args.levels} levels x {args.codes} codes; "
        f"{os.cpu_count()} CPUs; faiss threads {__import__('faiss').omp_get_max_threads()}"
    )
    results = {}

    def record(name, seconds, codes, decoded):
        m = code_metrics(codes, args.codes, x, decoded)
        results[name] = {
            "seconds": seconds,
            "collision_rate": m["collision_rate"],
            "utilization": m["utilization"],
            "reconstruction_error": m["reconstruction_error"],
            "largest_group": m["largest_group"],
        }

    ours, plain = [], []
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both
        t = time.perf_counter()
        codes_p, decoded_p = plain_faiss(x, args.levels, args.codes, args.niter, 0)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        q = RQKMeans(args.levels, args.codes, niter=args.niter, seed=0)
        encoded = q.fit_encode(x)
        ours.append(time.perf_counter() - t)
    record("plain faiss residual k-means", float(np.median(plain)), codes_p, decoded_p)
    record("itemlens rq-kmeans", float(np.median(ours)), encoded.codes, q.decode(encoded.codes))
    results["itemlens rq-kmeans"]["ratio_to_plain"] = [round(o / p, 3) for o, p in zip(ours, plain)]

    if args.kmeans_only:
        for name, r in results.items():
            print(f"{name:<40}  {r['seconds']:7.1f} s  {json.dumps({k: v for k, v in r.items() if k != 'seconds'})}")
        return
    for name, options in (
        ("itemlens rq-kmeans normalized", {"normalize_residual": True}),
        ("itemlens rq-kmeans balanced", {"balanced": True}),
    ):
        t = time.perf_counter()
        q = RQKMeans(args.levels, args.codes, niter=args.niter, seed=0, **options)
        encoded = q.fit_encode(x)
        record(name, time.perf_counter() - t, encoded.codes, q.decode(encoded.codes))

    t = time.perf_counter()
    vae = RQVAE(args.levels, args.codes, input_dim=args.dim, epochs=args.vae_epochs)
    encoded = vae.fit_encode(x)
    record(
        f"itemlens rq-vae ({args.vae_epochs} epochs)", time.perf_counter() - t, encoded.codes, vae.decode(encoded.codes)
    )

    # the whole build through the store: read vectors, train, unique IDs, metrics, plot, write
    import itemlens
    from itemlens.store.semantic_ids import build
    from itemlens.store.writer import StoreWriter

    with tempfile.TemporaryDirectory() as folder:
        StoreWriter.open(folder).close()
        lens = itemlens.connect(folder)
        lens.put_vectors("emb", [f"item{i}" for i in range(args.rows)], x)
        t = time.perf_counter()
        reports, _ = build(
            folder,
            {
                "sid": {
                    "features": ["emb"],
                    "levels": args.levels,
                    "codebook_size": args.codes,
                    "kmeans_iterations": args.niter,
                }
            },
        )
        whole = time.perf_counter() - t
        more = data(1000, args.dim, seed=1)
        lens.put_vectors("emb", [f"new{i}" for i in range(1000)], more)
        t = time.perf_counter()
        refresh, _ = build(
            folder,
            {
                "sid": {
                    "features": ["emb"],
                    "levels": args.levels,
                    "codebook_size": args.codes,
                    "kmeans_iterations": args.niter,
                }
            },
        )
        results["itemlens semantic-ids build (store to store)"] = {
            "seconds": whole,
            "stages": {k: round(v, 2) for k, v in reports["sid"].seconds.items()},
            "refresh_1000_new_seconds": time.perf_counter() - t,
            "refresh_trained": refresh["sid"].trained,
        }

    width = max(len(k) for k in results)
    for name, r in results.items():
        extra = {k: v for k, v in r.items() if k not in ("seconds",)}
        print(f"{name:<{width}}  {r['seconds']:7.1f} s  {json.dumps(extra)}")
    base = results["plain faiss residual k-means"]["seconds"]
    print(
        f"rq-kmeans / plain faiss time: {results['itemlens rq-kmeans']['seconds'] / base:.2f} "
        f"(per repeat {results['itemlens rq-kmeans']['ratio_to_plain']})"
    )
    os.makedirs("bench/out", exist_ok=True)
    with open("bench/out/semantic_ids.json", "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
