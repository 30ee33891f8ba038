"""Generated videos for tests: good ones (constant or variable frame rate, odd sizes, with or
without audio) and every kind of bad one.

Each frame shows its own frame number, so a test can tell which frame a reader returned even
after lossy coding: the picture is a grid of ``BITS`` blocks, block ``b`` red when bit ``b`` of
the frame number is set and blue when it is not (read back with :func:`frame_number`). Red
against blue also catches a reader that returns BGR instead of RGB: every bit would flip.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from .conftest import EXAMPLE_CATALOG

#: frame numbers up to 2**BITS - 1 can be drawn
BITS = 12
GRID = (3, 4)  # rows x columns of bit blocks; rows * columns == BITS
ONE = (230, 20, 20)  # red: bit set
ZERO = (20, 20, 230)  # blue: bit clear
#: a real JPEG, the "image file named .mp4" bad input
REAL_JPEG = EXAMPLE_CATALOG.parent / "images" / "B074M5HPBD" / "9ea6992d.jpg"


def frame_pixels(k: int, width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3] RGB picture of frame number ``k``."""
    if not 0 <= k < 2**BITS:
        raise ValueError(f"frame number {k} does not fit in {BITS} bits")
    rows, cols = GRID
    picture = np.empty((height, width, 3), np.uint8)
    for b in range(BITS):
        r, c = divmod(b, cols)
        ys, xs = _block(r, c, width, height)
        picture[ys, xs] = ONE if (k >> b) & 1 else ZERO
    return picture


def frame_number(frame: np.ndarray) -> int:
    """The frame number drawn by :func:`frame_pixels`, read from a decoded RGB frame
    (each block's inner half only, away from edges that coding blurs)."""
    height, width = frame.shape[:2]
    rows, cols = GRID
    k = 0
    for b in range(BITS):
        r, c = divmod(b, cols)
        ys, xs = _block(r, c, width, height, inner=True)
        block = frame[ys, xs].reshape(-1, 3).astype(np.int64).mean(axis=0)
        if block[0] > block[2]:
            k |= 1 << b
    return k


def _block(r: int, c: int, width: int, height: int, inner: bool = False) -> tuple[slice, slice]:
    rows, cols = GRID
    y0, y1 = r * height // rows, (r + 1) * height // rows
    x0, x1 = c * width // cols, (c + 1) * width // cols
    if inner:
        dy, dx = (y1 - y0) // 4, (x1 - x0) // 4
        y0, y1, x0, x1 = y0 + dy, y1 - dy, x0 + dx, x1 - dx
    return slice(y0, y1), slice(x0, x1)


def vfr_starts_ms(n_frames: int, fps: float) -> list[int]:
    """Irregular frame start times (ms) for a variable-frame-rate video: frame gaps cycle
    through 0.5x, 1x, 2.5x and 1x the nominal frame duration (a "slow" stretch every
    four frames, as a screen recording or a phone camera in low light writes)."""
    base = 1000.0 / fps
    gaps = [0.5, 1.0, 2.5, 1.0]
    starts, t = [], 0.0
    for k in range(n_frames):
        starts.append(int(round(t)))
        t += gaps[k % len(gaps)] * base
    return starts


def write_video(
    path: str | Path,
    *,
    n_frames: int = 30,
    width: int = 64,
    height: int = 48,
    fps: int = 10,
    vfr: bool = False,
    audio: bool = False,
    codec: str = "libx264",
    faststart: bool = False,
    gop: int | None = None,
    rotation: int = 0,
) -> Path:
    """Write a video whose frame ``k`` shows the number ``k`` (see :func:`frame_number`).

    * ``libx264``: near-lossless in yuv444p, which also allows odd sizes (x264 needs even
      sizes only for 4:2:0), with B-frames; other codecs use yuv420p (even sizes only).
    * ``vfr=True``: frame start times from :func:`vfr_starts_ms` on a 1/1000 s time base;
      otherwise frame ``k`` starts at ``k / fps``.
    * ``audio=True``: an AAC track, a 440 Hz sine tone as long as the video.
    * ``faststart=True``: the mp4 index (moov) goes before the frame data, as web videos have
      it; a truncated copy then still opens and lists frames it does not contain.
    * ``gop``: a keyframe every ``gop`` frames (default: the encoder's, one keyframe here);
      short GOPs make a reader seek.
    * ``rotation``: a display rotation flag, degrees counter-clockwise (as phones write
      portrait video: landscape pixels plus a 90 or 270 degree flag).

    The container follows the file name (.mp4, .mkv, .ts, .avi, .webm ...).
    """
    import av

    path = Path(path)
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=container_options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        options: dict[str, str] = {}
        if codec == "libx264":
            stream.pix_fmt = "yuv444p"
            # yuv444p: no chroma subsampling, so odd sizes work and colours stay exact;
            # crf 1: near-lossless (the colour blocks come back exact); two B-frames between
            # P-frames (lossless qp 0 would turn B-frames off), so presentation and decode
            # order differ as in real files
            options = {"crf": "1", "preset": "veryfast", "x264-params": "bframes=2:b-adapt=0"}
        else:
            stream.pix_fmt = "yuv420p"
            if codec == "mpeg4":
                stream.codec_context.qmax = 2  # near-lossless for the colour blocks
            if codec == "libx265":
                options = {"x265-params": "log-level=error"}
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                options.update({"keyint_min": str(gop), "sc_threshold": "0"})
        stream.options = options
        if rotation:
            stream.set_display_rotation(rotation)
        if vfr:
            starts = vfr_starts_ms(n_frames, fps)
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
            # the container's frame rate is only nominal here; pts carry the real timing
        else:
            starts = None
        audio_stream = None
        if audio:
            audio_stream = container.add_stream("aac", rate=16000)
            audio_stream.layout = "mono"
        for k in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_pixels(k, width, height), format="rgb24")
            frame.pts = starts[k] if starts is not None else k
            if starts is not None:
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            seconds = (starts[-1] / 1000 + 1 / fps) if starts is not None else n_frames / fps
            _write_tone(container, audio_stream, seconds)
    return path


