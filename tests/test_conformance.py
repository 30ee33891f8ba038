"""One conformance suite that every registered encoder passes, through the pipeline's own stages.

Each case runs a small catalog batch through the same functions a Ray ingest runs (prepare on
CPU, then the encoder actor's callable, then the staging rows), in this process, and checks what a
user relies on:

* output: a vector of the encoder's ``dim`` in float32 per item (a string per item for captions);
* normalization as specified (unit norm with ``normalize: true``; the same direction without);
* batch invariance: an item's value does not depend on its batch-mates or the padding they cause;
* determinism: two separately loaded encoders give the same values;
* bad input: a recorded per-item error with a stage and a reason, the other items unaffected;
* captions: each the one transformers writes when its processor and ``generate`` are used directly
  on the item's pictures (among batch-mates of very different sizes, and a product's 12 photos).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from itemlens.extractors import FeatureSpec, build_encoder, encoder_names
from itemlens.extractors.media import MediaLimits
from itemlens.store.lookup import StoredHashes
from itemlens.workflows import stages

from .captioners import standin
from .conftest import EXAMPLE_CATALOG, text_spec
from .media_video import write_video

CATALOG_DIR = EXAMPLE_CATALOG.parent
PHOTOS = sorted(str(p.relative_to(CATALOG_DIR)) for p in (CATALOG_DIR / "images").rglob("*.jpg"))[:3]
VIDEOS = sorted(str(p.relative_to(CATALOG_DIR)) for p in (CATALOG_DIR / "videos").glob("*.mp4"))[:2]
SOUNDS = sorted(str(p.relative_to(CATALOG_DIR)) for p in (CATALOG_DIR / "audio").glob("*.ogg"))
TEXTS = [
    "lamp",
    "A grey yoga mat bag with a shoulder strap, two zip pockets and room for a 6 mm mat. " * 3,
    "Vitamin E capsules",
    "An LED bulb: 400 lumens, soft white, 15,000 hours",
]
CPU = {"num_gpus": 0, "batch_size": 8}
ALL_PHOTOS = sorted(str(p.relative_to(CATALOG_DIR)) for p in (CATALOG_DIR / "images").rglob("*.jpg"))
#: a 64x2000 strip, a 4000x3000 photo and a 32x32 icon (width x height)
ODD_SIZES = {"strip.png": (2000, 64), "large.jpg": (4000, 3000), "icon.png": (32, 32)}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A copy of the example catalog's media, plus generated and bad files beside it."""
    folder = tmp_path_factory.mktemp("media")
    for sub in ("images", "videos", "audio"):
        shutil.copytree(CATALOG_DIR / sub, folder / sub)
    write_video(folder / "odd.mp4", n_frames=20, width=67, height=45, fps=8)
    (folder / "corrupt.bin").write_bytes(b"\x00\x01 not media at all " * 64)
    from PIL import Image

    for name, size in ODD_SIZES.items():  # pictures of very different sizes and shapes, for the captioners
        Image.open(CATALOG_DIR / PHOTOS[0]).convert("RGB").resize(size).save(folder / name)
    return folder


#: caption cases: a stand-in of every family, each through the path its processor takes (one image
#: per prompt, several, native video with the frames' times, the frame grid)
CAPTION_CASES = {
    "caption llava (image)": ("llava", {"image": "images"}, {}),
    "caption blip2 (video: frame grid)": ("blip2", {"video": "video", "frames": 4}, {}),
    "caption qwen2_5_vl (images: all)": ("qwen2_5_vl", {"image": "images"}, {"images": "all"}),
    "caption qwen2_5_vl (video: native)": ("qwen2_5_vl", {"video": "video", "frames": 4}, {}),
    "caption qwen3_vl (video: native)": ("qwen3_vl", {"video": "video", "frames": 4}, {}),
    "caption llava_onevision (images: all)": ("llava_onevision", {"image": "images"}, {"images": "all"}),
    "caption llava_onevision (video: native)": ("llava_onevision", {"video": "video", "frames": 4}, {}),
    "caption smolvlm (video: native)": ("smolvlm", {"video": "video", "frames": 4}, {}),
    "caption idefics3 (images: 2)": ("idefics3", {"image": "images"}, {"images": 2}),
    "caption gemma3 (pan-and-scan)": (
        "gemma3",
        {"image": "images"},
        {"processor_options": {"images_kwargs": {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 16}}},
    ),
    "caption internvl (images: all)": ("internvl", {"image": "images"}, {"images": "all"}),
}


