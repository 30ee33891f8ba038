"""Captioning inputs of every shape (extractors/encoders/caption_inputs.py) on tiny seeded checkpoints of each
family (extractors/standins/caption.py), saved and loaded through AutoProcessor and
AutoModelForImageTextToText. The caption encoder and the pipeline's stages that use them are
tested in tests/test_captioner.py and tests/test_conformance.py.

The reference in every test is transformers used directly: ``processor(images=..., text=...,
return_tensors="pt")`` (or ``videos=...``) on the same pictures and prompt, then
``model.generate(...)``. What the CPU half prepares item by item and the actor half assembles must
give the same tensors and the same caption tokens, and an item's caption must not depend on its
batch-mates (a 64x2000 strip, a 4000x3000 photo and a 32x32 icon in one batch).
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest

from itemlens.errors import ConfigError
from itemlens.extractors.base import ItemError
from itemlens.extractors.images import load_image

from .captioners import standin
from .conftest import EXAMPLE_CATALOG

PROMPT = "Describe this product image in one sentence."
MAX_NEW_TOKENS = 8
#: every family with a stand-in, and the processor options its tests use
FAMILIES = {
    "llava": {},
    "blip2": {},
    "qwen2_5_vl": {},
    "qwen3_vl": {},
    "llava_onevision": {},
    "smolvlm": {},
    # pan-and-scan on, so that Gemma 3 reads an image as a variable number of crops
    "gemma3": {"images_kwargs": {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 16}},
    "internvl": {},
    "idefics3": {},
}
EXPECTED = {  # processor, model, pixels, video, several images per prompt
    "llava": ("LlavaProcessor", "LlavaForConditionalGeneration", "fixed", "frame grid", True),
    "blip2": ("Blip2Processor", "Blip2ForConditionalGeneration", "fixed", "frame grid", False),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2_5_VLForConditionalGeneration", "patches", "native", True),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLForConditionalGeneration", "patches", "native", True),
    "llava_onevision": ("LlavaOnevisionProcessor", "LlavaOnevisionForConditionalGeneration", "tiles", "native", True),
    "smolvlm": ("SmolVLMProcessor", "SmolVLMForConditionalGeneration", "tiles", "native", True),
    "gemma3": ("Gemma3Processor", "Gemma3ForConditionalGeneration", "tiles", "frame grid", True),
    "internvl": ("InternVLProcessor", "InternVLForConditionalGeneration", "tiles", "native", True),
    "idefics3": ("Idefics3Processor", "Idefics3ForConditionalGeneration", "tiles", "frame grid", True),
}
VIDEO_FAMILIES = [f for f, e in EXPECTED.items() if e[3] == "native"]
MULTI_IMAGE_FAMILIES = [f for f, e in EXPECTED.items() if e[4]]


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, str]:
    """Each stand-in written once per session (seed 0)."""
    return {family: standin(tmp_path_factory, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def loaded(folders):
    """family -> (VisionInputs, model), loaded on first use."""
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    from itemlens.extractors.encoders.caption_inputs import VisionInputs

    hf_logging.disable_progress_bar()
    cache = {}

    def get(family: str, **options):
        key = (family, tuple(sorted(options.items())))
        if key not in cache:
            inputs = VisionInputs.from_pretrained(
                folders[family], prompt=PROMPT, processor_kwargs=FAMILIES[family], **options
            )
            model = (
                cache[(family, ())][1]
                if (family, ()) in cache
                else AutoModelForImageTextToText.from_pretrained(folders[family]).eval()
            )
            cache[key] = (inputs, model)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def photos():
    """The example catalog's 12 photos of 3 products (0-2, 3-7, 8-11), through the pipeline's own
    image reader."""
    paths = sorted((EXAMPLE_CATALOG.parent / "images").rglob("*.jpg"))
    assert len(paths) == 12
    return [load_image(str(p)) for p in paths]


@pytest.fixture(scope="session")
def odd_sizes(photos):
    """A 64x2000 strip, a 4000x3000 photo and a 32x32 icon (width x height), made from photos of
    three different products."""
    from PIL import Image

    return [
        photos[0].resize((2000, 64), Image.Resampling.BILINEAR),
        photos[3].resize((4000, 3000), Image.Resampling.BILINEAR),
        photos[8].resize((32, 32), Image.Resampling.BILINEAR),
    ]


def direct(inputs, model, images=None, texts=None, videos=None, **kwargs):
    """transformers used directly: the processor's batch and greedy generate's new tokens."""
    processor = inputs.processor
    processor.tokenizer.padding_side = "left"
    extra = dict(inputs.processor_kwargs)
    if processor.tokenizer.bos_token and texts[0].startswith(processor.tokenizer.bos_token):
        extra["add_special_tokens"] = False  # as apply_chat_template(tokenize=True) does
    batch = processor(images=images, text=texts, videos=videos, padding=True, return_tensors="pt", **extra, **kwargs)
    out = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return batch, out[:, batch["input_ids"].shape[1] :].tolist()


def ours(inputs, model, payloads, **settings):
    from itemlens.extractors.encoders.caption_inputs import GenerationSettings, generate

    batch = inputs.assemble(payloads)
    return batch, generate(model, batch, GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, **settings))


def assert_same_tokens(generated, reference_rows, pad_id):
    """Our tokens are the reference row up to its end of sequence; after it the reference pads."""
    for tokens, row in zip(generated.tokens, reference_rows, strict=True):
        assert tokens == row[: len(tokens)], (tokens, row)
        assert all(t == pad_id for t in row[len(tokens) :]), row
    assert generated.generated_tokens == [len(t) for t in generated.tokens]


def assert_same_batch(assembled, reference):
    import torch

    tensors = {k: v for k, v in reference.items() if isinstance(v, torch.Tensor)}
    assert assembled.inputs.keys() == tensors.keys()
    for key, value in tensors.items():
        assert assembled.inputs[key].shape == value.shape and torch.equal(assembled.inputs[key], value), key


# -- loading and the path -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_through_the_auto_classes_and_describes_its_path(family, loaded):
    inputs, model = loaded(family)
    processor_class, model_class, pixels, video, several = EXPECTED[family]
    assert type(inputs.processor).__name__ == processor_class and type(model).__name__ == model_class
    path = inputs.path  # also checks that probe batches assemble as the processor builds them
    assert (path.pixels, path.video, path.several_images) == (pixels, video, several)
    info = path.describe()
    assert info["architecture"] == model_class and info["images"] == "first"
    assert set(info["vision tokens"]) == {"256x256", "256x1024", "32x32"}
    assert all(n > 0 for n in info["vision tokens"].values())


@pytest.mark.parametrize("family", FAMILIES)
def test_payload_travels_as_an_arrow_struct(family, loaded, odd_sizes):
    from itemlens.extractors.encoders.caption_inputs import VisionPayload, payload_arrow_type

    inputs, _ = loaded(family)
    payload = inputs.prepare([odd_sizes[0]])
    row = payload.to_dict()
    stored = dict(zip(row["names"], row["stored"]))
    assert stored["input_ids"] == "<u2" and sum(map(len, row["data"])) < payload.nbytes  # ids < 65536 as uint16
    if "pixel_attention_mask" in stored:
        assert stored["pixel_attention_mask"] == "|u1"
    column = pa.array([row], type=payload_arrow_type())
    back = VisionPayload.from_dict(pa.Table.from_arrays([column], ["payload"]).to_pylist()[0]["payload"])
    assert back.tensors.keys() == payload.tensors.keys()
    for name, array in payload.tensors.items():
        assert back.tensors[name].dtype == array.dtype and np.array_equal(back.tensors[name], array), name
    assert (back.vision_tokens, back.prompt_tokens, back.kind, back.pictures) == (
        payload.vision_tokens,
        payload.prompt_tokens,
        "images",
        1,
    )
    assert 0 < payload.vision_tokens < payload.prompt_tokens == payload.tensors["input_ids"].shape[1]


# -- images: the processor used directly, batch invariance --------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_captions_equal_the_processor_and_generate_used_directly(family, loaded, odd_sizes):
    inputs, model = loaded(family)
    text = inputs.prompt_text(images=1)
    reference, rows = direct(inputs, model, images=[[image] for image in odd_sizes], texts=[text] * len(odd_sizes))
    payloads = [inputs.prepare([image]) for image in odd_sizes]
    assembled, generated = ours(inputs, model, payloads)
    assert_same_batch(assembled, reference)
    assert_same_tokens(generated, rows, inputs.tokenizer.pad_token_id)
    assert len({tuple(t) for t in generated.tokens}) >= 2, generated.tokens  # the image matters
    assert generated.vision_tokens == [p.vision_tokens for p in payloads]


@pytest.mark.parametrize("family", FAMILIES)
def test_an_item_alone_gives_what_it_gives_among_odd_batch_mates(family, loaded, odd_sizes, photos):
    """A 64x2000 strip, a 4000x3000 photo and a 32x32 icon (and a product photo) in one batch:
    each caption equals the item's caption alone, and greedy's top-1 choices win by far more than
    the batch moves the logits, so that the equality means something."""
    import torch

    inputs, model = loaded(family)
    payloads = [inputs.prepare([image]) for image in [*odd_sizes, photos[5]]]
    if family not in ("llava", "blip2"):  # dynamic resolution or tiles: the items cost different token counts
        assert len({p.prompt_tokens for p in payloads}) >= 2, [p.prompt_tokens for p in payloads]

    def scores(items):
        batch = inputs.assemble(items).inputs
        with torch.inference_mode():
            out = model.generate(
                **batch,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
        return out.sequences[:, batch["input_ids"].shape[1] :], torch.stack(out.scores, 1)

    tokens, logits = scores(payloads)
    noise = 0.0
    for i, payload in enumerate(payloads):
        alone_tokens, alone_logits = scores([payload])
        assert alone_tokens[0].tolist() == tokens[i].tolist(), (i, alone_tokens, tokens[i])
        noise = max(noise, float((alone_logits[0] - logits[i]).abs().max()))
    top2 = logits.topk(2, dim=-1).values
    margin = float((top2[..., 0] - top2[..., 1]).min())
    assert margin > 1e-3 and margin > 20 * noise, (margin, noise)


def test_processor_options_reach_every_call(folders, loaded, odd_sizes):
    """Processor options (the dynamic-resolution bounds, pan-and-scan) apply to the CPU half and
    decide the path: Qwen2.5-VL with a smaller pixel budget reads the photo as fewer tokens, as the
    processor does with the same option; Gemma 3 without pan-and-scan reads fixed-size images."""
    from itemlens.extractors.encoders.caption_inputs import VisionInputs

    _, model = loaded("qwen2_5_vl")
    small = {"images_kwargs": {"size": {"shortest_edge": 16 * 16, "longest_edge": 16 * 16 * 4}}}
    inputs = VisionInputs.from_pretrained(folders["qwen2_5_vl"], prompt=PROMPT, processor_kwargs=small)
    default = loaded("qwen2_5_vl")[0].prepare([odd_sizes[1]])
    payload = inputs.prepare([odd_sizes[1]])
    assert payload.vision_tokens < default.vision_tokens
    assert payload.tensors["image_grid_thw"].prod() <= 16 * 16 * 4 // 16  # at most 1024 pixels of 4 x 4 patches
    reference, rows = direct(inputs, model, images=[[odd_sizes[1]]], texts=[inputs.prompt_text(images=1)])
    assembled, generated = ours(inputs, model, [payload])
    assert_same_batch(assembled, reference)
    assert_same_tokens(generated, rows, inputs.tokenizer.pad_token_id)
    assert VisionInputs.from_pretrained(folders["gemma3"], prompt=PROMPT).path.pixels == "fixed"


def test_beam_search_equals_generate_used_directly(loaded, odd_sizes):
    inputs, model = loaded("qwen2_5_vl")
    text = inputs.prompt_text(images=1)
    reference, _ = direct(inputs, model, images=[[image] for image in odd_sizes], texts=[text] * 3)
    theirs = model.generate(**reference, max_new_tokens=MAX_NEW_TOKENS, num_beams=2, do_sample=False)
    _, generated = ours(inputs, model, [inputs.prepare([image]) for image in odd_sizes], num_beams=2)
    assert_same_tokens(generated, theirs[:, reference["input_ids"].shape[1] :].tolist(), inputs.tokenizer.pad_token_id)


def test_tokens_end_at_the_end_of_sequence(loaded, odd_sizes):
    """A caption stops at the model's end-of-sequence token (counted, nothing after it)."""
    from itemlens.extractors.encoders.caption_inputs import GenerationSettings, generate

    inputs, model = loaded("llava")
    batch = inputs.assemble([inputs.prepare([image]) for image in odd_sizes])
    free = generate(model, batch, GenerationSettings(max_new_tokens=MAX_NEW_TOKENS))
    assert free.generated_tokens == [MAX_NEW_TOKENS] * 3
    # make the third token the first item writes an end of sequence
    stop, eos = free.tokens[0][2], model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [eos, stop] if isinstance(eos, int) else [*eos, stop]
    try:
        stopped = generate(model, batch, GenerationSettings(max_new_tokens=MAX_NEW_TOKENS))
    finally:
        model.generation_config.eos_token_id = eos
    assert stopped.tokens[0] == free.tokens[0][:3] and stopped.generated_tokens[0] == 3
    assert all(len(t) <= MAX_NEW_TOKENS for t in stopped.tokens)


