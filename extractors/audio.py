"""Decoding catalog audio for an audio encoder: PyAV to decode, torchaudio to resample.

:func:`decode_audio` turns a file's bytes (an audio file, or a video whose first audio track
is used) into float32 ``[channels, samples]`` at the model's rate and layout
(:class:`~itemlens.extractors.base.AudioFormat`):

* channels are mixed first, at the source rate: mono is the mean of the source channels; a
  mono source for a multichannel model is duplicated; any other change of layout (5.1 to
  stereo) is FFmpeg's standard downmix (libswresample through PyAV);
* the rate is changed with torchaudio's sinc resampler (``torchaudio.transforms.Resample``,
  its defaults), **streamed**: the audio is decoded and resampled a block at a time, each
  block with enough real neighbouring samples that the result equals resampling the whole
  signal at once (to float rounding). Memory is the output at the model's rate plus a block,
  never the whole source at its own rate and channel count (a 10-minute 48 kHz stereo file
  would be 230 MB as float32; for a 16 kHz mono model the output is 38 MB).

What counts as a bad file, each an ``ItemError("decode", reason)``:

* not a media file PyAV can open (corrupt, or an MP4 cut before its index) -> "not a readable
  audio or video file";
* no audio stream (a silent video) -> "no audio track";
* the decoder fails part way (truncated FLAC, damaged AAC/MP3 frames) -> "truncated or
  corrupt audio after N s". The part decoded so far is *not* kept: an embedding of an
  unknown fraction of the item would be stored as if it were the item.
* a file that simply ends early without a decoder error (WAV, Ogg and MP3 cut at a packet
  boundary look exactly like shorter files) is decoded as the shorter clip; the durations
  containers declare are estimates for some formats (MP3 without a VBR header), so they are
  not used to second-guess the decoder;
* nothing decoded -> "no audio samples"; NaN or infinite samples -> "not finite".

:func:`audio_windows` and :func:`pool_windows` cut a long clip into the model's windows and
pool the windows' vectors back into one per item. Nothing here imports torch at import time.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence

import numpy as np

from itemlens.extractors.base import AudioFormat, ItemError

#: torchaudio.transforms.Resample's defaults, spelled out: both the streaming resampler and
#: the whole-signal reference it must equal use exactly these.
RESAMPLE_OPTIONS = dict(resampling_method="sinc_interp_hann", lowpass_filter_width=6, rolloff=0.99)

#: source samples resampled per step (rounded up to the resampler's period): about 1 s
_BLOCK_SECONDS = 1.0
#: longest output preallocated from a declared duration (a damaged header can claim days);
#: a longer clip grows its buffer as it goes
_MAX_PREALLOCATED_SECONDS = 3600
#: largest sinc filter bank torchaudio may build (float32 values); only pairs of rates with a
#: tiny common factor (e.g. 44,101 Hz to 16 kHz) need more
_MAX_KERNEL_VALUES = 1 << 24


def decode_audio(data: bytes, fmt: AudioFormat, *, max_seconds: float | None = None) -> np.ndarray:
    """Decode ``data`` (an audio file, or a video with an audio track) to float32
    ``[fmt.channels, samples]`` at ``fmt.sample_rate``; see the module docstring for mixing,
    resampling and errors. ``max_seconds`` keeps only the start: the result is the resampling
    of the first ``ceil(max_seconds * source_rate)`` source samples."""
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except Exception as exc:  # any failure to open is this item's problem
        raise ItemError("decode", f"not a readable audio or video file ({_describe(exc)})") from None
    with container:
        if not container.streams.audio:
            kinds = [s.type for s in container.streams]
            has = ", ".join(f"{kinds.count(k)} {k} stream(s)" for k in sorted(set(kinds))) or "no streams"
            raise ItemError("decode", f"no audio track (the file has {has})")
        stream = container.streams.audio[0]
        return _decode_stream(container, stream, fmt, max_seconds)


def _decode_stream(container, stream, fmt: AudioFormat, max_seconds: float | None) -> np.ndarray:
    resampler: StreamingResampler | None = None
    source_rate = source_channels = 0
    limit: int | None = None
    decoded = 0
    try:
        for frame in _frames(container, stream, fmt.channels):
            if frame.samples == 0:
                continue
            samples = _to_float(frame)
            if resampler is None:
                source_rate, source_channels = frame.sample_rate, samples.shape[0]
                if max_seconds is not None:
                    limit = max(1, math.ceil(max_seconds * source_rate))
                expected = _declared_samples(container, stream, source_rate)
                if limit is not None:
                    expected = limit if expected is None else min(expected, limit)
                resampler = StreamingResampler(source_rate, fmt.sample_rate, fmt.channels, expected_samples=expected)
            elif frame.sample_rate != source_rate or samples.shape[0] != source_channels:
                raise ItemError(
                    "decode",
                    f"the audio format changes mid-stream ({source_rate} Hz x "
                    f"{source_channels} -> {frame.sample_rate} Hz x {samples.shape[0]})",
                )
            if limit is not None:
                samples = samples[:, : limit - decoded]
            resampler.push(mix_channels(samples, fmt.channels))
            decoded += samples.shape[1]
            if limit is not None and decoded >= limit:
                break
    except ItemError:
        raise
    except Exception as exc:  # a decoder error part way: truncated or damaged data
        seconds = decoded / source_rate if source_rate else 0.0
        raise ItemError("decode", f"truncated or corrupt audio after {seconds:.1f} s ({_describe(exc)})") from None
    if resampler is None or decoded == 0:
        raise ItemError("decode", "no audio samples (the audio track decodes to nothing)")
    waveform = resampler.finish()
    if not np.isfinite(waveform).all():
        raise ItemError("decode", "audio samples are not finite (NaN or infinity in the file)")
    return waveform


def _declared_samples(container, stream, rate: int) -> int | None:
    """How many samples the container says the stream has (an estimate; None if unknown)."""
    if stream.duration and stream.time_base:
        return int(stream.duration * stream.time_base * rate)
    if container.duration:
        import av

        return int(container.duration / av.time_base * rate)
    return None


def _frames(container, stream, channels: int) -> Iterator:
    """The stream's decoded frames, passed through FFmpeg's downmix (or upmix) when neither
    :func:`mix_channels` rule applies: the output is not mono, the source not mono, and
    their channel counts differ (5.1 for a stereo model)."""
    import av

    downmix = None
    for frame in container.decode(stream):
        source = frame.layout.nb_channels
        if downmix is None and source not in (1, channels) and channels != 1:
            # "<n>c" is FFmpeg's default layout with n channels (2c: stereo)
            downmix = av.AudioResampler(format="fltp", layout=f"{channels}c", rate=frame.sample_rate)
        yield from downmix.resample(frame) if downmix is not None else (frame,)
    if downmix is not None:
        yield from downmix.resample(None)


def _to_float(frame) -> np.ndarray:
    """An audio frame as float32 [channels, samples] in [-1, 1] (integer formats scaled by
    their full range, unsigned 8-bit centred)."""
    array = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: one row, channels interleaved
        array = array.reshape(-1, frame.layout.nb_channels).T
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 128.0
    if array.dtype.kind == "i":
        return array.astype(np.float32) / float(2 ** (8 * array.dtype.itemsize - 1))
    return array.astype(np.float32, copy=False)


def mix_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """[source_channels, n] -> [channels, n]: mono is the mean of the source channels; a mono
    source is duplicated; a matching layout is kept. (Other changes of layout happen in
    FFmpeg before this, see :func:`_frames`.)"""
    source = samples.shape[0]
    if source == channels:
        return samples
    if channels == 1:
        return samples.mean(axis=0, keepdims=True, dtype=np.float32)
    if source == 1:
        return np.repeat(samples, channels, axis=0)
    raise ValueError(f"cannot mix {source} channels to {channels} here")


class OutputBuffer:
    """Samples [channels, n] appended into one preallocated array rather than collected in a
    list and concatenated at the end, which would hold the output twice at the peak.

    The capacity comes from the duration the container declares; an estimate that is too
    high costs only address space (pages never written are never resident), one that is too
    low is grown by half as often as needed.
    """

    def __init__(self, channels: int, capacity: int):
        self.array = np.empty((channels, max(capacity, 1)), np.float32)
        self.length = 0

    def append(self, samples: np.ndarray) -> None:
        end = self.length + samples.shape[1]
        if end > self.array.shape[1]:
            grown = np.empty((self.array.shape[0], max(end, self.array.shape[1] * 3 // 2)), np.float32)
            grown[:, : self.length] = self.array[:, : self.length]
            self.array = grown
        self.array[:, self.length : end] = samples
        self.length = end

    def result(self) -> np.ndarray:
        """The samples as a C-contiguous array of exactly their length."""
        array, self.array = self.array, np.empty((self.array.shape[0], 0), np.float32)
        if array.shape[0] == 1:
            # one row: the first `length` values of the flat buffer are the samples, so the
            # buffer can be shrunk in place (no other references to it exist)
            array.resize((1, self.length), refcheck=False)
            return array
        return np.ascontiguousarray(array[:, : self.length])


class StreamingResampler:
    """torchaudio's sinc resampling, a block at a time, equal to resampling the whole signal.

    torchaudio resamples in periods: with ``g = gcd(source, target)``, every ``o = source / g``
    input samples give ``n = target / g`` output samples, and the outputs of one period read
    the inputs within ``width`` samples of it (zeros beyond the signal's ends). So a block
    that starts and ends on period boundaries, resampled together with ``context`` (>= width,
    a whole number of periods) real samples on each side, gives exactly the whole signal's
    outputs for that block once the context's outputs are cut off. The first block has no
    left neighbours and the last none on the right: there zeros play the part of the
    signal's ends, as they do for the whole signal.

    ``expected_samples`` (source samples, an estimate) sizes the output buffer.
    """

    def __init__(
        self,
        source_rate: int,
        target_rate: int,
        channels: int,
        *,
        expected_samples: int | None = None,
        block_seconds: float = _BLOCK_SECONDS,
    ):
        self.source_rate, self.target_rate, self.channels = int(source_rate), int(target_rate), channels
        self.identity = self.source_rate == self.target_rate
        expected = min(
            expected_samples if expected_samples is not None else 30 * self.source_rate,
            _MAX_PREALLOCATED_SECONDS * self.source_rate,
        )
        self._out = OutputBuffer(channels, -(-expected * self.target_rate // self.source_rate) + self.target_rate)
        self._total_in = 0
        # source samples not resampled yet, after `_left` samples of already-resampled context
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._left = 0
        if self.identity:
            return
        g = math.gcd(self.source_rate, self.target_rate)
        self.period_in, self.period_out = self.source_rate // g, self.target_rate // g
        # torchaudio's filter half-width, in source samples (as in _get_sinc_resample_kernel)
        width = math.ceil(
            RESAMPLE_OPTIONS["lowpass_filter_width"]
            * self.period_in
            / (min(self.period_in, self.period_out) * RESAMPLE_OPTIONS["rolloff"])
        )
        if self.period_out * (2 * width + self.period_in) > _MAX_KERNEL_VALUES:
            raise ItemError(
                "decode",
                f"cannot resample {self.source_rate} Hz to {self.target_rate} Hz: the rates "
                "share too small a common factor for an exact resampling filter",
            )
        import torchaudio

        self._resample = torchaudio.transforms.Resample(self.source_rate, self.target_rate, **RESAMPLE_OPTIONS)
        self.context_len = self._whole_periods(max(width, getattr(self._resample, "width", width)))
        self.block_len = max(self.context_len, self._whole_periods(round(block_seconds * self.source_rate)))

    def _whole_periods(self, samples: int) -> int:
        return -(-samples // self.period_in) * self.period_in

    def push(self, samples: np.ndarray) -> None:
        """Add source samples [channels, n] (already mixed to the output layout)."""
        if samples.shape[1] == 0:
            return
        self._total_in += samples.shape[1]
        if self.identity:
            self._out.append(samples)
            return
        self._buffer.append(samples)
        self._buffered += samples.shape[1]
        # a block is ready once its right-hand context has arrived too
        if self._buffered - self._left < self.block_len + self.context_len:
            return
        buffer, left = np.concatenate(self._buffer, axis=1), self._left
        while buffer.shape[1] - left >= self.block_len + self.context_len:
            end = left + self.block_len
            self._emit(
                buffer[:, : end + self.context_len], left, keep=self.block_len // self.period_in * self.period_out
            )
            buffer, left = buffer[:, end - self.context_len :], self.context_len
        buffer = buffer.copy()  # do not keep the whole concatenation alive
        self._buffer, self._buffered, self._left = [buffer], buffer.shape[1], left

    def _emit(self, signal: np.ndarray, left: int, keep: int) -> None:
        """Resample ``signal`` = [left context | block | right context] and keep the block's
        ``keep`` output samples."""
        import torch

        with torch.inference_mode():
            out = self._resample(torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))).numpy()
        first = left // self.period_in * self.period_out
        self._out.append(out[:, first : first + keep])

    def finish(self) -> np.ndarray:
        """The resampled signal, float32 [channels, ceil(n * target / source)]."""
        if not self.identity and self._buffered > self._left:
            # The end: zeros after the signal, as for the whole signal. The length is counted
            # in integers; torchaudio's own count goes through float32 and can be one short.
            tail = np.concatenate(self._buffer, axis=1)
            zeros = np.zeros((self.channels, self.context_len + self.period_in), np.float32)
            length = -(-self._total_in * self.period_out // self.period_in)
            self._emit(np.concatenate([tail, zeros], axis=1), self._left, keep=length - self._out.length)
        self._buffer, self._buffered, self._left = [], 0, 0
        return self._out.result()


def resample_whole(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """The reference :class:`StreamingResampler` equals: torchaudio on the whole signal at once,
    [channels, n] -> [channels, ceil(n * target / source)]. (``torchaudio.functional.resample``
    computes that length in float32, so for some lengths it returns one sample less; here the
    signal gets trailing zeros, which it pads with anyway, and the exact length is kept.)"""
    import torch
    import torchaudio

    if source_rate == target_rate:
        return samples.astype(np.float32)
    length = -(-samples.shape[-1] * target_rate // source_rate)
    period_in = source_rate // math.gcd(source_rate, target_rate)
    padded = np.concatenate([samples, np.zeros((*samples.shape[:-1], 2 * period_in), samples.dtype)], axis=-1)
    with torch.inference_mode():
        out = torchaudio.functional.resample(
            torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)),
            source_rate,
            target_rate,
            **RESAMPLE_OPTIONS,
        ).numpy()
    return out[..., :length]


def audio_windows(waveform: np.ndarray, fmt: AudioFormat) -> list[np.ndarray]:
    """Consecutive, non-overlapping windows of ``fmt.window_samples`` samples (views of
    ``waveform`` [channels, samples]); the last one is shorter when the clip does not divide
    evenly, and none is empty."""
    total = waveform.shape[-1]
    if total == 0:
        raise ItemError("decode", "no audio samples")
    size = max(1, fmt.window_samples)
    return [waveform[..., start : start + size] for start in range(0, total, size)]


def pool_windows(vectors: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """One vector for a clip from its windows' vectors [n, dim]: their mean weighted by each
    window's length in samples, so the vector stands for every second of the clip equally
    (a 3 s last window counts a tenth of a full 30 s one). Float32 [dim], not normalized."""
    vectors = np.asarray(vectors, dtype=np.float32)
    weights = np.asarray(lengths, dtype=np.float64)
    if vectors.ndim != 2 or len(weights) != len(vectors) or len(vectors) == 0:
        raise ValueError(f"pool_windows: {len(weights)} lengths for vectors of shape {vectors.shape}")
    if (weights <= 0).any():
        raise ValueError("pool_windows: window lengths must be positive")
    return ((weights / weights.sum()) @ vectors.astype(np.float64)).astype(np.float32)


def _describe(exc: BaseException) -> str:
    """A short reason from a PyAV/FFmpeg error (its message without errno and file name)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