@pytest.fixture(scope="module")
def specs(tmp_path_factory, minilm_path, tiny_clip) -> dict[str, dict]:
    """Every registered encoder, with offline weights: the real MiniLM or seeded stand-ins."""
    from itemlens.extractors.standins.audio import write_tiny_clap, write_tiny_wav2vec2
    from itemlens.extractors.standins.text import write_tiny_text_llm

    root = tmp_path_factory.mktemp("conformance-models")
    clip = {k: v for k, v in tiny_clip.items() if k != "encoder"}
    return {
        "sentence-transformers": text_spec(minilm_path, template="{title}", resources=CPU),
        "hf-text (last token)": {
            "encoder": "hf-text",
            "model": str(write_tiny_text_llm(root / "llm")),
            "token_pooling": "last_token",
            "input": {"template": "{title}"},
            "resources": CPU,
        },
        "hf-text (mean, BERT)": {
            "encoder": "hf-text",
            "model": minilm_path,
            "input": {"template": "{title}"},
            "resources": CPU,
        },
        "open-clip image": {**tiny_clip, "input": {"image": "images"}, "resources": CPU},
        "open-clip text": {**tiny_clip, "input": {"template": "{title}"}, "resources": CPU},
        "video-frames": {"encoder": "video-frames", **clip, "input": {"video": "video", "frames": 4}, "resources": CPU},
        "audio wav2vec2": {
            "encoder": "audio",
            "model": str(write_tiny_wav2vec2(root / "w2v")),
            "input": {"audio": "audio"},
            "window_seconds": 4.0,
            "resources": CPU,
        },
        "audio clap": {
            "encoder": "audio",
            "model": str(write_tiny_clap(root / "clap")),
            "input": {"audio": "audio"},
            "resources": CPU,
        },
        **{
            case: {
                "encoder": "caption",
                "model": standin(tmp_path_factory, family),
                "input": input,
                "max_new_tokens": 6,
                "resources": CPU,
                **options,
            }
            for case, (family, input, options) in CAPTION_CASES.items()
        },
    }


def test_the_suite_covers_every_registered_encoder(specs):
    assert {s["encoder"] for s in specs.values()} == set(encoder_names())


def _rows(kind: str, caption: bool = False) -> list[dict]:
    """Good items of different sizes (lengths, image counts, durations), then a bad one; for a
    captioner's images also a strip, a large photo, an icon and a product's 12 photos."""
    if kind == "image" and caption:
        odd = [{"item_id": f"odd-{name.split('.')[0]}", "images": [name]} for name in ODD_SIZES]
        rows = _rows(kind)
        return rows[:-1] + odd + [{"item_id": "i12", "images": ALL_PHOTOS}] + rows[-1:]
    if kind == "text":
        return [{"item_id": f"t{i}", "title": t} for i, t in enumerate(TEXTS)] + [{"item_id": "bad", "title": " . "}]
    if kind == "image":
        return [
            {"item_id": "i0", "images": PHOTOS[:1]},
            {"item_id": "i1", "images": PHOTOS[1:3]},
            {"item_id": "i2", "images": PHOTOS[2:3]},
        ] + [{"item_id": "bad", "images": ["corrupt.bin"]}]
    if kind == "video":
        return (
            [{"item_id": f"v{i}", "video": v} for i, v in enumerate(VIDEOS)]
            + [{"item_id": "v9", "video": "odd.mp4"}]
            + [{"item_id": "bad", "video": "corrupt.bin"}]
        )
    return [{"item_id": f"a{i}", "audio": a} for i, a in enumerate(SOUNDS)] + [
        {"item_id": "bad", "audio": "corrupt.bin"}
    ]


def run_stages(spec: FeatureSpec, rows: list[dict], base: Path) -> dict[str, object]:
    """item_id -> its value (a float32 vector, per-part vectors or a caption) or (stage, reason),
    through prepare -> EncodeBatches -> staging rows, as in an ingest."""
    spec_json = spec.model_dump_json()
    batch = pa.Table.from_pylist(rows)
    stored = StoredHashes(None, None, None, None, "conformance")
    common = {"spec_json": spec_json, "id_column": "item_id", "stored": stored}
    kind = spec.input.kind
    if spec.encoder == "caption":  # the captioner's own processor, in tables of bounded size
        prepare = stages.prepare_caption_images if kind == "image" else stages.prepare_caption_videos
        prepared = pa.concat_tables(prepare(batch, **common, base=str(base), limits=MediaLimits(max_bytes=1 << 30)))
    elif kind == "text":
        prepared = stages.prepare_texts(batch, **common)
    elif kind == "image":
        prepared = stages.prepare_images(batch, **common, base=str(base), limits=MediaLimits())
    elif kind == "video":
        prepared = stages.prepare_videos(batch, **common, base=str(base), limits=MediaLimits(max_bytes=1 << 30))
    else:
        prepared = stages.prepare_audio(batch, **common, base=str(base), limits=MediaLimits(max_bytes=1 << 30))
    staged = stages.EncodeBatches(spec_json, "conformance", "cpu", 1, "run")(prepared)
    value = [c for c in ("vector", "vectors", "caption") if c in staged.column_names][0]
    assert (
        staged.schema.field(value).type
        == stages.staging_schema(
            spec.dtype,
            None if value == "caption" else _dim(staged, value),
            spec.pooling,
            "caption" if value == "caption" else "vector",
        )
        .field(value)
        .type
    )
    out: dict[str, object] = {}
    for row in staged.to_pylist():
        if value == "caption" and row["error_stage"] is None:  # a caption records what it read and wrote
            assert row["vision_tokens"] > 0 and 0 < row["generated_tokens"] <= spec.max_new_tokens, row
            assert row["n_parts"] >= 1, row
        if row["error_stage"] is not None:
            out[row["item_id"]] = (row["error_stage"], row["error_reason"])
        elif value == "caption":
            out[row["item_id"]] = row["caption"]
        else:
            out[row["item_id"]] = np.asarray(row[value], dtype=np.float32)
    return out


