"""The caption encoder: its options, the path it decides on the driver, its fingerprint, the
captions it writes through its one ``generate`` method, and the CPU stages that prepare its inputs
(which images, their hash, the size guards, bounded payloads).

The models are tiny seeded stand-ins of each family (tests/captioners.py), saved with their
processor, tokenizer and chat template and loaded back through AutoProcessor and
AutoModelForImageTextToText, the real loading path. The reference for captions is transformers
used directly: ``processor(...)`` then ``model.generate(...)`` (greedy).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from itemlens.errors import ConfigError, WeightsNotFoundError
from itemlens.extractors import FeatureSpec, build_encoder
from itemlens.extractors.images import load_image
from itemlens.extractors.media import MediaLimits
from itemlens.store.lookup import StoredHashes

from .captioners import standin
from .conftest import EXAMPLE_CATALOG

PROMPT = "Describe this product image in one sentence."
MAX_NEW_TOKENS = 8
CATALOG_DIR = EXAMPLE_CATALOG.parent
PHOTOS = sorted(str(p.relative_to(CATALOG_DIR)) for p in (CATALOG_DIR / "images").rglob("*.jpg"))


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """family -> its stand-in's folder, written on first use."""
    return lambda family: standin(tmp_path_factory, family)


def spec(folder: str, input=None, **extra) -> FeatureSpec:
    fields = {"prompt": PROMPT, "max_new_tokens": MAX_NEW_TOKENS, "resources": {"num_gpus": 0}, **extra}
    return FeatureSpec(encoder="caption", model=folder, input=input or {"image": "images"}, **fields)


@pytest.fixture(scope="session")
def photos():
    """Four photos of three products and a 4000x3000 photo (through the pipeline's image reader)."""
    from PIL import Image

    images = [load_image(str(CATALOG_DIR / p)) for p in (PHOTOS[0], PHOTOS[3], PHOTOS[8], PHOTOS[9])]
    return images + [images[1].resize((4000, 3000), Image.Resampling.BILINEAR)]


def direct(encoder, items) -> list[str]:
    """transformers used directly: the processor's batch of these items (each a list of images)
    and greedy generate's new tokens, decoded."""
    import torch

    inputs, processor = encoder.inputs, encoder.processor
    processor.tokenizer.padding_side = "left"
    texts = [inputs.prompt_text(images=len(item)) for item in items]
    batch = processor(images=items, text=texts, padding=True, return_tensors="pt", **inputs.processor_kwargs)
    with torch.inference_mode():
        out = encoder.model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return [t.strip() for t in processor.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)]


# -- options ----------------------------------------------------------------------------------------


def test_options_parse_and_bad_values_are_refused(models):
    folder = models("llava")
    parsed = spec(
        folder,
        images=3,
        video="auto",
        token_budget=4096,
        processor_options={"images_kwargs": {"do_pan_and_scan": True}},
    )
    assert (parsed.images, parsed.token_budget) == (3, 4096)
    assert spec(folder, images="all").images == "all" and spec(folder).images == "first"
    for bad, where in [
        ({"images": 0}, "images"),
        ({"images": True}, "images"),
        ({"images": "some"}, "images"),
        ({"video": "yes"}, "video"),
        ({"min_pixels": 5000, "max_pixels": 4000}, "min_pixels"),
        ({"processor_options": {"padding": "max_length"}}, "padding"),
        ({"token_budget": 10}, "token_budget"),
        ({"max_pixel": 10}, "max_pixel"),
    ]:
        with pytest.raises(ValidationError, match=where):
            spec(folder, **bad)


@pytest.mark.parametrize(
    "field, value",
    [
        ("pretrained", "laion2b"),
        ("checkpoint", "w.safetensors"),
        ("model_config_file", "c.json"),
        ("token_pooling", "mean"),
        ("instruction", "query: "),
        ("window_seconds", 10.0),
    ],
)
def test_fields_it_does_not_use_are_rejected(field, value, models):
    with pytest.raises(ValidationError, match=field):  # not an option of the caption spec
        spec(models("blip2"), **{field: value})


