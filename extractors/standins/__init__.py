"""Tiny seeded stand-ins of real model families, for the tests and the offline demo only.

No model hub can be reached on the machines this project is developed and tested on, so each
module writes a tiny architecture of a real family with seeded random weights into a folder
(or checkpoint) that the family's own loading code reads: ``clip.py`` (open_clip), ``text.py``
(a Qwen3-style decoder for hf-text), ``audio.py`` (CLAP, wav2vec2, HuBERT), ``caption.py``
(LLaVA, BLIP-2, Qwen-VL, LLaVA-OneVision, SmolVLM/Idefics3, Gemma 3, InternVL). The pipeline
never substitutes them for missing weights.
"""