# -- several images per item ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", MULTI_IMAGE_FAMILIES)
def test_an_item_with_twelve_photos(family, loaded, photos, odd_sizes):
    inputs, model = loaded(family, images="all")
    assert inputs.path.images == "all"
    item = inputs.prepare(photos)
    assert item.pictures == 12
    one = inputs.prepare([odd_sizes[2]])
    reference, rows = direct(
        inputs,
        model,
        images=[photos, [odd_sizes[2]]],
        texts=[inputs.prompt_text(images=12), inputs.prompt_text(images=1)],
    )
    if inputs.batch_key(item) == inputs.batch_key(one):
        assembled, generated = ours(inputs, model, [item, one])
        assert_same_batch(assembled, reference)
    else:  # a processor that cannot batch them (none of these families): each alone
        generated = ours(inputs, model, [item])[1]
        generated.tokens += ours(inputs, model, [one])[1].tokens
    assert_same_tokens(generated, rows, inputs.tokenizer.pad_token_id)
    alone = ours(inputs, model, [item])[1]
    assert alone.tokens[0] == generated.tokens[0] and alone.vision_tokens[0] == item.vision_tokens
    first = loaded(family)[0].prepare(photos)  # images: first (the default) reads one
    assert first.pictures == 1 and first.vision_tokens < item.vision_tokens
    three = loaded(family, images=3)[0].prepare(photos)
    assert three.pictures == 3