def test_options_of_the_other_input_kind_are_refused_not_ignored(models):
    folder = models("qwen2_5_vl")
    with pytest.raises(ConfigError, match="video: native applies to a video input"):
        build_encoder(spec(folder, video="native"))
    with pytest.raises(ConfigError, match="images: 'all' applies to an image input"):
        build_encoder(spec(folder, input={"video": "clip"}, images="all"))
    with pytest.raises(ConfigError, match="cannot encode text"):
        build_encoder(spec(folder, input={"template": "{title}"}))


# -- the path, decided on the driver before any work ---------------------------------------------------


@pytest.mark.parametrize(
    "family, input, options, path",
    [  # path: pixels, video, images, several, pixel bounds
        ("qwen2_5_vl", {"image": "images"}, {"images": "all"}, ("patches", "native", "all", True, [256, 4096])),
        ("qwen3_vl", {"video": "clip"}, {}, ("patches", "native", "first", True, [256, 4096])),
        ("qwen2_5_vl", {"image": "images"}, {"max_pixels": 1024}, ("patches", "native", "first", True, [256, 1024])),
        ("llava_onevision", {"video": "clip"}, {}, ("tiles", "native", "first", True, None)),
        ("smolvlm", {"image": "images"}, {"images": 4}, ("tiles", "native", 4, True, None)),
        ("idefics3", {"video": "clip"}, {}, ("tiles", "frame grid", "first", True, None)),
        (
            "gemma3",
            {"image": "images"},
            {"processor_options": {"images_kwargs": {"do_pan_and_scan": True}}},
            ("tiles", "frame grid", "first", True, None),
        ),
        ("gemma3", {"image": "images"}, {}, ("fixed", "frame grid", "first", True, None)),
        ("internvl", {"image": "images"}, {"images": "all"}, ("tiles", "native", "all", True, None)),
        ("llava", {"image": "images"}, {}, ("fixed", "frame grid", "first", True, None)),
        ("blip2", {"video": "clip"}, {}, ("fixed", "frame grid", "first", False, None)),
    ],
)
def test_the_path_is_decided_from_the_processor_and_recorded(family, input, options, path, models):
    from itemlens.extractors.encoders.caption import describe_path

    encoder = build_encoder(spec(models(family), input=input, **options))
    encoder.check_weights()  # the driver's check: loads the processor, not the model
    assert not hasattr(encoder, "model")
    described = encoder.describe()["path"]
    pixels, video, images, several, bounds = path
    assert (
        described["pixels"],
        described["video"],
        described["images"],
        described["several images per prompt"],
        described.get("pixel bounds"),
    ) == path
    assert described["input"] == ("video" if "video" in input else "image") and described["vision tokens"]
    line = describe_path(described)
    assert line.startswith(pixels) and described["processor"] in line
    assert (f"video: {video}" if "video" in input else f"images: {images}") in line


@pytest.mark.parametrize(
    "family, options, message",
    [
        ("blip2", {"images": "all"}, "reads one image per prompt"),
        ("blip2", {"images": 2}, "images: 2"),
        ("blip2", {"input": {"video": "clip"}, "video": "native"}, "does not take video natively"),
        ("gemma3", {"input": {"video": "clip"}, "video": "native"}, "does not take video natively"),
        ("idefics3", {"input": {"video": "clip"}, "video": "native"}, "does not take video natively"),
        ("llava", {"max_pixels": 4096}, "min_pixels / max_pixels bound dynamic-resolution"),
    ],
)
def test_a_model_asked_for_what_it_cannot_do_is_refused_before_any_work(family, options, message, models):
    encoder = build_encoder(spec(models(family), **options))  # the spec itself is valid
    with pytest.raises(ConfigError, match=message):
        encoder.check_weights()


