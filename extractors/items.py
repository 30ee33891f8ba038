"""From an item's raw media to its value, the same way in the pipeline and in the client.

An item may carry several inputs of one kind: images (a list column), a video's sampled
frames, an audio clip's windows. The pipeline splits the work between CPU tasks (read and
decode: :func:`video_pixels`, :func:`audio_waveform`) and accelerator actors (encode and pool:
:func:`encode_pixel_items`, :func:`encode_audio_items`, :func:`caption_pixel_items`);
``lens.encode`` chains the same functions in one process, so an online query is embedded
exactly as the catalog was.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from itemlens.extractors.base import Encoder
from itemlens.extractors.spec import FeatureSpec


def normalized(vector: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12) if spec.normalize else vector


# -- CPU side ----------------------------------------------------------------------------------

def video_pixels(data: bytes, spec: FeatureSpec, transform: Callable, *, captioning: bool,
                 max_pixels: int) -> np.ndarray:
    """A video's sampled frames through the encoder's own image preprocessing: float32
    [frames, 3, H, W]; for a captioner one image, the frames tiled in a grid, [1, 3, H, W]."""
    from itemlens.extractors.video import frame_grid, read_video_frames, to_images

    frames, _ = read_video_frames(data, spec.input, max_pixels=max_pixels)
    images = [frame_grid(frames)] if captioning else to_images(frames)
    return np.stack([transform(image) for image in images])


def audio_waveform(data: bytes, encoder: Encoder) -> np.ndarray:
    """An audio file (or a video's audio track) at the model's rate and layout: float32
    [channels, samples]."""
    from itemlens.extractors.audio import decode_audio

    return np.ascontiguousarray(decode_audio(data, encoder.audio_format()), dtype=np.float32)


# -- accelerator side ---------------------------------------------------------------------------

def encode_pixel_items(encoder: Encoder, items: list[np.ndarray]) -> list[np.ndarray]:
    """Images (or frames) of several items, each [n_i, 3, H, W], in one encoder call; each
    item's vectors mean-pooled then normalized (``pooling: mean``) or kept, [n_i, dim]."""
    vectors = encoder.encode_images(np.concatenate(items))
    out, start = [], 0
    for item in items:
        part = vectors[start:start + len(item)]
        start += len(item)
        out.append(normalized(part.mean(axis=0), encoder.spec) if encoder.spec.pooling == "mean" else part)
    return out


def caption_pixel_items(encoder: Encoder, items: list[np.ndarray]) -> list[str]:
    """One caption per item, from its first image (a video's: the grid of its frames)."""
    return encoder.caption_images(np.concatenate([item[:1] for item in items]))


def encode_audio_items(encoder: Encoder, waveforms: list[np.ndarray]) -> list[np.ndarray]:
    """The windows of several clips in one encoder call; each clip's window vectors pooled by
    window length, then normalized."""
    from itemlens.extractors.audio import audio_windows, pool_windows

    fmt = encoder.audio_format()
    windows = [audio_windows(waveform, fmt) for waveform in waveforms]
    vectors = encoder.encode_audio([w for ws in windows for w in ws])
    out, start = [], 0
    for ws in windows:
        part = vectors[start:start + len(ws)]
        start += len(ws)
        out.append(normalized(pool_windows(part, [w.shape[-1] for w in ws]), encoder.spec))
    return out
