"""Audio: decoding with PyAV, streaming resampling with torchaudio, and the `audio` encoder.

Test audio is generated here with PyAV (tones in WAV, FLAC, AAC-in-MP4, Opus-in-Ogg and MP3 at
8 to 48 kHz, mono to 5.1; videos with and without an AAC track; damaged files), next to two
real Ogg Vorbis recordings. Models are tiny seeded stand-ins (wav2vec2, HuBERT, CLAP) saved
with save_pretrained and loaded back through the encoder's real loading path. No Ray.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from itemlens.errors import ConfigError, WeightsNotFoundError
from itemlens.extractors.audio import (
    StreamingResampler,
    audio_windows,
    decode_audio,
    pool_windows,
    resample_whole,
)
from itemlens.extractors.base import AudioFormat, ItemError
from itemlens.extractors.spec import FeatureSpec

SPEECH = Path("/work/shared/data/audio/198-209-0000.ogg")  # 13.9 s, 22,050 Hz mono
ROBIN = Path("/work/shared/data/audio/456440__inspectorj__bird-whistling-robin-single-13.ogg")  # 2.7 s
ROOT = Path(__file__).resolve().parent.parent

MONO16 = AudioFormat(16000)  # wav2vec2 / HuBERT
MONO48 = AudioFormat(48000, window_seconds=10.0)  # CLAP
STEREO48 = AudioFormat(48000, channels=2)


# -- generated media ----------------------------------------------------------------------------


def tone(rate: int, seconds: float, freq: float, channels: int = 1, start: int = 0) -> np.ndarray:
    """float32 [channels, n]: the same sine in every channel, at a different level in each."""
    t = np.arange(start, start + int(round(seconds * rate))) / rate
    wave = np.sin(2 * np.pi * freq * t)
    return np.stack([(0.5 - 0.05 * c) * wave for c in range(channels)]).astype(np.float32)


def encode_audio_file(
    container: str,
    codec: str,
    rate: int,
    layout: str,
    seconds: float,
    freq: float = 1000.0,
    *,
    bit_rate: int | None = None,
    options: dict | None = None,
    signal=None,
) -> bytes:
    """An audio file in memory: ``signal(start, n)`` -> [channels, n] (default: a tone), fed
    in one-second frames."""
    import av

    channels = av.AudioLayout(layout).nb_channels
    signal = signal or (lambda start, n: tone(rate, n / rate, freq, channels, start))
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout, options=options or {})
        if bit_rate:
            stream.bit_rate = bit_rate
        total = int(round(seconds * rate))
        for start in range(0, total, rate):
            samples = np.ascontiguousarray(signal(start, min(rate, total - start)), dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def encode_video_file(with_audio: bool, seconds: float = 1.0, fps: int = 10, freq: float = 440.0) -> bytes:
    """An H.264 MP4 (moving grey frames), with a 44.1 kHz stereo AAC tone track or none."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        audio = out.add_stream("aac", rate=44100, layout="stereo") if with_audio else None
        for i in range(int(seconds * fps)):
            pixels = np.full((48, 64, 3), (i * 20) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            frame = av.AudioFrame.from_ndarray(tone(44100, seconds, freq, 2), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 44100, 0
            out.mux(audio.encode(frame))
            out.mux(audio.encode(None))
    return buffer.getvalue()


def dominant_hz(waveform: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return float(np.argmax(spectrum)) * rate / len(waveform)


# -- decoding: formats, rates, layouts ----------------------------------------------------------

FORMATS = [  # container, codec, rate, layout, lossless
    ("wav", "pcm_s16le", 8000, "mono", True),
    ("wav", "pcm_f32le", 22050, "stereo", True),
    ("flac", "flac", 44100, "stereo", True),
    ("flac", "flac", 48000, "5.1", True),
    ("mp4", "aac", 22050, "mono", False),
    ("mp4", "aac", 44100, "5.1", False),
    ("ogg", "libopus", 48000, "stereo", False),
    ("ogg", "libopus", 48000, "5.1", False),
    ("mp3", "libmp3lame", 44100, "stereo", False),
]


@pytest.mark.parametrize(
    "container,codec,rate,layout,lossless", FORMATS, ids=[f"{f[1]}-{f[2]}-{f[3]}" for f in FORMATS]
)
def test_any_rate_and_layout_ends_at_the_model_rate_and_layout(container, codec, rate, layout, lossless):
    seconds, freq = 1.5, 1000.0
    data = encode_audio_file(container, codec, rate, layout, seconds, freq)
    for fmt in (MONO16, MONO48, STEREO48):
        waveform = decode_audio(data, fmt)
        assert waveform.dtype == np.float32 and waveform.ndim == 2
        assert waveform.shape[0] == fmt.channels
        if lossless:  # exactly ceil(n * target / source) samples
            assert waveform.shape[1] == -(-int(seconds * rate) * fmt.sample_rate // rate)
        else:  # lossy codecs add a little encoder delay (AAC: 1024 samples of priming)
            assert abs(waveform.shape[1] / fmt.sample_rate - seconds) < 0.1
        for channel in waveform:
            assert dominant_hz(channel, fmt.sample_rate) == pytest.approx(freq, abs=2.0)
            assert 0.2 < np.abs(channel).max() < 1.5  # the tone, not silence or noise


def test_mono_is_the_mean_of_the_channels_and_mono_is_duplicated_for_stereo():
    rate = 16000
    left, right = tone(rate, 1.0, 440.0), tone(rate, 1.0, 440.0) * 0 + 0.25
    data = encode_audio_file(
        "wav", "pcm_f32le", rate, "stereo", 1.0, signal=lambda s, n: np.concatenate([left, right])[:, s : s + n]
    )
    mono = decode_audio(data, AudioFormat(rate))
    np.testing.assert_allclose(mono[0], (left[0] + right[0]) / 2, atol=1e-6)
    stereo = decode_audio(
        encode_audio_file("wav", "pcm_f32le", rate, "mono", 1.0, freq=440.0), AudioFormat(rate, channels=2)
    )
    np.testing.assert_array_equal(stereo[0], stereo[1])
    np.testing.assert_allclose(stereo[0], tone(rate, 1.0, 440.0)[0], atol=1e-6)


# -- streaming resampling ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "source,target",
    [(8000, 16000), (22050, 16000), (44100, 16000), (48000, 16000), (22050, 48000), (44100, 48000), (16000, 16000)],
)
def test_streaming_resampling_equals_resampling_the_whole_signal(source, target):
    import torch
    import torchaudio

    rng = np.random.default_rng(source + target)
    for length in (1, 7, 1000, 3 * source + 17):
        signal = (0.3 * rng.standard_normal((2, length))).astype(np.float32)
        resampler = StreamingResampler(source, target, 2)
        pos = 0
        while pos < length:  # frames of random sizes, as decoders deliver them
            size = int(rng.integers(1, 3000))
            resampler.push(signal[:, pos : pos + size])
            pos += size
        streamed = resampler.finish()
        whole = resample_whole(signal, source, target)
        assert streamed.shape == whole.shape == (2, -(-length * target // source))
        np.testing.assert_allclose(streamed, whole, atol=1e-4, rtol=0)
        # ... and the reference is torchaudio's own whole-signal call (which may count its
        # length one short: it computes ceil(n * target / source) in float32)
        plain = torchaudio.functional.resample(torch.from_numpy(signal), source, target).numpy()
        assert whole.shape[1] - plain.shape[1] in (0, 1)
        np.testing.assert_allclose(whole[:, : plain.shape[1]], plain, atol=1e-5, rtol=0)


def test_decode_resamples_like_torchaudio_on_the_whole_mixed_signal():
    rate, seconds = 44100, 4.3
    rng = np.random.default_rng(1)
    signal = (0.2 * rng.standard_normal((2, int(rate * seconds)))).astype(np.float32)
    data = encode_audio_file("wav", "pcm_f32le", rate, "stereo", seconds, signal=lambda s, n: signal[:, s : s + n])
    decoded = decode_audio(data, MONO16)
    expected = resample_whole(signal.mean(axis=0, keepdims=True), rate, 16000)
    assert decoded.shape == expected.shape
    np.testing.assert_allclose(decoded, expected, atol=1e-4, rtol=0)
    first_second = decode_audio(data, MONO16, max_seconds=1.0)
    assert first_second.shape == (1, 16000)
    np.testing.assert_allclose(
        first_second, resample_whole(signal[:, :rate].mean(axis=0, keepdims=True), rate, 16000), atol=1e-4, rtol=0
    )


# -- real recordings, videos, damaged files -------------------------------------------------------


@pytest.mark.parametrize("path,seconds", [(SPEECH, 13.9), (ROBIN, 2.7)])
def test_real_ogg_clips_decode(path, seconds):
    data = path.read_bytes()
    for fmt in (MONO16, MONO48):
        waveform = decode_audio(data, fmt)
        assert waveform.shape[0] == 1
        assert waveform.shape[1] / fmt.sample_rate == pytest.approx(seconds, abs=0.05)
        assert 0.05 < np.abs(waveform).max() <= 1.0


def test_a_videos_audio_track_decodes():
    waveform = decode_audio(encode_video_file(with_audio=True, seconds=1.0, freq=440.0), MONO16)
    assert abs(waveform.shape[1] / 16000 - 1.0) < 0.1
    assert dominant_hz(waveform[0], 16000) == pytest.approx(440.0, abs=2.0)


def test_bad_files_are_item_errors_with_a_reason():
    flac = encode_audio_file("flac", "flac", 44100, "stereo", 4.0)
    mp4 = encode_audio_file("mp4", "aac", 44100, "stereo", 2.0)
    cases = {
        "not media": (b"this is not audio at all " * 40, "not a readable audio or video file"),
        "zeros": (bytes(4096), "not a readable audio or video file"),
        # MP4 keeps its index (moov) at the end: cut, it cannot even be opened
        "truncated mp4": (mp4[: len(mp4) // 2], "not a readable audio or video file"),
        # FLAC's decoder fails on the cut frame, part way through
        "truncated flac": (flac[: len(flac) // 2], "truncated or corrupt audio after"),
        "silent video": (encode_video_file(with_audio=False), "no audio track (the file has 1 video stream(s))"),
    }
    for name, (data, reason) in cases.items():
        with pytest.raises(ItemError) as info:
            decode_audio(data, MONO16)
        assert info.value.stage == "decode", name
        assert reason in info.value.reason, (name, info.value.reason)
    with pytest.raises(ItemError) as info:  # it says how far it got: about half of the 4 s
        decode_audio(flac[: len(flac) // 2], MONO16)
    assert 1.0 <= float(info.value.reason.split("after ")[1].split(" s")[0]) <= 2.5, info.value.reason


def test_a_file_cut_between_packets_decodes_as_the_shorter_clip():
    """Documented choice: without a decoder error there is no telling a cut WAV/Ogg from a
    shorter one, so it is decoded as it is."""
    wav = encode_audio_file("wav", "pcm_s16le", 16000, "mono", 2.0)
    waveform = decode_audio(wav[: len(wav) - 2 * 16000], MONO16)  # without its last second
    assert waveform.shape == (1, 16000)


def test_short_clip_decodes():
    data = encode_audio_file("ogg", "libopus", 48000, "stereo", 0.1, freq=1000.0)
    waveform = decode_audio(data, MONO16)
    assert waveform.shape[0] == 1 and 0.09 < waveform.shape[1] / 16000 < 0.12


# -- windows and pooling -----------------------------------------------------------------------


def test_windows_are_consecutive_and_only_the_last_is_shorter():
    fmt = AudioFormat(10, window_seconds=3.0)  # 30-sample windows
    waveform = np.arange(75, dtype=np.float32)[None]
    windows = audio_windows(waveform, fmt)
    assert [w.shape for w in windows] == [(1, 30), (1, 30), (1, 15)]
    np.testing.assert_array_equal(np.concatenate(windows, axis=1), waveform)
    assert [w.shape for w in audio_windows(waveform[:, :30], fmt)] == [(1, 30)]
    assert [w.shape for w in audio_windows(waveform[:, :1], fmt)] == [(1, 1)]
    with pytest.raises(ItemError, match="no audio samples"):
        audio_windows(waveform[:, :0], fmt)


def test_pooling_weights_windows_by_length():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(pool_windows(vectors, [30, 10]), [0.75, 0.25])
    assert pool_windows(vectors, [5, 5]).dtype == np.float32
    with pytest.raises(ValueError):
        pool_windows(vectors, [1])


# -- the 10-minute clip: bounded memory -------------------------------------------------------------

LONG_SECONDS = 600
_MEMORY_PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from itemlens.extractors.audio import decode_audio
    from itemlens.extractors.base import AudioFormat

    source, warmup, out = sys.argv[1:4]
    data = open(source, "rb").read()
    decode_audio(open(warmup, "rb").read(), AudioFormat(16000))   # imports, torch's first allocations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    waveform = decode_audio(data, AudioFormat(16000))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(out, waveform)
    print(before, after)   # KiB on Linux
""")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> dict:
    """A 10-minute 48 kHz stereo Opus file (a tone changing every second, ~5 MB), decoded to
    16 kHz mono in a subprocess that reports its peak memory."""
    folder = tmp_path_factory.mktemp("long-audio")
    source = folder / "ten-minutes.ogg"
    source.write_bytes(
        encode_audio_file(
            "ogg",
            "libopus",
            48000,
            "stereo",
            LONG_SECONDS,
            bit_rate=64000,
            options={"compression_level": "0", "frame_duration": "60"},
            signal=lambda s, n: tone(48000, n / 48000, 220.0 + 20 * (s // 48000 % 30), 2, s),
        )
    )
    decoded = folder / "decoded.npy"
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(source), str(ROBIN), str(decoded)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    before, after = (int(x) for x in result.stdout.split())
    return {"path": source, "waveform": np.load(decoded), "peak_growth": (after - before) * 1024}


def test_ten_minute_clip_decodes_in_bounded_memory(long_clip):
    waveform = long_clip["waveform"]
    assert waveform.shape[0] == 1
    assert abs(waveform.shape[1] / 16000 - LONG_SECONDS) < 0.1
    whole_source = LONG_SECONDS * 48000 * 2 * 4  # 230 MB: the source decoded at once, float32
    output = waveform.nbytes  # 38 MB: 16 kHz mono float32
    # Measured here: the decode raises peak RSS by 48 MiB (the 37 MiB output plus ~12 MiB of
    # blocks, torch and decoder buffers), against 220 MiB for the whole source alone (and more
    # for the usual decode-everything-then-resample). Holding the output twice (a list of
    # blocks concatenated at the end) measures 74 MiB and fails the first bound.
    assert long_clip["peak_growth"] < output + 24 * 2**20, long_clip["peak_growth"]
    assert long_clip["peak_growth"] < whole_source / 2


# -- the encoder ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_models(tmp_path_factory) -> dict[str, str]:
    from itemlens.extractors.standins.audio import write_tiny_clap, write_tiny_hubert, write_tiny_wav2vec2

    folder = tmp_path_factory.mktemp("audio-models")
    return {
        "wav2vec2": str(write_tiny_wav2vec2(folder / "wav2vec2")),
        "hubert": str(write_tiny_hubert(folder / "hubert")),
        "clap": str(write_tiny_clap(folder / "clap")),
    }


def audio_encoder(model: str, **fields):
    from itemlens.extractors.registry import encoder_class

    spec = FeatureSpec(encoder="audio", model=model, input={"audio": "clip"}, **fields)
    return encoder_class("audio")(spec)


@pytest.fixture(scope="module")
def loaded(audio_models) -> dict:
    return {name: audio_encoder(path).load("cpu") for name, path in audio_models.items()}


@pytest.mark.parametrize(
    "family,rate,window,dim", [("wav2vec2", 16000, 30.0, 32), ("hubert", 16000, 30.0, 32), ("clap", 48000, 10.0, 16)]
)
def test_audio_format_comes_from_the_config_without_loading(audio_models, family, rate, window, dim):
    encoder = audio_encoder(audio_models[family])
    encoder.check_weights()
    assert encoder.audio_format() == AudioFormat(rate, 1, window)
    assert not hasattr(encoder, "model")
    assert audio_encoder(audio_models[family], window_seconds=4.0).audio_format().window_seconds == 4.0
    assert audio_encoder(audio_models[family], window_seconds=4.0).fingerprint() != encoder.fingerprint()


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "clap"])
def test_encoder_conformance(audio_models, loaded, family):
    encoder = loaded[family]
    fmt = encoder.audio_format()
    rng = np.random.default_rng(7)
    seconds = [fmt.window_seconds, 3.3, 0.1, 0.01, 7.0, 3.3]
    clips = []  # a different tone in each, with noise
    for i, s in enumerate(seconds):
        clip = tone(fmt.sample_rate, s, 200.0 * (i + 1))
        clips.append((clip + 0.05 * rng.standard_normal(clip.shape)).astype(np.float32))
    together = encoder.encode_audio(clips)
    assert together.shape == (len(clips), encoder.dim) and together.dtype == np.float32
    assert np.isfinite(together).all()
    assert getattr(encoder, "masked", False) == (family == "wav2vec2")  # hubert: equal lengths only
    # a clip's vector does not depend on its batch-mates (different lengths, padding)
    alone = np.stack([encoder.encode_audio([clip])[0] for clip in clips])
    np.testing.assert_allclose(together, alone, atol=1e-4, rtol=0)
    assert not np.allclose(together[1], together[4], atol=1e-3)  # different clips, different vectors
    # deterministic across two loads of the same folder
    again = audio_encoder(audio_models[family]).load("cpu").encode_audio(clips[:3])
    np.testing.assert_allclose(again, together[:3], atol=1e-5, rtol=0)
    assert encoder.encode_audio([]).shape == (0, encoder.dim)
    with pytest.raises(ValueError, match="one window"):
        encoder.encode_audio([np.zeros((1, fmt.window_samples + 1), np.float32)])
    with pytest.raises(ValueError, match=r"\[1, samples\]"):
        encoder.encode_audio([np.zeros((2, 100), np.float32)])


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch, inside WavLM
@pytest.mark.parametrize("model_type", ["wavlm", "data2vec-audio", "wav2vec2-conformer"])
def test_other_speech_encoders_are_batch_invariant(tmp_path, model_type):
    """wavlm takes padded batches with a mask; data2vec-audio and the conformer would carry
    the padding into real frames, so they are batched by equal length."""
    from itemlens.extractors.standins.audio import write_tiny_speech_encoder

    encoder = audio_encoder(str(write_tiny_speech_encoder(tmp_path / model_type, model_type))).load("cpu")
    assert encoder.masked == (model_type == "wavlm")
    rng = np.random.default_rng(5)
    clips = [(0.1 * rng.standard_normal((1, int(s * 16000)))).astype(np.float32) for s in (4.0, 1.3, 0.02, 4.0)]
    together = encoder.encode_audio(clips)
    assert together.shape == (4, 32) and together.dtype == np.float32
    np.testing.assert_allclose(together, np.stack([encoder.encode_audio([c])[0] for c in clips]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["wav2vec2", "clap"])
def test_a_long_clip_is_several_windows_pooled(audio_models, family):
    encoder = audio_encoder(audio_models[family], window_seconds=5.0).load("cpu")
    fmt = encoder.audio_format()
    waveform = decode_audio(SPEECH.read_bytes(), fmt)
    windows = audio_windows(waveform, fmt)
    assert [round(w.shape[1] / fmt.sample_rate, 1) for w in windows] == [5.0, 5.0, 3.9]
    vectors = encoder.encode_audio(windows)
    item = encoder.pool_item(vectors, [w.shape[1] for w in windows])
    expected = (vectors * np.array([w.shape[1] for w in windows], np.float64)[:, None]).sum(axis=0)
    np.testing.assert_allclose(item, expected / np.linalg.norm(expected), atol=1e-6)
    assert item.dtype == np.float32 and np.linalg.norm(item) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)  # windows differ: pooling is not a no-op


def test_short_and_ten_minute_clips_encode(loaded, long_clip):
    encoder = loaded["wav2vec2"]
    fmt = encoder.audio_format()
    short = decode_audio(encode_audio_file("ogg", "libopus", 48000, "stereo", 0.1), fmt)
    windows = audio_windows(long_clip["waveform"], fmt)
    assert len(windows) == LONG_SECONDS // 30
    vectors = encoder.encode_audio([short, *windows])
    assert vectors.shape == (1 + len(windows), encoder.dim) and np.isfinite(vectors).all()
    item = encoder.pool_item(vectors[1:], [w.shape[1] for w in windows])
    assert np.linalg.norm(item) == pytest.approx(1.0, abs=1e-5)
    clap = loaded["clap"]
    short48 = decode_audio(encode_audio_file("ogg", "libopus", 48000, "stereo", 0.1), clap.audio_format())
    assert clap.encode_audio([short48]).shape == (1, clap.dim)


# -- configuration errors ------------------------------------------------------------------------


def test_missing_or_incomplete_model_folders(tmp_path, audio_models):
    missing = audio_encoder(str(tmp_path / "no-such-model"))
    for call in (missing.check_weights, missing.audio_format, missing.load):
        with pytest.raises(WeightsNotFoundError, match="no-such-model"):
            call()
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text(Path(audio_models["wav2vec2"], "config.json").read_text())
    with pytest.raises(WeightsNotFoundError, match="preprocessor_config.json"):
        audio_encoder(str(incomplete)).check_weights()
    with pytest.raises(WeightsNotFoundError, match="not found"):  # a hub id, offline, not cached
        audio_encoder("someone/no-such-audio-model").check_weights()


def test_configuration_errors(tmp_path, audio_models):
    # what the audio spec does not have is an error of the spec itself, naming the field
    with pytest.raises(ValidationError, match="pretrained"):
        audio_encoder(audio_models["clap"], pretrained="laion")
    with pytest.raises(ValidationError, match="prompt"):
        audio_encoder(audio_models["clap"], prompt="describe")
    with pytest.raises(ValidationError, match="pooling"):
        audio_encoder(audio_models["clap"], pooling="per_frame")
    with pytest.raises(ConfigError, match="longer than CLAP's 10 s"):
        audio_encoder(audio_models["clap"], window_seconds=12.0).check_weights()
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (other / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="does not support model type 'bert'"):
        audio_encoder(str(other)).check_weights()


def test_modules_import_without_torch():
    code = (
        "import sys; import itemlens.extractors.audio, itemlens.extractors.encoders.audio, "
        "itemlens.extractors.standins.audio; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["wav2vec2", "clap"])
def test_mixed_precision_on_cuda_matches_cpu(audio_models, loaded, family):
    rng = np.random.default_rng(3)
    fmt = loaded[family].audio_format()
    clips = [(0.1 * rng.standard_normal((1, int(s * fmt.sample_rate)))).astype(np.float32) for s in (5.0, 1.2)]
    cpu = loaded[family].encode_audio(clips)
    gpu = audio_encoder(audio_models[family]).load("cuda").encode_audio(clips)
    cosine = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert (cosine > 0.99).all(), cosine