def test_the_documented_fallback_for_video_is_the_frame_grid(models):
    for family in ("blip2", "gemma3", "idefics3"):  # image-only: video auto takes the grid
        encoder = build_encoder(spec(models(family), input={"video": "clip"}))
        assert encoder.describe()["path"]["video"] == "frame grid"
    asked = build_encoder(spec(models("qwen2_5_vl"), input={"video": "clip"}, video="frame_grid"))
    assert asked.describe()["path"]["video"] == "frame grid"


def test_missing_model_folder_fails_before_loading(tmp_path):
    missing = tmp_path / "no-such-model"
    encoder = build_encoder(spec(str(missing)))
    for call in (encoder.check_weights, encoder.fingerprint, lambda: encoder.load("cpu")):
        with pytest.raises(WeightsNotFoundError, match=str(missing)):
            call()
    assert not hasattr(encoder, "model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        build_encoder(spec(str(empty))).check_weights()


def test_hub_id_not_in_the_offline_cache_says_where_it_looked():
    encoder = build_encoder(spec("Qwen/Qwen2.5-VL-3B-Instruct", revision="main"))
    assert encoder.weights_identity() == "hf:Qwen/Qwen2.5-VL-3B-Instruct@main"
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE=1"):
        encoder.check_weights()


# -- fingerprint --------------------------------------------------------------------------------------


def test_fingerprint_follows_what_changes_the_captions(models):
    from itemlens.extractors.spec import fingerprint

    llava = models("llava")
    base = build_encoder(spec(llava))
    # a spec written before these options existed keeps its version: the recipe it always had
    assert base.fingerprint() == fingerprint(base.spec, base.weights_identity(), "caption/1")
    same = spec(
        llava,
        images="first",
        video="auto",
        processor_options={},
        token_budget=1000,
        precision="fp32",
        resources={"num_gpus": 1, "batch_size": 3},
    )
    assert build_encoder(same).fingerprint() == base.fingerprint()  # defaults and execution settings
    for changed in (
        {"prompt": "What is this?"},
        {"max_new_tokens": 9},
        {"num_beams": 2},
        {"images": "all"},
        {"processor_options": {"images_kwargs": {"do_center_crop": False}}},
    ):
        assert build_encoder(spec(llava, **changed)).fingerprint() != base.fingerprint(), changed
    assert build_encoder(spec(models("blip2"))).fingerprint() != base.fingerprint()  # other weights

    # a dynamic-resolution model: its effective pixel bounds are in the recipe, the default cap included
    qwen = models("qwen2_5_vl")
    default = build_encoder(spec(qwen))
    recipe = default.spec.model_copy(update={"min_pixels": 256, "max_pixels": 4096})
    assert default.fingerprint() == fingerprint(recipe, default.weights_identity(), "caption/1")
    assert build_encoder(spec(qwen, min_pixels=256, max_pixels=4096)).fingerprint() == default.fingerprint()
    assert build_encoder(spec(qwen, max_pixels=1024)).fingerprint() != default.fingerprint()
    assert build_encoder(spec(qwen, token_budget=256)).fingerprint() == default.fingerprint()


# -- captions through the encoder ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, options", [("llava", {}), ("blip2", {}), ("qwen2_5_vl", {"images": "all"}), ("idefics3", {"images": 2})]
)
def test_captions_equal_the_processor_and_generate_used_directly(family, options, models, photos):
    """LLaVA and BLIP-2 keep working; a dynamic-resolution and a tiling model with several
    images: what the encoder writes (each item prepared alone, batched by vision tokens) is what
    transformers gives for the same images and prompt in one batch."""
    encoder = build_encoder(spec(models(family), **options)).load("cpu")
    assert encoder.processor.tokenizer is encoder.inputs.tokenizer and encoder.dim == 0
    n = encoder.images_per_item or 3
    items = [photos[:n], photos[1 : 1 + n], [photos[4]], photos[2 : 2 + n]]
    items = [item[:n] for item in items]
    captions = encoder.caption_images(items)
    assert captions == direct(encoder, items)
    assert len(set(captions)) >= 2, captions  # the image matters
    assert [encoder.caption_images([item])[0] for item in items] == captions  # alone as together
    info = encoder.describe()
    assert (info["prompt"], info["max_new_tokens"], info["decoding"]) == (PROMPT, MAX_NEW_TOKENS, "greedy")
    assert info["architecture"] == type(encoder.model).__name__


