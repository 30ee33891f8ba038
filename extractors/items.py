"""From an item's raw media to its value, the same way in the pipeline and in the client.

An item may carry several inputs of one kind: images (a list column), a video's sampled
frames, an audio clip's windows. The pipeline splits the work between CPU tasks (read and
decode: :func:`video_pixels`, :func:`audio_waveform`; a captioner's processor:
:func:`caption_image_payload`, :func:`caption_video_payload`) and accelerator actors (encode and
pool: :func:`encode_pixel_items`, :func:`encode_audio_items`; generate: :func:`caption_payload_items`);
``lens.encode`` chains the same functions in one process, so an online query is embedded
exactly as the catalog was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from itemlens.extractors.base import Encoder
from itemlens.extractors.spec import FeatureSpec

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from itemlens.extractors.encoders.caption_inputs import Caption, VisionPayload


def normalized(vector: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12) if spec.normalize else vector


# -- CPU side ----------------------------------------------------------------------------------


def video_pixels(data: bytes, spec: FeatureSpec, transform: Callable, *, max_pixels: int) -> np.ndarray:
    """A video's sampled frames through a vector encoder's own image preprocessing: float32
    [frames, 3, H, W] (a captioner's frames go through :func:`caption_video_payload`)."""
    from itemlens.extractors.video import read_video_frames, to_images

    frames, _ = read_video_frames(data, spec.input, max_pixels=max_pixels)
    return np.stack([transform(image) for image in to_images(frames)])


def caption_image_payload(
    encoder: Encoder, images: Sequence[Image.Image], *, max_pixels: int, max_aspect_ratio: float
) -> VisionPayload:
    """An item's decoded images (those the caption spec selects, in order) through the
    captioner's processor with its prompt. Each image first passes the size guard on the size it
    takes inside the processor (:func:`~itemlens.extractors.images.check_preprocessed_size`)."""
    from itemlens.extractors.images import check_preprocessed_size

    for image in images:
        check_preprocessed_size(image.size, encoder, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    return encoder.prepare_images(images)


def caption_video_payload(data: bytes, encoder: Encoder, *, max_pixels: int, max_aspect_ratio: float) -> VisionPayload:
    """A video's sampled frames (``frames``, ``every_seconds``, as for every video feature) with
    their times through the captioner's processor: natively, or the grid of the frames for an
    image-only model. The size guard applies to the frames (native) or to the grid."""
    from itemlens.extractors.encoders.caption_inputs import VideoClip
    from itemlens.extractors.images import check_preprocessed_size
    from itemlens.extractors.video import read_video_sample

    sample = read_video_sample(data, encoder.spec.input, max_pixels=max_pixels)
    clip = VideoClip(sample.frames, sample.times, duration=sample.duration)
    if encoder.inputs.video == "native":
        height, width = sample.frames.shape[1:3]
        check_preprocessed_size(
            (width, height), _FrameSize(encoder), max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio
        )
    else:  # the grid frame_grid makes: ceil(sqrt(F)) columns
        count, height, width = sample.frames.shape[:3]
        columns = math.ceil(math.sqrt(count))
        check_preprocessed_size(
            (columns * width, math.ceil(count / columns) * height),
            encoder,
            max_pixels=max_pixels,
            max_aspect_ratio=max_aspect_ratio,
        )
    return encoder.prepare_video(clip)


class _FrameSize:
    """The captioner as the size guard sees it for a video frame (its video processor's resize)."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    def preprocessed_size(self, width: int, height: int) -> tuple[int, int] | None:
        return self.encoder.frame_size(width, height)


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
        part = vectors[start : start + len(item)]
        start += len(item)
        out.append(normalized(part.mean(axis=0), encoder.spec) if encoder.spec.pooling == "mean" else part)
    return out


def caption_payload_items(encoder: Encoder, payloads: Sequence[VisionPayload]) -> list[Caption]:
    """One caption per prepared item (its text, tokens and counts), in their order: batched by
    vision tokens under the captioner's token budget, generated by its ``generate`` method."""
    return encoder.caption(payloads)


def encode_audio_items(encoder: Encoder, waveforms: list[np.ndarray]) -> list[np.ndarray]:
    """The windows of several clips in one encoder call; each clip's window vectors pooled by
    window length, then normalized."""
    from itemlens.extractors.audio import audio_windows, pool_windows

    fmt = encoder.audio_format()
    windows = [audio_windows(waveform, fmt) for waveform in waveforms]
    vectors = encoder.encode_audio([w for ws in windows for w in ws])
    out, start = [], 0
    for ws in windows:
        part = vectors[start : start + len(ws)]
        start += len(ws)
        out.append(normalized(pool_windows(part, [w.shape[-1] for w in ws]), encoder.spec))
    return out
