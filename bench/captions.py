"""Captioning throughput: itemlens' caption path against a plain loop over the same model.

Both caption the same images (made from the example catalog's product photos: mostly thumbnails,
with icons, thin strips, full photos and 4000x3000 photos, in a seeded order) with the same model,
prompt, greedy decoding, ``--max-new-tokens`` and batch size, from the image files' bytes to decoded
captions:

* itemlens: the pipeline's own stages in one process: ``prepare_caption_images`` on blocks of 32
  catalog rows (``decode.batch_size``: read, hash, decode, size guards, the model's processor per
  item, blocks sorted by vision tokens), then ``EncodeBatches`` on consecutive ``--batch-size``
  prepared rows (batches under the token budget, assembled as the processor builds them,
  generated, staging rows built). Measured twice: with the blocks prepared in a thread while the
  actor generates, as the pipeline's CPU tasks run beside its encoder actor ("itemlens"), and
  with each block prepared, then generated ("itemlens sequential");
* the plain loop: for each ``--batch-size`` items in catalog order, ``processor(images=...,
  text=..., padding=True)`` and ``model.generate``, then ``batch_decode``.

A dynamic-resolution stand-in (the default, Qwen2.5-VL) reads images at ``--max-pixels`` (both
paths), so that, as with a real Qwen-VL and real photos, a large photo costs hundreds of vision
tokens and an icon a few: the regime where batching by vision tokens matters.

Figures: captions/s and generated tokens/s of each (the best of ``--repeats`` runs, alternating,
after a warm-up run of each; model loading is left out) and the ratios to the loop (goal >= 1.0),
whether the captions are the same, and each run's wall and CPU seconds (on a machine shared with
other jobs wall times swing from run to run).

    python bench/captions.py [--family qwen2_5_vl] [--items 48] [--batch-size 8] [--max-new-tokens 16]

Real-size architecture (Qwen2.5-VL-3B-Instruct's config with seeded random weights in bf16; no
hub access is needed: the config is written here, the tokenizer is the stand-ins' WordPiece one
with Qwen's special tokens, so ids beyond its vocabulary decode to nothing). On a GPU, at each of
``--batch-sizes``: captions/s, generated tokens/s and the GPU's utilization (nvidia-smi, sampled
every 0.2 s) while each path runs; generation runs to ``--max-new-tokens`` (no end of sequence),
so both paths generate the same number of tokens. The in-process path here is what EncodeBatches
runs (the processor per item, then ``caption_items``), without writing a 7 GB checkpoint first.

    python bench/captions.py --real-size --dry        # build the config and processor, count, no weights
    python bench/captions.py --real-size --gpu [--batch-sizes 8 32] [--items 64]
    python bench/captions.py --real-size --check-on-cpu   # the same code with a tiny config, on CPU

Figures go to stdout and bench/out/captions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PHOTOS = sorted((ROOT / "examples" / "catalog" / "images").rglob("*.jpg"))
PROMPT = "Describe this product image in one sentence."


# -- inputs ------------------------------------------------------------------------------------------

#: the catalog's mix: mostly thumbnails, some icons and strips, a few full photos and 4000x3000 ones
KINDS = ("thumb", "icon", "thumb", "large", "thumb", "strip", "thumb", "photo")
SIZES = {"thumb": (96, 96), "icon": (48, 48), "strip": (400, 40), "large": (4000, 3000)}


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """n image files of mixed sizes made from the product photos (:data:`KINDS`: mostly 96x96
    thumbnails, with icons, strips, full photos and 4000x3000 photos); returns their names, in a
    seeded order."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = []
    for i in range(n):
        photo = PHOTOS[i % len(PHOTOS)]
        kind = KINDS[i % len(KINDS)]
        name = f"{i:04d}-{kind}.jpg"
        if not (folder / name).exists():
            image = Image.open(photo).convert("RGB")
            size = SIZES.get(kind)
            (image.resize(size, Image.Resampling.BILINEAR) if size else image).save(folder / name, quality=90)
        names.append(name)
    rng.shuffle(names)
    return names


# -- the two paths, tiny model on CPU -------------------------------------------------------------------


