"""Video: which frames to sample (:func:`sample_indices`) and decoding them from the bytes of a
video file (:func:`read_video_frames`; :func:`read_video_sample` adds the frames' times and the
video's duration, for captioners that read video natively), on CPU, with PyAV; :func:`frame_grid`
tiles sampled frames into one picture for image captioners.

Frames are numbered in presentation order: frame ``i`` is the ``i``-th of the video stream's
packets sorted by presentation timestamp (the numbering decord uses too). Packets that the
container marks to be discarded (outside an mp4 edit list, e.g. in a trimmed video) are not
frames: a player never shows them.

Why PyAV and not decord: decord 0.6.0 (the current release, with its own FFmpeg 4.1 built in)
kills the process with a segmentation fault on a truncated AVI file, which no check before it
can rule out in general; silently returns the wrong frames from ``get_batch`` on H.264 in
MPEG-TS and on open-GOP HEVC with short GOPs (its seeks land a keyframe off); fails
``get_batch`` on videos with a 90 or 270 degree rotation flag, which is how phones store
portrait video; cannot decode AV1; and has open reports of ``get_batch`` spinning forever
while holding the GIL (dmlc/decord#269, #373, #375). PyAV uses a current FFmpeg and raises
Python exceptions; tests/test_video.py checks its frames against decord where decord is right.

Every way a video can be bad (not a container, no video stream, an image renamed .mp4,
truncated, undecodable or corrupt frames, frames too large, changing size) ends in
``ItemError("decode", reason)``; the reason names the frame where that applies. What cannot
be delivered is an error, never a shorter or patched-up sample: a file whose container lists
more frames than it holds is truncated, and a sampled frame the decoder flags as corrupt is an
error. A cut-off file whose container does not count its frames (Matroska, MPEG-TS, an AVI
whose writer never finished) cannot be told from a short one: its video is the frames present.

Only the sampled frames are decoded, plus what the codec needs to reach them: each decoding
run starts at the keyframe before a sampled frame, and a run stops and seeks ahead when the
next sampled frame lies behind a later keyframe.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from itemlens.extractors.base import ItemError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from itemlens.extractors.spec import VideoInput

#: sample times are read this much late (see sample_indices): Matroska/WebM store times in
#: whole milliseconds, and float times such as 3 * 0.3 land a hair before the frame start
#: they mean. Below the length of any real frame (4 ms at 240 fps).
TIME_TOLERANCE = 1e-3


# -- which frames ---------------------------------------------------------------------------


def sample_indices(
    n_frames: int,
    frames: int,
    every_seconds: float | None = None,
    frame_starts: np.ndarray | None = None,
    end: float | None = None,
) -> list[int]:
    """The frame indices to sample, ascending and without repeats.

    Uniform (``every_seconds`` None): the middle frame of each of ``frames`` equal segments,
    ``index_i = floor((i + 0.5) * n_frames / frames)`` for ``i`` in ``range(frames)``; a video
    with at most ``frames`` frames gives each of its frames once.

    By time (``every_seconds = s``): times count from the first frame's start, so frame
    ``i`` starts at ``a_i = frame_starts[i] - frame_starts[0]`` and the video lasts
    ``L = end - frame_starts[0]``. The sample times are ``t_j = j * s``, ``j = 0, 1, 2, ...``,
    each read ``TIME_TOLERANCE`` (1 ms) late to absorb rounding: the frame on screen at
    ``t_j`` is the last frame with ``a_i <= t_j + TIME_TOLERANCE``, and ``t_j`` is used while
    ``t_j + TIME_TOLERANCE < L`` (``t_0`` always). Repeats are dropped (a slow stretch of a
    variable-frame-rate video shows one frame at several times). When more than ``frames``
    remain, ``frames`` of them are kept by the uniform rule applied to that list:
    ``kept_i = chosen[floor((i + 0.5) * m / frames)]``, ``m`` the number chosen.

    ``frame_starts``: each frame's start in seconds, in presentation order (non-decreasing);
    ``end``: when the last frame ends (default: the last start plus the interval before it,
    i.e. the last frame lasts as long as the one before; a single frame: its start).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if every_seconds is None:
        return _middles(n_frames, frames)
    if every_seconds <= 0:
        raise ValueError(f"every_seconds must be > 0, got {every_seconds}")
    if frame_starts is None:
        raise ValueError("sampling by time needs frame_starts")
    starts = np.asarray(frame_starts, dtype=np.float64)
    if starts.shape != (n_frames,):
        raise ValueError(f"frame_starts has shape {starts.shape}, expected ({n_frames},)")
    if n_frames > 1 and np.any(np.diff(starts) < 0):
        raise ValueError("frame_starts must be in presentation order (non-decreasing)")
    if end is None:
        end = starts[-1] + (starts[-1] - starts[-2] if n_frames > 1 else 0.0)
    chosen = np.flatnonzero(
        _on_screen_some_time(starts - starts[0], float(end) - starts[0], float(every_seconds))
    ).tolist()
    if len(chosen) <= frames:
        return chosen
    return [chosen[k] for k in _middles(len(chosen), frames)]


