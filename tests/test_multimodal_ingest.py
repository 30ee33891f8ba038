"""Every modality through one ingest: video frames, audio, captions and the text feature that
embeds them, with bad media of every kind becoming errors rows while the job finishes.

The vectors and captions the store holds are compared with what the libraries give when called
directly on the documented frames / windows (decord, open_clip, PyAV + torchaudio, transformers).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import itemlens
from itemlens.extractors import FeatureSpec, build_encoder
from itemlens.workflows.ingest import ingest

from .conftest import EXAMPLE_CATALOG, text_spec, write_jsonl
from .media_video import write_bad_videos, write_video

pytestmark = pytest.mark.integration

CATALOG_DIR = EXAMPLE_CATALOG.parent


@pytest.fixture(scope="module")
def tiny_audio_model(tmp_path_factory) -> str:
    from itemlens.extractors.standins.audio import write_tiny_wav2vec2

    return str(write_tiny_wav2vec2(tmp_path_factory.mktemp("wav2vec2") / "tiny-wav2vec2"))


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> str:
    """A tiny seeded Qwen2.5-VL: dynamic resolution, several images per prompt, native video."""
    from .captioners import standin

    return standin(tmp_path_factory, "qwen2_5_vl")


@pytest.fixture
def media_catalog(tmp_path, example_rows, example_sound_rows) -> Path:
    """The example catalog's 3 products (a video each) and 2 sound clips, plus generated videos:
    an odd-sized one with an audio track, a variable-frame-rate one without, and bad ones."""
    folder = tmp_path / "catalog"
    for sub in ("images", "videos", "audio"):
        shutil.copytree(CATALOG_DIR / sub, folder / sub)
    rows = [dict(r) for r in example_rows + example_sound_rows]
    generated = folder / "generated"
    generated.mkdir()
    write_video(generated / "odd.mp4", n_frames=24, width=67, height=45, fps=12, audio=True)
    write_video(generated / "vfr.mp4", n_frames=30, vfr=True)
    rows.append(
        {
            "item_id": "vid-odd",
            "title": "an odd-sized clip with a tone",
            "video": "generated/odd.mp4",
            "audio": "generated/odd.mp4",
        }
    )
    rows.append(
        {
            "item_id": "vid-vfr",
            "title": "a variable frame rate clip",
            "video": "generated/vfr.mp4",
            "audio": "generated/vfr.mp4",
        }
    )  # no audio track: an audio error for this item
    for name, path in write_bad_videos(folder / "bad").items():
        rows.append(
            {
                "item_id": f"bad-{name}",
                "title": f"a broken video ({name})",
                "video": str(path.relative_to(folder)),
                "audio": str(path.relative_to(folder)),
            }
        )
    rows.append(
        {"item_id": "bad-image-as-audio", "title": "a photo where sound is expected", "audio": rows[0]["images"][0]}
    )
    return write_jsonl(folder / "catalog.jsonl", rows)


def _features(minilm_path, tiny_clip, tiny_audio_model, tiny_qwen) -> dict:
    cpu = {"num_gpus": 0, "batch_size": 4}
    clip = {k: v for k, v in tiny_clip.items() if k != "encoder"}
    return {
        "text": text_spec(minilm_path, template="{title}"),
        "video": {"encoder": "video-frames", **clip, "input": {"video": "video", "frames": 4}, "resources": cpu},
        "video_frames": {
            "encoder": "video-frames",
            **clip,
            "pooling": "per_frame",
            "input": {"video": "video", "frames": 3, "every_seconds": 0.5},
            "resources": cpu,
        },
        "audio": {
            "encoder": "audio",
            "model": tiny_audio_model,
            "input": {"audio": "audio"},
            "window_seconds": 4.0,
            "resources": cpu,
        },
        # native video: the sampled frames with their times through Qwen2.5-VL's video processor
        "caption": {
            "encoder": "caption",
            "model": tiny_qwen,
            "input": {"video": "video", "frames": 4},
            "prompt": "What is in this video?",
            "max_new_tokens": 8,
            "resources": cpu,
        },
        # every photo of a product in one prompt
        "photo_caption": {
            "encoder": "caption",
            "model": tiny_qwen,
            "input": {"image": "images"},
            "images": "all",
            "max_new_tokens": 8,
            "resources": cpu,
        },
        "caption_text": text_spec(minilm_path, input="caption"),
    }


def _cos(a, b) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_every_modality_in_one_ingest_equals_the_libraries_and_bad_media_become_errors(
    ray_session, tmp_path, media_catalog, minilm_path, tiny_clip, tiny_audio_model, tiny_qwen, capsys
):
    import json

    from itemlens.extractors.audio import audio_windows, decode_audio, pool_windows
    from itemlens.extractors.images import load_image
    from itemlens.extractors.video import read_video_frames, to_images

    features = _features(minilm_path, tiny_clip, tiny_audio_model, tiny_qwen)
    store = tmp_path / "lens"
    report = ingest(media_catalog, {"features": features, "decode": {"batch_size": 4}}, store, progress=False)
    rows = [json.loads(line) for line in media_catalog.read_text().splitlines()]
    ids = [r["item_id"] for r in rows]
    assert report.items_seen == len(rows)
    # captions run before the text feature that embeds them
    assert list(report.features) == [
        "text",
        "video",
        "video_frames",
        "audio",
        "caption",
        "photo_caption",
        "caption_text",
    ]

    lens = itemlens.connect(store)
    failures = lens.errors().to_pandas()
    errors = pa.concat_tables([lens.errors(), lens.errors(absent=True)]).to_pandas()
    # nothing lost: every item ends in exactly one place per feature (a value, a failure, or an
    # absent input)
    for name in features:
        stored = set(lens.ids(name))
        failed = set(failures[failures["feature"] == name]["item_id"])
        missing = set(lens.absent(name))
        assert not stored & failed and not stored & missing and not failed & missing, name
        assert stored | failed | missing == set(ids), name

    def reason(feature, item):
        match = errors[(errors["feature"] == feature) & (errors["item_id"] == item)]
        assert len(match) == 1, (feature, item)
        return match.iloc[0]["stage"], match.iloc[0]["reason"]

    good_videos = [r for r in rows if r.get("video") and not r["item_id"].startswith("bad-")]
    assert set(lens.ids("video")) == {r["item_id"] for r in good_videos}
    for name in ("truncated", "corrupt", "image", "empty", "text", "audio_only"):
        stage, why = reason("video", f"bad-{name}")
        assert stage in {"decode", "read"} and why, (name, why)
    assert reason("video", "sound-robin-13")[0] == "absent"  # no video column value
    assert "no audio track" in reason("audio", "vid-vfr")[1]
    assert reason("audio", "bad-image-as-audio")[0] == "decode"
    assert reason("audio", "bad-corrupt")[0] == "decode"

    # video: the pooled vector is the mean of the frame vectors computed directly on the
    # documented frames; per-frame vectors are those frame vectors
    video_spec = FeatureSpec.model_validate(features["video"])
    clip = build_encoder(video_spec).load("cpu")
    transform = clip.image_transform()
    for row in good_videos:
        data = (media_catalog.parent / row["video"]).read_bytes()
        frames, indices = read_video_frames(data, video_spec.input, max_pixels=64_000_000)
        assert len(indices) == min(4, len(indices)) and len(frames) == len(indices)
        direct = clip.encode_images(np.stack([transform(im) for im in to_images(frames)]))
        mean = direct.mean(axis=0)
        assert _cos(lens.vectors("video", [row["item_id"]])[0], mean)[0] >= 0.9999
        per_frame_spec = FeatureSpec.model_validate(features["video_frames"])
        frames3, _ = read_video_frames(data, per_frame_spec.input, max_pixels=64_000_000)
        kept = lens.part_vectors("video_frames", [row["item_id"]])[0]
        expected = clip.encode_images(np.stack([transform(im) for im in to_images(frames3)]))
        assert kept.shape == expected.shape and _cos(kept, expected).min() >= 0.9999

    # audio: decoded, resampled, windowed and pooled as documented; a video's audio track too
    audio_spec = FeatureSpec.model_validate(features["audio"])
    audio = build_encoder(audio_spec).load("cpu")
    fmt = audio.audio_format()
    for item in ("sound-robin-13", "audiobook-198-209", "vid-odd"):
        path = media_catalog.parent / next(r["audio"] for r in rows if r["item_id"] == item)
        windows = audio_windows(decode_audio(path.read_bytes(), fmt), fmt)
        pooled = pool_windows(audio.encode_audio(windows), [w.shape[-1] for w in windows])
        assert _cos(lens.vectors("audio", [item])[0], pooled)[0] >= 0.9999, item
    assert (
        len(audio_windows(decode_audio((media_catalog.parent / "audio" / "198-209-0000.ogg").read_bytes(), fmt), fmt))
        == 4
    )  # 13.9 s in 4 s windows

    # captions: what transformers writes for the documented frames with their times (the processor's
    # own video path, then generate), stored with the model and prompt and their token counts
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from itemlens.extractors.encoders.caption_inputs import VideoClip
    from itemlens.extractors.video import read_video_sample

    caption_spec = FeatureSpec.model_validate(features["caption"])
    processor = AutoProcessor.from_pretrained(tiny_qwen)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen).eval()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is in this video?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )

    def generated(batch) -> str:
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=8, do_sample=False)
        return processor.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()

    captioned = [r["item_id"] for r in good_videos]
    stored = lens.captions("caption", captioned, output="pandas")
    for row in good_videos:
        sample = read_video_sample(
            (media_catalog.parent / row["video"]).read_bytes(), caption_spec.input, max_pixels=64_000_000
        )
        metadata = VideoClip(sample.frames, sample.times, duration=sample.duration).metadata()
        batch = processor(
            text=[prompt],
            videos=[sample.frames],
            video_metadata=[metadata],
            do_sample_frames=False,
            return_tensors="pt",
        )
        assert stored.loc[row["item_id"], "caption"] == generated(batch), row["item_id"]
    assert set(stored["model"]) == {tiny_qwen} and set(stored["prompt"]) == {"What is in this video?"}
    # every photo of each product in one prompt, at the processor's bounds
    products = [r for r in rows if r.get("images")]
    assert sorted(len(r["images"]) for r in products) == [3, 4, 5]
    for row in products:
        images = [load_image(str(media_catalog.parent / p)) for p in row["images"]]
        content = [{"type": "image"}] * len(images) + [
            {"type": "text", "text": "Describe this product image in one sentence."}
        ]
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        batch = processor(images=[images], text=[text], return_tensors="pt")
        assert lens.captions("photo_caption", [row["item_id"]])[0] == generated(batch), row["item_id"]
    # the job report: captions/s and generated tokens/s per caption feature, and in all
    for name in ("caption", "photo_caption"):
        feature = report.features[name]
        assert feature.output == "caption" and feature.encoded == len(lens.ids(name))
        assert feature.encoded * 8 >= feature.generated_tokens >= feature.encoded > 0 and feature.vision_tokens > 0
        assert feature.to_doc()["captions_per_second"] == round(feature.encoded / feature.seconds, 3)
    summary = report.summary()
    assert "captions/s" in summary and "generated tokens/s" in summary and "captions in all:" in summary
    # `itemlens show` prints the path each caption feature took, decided when its model loaded
    from itemlens.workflows.cli import main as cli

    capsys.readouterr()
    assert cli(["show", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "caption path: patches (256-4096 pixels an image), video: native; Qwen2_5_VLProcessor" in shown
    assert "caption path: patches (256-4096 pixels an image), images: all; Qwen2_5_VLProcessor" in shown
    from sentence_transformers import SentenceTransformer

    texts = [stored.loc[i, "caption"] for i in captioned if stored.loc[i, "caption"].strip()]
    with_text = [i for i in captioned if stored.loc[i, "caption"].strip()]
    expected = SentenceTransformer(minilm_path, device="cpu").encode(texts, normalize_embeddings=True)
    assert _cos(lens.vectors("caption_text", with_text), expected).min() >= 0.99999
    # an item whose caption failed has an input error in the text feature, not a vector of nothing
    stage, why = reason("caption_text", "bad-corrupt")
    assert stage == "absent" and "no caption: feature 'caption'" in why

    # a second run over the same catalog encodes nothing, captions included
    config = {"features": features, "decode": {"batch_size": 4}}
    again = ingest(media_catalog, config, store, progress=False)
    assert again.snapshot is None
    assert {n: (f.encoded, f.errors) for n, f in again.features.items()} == dict.fromkeys(features, (0, 0))

    # dependents: a product's new video re-encodes the video features and re-captions it, and the
    # caption's text feature follows; the dry run says so first, with the reason
    from itemlens.workflows.plan import plan

    changed = next(r for r in good_videos if r["item_id"] == "B0799CK52K")
    write_video(media_catalog.parent / changed["video"], n_frames=16, width=80, height=60, fps=8)
    planned = plan(media_catalog, config, store)
    assert {n: (f.new, f.changed, f.dependent) for n, f in planned.features.items()} == {
        "text": (0, 0, 0),
        "video": (0, 1, 0),
        "video_frames": (0, 1, 0),
        "audio": (0, 0, 0),
        "caption": (0, 1, 0),
        "photo_caption": (0, 0, 0),
        "caption_text": (0, 0, 1),
    }
    assert planned.features["caption_text"].examples == {"dependent": ["B0799CK52K"]}
    log = tmp_path / "log"
    refresh = ingest(media_catalog, config, store, progress=False, encode_log=log)
    encoded = {
        n: sorted(line for p in log.glob(f"{n}.{refresh.run_id}.encoded.*.log") for line in p.read_text().split())
        for n in features
    }
    new_caption = itemlens.connect(store).captions("caption", ["B0799CK52K"])[0]
    assert new_caption != stored.loc["B0799CK52K", "caption"]  # the tiny captioner saw other frames
    assert encoded == {
        "text": [],
        "video": ["B0799CK52K"],
        "video_frames": ["B0799CK52K"],
        "audio": [],
        "caption": ["B0799CK52K"],
        "photo_caption": [],
        "caption_text": ["B0799CK52K"],
    }