def itemlens_path(
    spec_json: str, names: list[str], folder: Path, batch_size: int, *, overlap: bool, prepare_rows: int = 32
) -> tuple[list[str], int]:
    """The pipeline's stages in one process: prepare_caption_images on blocks of ``prepare_rows``
    catalog rows (``decode.batch_size``, 32 by default), and EncodeBatches on consecutive
    ``batch_size`` rows of each prepared block. ``overlap``: the blocks are prepared in a thread
    while the actor generates, as the pipeline's CPU tasks run beside its actor; else one after
    the other."""
    import queue

    import pyarrow as pa

    from itemlens.extractors.media import MediaLimits
    from itemlens.store.lookup import StoredHashes
    from itemlens.workflows import stages

    catalog = pa.table({"item_id": names, "images": [[n] for n in names]})
    actor = _actor(spec_json)

    def prepared_blocks():
        for block in range(0, catalog.num_rows, prepare_rows):
            yield from stages.prepare_caption_images(
                catalog.slice(block, prepare_rows),
                spec_json=spec_json,
                id_column="item_id",
                base=str(folder),
                stored=StoredHashes(None, None, None, None, "bench"),
                limits=MediaLimits(),
            )

    blocks = prepared_blocks()
    if overlap:  # a producer thread, at most two blocks ahead (Ray Data's backpressure does the same)
        ready: queue.Queue = queue.Queue(maxsize=2)

        def produce():
            try:
                for table in prepared_blocks():
                    ready.put(table)
            finally:
                ready.put(None)

        threading.Thread(target=produce, daemon=True).start()
        blocks = iter(ready.get, None)
    captions, tokens = {}, 0
    for prepared in blocks:
        for start in range(0, prepared.num_rows, batch_size):
            staged = actor(prepared.slice(start, batch_size))
            for row in staged.select(["item_id", "caption", "generated_tokens", "error_reason"]).to_pylist():
                if row["caption"] is None:
                    raise RuntimeError(f"{row['item_id']}: {row['error_reason']}")
                captions[row["item_id"]] = row["caption"]
                tokens += row["generated_tokens"]
    return [captions[n] for n in names], tokens


_ACTORS: dict = {}


def _actor(spec_json: str):
    """One EncodeBatches per spec (an actor: the model loaded once, on its first batch)."""
    from itemlens.workflows import stages

    if spec_json not in _ACTORS:
        import torch

        _ACTORS[spec_json] = stages.EncodeBatches(spec_json, "bench", "cpu", torch.get_num_threads(), "bench")
    return _ACTORS[spec_json]


def plain_loop(
    processor,
    model,
    names: list[str],
    folder: Path,
    batch_size: int,
    max_new_tokens: int,
    device: str = "cpu",
    processor_kwargs: dict | None = None,
) -> tuple[list[str], int]:
    """What a user writes with transformers: the processor and generate on batches in catalog order
    (``processor_kwargs``: the same pixel bounds as itemlens')."""
    import torch

    from itemlens.extractors.images import decode_image

    processor.tokenizer.padding_side = "left"
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    eos = model.generation_config.eos_token_id
    stop = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    captions, tokens = [], 0
    for start in range(0, len(names), batch_size):
        chunk = names[start : start + batch_size]
        images = [[decode_image((folder / n).read_bytes())] for n in chunk]
        batch = processor(
            images=images, text=[text] * len(chunk), padding=True, return_tensors="pt", **(processor_kwargs or {})
        ).to(device, dtype=model.dtype)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, batch["input_ids"].shape[1] :].tolist()
        for row in new:
            end = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
            tokens += end
        captions += [c.strip() for c in processor.batch_decode(new, skip_special_tokens=True)]
    return captions, tokens


