"""The encoders, one module per model family, each registered by name in
:mod:`itemlens.extractors.registry`:

==========================  ============================================================
``open_clip.py``            ``open-clip`` (images, text) and ``video-frames`` (sampled frames)
``sentence_transformers.py``  ``sentence-transformers`` (text)
``hf_text.py``              ``hf-text``: transformers text models and LLM embedders
``audio.py``                ``audio``: CLAP and wav2vec2/HuBERT/WavLM-style models
``caption.py``              ``caption``: multimodal LLMs writing captions
``caption_inputs.py``       the caption encoder's inputs of every shape (tiles, patches, video)
==========================  ============================================================

A new encoder is one module here (its spec model, with its own options, and its
:class:`~itemlens.extractors.base.Encoder` subclass), one line in the registry and one case in
tests/test_conformance.py; docs/design.md walks through an example. Nothing here imports torch
at import time.
"""