# -- video -------------------------------------------------------------------------------------------------


def _clips():
    """Three clips (frames, 10 fps frame indices): 4 frames of 48x64, 6 of 90x40, 4 of 30x30."""
    rng = np.random.default_rng(1)
    shapes = [(4, 48, 64), (6, 90, 40), (4, 30, 30)]
    frames = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]
    # smooth frames rather than noise: a ramp that moves, so that frames differ
    for clip in frames:
        n, h, w, _ = clip.shape
        y, x = np.mgrid[0:h, 0:w]
        for t in range(n):
            clip[t, ..., 0] = (x * 255 // w + 40 * t) % 256
            clip[t, ..., 1] = (y * 255 // h) % 256
    indices = [[0, 5, 10, 15], [0, 4, 8, 12, 16, 20], [1, 3, 5, 7]]
    return frames, indices


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_native_video_equals_the_processors_own_video_path(family, loaded):
    """Frames with their times: the processor's video path with a 10 fps video's metadata (frame
    indices, fps, duration) gives the same tensors and tokens as the clip's timestamps here."""
    from itemlens.extractors.encoders.caption_inputs import VideoClip

    inputs, model = loaded(family)
    assert inputs.path.video == "native"
    frames, indices = _clips()
    clips = [VideoClip(f, [i / 10 for i in ix], duration=2.5) for f, ix in zip(frames, indices)]
    payloads = [inputs.prepare(clip) for clip in clips]
    assert [p.kind for p in payloads] == ["video"] * 3 and [p.pictures for p in payloads] == [4, 6, 4]
    text = inputs.prompt_text(video=True)

    def reference(members):
        metadata = [
            {"fps": 10.0, "frames_indices": indices[i], "total_num_frames": 25, "duration": 2.5} for i in members
        ]
        return direct(
            inputs,
            model,
            videos=[frames[i] for i in members],
            texts=[text] * len(members),
            video_metadata=metadata,
            do_sample_frames=False,
        )

    # the two 4-frame clips together: the processor's batch, exactly
    batch, rows = reference([0, 2])
    assembled, generated = ours(inputs, model, [payloads[0], payloads[2]])
    assert_same_batch(assembled, batch)
    assert_same_tokens(generated, rows, inputs.tokenizer.pad_token_id)
    # all three (4 and 6 frames): each as the processor and generate give it alone
    keys = {inputs.batch_key(p) for p in payloads}
    groups = [[0, 1, 2]] if len(keys) == 1 else [[0, 2], [1]]  # LLaVA-OneVision stacks frames: equal counts only
    captions = []
    for members in groups:
        generated = ours(inputs, model, [payloads[i] for i in members])[1]
        for i, tokens in zip(members, generated.tokens):
            assert_same_tokens(
                type(generated)([tokens], [0], [len(tokens)]), reference([i])[1], inputs.tokenizer.pad_token_id
            )
            captions.append(tuple(tokens))
    assert len(set(captions)) >= 2, captions  # the video matters


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "smolvlm"])
def test_the_frames_times_reach_the_model(family, loaded):
    """Models that use the frames' times get them: the same frames at other times are another input
    (Qwen2.5-VL: second_per_grid_ts; Qwen3-VL and SmolVLM: the timestamps written in the prompt)."""
    from itemlens.extractors.encoders.caption_inputs import VideoClip

    inputs, _ = loaded(family)
    frames, _ = _clips()
    fast = inputs.prepare(VideoClip(frames[0], [0.0, 0.5, 1.0, 1.5], duration=2.0))
    slow = inputs.prepare(VideoClip(frames[0], [0.0, 50.0, 100.0, 150.0], duration=200.0))
    if family == "qwen2_5_vl":
        # temporal_patch_size / sampled fps: 2 / (4 frames / 2 s) and 2 / (4 frames / 200 s)
        assert fast.tensors["second_per_grid_ts"].tolist() == [1.0]
        assert slow.tensors["second_per_grid_ts"].tolist() == [100.0]
        assert np.array_equal(fast.tensors["input_ids"], slow.tensors["input_ids"])
        # in a bf16 model the pixels take its dtype, the times stay exact (bf16 would round
        # 61.7 s / 32 frames, moving later frames' positions)
        import copy

        import torch

        from itemlens.extractors.encoders.caption_inputs import GenerationSettings, generate

        half, seen = copy.deepcopy(loaded(family)[1]).to(torch.bfloat16), {}
        real = half.generate
        half.generate = lambda **kw: seen.update(kw) or real(**kw)
        generate(half, inputs.assemble([fast]), GenerationSettings(max_new_tokens=2))
        assert seen["pixel_values_videos"].dtype == torch.bfloat16
        assert seen["second_per_grid_ts"].dtype == torch.float32
    else:
        assert not np.array_equal(fast.tensors["input_ids"], slow.tensors["input_ids"])
        text = inputs.tokenizer.decode(slow.tensors["input_ids"][0])
        # Qwen3-VL: the mean time of each pair of frames; SmolVLM: mm:ss of each frame
        assert ("<125.0seconds>" if family == "qwen3_vl" else "framefrom02:30:") in text.replace(" ", ""), text