def bench_cpu(args) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    from itemlens.extractors import FeatureSpec, build_encoder
    from itemlens.extractors.encoders.caption_inputs import dynamic_resolution
    from itemlens.extractors.standins.caption import write_tiny_captioner

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="itemlens-bench-captions-"))
    model_folder = args.model or str(write_tiny_captioner(args.family, work / f"tiny-{args.family}"))
    folder = work / "images"
    names = write_images(folder, args.items)
    fields = {
        "encoder": "caption",
        "model": model_folder,
        "input": {"image": "images"},
        "prompt": PROMPT,
        "max_new_tokens": args.max_new_tokens,
        "resources": {"num_gpus": 0, "batch_size": args.batch_size},
    }
    if args.max_pixels and dynamic_resolution(AutoProcessor.from_pretrained(model_folder).image_processor):
        fields["max_pixels"] = args.max_pixels
    spec = FeatureSpec.model_validate(fields)
    spec_json = spec.model_dump_json()
    # the loop's processor calls get the same options (the pixel bounds) as itemlens' processor
    processor_kwargs = build_encoder(spec).inputs.processor_kwargs
    processor = AutoProcessor.from_pretrained(model_folder)
    model = AutoModelForImageTextToText.from_pretrained(model_folder).eval()

    paths = {
        "itemlens": lambda n: itemlens_path(spec_json, n, folder, args.batch_size, overlap=True),
        "itemlens sequential": lambda n: itemlens_path(spec_json, n, folder, args.batch_size, overlap=False),
        "loop": lambda n: plain_loop(
            processor, model, n, folder, args.batch_size, args.max_new_tokens, processor_kwargs=processor_kwargs
        ),
    }
    runs = {name: [] for name in paths}
    cpu = {name: [] for name in paths}
    results = {}
    for run in paths.values():  # warm-up (model loads, first-call costs)
        run(names[:4])
    for _ in range(args.repeats):  # the timed runs, alternating
        for name, run in paths.items():
            t, c = time.perf_counter(), time.process_time()
            captions, tokens = run(names)
            runs[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            results[name] = (captions, tokens)
    report = {
        "mode": "cpu",
        "family": args.family,
        "model": model_folder,
        "items": args.items,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "max_pixels": spec.max_pixels,
        "processor_kwargs": processor_kwargs,
        "torch_threads": torch.get_num_threads(),
    }
    for name in runs:
        seconds, cpu_seconds = min(runs[name]), min(cpu[name])
        captions, tokens = results[name]
        report[name] = {
            "seconds": round(seconds, 3),
            "runs": [round(s, 3) for s in runs[name]],
            "cpu_seconds": round(cpu_seconds, 3),
            "cpu_runs": [round(s, 3) for s in cpu[name]],
            "captions_per_s": round(len(captions) / seconds, 2),
            "generated_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
        }
    report["ratio"] = round(report["loop"]["seconds"] / report["itemlens"]["seconds"], 3)
    report["ratio_sequential"] = round(report["loop"]["seconds"] / report["itemlens sequential"]["seconds"], 3)
    same = sum(a == b == c for a, b, c in zip(*(results[name][0] for name in paths)))
    report["same_captions"] = f"{same} of {len(names)}"
    return report


# -- real-size architecture -------------------------------------------------------------------------------


def qwen2_5_vl_3b(tiny: bool = False):
    """Qwen2.5-VL-3B-Instruct's architecture (its config.json's values) and a processor with its
    image processor's settings; ``tiny``: the same builder at toy sizes (to check this code on CPU).
    The tokenizer is the stand-ins' (WordPiece vocabulary, Qwen's special tokens)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from itemlens.extractors.standins.caption import _QWEN_TOKENS, QWEN_CHAT_TEMPLATE, _ids, family_tokenizer

    tokenizer = family_tokenizer(list(_QWEN_TOKENS), bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    image, video, start, end = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    if tiny:
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=14,
            out_hidden_size=64,
            window_size=112,
            fullatt_block_indexes=[1],
        )
        text = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        )
    else:  # Qwen/Qwen2.5-VL-3B-Instruct config.json
        vision = dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            patch_size=14,
            out_hidden_size=2048,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
        )
        text = dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            vocab_size=151936,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        )
    config = Qwen2_5_VLConfig(
        vision_config=dict(
            spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, hidden_act="silu", **vision
        ),
        text_config=dict(
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            hidden_act="silu",
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
            **text,
        ),
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
        tie_word_embeddings=True,
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )
    pixels = dict(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}, **pixels
        ),
        video_processor=Qwen2VLVideoProcessor(
            size={"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}, **pixels
        ),
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    return config, processor


def gpu_sampler():
    """Samples the GPU's utilization (%) every 0.2 s while running: ``with sampler() as s: ...; s.values``."""

    class Sampler:
        def __enter__(self):
            self.values, self._stop = [], threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
            return self

        def _run(self):
            while not self._stop.wait(0.2):
                try:
                    out = subprocess.run(
                        ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                        capture_output=True,
                        text=True,
                        timeout=5,
                    ).stdout.strip()
                    self.values.append(float(out.splitlines()[0]))
                except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                    pass

        def __exit__(self, *exc):
            self._stop.set()
            self._thread.join()

    return Sampler()


def bench_real_size(args) -> dict:
    import torch

    from itemlens.extractors.encoders.caption_inputs import (
        DEFAULT_MAX_PIXELS,
        GenerationSettings,
        VisionInputs,
        caption_items,
    )
    from itemlens.extractors.images import decode_image

    tiny = args.check_on_cpu
    config, processor = qwen2_5_vl_3b(tiny=tiny)
    bounds = {"images_kwargs": {"size": {"shortest_edge": 56 * 56, "longest_edge": DEFAULT_MAX_PIXELS}}}
    inputs = VisionInputs(processor, config, prompt=PROMPT, processor_kwargs=bounds, name="Qwen2.5-VL-3B (seeded)")
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        counted = Qwen2_5_VLForConditionalGeneration(config)
    parameters = sum(p.numel() for p in counted.parameters())
    del counted
    work = Path(args.work or tempfile.mkdtemp(prefix="itemlens-bench-captions-"))
    folder = work / "images"
    names = write_images(folder, args.items)
    large = inputs.prepare([decode_image((folder / next(n for n in names if "large" in n)).read_bytes())])
    report = {
        "mode": "real-size" + (" (tiny config, CPU check)" if tiny else ""),
        "parameters": parameters,
        "config": {
            "text": {
                k: getattr(config.text_config, k)
                for k in (
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "vocab_size",
                )
            },
            "vision": {
                k: getattr(config.vision_config, k)
                for k in ("depth", "hidden_size", "intermediate_size", "num_heads", "patch_size", "out_hidden_size")
            },
        },
        "max_pixels": DEFAULT_MAX_PIXELS,
        "4000x3000 photo": {"vision_tokens": large.vision_tokens, "payload_mb": round(large.nbytes / 1e6, 1)},
        "path": inputs.path.describe(),
    }
    if args.dry:
        return report
    device = "cuda" if args.gpu else "cpu"
    dtype = torch.bfloat16 if args.gpu else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype).eval()
    model.generation_config.eos_token_id = None  # every caption runs to max_new_tokens
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    report["device"] = torch.cuda.get_device_name(0) if args.gpu else "cpu"
    report["runs"] = {}
    for batch_size in args.batch_sizes:
        row = {}
        for name in ("itemlens", "loop"):
            if args.gpu:
                torch.cuda.synchronize()
            with gpu_sampler() as sampler:
                t = time.perf_counter()
                if name == "itemlens":
                    payloads = [inputs.prepare([decode_image((folder / n).read_bytes())]) for n in names]
                    captions = caption_items(
                        inputs, model, payloads, settings, budget=args.budget, max_items=batch_size
                    )
                    tokens = sum(c.generated_tokens for c in captions)
                else:
                    _, tokens = plain_loop(
                        processor,
                        model,
                        names,
                        folder,
                        batch_size,
                        args.max_new_tokens,
                        device,
                        processor_kwargs=bounds,
                    )
                if args.gpu:
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t
            util = sampler.values if args.gpu else []
            row[name] = {
                "seconds": round(seconds, 2),
                "captions_per_s": round(len(names) / seconds, 2),
                "tokens_per_s": round(tokens / seconds, 1),
                "generated_tokens": tokens,
                "gpu_util_mean": round(statistics.mean(util), 1) if util else None,
                "gpu_util_max": max(util) if util else None,
            }
        row["ratio"] = round(row["loop"]["seconds"] / row["itemlens"]["seconds"], 3)
        report["runs"][str(batch_size)] = row
    return report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="qwen2_5_vl", help="tiny stand-in family (CPU mode)")
    parser.add_argument("--model", help="a local captioner folder instead of the tiny stand-in")
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU mode: torch threads")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=65536,
        help="CPU mode, dynamic-resolution families: the pixel bound (both paths; the tiny Qwen-VL "
        "reads 64 pixels a token: 65536 makes a large photo 1024 tokens, an icon 4)",
    )
    parser.add_argument("--work", help="folder for the model and images (default: a new temporary one)")
    parser.add_argument("--real-size", action="store_true", help="Qwen2.5-VL-3B's architecture, seeded weights")
    parser.add_argument("--gpu", action="store_true", help="run the real-size model on cuda in bf16")
    parser.add_argument("--dry", action="store_true", help="real size: build the config and processor only")
    parser.add_argument("--check-on-cpu", action="store_true", help="real size: run its code with a tiny config")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--budget", type=int, default=2**20, help="real size: itemlens' token budget per batch")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.real_size and not (args.gpu or args.dry or args.check_on_cpu):
        parser.error("--real-size runs with --gpu (or --dry, or --check-on-cpu): 3.75B parameters are not for a CPU")
    report = bench_real_size(args) if args.real_size else bench_cpu(args)
    report.update(date=time.strftime("%Y-%m-%d"), machine=machine(), python=sys.version.split()[0])
    OUT.mkdir(parents=True, exist_ok=True)
    name = "captions" + ("-real-size" if args.real_size else "") + (".dry" if args.dry else "") + ".json"
    (OUT / name).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if not args.real_size:
        il, sq, lp = report["itemlens"], report["itemlens sequential"], report["loop"]
        print(
            f"\nitemlens {il['captions_per_s']} captions/s, {il['tokens_per_s']} tokens/s (sequential: "
            f"{sq['captions_per_s']}, {sq['tokens_per_s']}); loop {lp['captions_per_s']} captions/s, "
            f"{lp['tokens_per_s']} tokens/s; ratio {report['ratio']}x (sequential: {report['ratio_sequential']}x); "
            f"same captions {report['same_captions']}"
        )


if __name__ == "__main__":
    main()
