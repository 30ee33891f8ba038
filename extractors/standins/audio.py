"""Seeded stand-in audio models for tests and the offline demo.

Like :mod:`itemlens.extractors.standins.clip`: no hub access here, so tests build tiny versions of
the real architectures from configs, give them seeded random weights and save them with
``save_pretrained`` next to their feature extractor's ``preprocessor_config.json``. The
:class:`~itemlens.extractors.encoders.audio.AudioEncoder` then loads such a folder through its
real loading path (``AutoModel`` / ``AutoFeatureExtractor``). The numbers mean nothing; the
code path is the real one. Nothing in the pipeline calls this.

Each folder is well under 1 MB. An existing complete folder is returned as is; a new one is
written to a temporary name and renamed, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_COMPLETE = ("config.json", "model.safetensors", "preprocessor_config.json")


def write_tiny_wav2vec2(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny wav2vec2 (16 kHz) whose feature extractor returns an attention mask and whose
    conv stack uses layer norm: the family that encodes padded batches with a mask."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(**_speech_sizes(), feat_extract_norm="layer", do_stable_layer_norm=True)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True)
    return _write(folder, seed, lambda: Wav2Vec2Model(config), extractor)


def write_tiny_hubert(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny HuBERT (16 kHz) like hubert-base: group norm in the conv stack and no attention
    mask, so zero padding would change its output (the encoder batches equal lengths only)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    config = HubertConfig(**_speech_sizes(), feat_extract_norm="group")
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=False)
    return _write(folder, seed, lambda: HubertModel(config), extractor)


def write_tiny_speech_encoder(folder: str | os.PathLike, model_type: str, seed: int = 0) -> Path:
    """A tiny waveform speech encoder of another supported type (``wavlm``, ``data2vec-audio``,
    ``wav2vec2-conformer``), layer norm in its conv stack and an attention mask from its
    feature extractor, the settings of their large checkpoints."""
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    extra = {
        "wavlm": dict(num_buckets=16, max_bucket_distance=100),
        "data2vec-audio": dict(num_conv_pos_embeddings=3, conv_pos_kernel_size=5),
        "wav2vec2-conformer": dict(conv_depthwise_kernel_size=3),
    }
    if model_type not in extra:
        raise ValueError(f"no tiny stand-in for model type {model_type!r}; known: {', '.join(extra)}")
    config = AutoConfig.for_model(model_type, **{**_speech_sizes(), **extra[model_type]}, feat_extract_norm="layer")
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True)
    return _write(folder, seed, lambda: AutoModel.from_config(config), extractor)


def write_tiny_clap(folder: str | os.PathLike, seed: int = 0, fusion: bool = True) -> Path:
    """A tiny CLAP (48 kHz, 10 s windows, 16-d projection). ``fusion=True`` is like
    laion/clap-htsat-fused (feature fusion, ``truncation="fusion"``), ``False`` like
    clap-htsat-unfused (``truncation="rand_trunc"``). Only the feature extractor is saved:
    audio features need no tokenizer."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    audio = dict(
        spec_size=256,
        num_mel_bins=64,
        patch_size=4,
        patch_stride=[4, 4],
        window_size=8,
        depths=[1, 1],
        num_attention_heads=[1, 2],
        patch_embeds_hidden_size=16,
        hidden_size=32,
        mlp_ratio=2.0,
        enable_fusion=fusion,
        fusion_type="aff_2d" if fusion else None,
    )
    text = dict(
        vocab_size=128,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=32,
        max_position_embeddings=40,
    )
    config = ClapConfig(audio_config=audio, text_config=text, projection_dim=16)
    extractor = ClapFeatureExtractor(truncation="fusion" if fusion else "rand_trunc")
    return _write(folder, seed, lambda: ClapModel(config), extractor)


def _speech_sizes() -> dict[str, Any]:
    # Three conv layers with the real total stride (5 * 8 * 8 = 320 samples, 20 ms at 16 kHz)
    # and the real 400-sample receptive field (10 + 6*5 + 9*40), so the shortest encodable
    # clip is the real one (25 ms) and a 30 s window is about 1,500 frames, as in the real
    # 7-layer stack.
    return dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 8, 8),
        conv_kernel=(10, 7, 10),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        vocab_size=32,
    )


def _write(folder: str | os.PathLike, seed: int, build, extractor) -> Path:
    import torch

    folder = Path(folder)
    if all((folder / name).is_file() for name in _COMPLETE):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is not
    try:
        torch.manual_seed(seed)
        model = build().eval()  # random init on purpose: this *is* the stand-in
        model.save_pretrained(tmp)
        extractor.save_pretrained(tmp)
        if folder.exists():  # an incomplete earlier attempt
            shutil.rmtree(folder)
        tmp.replace(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