def test_generation_goes_through_one_method_and_the_budget_cuts_batches(models, photos):
    """``generate`` is the one place the model runs (a serving engine replaces it); a small token
    budget cuts a block into several batches and changes no caption."""
    from itemlens.extractors.encoders.caption import CaptionEncoder

    class Counting(CaptionEncoder):
        calls: list[int] = []

        def generate(self, batch, settings):
            self.calls.append(len(batch))
            return super().generate(batch, settings)

    items = [[photo] for photo in photos]
    wide = Counting(spec(models("qwen2_5_vl"))).load("cpu")
    payloads = [wide.prepare_images(item) for item in items]
    together = wide.caption(payloads)
    assert Counting.calls == [len(items)]
    narrow = Counting(
        spec(models("qwen2_5_vl"), token_budget=2 * (max(p.prompt_tokens for p in payloads) + MAX_NEW_TOKENS))
    )
    assert narrow.fingerprint() == wide.fingerprint()
    Counting.calls.clear()
    cut = narrow.load("cpu").caption(payloads)
    assert len(Counting.calls) >= 3 and max(Counting.calls) <= 2 and sum(Counting.calls) == len(items)
    assert cut == together
    assert [c.vision_tokens for c in cut] == [p.vision_tokens for p in payloads]
    assert all(0 < c.generated_tokens == len(c.tokens) <= MAX_NEW_TOKENS for c in cut)


def test_beam_search_is_part_of_the_recipe(models, photos):
    beams = build_encoder(spec(models("llava"), num_beams=2)).load("cpu")
    captions = beams.caption_images(photos[:2])
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    assert beams.describe()["decoding"] == "beam search"


# -- sizes: the guards and the payload ----------------------------------------------------------------------