def test_an_image_only_model_captions_a_grid_of_the_frames(loaded):
    from itemlens.extractors.encoders.caption_inputs import VideoClip

    inputs, model = loaded("gemma3")
    frames, indices = _clips()
    payload = inputs.prepare(VideoClip(frames[1], [i / 10 for i in indices[1]]))
    assert (payload.kind, payload.pictures) == ("frame grid", 6)
    from itemlens.extractors.video import frame_grid

    reference = inputs.prepare([frame_grid(frames[1])])
    for name, array in reference.tensors.items():
        assert np.array_equal(payload.tensors[name], array), name


# -- what a model cannot do, and bad input ----------------------------------------------------------------------


def test_a_model_that_takes_neither_video_nor_several_images_says_so_before_any_work(folders):
    from itemlens.extractors.encoders.caption_inputs import VisionInputs

    blip2 = folders["blip2"]
    with pytest.raises(ConfigError, match="one image per prompt.*images: 'all'"):
        VisionInputs.from_pretrained(blip2, prompt=PROMPT, images="all")
    with pytest.raises(ConfigError, match="images: 2"):
        VisionInputs.from_pretrained(blip2, prompt=PROMPT, images=2)
    with pytest.raises(ConfigError, match="does not take video natively"):
        VisionInputs.from_pretrained(blip2, prompt=PROMPT, video="native")
    with pytest.raises(ConfigError, match="does not take video natively"):
        VisionInputs.from_pretrained(folders["gemma3"], prompt=PROMPT, video="native")
    # the documented fallback: a grid of the frames
    assert VisionInputs.from_pretrained(blip2, prompt=PROMPT, video="auto").video == "frame grid"
    assert VisionInputs.from_pretrained(folders["qwen2_5_vl"], prompt=PROMPT, video="frame_grid").video == "frame grid"
    for bad in ({"images": "some"}, {"images": 0}, {"images": True}, {"video": "yes"}):
        with pytest.raises(ConfigError):
            VisionInputs.from_pretrained(blip2, prompt=PROMPT, **bad)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "smolvlm"])