def _on_screen_some_time(starts: np.ndarray, length: float, s: float) -> np.ndarray:
    """For each frame, whether it is the frame on screen at one of the times ``t_j = j * s``
    (``t_j + tol < length``, or ``j = 0``). Worked out per frame rather than per time, so that the
    work is O(frames) however small ``s`` is: frame i is on screen at ``t_j`` when
    ``starts[i] <= t_j + tol < starts[i + 1]``, so it suffices to look at the first ``j``
    with ``t_j + tol >= starts[i]``. That ``j`` is computed in the same float operations
    (``j * s``, then ``+ tol``) as evaluating the rule time by time would use."""
    tol = TIME_TOLERANCE
    j = np.maximum(np.ceil((starts - tol) / s), 0.0)
    # the division can round either way: step j so it is exactly the first j that qualifies
    j = np.where((j > 0) & ((j - 1) * s + tol >= starts), j - 1, j)
    j = np.where(j * s + tol < starts, j + 1, j)
    t = j * s
    next_start = np.append(starts[1:], np.inf)
    return (t + tol < next_start) & ((j == 0) | (t + tol < length))


def _middles(n: int, k: int) -> list[int]:
    """floor((i + 0.5) * n / k) for i < k, in integers (no float rounding); all of
    range(n) when n <= k."""
    if n <= k:
        return list(range(n))
    return [((2 * i + 1) * n) // (2 * k) for i in range(k)]


# -- what the container says, before decoding --------------------------------------------------


@dataclass(frozen=True)
class VideoIndex:
    """The video stream's frames as the container lists them (read without decoding)."""

    #: presentation timestamp of each frame, in stream time base units, ascending
    pts: list[int]
    #: decode timestamp of each frame (its pts where the container gives none)
    dts: list[int]
    #: for each frame, the last keyframe at or before it: where decoding it has to start
    keyframe: list[int]
    #: each frame's start in seconds from the first frame
    starts: np.ndarray
    #: when the last frame ends, seconds from the first frame's start
    end: float
    width: int
    height: int
    codec: str

    @property
    def n_frames(self) -> int:
        return len(self.pts)


def index_video(container, stream, *, max_pixels: int) -> VideoIndex:
    """Read the video stream's packets (not decoding them) into a :class:`VideoIndex`, or
    raise ItemError("decode", ...) for a file that cannot give whole frames."""
    width, height = stream.codec_context.width, stream.codec_context.height
    codec = stream.codec_context.name
    if width <= 0 or height <= 0:
        raise ItemError("decode", f"video stream ({codec}) has no frame size")
    if width * height > max_pixels:
        raise ItemError(
            "decode",
            f"video frames too large: {width}x{height} = {width * height:,} pixels > max_pixels {max_pixels:,}",
        )
    packets: list[tuple[int, int, bool, int]] = []  # (pts, dts, keyframe, duration)
    listed = 0  # every packet, discarded ones included
    try:
        for packet in container.demux(stream):
            if packet.size == 0 and packet.pts is None and packet.dts is None:
                continue  # PyAV's end-of-stream marker, not a frame
            listed += 1
            if packet.is_discard:
                continue
            if packet.pts is None:
                raise ItemError("decode", f"frame {len(packets)} has no timestamp (a raw stream without a container?)")
            dts = packet.dts if packet.dts is not None else packet.pts
            packets.append((packet.pts, dts, packet.is_keyframe, packet.duration or 0))
    except ItemError:
        raise
    except Exception as exc:  # demuxer errors: broken or cut-off container
        raise ItemError("decode", f"unreadable after frame {len(packets)}: {type(exc).__name__}: {exc}") from None
    if not packets:
        raise ItemError("decode", "video stream has no frames")
    declared = stream.frames  # 0 when the container does not say (Matroska, MPEG-TS)
    if declared and listed < declared:
        # the index promises frames whose data is not in the file
        raise ItemError(
            "decode",
            f"truncated: the container lists {declared} frames but the file holds {listed}; frame {listed} is missing",
        )
    packets.sort(key=lambda p: p[0])
    pts = [p[0] for p in packets]
    if len(set(pts)) != len(pts):
        raise ItemError("decode", "two frames share a timestamp; the frame order is ambiguous")
    keyframe, last = [], 0
    for i, packet in enumerate(packets):
        # a stream that does not open with a keyframe (a cut transport stream) is decoded
        # from its first frame: the decoder skips what it cannot use, a wanted frame it
        # skips is an error
        if packet[2]:
            last = i
        keyframe.append(last)
    # seconds = ticks * num / den, as one division of exact integers: the nearest float to
    # the true time (3.0 s stays 3.0, where ticks * float(time_base) can give 3.0000000000000004)
    num, den = stream.time_base.numerator, stream.time_base.denominator
    ticks = np.asarray(pts, dtype=np.int64) - pts[0]
    starts = ticks * num / den
    if packets[-1][3] > 0:
        end = float((int(ticks[-1]) + packets[-1][3]) * num / den)
    else:  # no duration stored: the last frame lasts as long as the one before
        end = float(starts[-1] + (starts[-1] - starts[-2] if len(starts) > 1 else 0.0))
    return VideoIndex(
        pts=pts,
        dts=[p[1] for p in packets],
        keyframe=keyframe,
        starts=starts,
        end=end,
        width=width,
        height=height,
        codec=codec,
    )


# -- decoding -------------------------------------------------------------------------------

#: H.264/HEVC hold at most 16 frames for reordering: a frame not out by then is not coming
_REORDER_SLACK = 16


@dataclass(frozen=True)
class VideoSample:
    """A video's sampled frames and when they are shown: what a captioner that takes video
    natively needs (the frames with their times, and the video's length)."""

    #: uint8 [F, H, W, 3] RGB, upright
    frames: np.ndarray
    #: each frame's index in presentation order (see :func:`sample_indices`)
    indices: list[int]
    #: each frame's start in seconds from the video's first frame (by the container's timestamps)
    times: list[float]
    #: how long the video lasts in seconds, from its first frame's start to its last frame's end
    duration: float


def read_video_frames(
    data: bytes, video: VideoInput, *, max_pixels: int, threads: int = 1
) -> tuple[np.ndarray, list[int]]:
    """Decode the sampled frames of a video file's bytes: uint8 [F, H, W, 3] RGB frames,
    turned upright when the container carries a rotation flag (quarter turns), and their
    frame indices (see :func:`sample_indices`).

    ``max_pixels`` bounds a frame's width x height; ``threads`` is the codec's thread count
    (1: parallelism comes from decoding many videos at once).
    Raises ItemError("decode", reason) for anything that stops it delivering every sampled
    frame: such a video is an error, never a shorter or patched-up sample.
    """
    sample = read_video_sample(data, video, max_pixels=max_pixels, threads=threads)
    return sample.frames, sample.indices


def read_video_sample(data: bytes, video: VideoInput, *, max_pixels: int, threads: int = 1) -> VideoSample:
    """:func:`read_video_frames` with the frames' times and the video's duration (for a
    captioner that reads video natively, with its timestamps)."""
    if not data:
        raise ItemError("decode", "empty file (0 bytes)")
    with _open(data, threads) as (container, stream):
        index = index_video(container, stream, max_pixels=max_pixels)
    indices = sample_indices(index.n_frames, video.frames, video.every_seconds, index.starts, index.end)
    decoded = _decode(data, index, indices, max_pixels=max_pixels, threads=threads)
    frames = [decoded[i] for i in indices]
    if len({f.shape for f in frames}) > 1:
        sizes = ", ".join(f"{f.shape[1]}x{f.shape[0]} at frame {i}" for i, f in zip(indices, frames))
        raise ItemError("decode", f"frame size changes within the video ({sizes})")
    times = [float(index.starts[i]) for i in indices]
    return VideoSample(frames=np.stack(frames), indices=indices, times=times, duration=max(float(index.end), times[-1]))


@contextlib.contextmanager
def _open(data: bytes, threads: int):
    """The container (at the file's start) and its first video stream, or ItemError."""
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as exc:
        if data[4:8] == b"ftyp" and b"moov" not in data:
            # an MP4/MOV writer puts the frame index (the moov box) last by default
            raise ItemError(
                "decode", "an MP4/MOV file without its index (no moov box): truncated, or its writer never finished"
            ) from None
        raise ItemError(
            "decode", f"not a video file (no known container format): {type(exc).__name__}: {exc}"
        ) from None
    with container:
        form = container.format.name
        if form.endswith("_pipe") or form.startswith("image2"):
            raise ItemError("decode", f"an image ({form.removesuffix('_pipe')}), not a video")
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise ItemError("decode", f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise ItemError("decode", "the video stream has no decoder (an unknown codec, or a broken header)")
        stream.codec_context.thread_count = threads
        if threads != 1:
            stream.codec_context.thread_type = "AUTO"
        yield container, stream


def _decode(
    data: bytes, index: VideoIndex, wanted: list[int], *, max_pixels: int, threads: int
) -> dict[int, np.ndarray]:
    """Frames ``wanted`` (ascending) as RGB arrays, decoded in runs: a run puts the decoder
    at the keyframe before the next missing frame and decodes forward until the frame after
    that lies behind a later keyframe (the next run goes there) or all are done.

    Putting the decoder at a keyframe, cheapest first: a seek to the keyframe's pts (exact in
    MP4, Matroska/WebM and AVI), a seek to its dts (exact in MPEG-TS, where a pts seek lands a
    keyframe late), decoding from the file's start (always right, slowest). A seek that lands
    late shows up as a first frame after the keyframe, and the next way is tried; one that
    lands early only costs decoding. Each run starts at a later keyframe than the one before,
    so there are at most len(wanted) runs of at most three tries.
    """
    out: dict[int, np.ndarray] = {}
    pending = list(wanted)
    frame_of = {pts: i for i, pts in enumerate(index.pts)}
    previous_key = -1
    with contextlib.ExitStack() as stack:
        container, stream = stack.enter_context(_open(data, threads))
        at_start = True  # freshly opened, nothing decoded yet
        while pending:
            key = index.keyframe[pending[0]]
            if key <= previous_key:  # cannot happen: a run either advances or raises
                raise ItemError("decode", f"frame {pending[0]} of {index.n_frames} could not be reached")
            previous_key = key
            seeks = [] if key == 0 else list(dict.fromkeys([index.pts[key], index.dts[key]]))
            for seek_ts in [*seeks, None]:
                if seek_ts is not None:
                    _seek(container, stream, seek_ts, pending[0], index.n_frames)
                elif not at_start:  # from the file's start: a fresh container
                    stack.close()
                    container, stream = stack.enter_context(_open(data, threads))
                at_start = False
                if _run(container, stream, index, frame_of, pending, out, max_pixels, key=key):
                    break
            else:
                raise ItemError(
                    "decode",
                    f"frame {pending[0]} of {index.n_frames} could not be decoded (the decoder did not produce it)",
                )
    return out


def _seek(container, stream, ts: int, target: int, n: int) -> None:
    try:
        container.seek(ts, stream=stream, backward=True)
    except Exception as exc:
        raise ItemError("decode", f"cannot seek to frame {target} of {n}: {type(exc).__name__}: {exc}") from None


def _run(
    container,
    stream,
    index: VideoIndex,
    frame_of: dict[int, int],
    pending: list[int],
    out: dict[int, np.ndarray],
    max_pixels: int,
    *,
    key: int,
) -> bool:
    """Decode forward from where the container is (at or before keyframe ``key``), moving
    frames in ``pending`` to ``out``. True: all done, or the next pending frame lies behind a
    keyframe after both the current frame and ``key``, so a new seek reaches it sooner.
    False: the decoder did not start at or before ``key`` (a seek landed late), or it passed
    the next pending frame without producing it."""
    wanted = set(pending)
    first = True
    try:
        for frame in container.decode(stream):
            i = frame_of.get(frame.pts)
            if i is None:
                continue  # e.g. an open GOP's leading frame whose references the seek skipped
            if first and i > key:
                return False
            first = False
            if i in wanted and i not in out:
                out[i] = _to_rgb(frame, i, index.n_frames, max_pixels)
            while pending and pending[0] in out:
                pending.pop(0)
            if not pending or index.keyframe[pending[0]] > max(i, key):
                return True
            if i > pending[0] + _REORDER_SLACK:
                return False
    except ItemError:
        raise
    except Exception as exc:  # corrupt data the decoder gives up on
        raise ItemError(
            "decode", f"frame {pending[0]} of {index.n_frames} could not be decoded: {type(exc).__name__}: {exc}"
        ) from None
    return False


def _to_rgb(frame, i: int, n: int, max_pixels: int) -> np.ndarray:
    if frame.is_corrupt:
        raise ItemError("decode", f"frame {i} of {n} is corrupt")
    if frame.width * frame.height > max_pixels:
        raise ItemError("decode", f"frame {i} too large: {frame.width}x{frame.height} > max_pixels {max_pixels:,}")
    rgb = frame.to_ndarray(format="rgb24")
    # the display matrix turns the stored picture counter-clockwise by frame.rotation degrees
    # (phones store portrait video as landscape plus a 90 or 270 degree flag)
    turns = round(frame.rotation / 90) % 4
    if turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=turns))
    return rgb