def _write_tone(container, stream, seconds: float, hz: float = 440.0) -> None:
    import av

    rate = stream.rate
    total = int(seconds * rate)
    chunk = 1024  # AAC frame size
    for start in range(0, total, chunk):
        t = np.arange(start, min(start + chunk, total)) / rate
        samples = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def video_bytes(*, suffix: str = ".mp4", **kwargs) -> bytes:
    """:func:`write_video` to memory (through a temporary file: the mp4 muxer seeks);
    ``suffix`` picks the container."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return write_video(Path(tmp) / f"v{suffix}", **kwargs).read_bytes()


def write_bad_videos(folder: str | Path) -> dict[str, Path]:
    """name -> file, one per kind of bad video; each name says what a user should get.

    * ``truncated``: the first third of an mp4 whose index (moov) is written last, as
      ffmpeg does by default: the index is missing, nothing can be read;
    * ``truncated_faststart``: the first half of an mp4 with its index first: the file opens
      and lists every frame, but the later frames' data is gone;
    * ``truncated_avi``: the first half of an AVI (its header still counts every frame);
      decord 0.6.0 dies with a segmentation fault on this one;
    * ``corrupt``: random bytes, no container at all;
    * ``image``: a real JPEG named .mp4;
    * ``empty``: 0 bytes;
    * ``text``: a text file named .mp4;
    * ``audio_only``: a valid mp4 holding only an AAC track (no video stream).
    """
    import av

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    real = video_bytes(n_frames=60)
    faststart = video_bytes(n_frames=60, faststart=True)
    avi = video_bytes(n_frames=60, codec="mpeg4", gop=10, suffix=".avi")
    files = {
        "truncated": real[: len(real) // 3],
        "truncated_faststart": faststart[: len(faststart) // 2],
        "truncated_avi": avi[: len(avi) // 2],
        "corrupt": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        "image": REAL_JPEG.read_bytes(),
        "empty": b"",
        "text": b"this is not a video\n" * 20,
    }
    out: dict[str, Path] = {}
    for name, data in files.items():
        out[name] = folder / f"{name}.mp4"
        out[name].write_bytes(data)
    out["audio_only"] = folder / "audio_only.mp4"
    with av.open(str(out["audio_only"]), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        _write_tone(container, stream, 1.0)
    return out


def unfinished_avi(path: str | Path, *, n_frames: int = 60, keep_frames: int = 10) -> Path:
    """An AVI cut short whose header does not count its frames, as a recorder that stopped
    before finishing the file leaves it: a ``n_frames`` mpeg4 AVI cut right after its first
    ``keep_frames`` frame chunks (so no frame is cut in half), with the frame counts in its
    headers (``avih`` total frames, ``strh`` length) set to 0. Nothing says that frames are
    missing, so a reader can only use the frames present (decord 0.6.0 dies with a
    segmentation fault on it)."""
    data = bytearray(video_bytes(n_frames=n_frames, codec="mpeg4", gop=10, suffix=".avi"))
    avih = data.index(b"avih")
    data[avih + 8 + 16 : avih + 8 + 20] = bytes(4)  # MainAVIHeader.dwTotalFrames
    strh = data.index(b"strh")
    data[strh + 8 + 32 : strh + 8 + 36] = bytes(4)  # AVIStreamHeader.dwLength
    # walk the chunks of the 'movi' list: id (4 bytes), size (4, little-endian), data (even)
    pos, frames = data.index(b"movi") + 4, 0
    while frames < keep_frames:
        chunk, size = bytes(data[pos : pos + 4]), int.from_bytes(data[pos + 4 : pos + 8], "little")
        frames += chunk[2:] in (b"dc", b"db")  # a video frame chunk: '00dc'
        pos += 8 + size + (size & 1)
    path = Path(path)
    path.write_bytes(bytes(data[:pos]))
    return path