def test_bad_images_are_item_errors(family, loaded, photos):
    from PIL import Image

    inputs, _ = loaded(family)
    buffer = io.BytesIO()
    photos[0].save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    cases = {
        "corrupt bytes": [b"\x00\x01 not an image at all " * 32],
        "truncated JPEG": [jpeg[: len(jpeg) // 3]],
        "one good, one corrupt": [photos[0], b"garbage"],
    }
    for case, item in cases.items():
        with pytest.raises(ItemError) as error:
            loaded(family, images="all")[0].prepare(item)
        assert error.value.stage == "decode", case
    with pytest.raises(ItemError, match="no image") as error:
        inputs.prepare([])
    assert error.value.stage == "input"
    if family == "qwen2_5_vl":  # its processor refuses aspect ratios over 200: that item's error
        with pytest.raises(ItemError, match="preprocessing failed.*aspect ratio") as error:
            inputs.prepare([Image.new("RGB", (3000, 10))])
        assert error.value.stage == "decode"
    # the encoded bytes of a good image work, and the errors left nothing behind
    assert inputs.prepare([jpeg]).vision_tokens == inputs.prepare([load_image_bytes(jpeg)]).vision_tokens


def load_image_bytes(data: bytes):
    from itemlens.extractors.images import decode_image

    return decode_image(data)


# -- batching ------------------------------------------------------------------------------------------------


def test_plan_batches_orders_by_vision_tokens_and_keeps_the_budget():
    from itemlens.extractors.encoders.caption_inputs import plan_batches

    vision = [900, 10, 500, 10, 40, 3000, 20]
    prompt = [v + 20 for v in vision]
    batches = plan_batches(vision, prompt, budget=2000, max_new_tokens=40)
    assert sorted(i for b in batches for i in b) == list(range(7))
    order = [i for b in batches for i in b]
    assert [vision[i] for i in order] == sorted(vision)  # thumbnails together, large photos apart
    for batch in batches:
        cost = len(batch) * (max(prompt[i] for i in batch) + 40)
        assert cost <= 2000 or len(batch) == 1, (batch, cost)  # only an item over budget alone exceeds it
    assert batches[0] == [1, 3, 6, 4] and [5] in batches
    assert plan_batches(vision, prompt, budget=10**6, max_new_tokens=40, max_items=3)[0] == [1, 3, 6]
    keyed = plan_batches(vision, prompt, budget=10**6, max_new_tokens=40, keys=["a", "b", "a", "b", "a", "b", "a"])
    assert sorted(map(sorted, keyed)) == [[0, 2, 4, 6], [1, 3, 5]]
    with pytest.raises(ValueError):
        plan_batches([1], [1, 2], budget=10, max_new_tokens=1)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "smolvlm"])