def test_a_dynamic_resolution_payload_is_bounded_by_max_pixels(models, photos):
    """A 4000x3000 photo through Qwen2.5-VL's real image processor settings (14 x 14 patches merged
    2 x 2, pairs of frames, 3136 to 12,845,056 pixels) is a ~290 MB float32 payload; the default
    bound (1280 x 28 x 28 pixels) makes it ~24 MB. On the tiny stand-in, a payload's pixels are
    at most max_pixels x 2 (temporal patch) x 3 channels."""
    from transformers import Qwen2VLImageProcessor

    from itemlens.extractors.encoders.caption_inputs import DEFAULT_MAX_PIXELS

    real = Qwen2VLImageProcessor(
        patch_size=14, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 3136, "longest_edge": 12845056}
    )
    floats_per_patch = 3 * 2 * 14 * 14
    own = real.get_number_of_image_patches(3000, 4000, {}) * floats_per_patch * 4
    capped = real.get_number_of_image_patches(3000, 4000, {"max_pixels": DEFAULT_MAX_PIXELS}) * floats_per_patch * 4
    assert 280e6 < own < 310e6 and capped <= DEFAULT_MAX_PIXELS * 2 * 3 * 4 < 25e6

    for max_pixels in (None, 1024):
        encoder = build_encoder(spec(models("qwen2_5_vl"), max_pixels=max_pixels))
        bound = max_pixels or 4096
        payload = encoder.prepare_images([photos[4]])
        pixels = payload.tensors["pixel_values"]
        assert pixels.dtype == np.float32 and pixels.size <= bound * 2 * 3
        width, height = encoder.preprocessed_size(4000, 3000)
        assert width * height <= bound and payload.tensors["image_grid_thw"].tolist() == [[1, height // 4, width // 4]]
    # the bounds may also come as the processor's own size option; min_pixels / max_pixels win
    size = {"images_kwargs": {"size": {"shortest_edge": 256, "longest_edge": 1024}}}
    given = build_encoder(spec(models("qwen2_5_vl"), processor_options=size))
    assert given.inputs.pixel_bounds == (256, 1024) and given.preprocessed_size(4000, 3000)[0] * 3 <= 1024 * 4
    assert build_encoder(spec(models("qwen2_5_vl"), processor_options=size, max_pixels=2048)).inputs.pixel_bounds == (
        256,
        2048,
    )


def test_size_guards_apply_to_caption_inputs(tmp_path, models):
    """The decode stage's guards on what the processor would make of an image: an aspect ratio over
    max_aspect_ratio, and more than max_image_pixels after the processor's resize (here a dynamic-
    resolution model told to upscale every image to 4096 pixels) are the item's decode errors,
    before the processor runs; under looser limits the same icon is captioned."""
    from PIL import Image

    Image.new("RGB", (250, 2), "red").save(tmp_path / "strip.png")  # 125 : 1
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "icon.png")  # 400 pixels, upscaled to 64x64
    rows = [{"item_id": "strip", "images": ["strip.png"]}, {"item_id": "icon", "images": ["icon.png"]}]
    caption = spec(models("qwen2_5_vl"), min_pixels=4096, max_pixels=4096)
    staged = _run(caption, rows, tmp_path, MediaLimits(max_pixels=3000))
    assert staged["strip"].startswith("decode: ") and "aspect ratio of 125:1 > max_aspect_ratio 100" in staged["strip"]
    assert staged["icon"].startswith("decode: ") and "would become 64x64 = 4,096 pixels" in staged["icon"]
    assert "max_image_pixels 3,000" in staged["icon"]
    loose = _run(caption, rows[1:], tmp_path, MediaLimits())
    assert not loose["icon"].startswith("decode: ") and loose["icon"]


def _run(caption: FeatureSpec, rows: list[dict], base: Path, limits: MediaLimits) -> dict[str, str]:
    """item_id -> caption, or "stage: reason", through the pipeline's caption stages (no Ray)."""
    from itemlens.workflows import stages

    spec_json = caption.model_dump_json()
    prepare = stages.prepare_caption_images if caption.input.kind == "image" else stages.prepare_caption_videos
    prepared = pa.concat_tables(
        prepare(
            pa.Table.from_pylist(rows),
            spec_json=spec_json,
            id_column="item_id",
            base=str(base),
            stored=StoredHashes(None, None, None, None, "t"),
            limits=limits,
        )
    )
    staged = stages.EncodeBatches(spec_json, "fp", "cpu", 1, "run")(prepared).to_pylist()
    return {
        r["item_id"]: r["caption"] if r["error_stage"] is None else f"{r['error_stage']}: {r['error_reason']}"
        for r in staged
    }


# -- which images, and the input hash ---------------------------------------------------------------------


@pytest.mark.parametrize("images, selected", [("first", 1), (2, 2), ("all", 4)])
def test_the_input_hash_covers_exactly_the_selected_images_in_order(images, selected, models, tmp_path):
    """``images: first | N | all``: the item's input hash is the hash of exactly those images, in
    order, so its caption is written again when, and only when, one of them changes (the ingest
    and the dry run decide alike); the caption row says how many pictures were read."""
    import lance

    from itemlens.workflows import stages

    for i, photo in enumerate(PHOTOS[3:7]):
        shutil.copy(CATALOG_DIR / photo, tmp_path / f"{i}.jpg")
    files = [f"{i}.jpg" for i in range(4)]
    caption = spec(models("smolvlm"), images=images, resources={"num_gpus": 0})
    spec_json = caption.model_dump_json()
    batch = pa.Table.from_pylist([{"item_id": "p", "images": files}])

    def digest(names):
        return hashlib.sha256(b"".join(hashlib.sha256((tmp_path / n).read_bytes()).digest() for n in names)).hexdigest()

    def common(stored):
        return {
            "spec_json": spec_json,
            "id_column": "item_id",
            "base": str(tmp_path),
            "stored": stored,
            "limits": MediaLimits(),
        }

    nothing = StoredHashes(None, None, None, None, "t")
    prepared = pa.concat_tables(stages.prepare_caption_images(batch, **common(nothing)))
    assert prepared.column("input_hash").to_pylist() == [digest(files[:selected])]
    assert prepared.column("payload")[0]["pictures"].as_py() == selected
    staged = stages.EncodeBatches(spec_json, "fp", "cpu", 1, "run")(prepared).to_pylist()[0]
    assert staged["n_parts"] == selected and staged["caption"]
    assert staged["vision_tokens"] == prepared.column("payload")[0]["vision_tokens"].as_py() > 0
    assert 0 < staged["generated_tokens"] <= MAX_NEW_TOKENS

    # what a store holds after that run (no media key: the hash decides)
    table = str(tmp_path / "stored.lance")
    lance.write_dataset(
        pa.table({"item_id": ["p"], "input_hash": [staged["input_hash"]], "media_key": pa.nulls(1, pa.string())}), table
    )
    stored = StoredHashes(table, None, None, None, "t")
    assert stages.plan_inputs(batch, **common(stored)).num_rows == 0
    assert pa.concat_tables(stages.prepare_caption_images(batch, **common(stored))).num_rows == 0
    shutil.copy(CATALOG_DIR / PHOTOS[0], tmp_path / "2.jpg")  # the third image changes
    planned = stages.plan_inputs(batch, **common(stored)).to_pylist()
    again = pa.concat_tables(stages.prepare_caption_images(batch, **common(stored)))
    if selected <= 2:
        assert planned == [] and again.num_rows == 0
    else:
        assert planned == [{"item_id": "p", "reason": "changed"}]
        assert again.column("input_hash").to_pylist() == [digest(files)] != [staged["input_hash"]]
    # the same images in another order are another input
    reordered = pa.Table.from_pylist([{"item_id": "p", "images": files[::-1]}])
    other = pa.concat_tables(stages.prepare_caption_images(reordered, **common(nothing)))
    assert other.column("input_hash").to_pylist() == [digest(files[::-1][:selected])]


def test_prepared_items_travel_in_bounded_blocks_sorted_by_vision_tokens(models, monkeypatch, tmp_path):
    from itemlens.workflows import stages

    for i, photo in enumerate(PHOTOS[:6]):
        shutil.copy(CATALOG_DIR / photo, tmp_path / f"{i}.jpg")
    caption = spec(models("qwen2_5_vl"), resources={"num_gpus": 0})
    rows = [{"item_id": f"p{i}", "images": [f"{i}.jpg"]} for i in range(6)] + [{"item_id": "x", "images": None}]
    payload = build_encoder(caption).prepare_images([load_image(str(tmp_path / "0.jpg"))])
    monkeypatch.setattr(stages, "CAPTION_BLOCK_BYTES", 2 * payload.nbytes)
    tables = list(
        stages.prepare_caption_images(
            pa.Table.from_pylist(rows),
            spec_json=caption.model_dump_json(),
            id_column="item_id",
            base=str(tmp_path),
            stored=StoredHashes(None, None, None, None, "t"),
            limits=MediaLimits(),
        )
    )
    assert len(tables) >= 3 and sum(t.num_rows for t in tables) == 7
    for table in tables:
        sizes = [sum(len(d) for d in p["data"]) for p in table.column("payload").to_pylist() if p]
        assert sum(sizes) <= 2 * payload.nbytes + max(sizes, default=0)
        tokens = [-1 if p is None else p["vision_tokens"] for p in table.column("payload").to_pylist()]
        assert tokens == sorted(tokens)
    errors = [r for t in tables for r in t.to_pylist() if r["error_stage"]]
    assert [(r["item_id"], r["error_stage"]) for r in errors] == [("x", "absent")]