# -- frames as pictures -----------------------------------------------------------------------


def frame_grid(frames: np.ndarray, *, columns: int | None = None, max_side: int | None = None) -> Image.Image:
    """The frames tiled in one picture, row-major in time order: frame k at row
    ``k // columns``, column ``k % columns`` (``columns`` defaults to ceil(sqrt(F)), a near
    square grid); unused tiles are black. Used to caption a video with an image captioner.

    ``max_side``: shrink the tiles so that the grid's longer side is at most this many pixels.
    """
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [F, H, W, 3] with F >= 1, got {frames.dtype} {frames.shape}")
    count, height, width = frames.shape[:3]
    columns = columns or math.ceil(math.sqrt(count))
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    rows = math.ceil(count / columns)
    tiles = to_images(frames)
    if max_side is not None and max(columns * width, rows * height) > max_side:
        scale = max_side / max(columns * width, rows * height)
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
        tiles = [t.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0) for t in tiles]
    grid = Image.new("RGB", (columns * width, rows * height))
    for k, tile in enumerate(tiles):
        grid.paste(tile, ((k % columns) * width, (k // columns) * height))
    return grid


def to_images(frames: np.ndarray) -> list[Image.Image]:
    """uint8 [F, H, W, 3] frames as RGB PIL images."""
    from PIL import Image

    return [Image.fromarray(np.ascontiguousarray(f), "RGB") for f in frames]