def test_caption_items_cuts_batches_by_the_budget_and_keeps_the_order(family, loaded, odd_sizes, photos):
    """The actor's whole job: a budget small enough to cut the block into several batches, and
    each caption (text, tokens, counts) is the item's alone, in the order given."""
    from itemlens.extractors.encoders.caption_inputs import GenerationSettings, caption_items, plan_batches

    inputs, model = loaded(family)
    payloads = [inputs.prepare([image]) for image in [*odd_sizes, photos[5], photos[9]]]
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    budget = 2 * (max(p.prompt_tokens for p in payloads) + MAX_NEW_TOKENS)
    assert (
        len(
            plan_batches(
                [p.vision_tokens for p in payloads],
                [p.prompt_tokens for p in payloads],
                budget=budget,
                max_new_tokens=MAX_NEW_TOKENS,
            )
        )
        >= 3
    )
    calls = []

    def counting(model, batch, settings):
        from itemlens.extractors.encoders.caption_inputs import generate

        calls.append(len(batch))
        return generate(model, batch, settings)

    captions = caption_items(inputs, model, payloads, settings, budget=budget, generate_fn=counting)
    assert len(calls) >= 3 and sum(calls) == len(payloads)
    for payload, caption in zip(payloads, captions, strict=True):
        alone = caption_items(inputs, model, [payload], settings)[0]
        assert caption == alone
        assert caption.vision_tokens == payload.vision_tokens and caption.generated_tokens == len(caption.tokens)
        assert caption.text == inputs.decode([caption.tokens])[0] and caption.text


def test_items_that_cannot_share_a_batch_are_kept_apart(loaded):
    from itemlens.extractors.encoders.caption_inputs import VideoClip, plan_batches

    inputs, _ = loaded("llava_onevision")
    frames, indices = _clips()
    payloads = [inputs.prepare(VideoClip(f, [i / 10 for i in ix])) for f, ix in zip(frames, indices)]
    keys = [inputs.batch_key(p) for p in payloads]
    assert keys[0] == keys[2] != keys[1]  # 4 and 6 stacked frames
    with pytest.raises(ValueError, match="cannot share a batch"):
        inputs.assemble(payloads)
    batches = plan_batches(
        [p.vision_tokens for p in payloads],
        [p.prompt_tokens for p in payloads],
        budget=10**6,
        max_new_tokens=MAX_NEW_TOKENS,
        keys=keys,
    )
    assert sorted(map(sorted, batches)) == [[0, 2], [1]]