def _dim(staged: pa.Table, column: str) -> int:
    vtype = staged.schema.field(column).type
    return (vtype.value_type if pa.types.is_list(vtype) else vtype).list_size


CASES = [
    "sentence-transformers",
    "hf-text (last token)",
    "hf-text (mean, BERT)",
    "open-clip image",
    "open-clip text",
    "video-frames",
    "audio wav2vec2",
    "audio clap",
    *CAPTION_CASES,
]


@pytest.mark.parametrize("case", CASES)
def test_encoder_conformance(case, specs, media):
    spec = FeatureSpec.model_validate(specs[case])
    encoder = build_encoder(spec)
    rows = _rows(spec.input.kind, caption=encoder.output_kind == "caption")
    together = run_stages(spec, rows, media)

    # every item once: a value, or (for the bad one) an error with a stage and a reason
    assert set(together) == {r["item_id"] for r in rows}
    stage, reason = together.pop("bad")
    assert stage in {"input", "read", "decode"} and reason, (stage, reason)
    assert all(not isinstance(v, tuple) for v in together.values()), together

    # output type, size and normalization
    if encoder.output_kind == "caption":
        assert all(isinstance(v, str) for v in together.values())
        assert len(set(together.values())) >= 2, "a captioner writing the same text for every item"
        # each caption is what the model's processor and generate, used directly, write for its pictures
        for row in rows[:-1]:
            assert together[row["item_id"]] == _direct_caption(encoder, row, media), (case, row["item_id"])
    else:
        dim = encoder.load("cpu").dim
        for value in together.values():
            assert value.dtype == np.float32 and value.shape == (dim,)
            assert np.isfinite(value).all()
            np.testing.assert_allclose(np.linalg.norm(value), 1.0, atol=1e-5)
        raw = run_stages(spec.model_copy(update={"normalize": False}), rows, media)
        for item, value in together.items():
            direction = raw[item] / np.linalg.norm(raw[item])
            assert float(direction @ value) >= 0.99999, item

    # batch invariance: each item alone gives what it gave among the others
    for row in rows[:-1]:
        alone = run_stages(spec, [row], media)[row["item_id"]]
        _assert_same(alone, together[row["item_id"]], case)

    # determinism: a second, separately loaded encoder (new EncodeBatches) gives the same values
    again = run_stages(spec, rows, media)
    for item, value in together.items():
        _assert_same(again[item], value, case)


def _direct_caption(encoder, row: dict, base: Path) -> str:
    """transformers used directly on one item: AutoProcessor on its pictures (the images its spec
    selects, or the video's sampled frames with their times, or their grid for an image-only model)
    and the prompt through the chat template, then AutoModelForImageTextToText's greedy generate."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from itemlens.extractors.encoders.caption import DEFAULT_PROMPT
    from itemlens.extractors.encoders.caption_inputs import VideoClip
    from itemlens.extractors.images import load_image
    from itemlens.extractors.video import frame_grid, read_video_sample

    spec = encoder.spec
    key = spec.model
    if key not in _DIRECT:
        _DIRECT[key] = (AutoProcessor.from_pretrained(key), AutoModelForImageTextToText.from_pretrained(key).eval())
    processor, model = _DIRECT[key]
    options = dict(spec.processor_options)
    if "images" in row:
        pictures = {"images": [[load_image(str(base / p)) for p in row["images"][: encoder.images_per_item]]]}
        content = [{"type": "image"}] * len(pictures["images"][0])
    else:
        sample = read_video_sample((base / row["video"]).read_bytes(), spec.input, max_pixels=64_000_000)
        if encoder.describe()["path"]["video"] == "native":
            metadata = VideoClip(sample.frames, sample.times, duration=sample.duration).metadata()
            pictures = {"videos": [sample.frames]}
            options.update(video_metadata=[metadata], do_sample_frames=False)
            content = [{"type": "video"}]
        else:
            pictures, content = {"images": [[frame_grid(sample.frames)]]}, [{"type": "image"}]
    if processor.chat_template:
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": DEFAULT_PROMPT}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = DEFAULT_PROMPT
    bos = processor.tokenizer.bos_token
    if bos and text.startswith(bos):
        options["add_special_tokens"] = False  # as apply_chat_template(tokenize=True) does
    batch = processor(text=[text], return_tensors="pt", **pictures, **options)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=spec.max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()


_DIRECT: dict[str, tuple] = {}


def _assert_same(a, b, case: str) -> None:
    if isinstance(b, str):
        assert a == b, case
    else:
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=case)
