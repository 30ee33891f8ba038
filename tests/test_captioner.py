"""The caption encoder: a multimodal LLM from transformers captions images.

Both stand-ins (LLaVA-style: CLIP vision + Llama with a chat template; BLIP-2-style: ViT +
Q-Former + OPT with a plain-text prompt) are tiny seeded models saved with save_pretrained and
loaded back through AutoProcessor / AutoModelForImageTextToText, the real loading path.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from itemlens.errors import ConfigError, WeightsNotFoundError
from itemlens.extractors import FeatureSpec, build_encoder
from itemlens.extractors.images import load_image

from .conftest import EXAMPLE_CATALOG

KINDS = ("llava", "blip2")
EXPECTED_CLASSES = {
    "llava": ("LlavaProcessor", "LlavaForConditionalGeneration"),
    "blip2": ("Blip2Processor", "Blip2ForConditionalGeneration"),
}
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="session")
def caption_models(tmp_path_factory) -> dict[str, str]:
    """Each stand-in written once per session (seed 0)."""
    from itemlens.extractors.standins.caption import write_tiny_blip2, write_tiny_llava

    root = tmp_path_factory.mktemp("caption-models")
    return {"llava": str(write_tiny_llava(root / "tiny-llava")),
            "blip2": str(write_tiny_blip2(root / "tiny-blip2"))}


@pytest.fixture(scope="session")
def images():
    """Three product photos of different products (through the pipeline's own image reader)
    and a synthetic checkerboard."""
    from PIL import Image

    folders = sorted(p for p in (EXAMPLE_CATALOG.parent / "images").iterdir() if p.is_dir())
    photos = [load_image(str(sorted(folder.glob("*.jpg"))[0])) for folder in folders[:3]]
    board = (np.indices((48, 64)).sum(0) // 8 % 2 * 255).astype(np.uint8)
    return photos + [Image.fromarray(board).convert("RGB")]


def spec(folder: str, **extra) -> FeatureSpec:
    fields = {"prompt": "Describe this product image in one sentence.", "max_new_tokens": MAX_NEW_TOKENS,
              "resources": {"num_gpus": 0}, **extra}
    return FeatureSpec(encoder="caption", model=folder, input={"image": "images"}, **fields)


@pytest.fixture(scope="session")
def loaded(caption_models, images):
    """Per stand-in: the loaded encoder, the pixels of ``images`` and their batch captions."""
    out = {}
    for kind in KINDS:
        encoder = build_encoder(spec(caption_models[kind])).load("cpu")
        transform = encoder.image_transform()
        pixels = np.stack([transform(image) for image in images])
        out[kind] = (encoder, pixels, encoder.caption_images(pixels))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_loads_through_the_auto_classes(kind, loaded):
    encoder, pixels, _ = loaded[kind]
    processor_class, model_class = EXPECTED_CLASSES[kind]
    assert type(encoder.processor).__name__ == processor_class
    assert type(encoder.model).__name__ == model_class
    assert encoder.processor.tokenizer.padding_side == "left"
    assert pixels.dtype == np.float32 and pixels.shape == (4, 3, 32, 32)
    assert encoder.output_kind == "caption" and encoder.dim == 0
    if kind == "llava":   # the chat template wraps an image placeholder and the prompt
        assert encoder.prompt_text == "USER: <image>\nDescribe this product image in one sentence.\nASSISTANT:"
    else:                 # no template: the prompt itself (the processor puts image tokens in front)
        assert encoder.prompt_text == "Describe this product image in one sentence."
    info = encoder.describe()
    assert info["prompt"] == encoder.spec.prompt and info["max_new_tokens"] == MAX_NEW_TOKENS
    assert info["num_beams"] == 1 and info["architecture"] == model_class


@pytest.mark.parametrize("kind", KINDS)
def test_batch_captions_equal_captions_alone(kind, loaded):
    encoder, pixels, captions = loaded[kind]
    assert len(captions) == len(pixels)
    assert all(isinstance(c, str) and c and c == c.strip() for c in captions)
    assert len(set(captions)) >= 2, captions          # the image matters
    alone = [encoder.caption_images(pixels[i:i + 1])[0] for i in range(len(pixels))]
    assert alone == captions
    assert encoder.caption_images(pixels[:0]) == []


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_choices_are_not_float_noise(kind, loaded):
    """The batch-vs-alone equality above means something only if greedy's top-1 choices win by
    far more than batching moves the logits (random tiny models can have near-ties)."""
    import torch

    encoder, pixels, _ = loaded[kind]

    def scores(x):
        inputs = encoder._prompt_inputs(x)
        inputs["pixel_values"] = torch.from_numpy(x)
        with torch.inference_mode():
            out = encoder.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                         output_scores=True, return_dict_in_generate=True)
        return torch.stack(out.scores, 1)   # [n, steps, vocab]

    batch = scores(pixels)
    top2 = batch.topk(2, dim=-1).values
    margin = float((top2[..., 0] - top2[..., 1]).min())
    noise = max(float((scores(pixels[i:i + 1]) - batch[i:i + 1]).abs().max()) for i in range(len(pixels)))
    assert margin > 1e-3 and margin > 20 * noise, (margin, noise)


@pytest.mark.parametrize("kind", KINDS)
def test_captions_equal_the_processor_and_generate_used_directly(kind, loaded, images):
    """Preprocessing in the CPU workers, then passing prepared pixels through the processor with
    its image steps off, gives what the library gives when the processor does everything."""
    import torch

    encoder, _, captions = loaded[kind]
    processor, model = encoder.processor, encoder.model
    inputs = processor(images=images, text=[encoder.prompt_text] * len(images), padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    theirs = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [t.strip() for t in theirs] == captions


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_across_loads(kind, caption_models, loaded):
    _, pixels, captions = loaded[kind]
    again = build_encoder(spec(caption_models[kind])).load("cpu")
    assert again.caption_images(pixels) == captions


@pytest.mark.parametrize("kind", KINDS)
def test_max_new_tokens_bounds_the_caption(kind, caption_models, loaded):
    _, pixels, captions = loaded[kind]
    short = build_encoder(spec(caption_models[kind], max_new_tokens=3)).load("cpu")
    tokens = short.generate_tokens(pixels)
    assert tokens.shape[0] == len(pixels) and 1 <= tokens.shape[1] <= 3
    short_captions = short.caption_images(pixels)
    # greedy: the first 3 tokens are those of the longer caption
    assert all(c.startswith(s) and len(s) < len(c) for s, c in zip(short_captions, captions))
    assert all(len(t) <= MAX_NEW_TOKENS for t in loaded[kind][0].generate_tokens(pixels[:2]))


def test_beam_search_runs_and_is_part_of_the_recipe(caption_models, loaded):
    _, pixels, greedy = loaded["llava"]
    beams = build_encoder(spec(caption_models["llava"], num_beams=2))
    assert beams.fingerprint() != loaded["llava"][0].fingerprint()
    beams.load("cpu")
    captions = beams.caption_images(pixels[:2])
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    assert beams.describe()["decoding"] == "beam search"


def test_missing_model_folder_fails_before_loading(tmp_path):
    missing = tmp_path / "no-such-model"
    encoder = build_encoder(spec(str(missing)))
    for call in (encoder.check_weights, encoder.image_transform, lambda: encoder.load("cpu")):
        with pytest.raises(WeightsNotFoundError, match=str(missing)):
            call()
    assert not hasattr(encoder, "model")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        build_encoder(spec(str(empty))).check_weights()


def test_hub_id_not_in_the_offline_cache_says_where_it_looked():
    encoder = build_encoder(spec("llava-hf/llava-1.5-7b-hf", revision="main"))
    assert encoder.weights_identity() == "hf:llava-hf/llava-1.5-7b-hf@main"
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE=1"):
        encoder.check_weights()


@pytest.mark.parametrize("field, value", [
    ("pretrained", "laion2b"), ("checkpoint", "w.safetensors"), ("model_config_file", "c.json"),
    ("token_pooling", "mean"), ("instruction", "query: "), ("window_seconds", 10.0),
])
def test_fields_it_does_not_use_are_rejected(field, value, caption_models):
    with pytest.raises(ValidationError, match=field):        # not an option of the caption spec
        spec(caption_models["blip2"], **{field: value})


def test_inputs_it_takes(caption_models):
    video = FeatureSpec(encoder="caption", model=caption_models["llava"], input={"video": "clip", "frames": 4})
    assert build_encoder(video).input_kinds == {"image", "video"}
    with pytest.raises(ConfigError, match="cannot encode text"):
        build_encoder(FeatureSpec(encoder="caption", model=caption_models["llava"], input={"template": "{title}"}))


def test_fingerprint_follows_prompt_and_generation_settings(caption_models):
    folder = caption_models["llava"]
    base = build_encoder(spec(folder)).fingerprint()
    assert build_encoder(spec(folder)).fingerprint() == base
    assert build_encoder(spec(folder, prompt="What is this?")).fingerprint() != base
    assert build_encoder(spec(folder, max_new_tokens=9)).fingerprint() != base
    assert build_encoder(spec(caption_models["blip2"])).fingerprint() != base   # other weights
    # precision and resources are execution details
    assert build_encoder(spec(folder, precision="fp32", resources={"num_gpus": 1})).fingerprint() == base
