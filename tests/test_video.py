"""Video frame sampling and decoding (extractors/video.py), checked against decord as an
independent reader and against the sampling rule computed here from scratch.

The generated videos draw each frame's number into its pixels (tests/media_video.py), so a
check can also read which frame it was handed. No Ray.

decord is imported only inside the tests that use it: it loads its bundled FFmpeg 4.1
libraries (libvpx among them) with RTLD_GLOBAL, and from then on they shadow PyAV's own in
the whole process (PyAV can no longer open its VP9 encoder, for one).
"""

import contextlib
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from itemlens.extractors import ItemError
from itemlens.extractors import video as video_module
from itemlens.extractors.spec import VideoInput
from itemlens.extractors.video import TIME_TOLERANCE, frame_grid, read_video_frames, sample_indices, to_images

from .conftest import ROOT
from .media_video import frame_number, frame_pixels, unfinished_avi, write_bad_videos, write_video

MAX_PIXELS = 10_000_000
LATE = 0.001  # sample times are read 1 ms late (the documented TIME_TOLERANCE)


def sample(path, frames=8, every_seconds=None, *, max_pixels=MAX_PIXELS, threads=1):
    return read_video_frames(
        path.read_bytes(),
        VideoInput(video="v", frames=frames, every_seconds=every_seconds),
        max_pixels=max_pixels,
        threads=threads,
    )


def decord_frames(path, indices):
    """The same frames read by decord from the file path (no rotation flags here: decord
    0.6.0 cannot read 90-degree-rotated video)."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(list(indices)).asnumpy()


def every_frame(path):
    """All frames, decoded front to back with no seeking, in presentation order."""
    import av

    with av.open(str(path)) as container:
        decoded = [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return [rgb for _, rgb in sorted(decoded, key=lambda pair: pair[0])]


def uniform_reference(n, frames):
    """The uniform rule as documented, in floats: the middle of each of `frames` segments."""
    if n <= frames:
        return list(range(n))
    return [math.floor((i + 0.5) * n / frames) for i in range(frames)]


def by_time_reference(starts, end, every, frames):
    """The by-time rule as documented, time by time: the frame on screen at t_j = j * every
    read 1 ms late (t_j + 1 ms < length, and t_0), repeats dropped, then thinned by the
    middle rule."""
    length = float(end) - float(starts[0])
    starts = [float(s) - float(starts[0]) for s in starts]
    chosen, j = [], 0
    while j == 0 or j * every + LATE < length:
        t = j * every
        on_screen = max(i for i, s in enumerate(starts) if s <= t + LATE)
        if on_screen not in chosen:
            chosen.append(on_screen)
        j += 1
    return [chosen[k] for k in uniform_reference(len(chosen), frames)]


# -- the sampling rule ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 30, 31, 100, 1001])
@pytest.mark.parametrize("frames", [1, 3, 8, 16])
def test_uniform_indices_follow_the_middle_rule(n, frames):
    assert sample_indices(n, frames) == uniform_reference(n, frames)


def test_the_documented_tolerance():
    assert TIME_TOLERANCE == LATE


def test_uniform_examples_by_hand():
    assert sample_indices(30, 8) == [1, 5, 9, 13, 16, 20, 24, 28]
    assert sample_indices(5, 4) == [0, 1, 3, 4]
    assert sample_indices(3, 8) == [0, 1, 2]  # fewer frames than asked: each once
    assert sample_indices(100, 1) == [50]


def test_by_time_example_by_hand():
    # frame 1 is on screen only from 0.05 s to 0.08 s: no sample time falls in it; frame 3
    # (0.15 s to 0.4 s) is on screen at 0.2 and 0.3 and is taken once
    starts = np.array([0.0, 0.05, 0.08, 0.15, 0.4, 0.5])
    assert sample_indices(6, 8, 0.1, starts, end=0.6) == [0, 2, 3, 4, 5]
    # more than `frames` remain: thinned by the middle rule, chosen[floor((i + 0.5) * 5 / 3)]
    assert sample_indices(6, 3, 0.1, starts, end=0.6) == [0, 3, 5]
    # the end is exclusive (t = 0.6 is not sampled), t = 0 always is
    assert sample_indices(6, 8, 0.6, starts, end=0.6) == [0]
    assert sample_indices(1, 8, 5.0, np.array([0.0])) == [0]


def test_by_time_tolerates_float_and_millisecond_rounding():
    # 3 * 0.3 == 0.8999999999999999 falls a hair before frame 9 starts (0.9 s); it means 0.9
    starts = np.arange(30) / 10
    assert sample_indices(30, 256, 0.3, starts, end=3.0) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    # Matroska stores 30 fps starts as whole milliseconds (0.067 for 1/15 s): sampling every
    # frame interval still finds every frame
    ms = np.round(np.arange(90) * 1000 / 30) / 1000
    assert sample_indices(90, 256, 1 / 30, ms, end=3.0) == list(range(90))


def test_by_time_matches_the_rule_time_by_time_on_random_streams():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 60))
        gaps = rng.choice([0.010, 0.033, 0.040, 0.1, 0.25, 1.0], size=n)
        starts = np.concatenate([[0.0], np.cumsum(gaps[:-1])]) + float(rng.choice([0.0, 1.5]))
        end = float(starts[-1] + gaps[-1])
        every = float(rng.choice([0.01, 0.033, 0.1, 0.3, 0.5, 1.0, 2.5]))
        frames = int(rng.choice([1, 4, 8, 256]))
        assert sample_indices(n, frames, every, starts, end) == by_time_reference(starts, end, every, frames), (
            n,
            every,
            frames,
        )


def test_by_time_work_grows_with_frames_not_with_sample_times():
    # one microsecond steps over an hour of 30 fps video: 3.6e9 sample times, 108000 frames
    n = 108_000
    starts = np.arange(n) / 30
    assert sample_indices(n, n, 1e-6, starts, end=n / 30) == list(range(n))


def test_sample_indices_rejects_misuse():
    with pytest.raises(ValueError, match="frame_starts"):
        sample_indices(10, 4, every_seconds=1.0)
    with pytest.raises(ValueError, match="shape"):
        sample_indices(10, 4, 1.0, np.zeros(3))
    with pytest.raises(ValueError, match="presentation order"):
        sample_indices(3, 4, 1.0, np.array([0.0, 0.2, 0.1]))
    with pytest.raises(ValueError):
        sample_indices(0, 4)


# -- decoding real files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {
        "cfr": write_video(folder / "cfr.mp4", n_frames=30),
        "vfr": write_video(folder / "vfr.mp4", n_frames=40, vfr=True),
        "odd": write_video(folder / "odd.mp4", n_frames=20, width=67, height=45),
        "audio": write_video(folder / "audio.mp4", n_frames=20, audio=True),
        "few": write_video(folder / "few.mp4", n_frames=3),
        "mpeg4": write_video(folder / "mpeg4.avi", n_frames=25, codec="mpeg4"),
        "gop_mp4": write_video(folder / "gop.mp4", n_frames=200, gop=10),
        "gop_ts": write_video(folder / "gop.ts", n_frames=120, gop=10),
        "gop_mkv": write_video(folder / "gop.mkv", n_frames=120, gop=10),
        # HEVC, not VP9: once decord is imported its bundled libvpx shadows PyAV's, and PyAV
        # can no longer open the VP9 encoder in this process
        "hevc_mkv": write_video(folder / "hevc.mkv", n_frames=60, codec="libx265", gop=10),
    }


def test_uniform_frames_equal_decords_and_show_the_right_frame_numbers(videos):
    frames, indices = sample(videos["cfr"], frames=8)
    assert indices == uniform_reference(30, 8)
    assert frames.dtype == np.uint8 and frames.shape == (8, 48, 64, 3)
    assert np.array_equal(frames, decord_frames(videos["cfr"], indices))
    assert [frame_number(f) for f in frames] == indices


@pytest.mark.parametrize("name", ["gop_mp4", "gop_ts", "gop_mkv", "hevc_mkv", "mpeg4"])
def test_seeking_between_keyframes_gets_the_right_frames(videos, name):
    # short GOPs: the reader seeks to a keyframe per sampled frame (MPEG-TS seeks by byte
    # position and lands a keyframe late on a pts seek; the reader must notice). Checked
    # against a front-to-back decode and the drawn frame numbers, not decord: on H.264 in
    # MPEG-TS and on open-GOP HEVC, decord 0.6.0 itself returns the wrong frames.
    reference = every_frame(videos[name])
    for frames, every in [(8, None), (3, None), (8, 0.7)]:
        got, indices = sample(videos[name], frames=frames, every_seconds=every)
        if every is None:
            assert indices == uniform_reference(len(reference), frames)
        assert [frame_number(f) for f in got] == indices, (name, frames, every)
        assert all(np.array_equal(f, reference[i]) for f, i in zip(got, indices)), (name, frames, every)
    if name in ("gop_mp4", "gop_mkv", "mpeg4"):
        assert np.array_equal(got, decord_frames(videos[name], indices))


def test_by_seconds_picks_the_frame_on_screen_in_a_variable_frame_rate_video(videos):
    import decord

    path = videos["vfr"]
    reader = decord.VideoReader(str(path), num_threads=1)
    stamps = reader.get_frame_timestamp(list(range(len(reader))))  # [n, 2]: start, end
    starts, end = stamps[:, 0].astype(np.float64), float(stamps[-1, 1])
    assert len(set(np.round(np.diff(starts), 3))) > 1, "the test video should have irregular frame gaps"
    for every, frames in [(0.1, 256), (0.1, 8), (0.35, 256), (1.0, 3)]:
        expected = by_time_reference(starts, end, every, frames)
        got, indices = sample(path, frames=frames, every_seconds=every)
        assert indices == expected, (every, frames)
        assert [frame_number(f) for f in got] == indices
        assert np.array_equal(got, decord_frames(path, indices))
    # the slow frames (250 ms) are on screen at several of the 0.1 s sample times: fewer
    # frames than times
    assert len(by_time_reference(starts, end, 0.1, 256)) < math.ceil(end / 0.1)


def test_constant_frame_rate_by_seconds(videos):
    _, indices = sample(videos["cfr"], frames=256, every_seconds=0.5)  # 10 fps, 3 s
    assert indices == [0, 5, 10, 15, 20, 25]


def test_odd_sizes_audio_tracks_and_short_videos(videos):
    frames, indices = sample(videos["odd"], frames=4)
    assert frames.shape == (4, 45, 67, 3)
    assert [frame_number(f) for f in frames] == indices
    assert np.array_equal(frames, decord_frames(videos["odd"], indices))

    frames, indices = sample(videos["audio"], frames=4)  # the AAC track is ignored
    assert [frame_number(f) for f in frames] == indices == uniform_reference(20, 4)

    frames, indices = sample(videos["few"], frames=8)  # fewer frames than asked
    assert indices == [0, 1, 2] and frames.shape[0] == 3
    assert [frame_number(f) for f in frames] == [0, 1, 2]


def test_threads_do_not_change_the_frames(videos):
    one, indices = sample(videos["gop_mp4"], frames=8, threads=1)
    two, indices2 = sample(videos["gop_mp4"], frames=8, threads=2)
    assert indices == indices2 and np.array_equal(one, two)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_video_comes_out_upright(tmp_path, rotation):
    # phones store portrait video as landscape pixels plus a rotation flag; the flag means
    # "turn counter-clockwise by this much to show it" (PyAV's set_display_rotation)
    path = write_video(tmp_path / "rotated.mp4", n_frames=10, rotation=rotation)
    frames, indices = sample(path, frames=4)
    turns = rotation // 90
    assert frames.shape[1:3] == ((64, 48) if turns % 2 else (48, 64))
    for frame, index in zip(frames, indices):
        stored = np.rot90(frame, k=-turns)  # undo the display rotation
        assert frame_number(stored) == index
        assert np.abs(stored.astype(int) - frame_pixels(index, 64, 48)).max() <= 16


@pytest.mark.parametrize("name", ["gop_mp4", "gop_ts", "gop_mkv"])
def test_only_the_frames_needed_are_decoded(videos, monkeypatch, name):
    """A keyframe every 10 frames: 4 samples need at most 4 GOPs decoded (plus the odd
    frame from a seek that landed late), not the whole video."""
    decoded = []
    real_open = video_module._open

    class Counting:
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def decode(self, stream):
            for frame in self._container.decode(stream):
                decoded.append(frame.pts)
                yield frame

    @contextlib.contextmanager
    def counting_open(data, threads):
        with real_open(data, threads) as (container, stream):
            yield Counting(container), stream

    monkeypatch.setattr(video_module, "_open", counting_open)
    frames, indices = sample(videos[name], frames=4)
    n = len(every_frame(videos[name]))
    assert [frame_number(f) for f in frames] == indices == uniform_reference(n, 4)
    assert len(decoded) <= 4 * (10 + 3), f"decoded {len(decoded)} frames of {n} for 4 samples"


def test_frames_larger_than_max_pixels_are_refused(videos):
    with pytest.raises(ItemError) as info:
        sample(videos["cfr"], max_pixels=64 * 48 - 1)
    assert info.value.stage == "decode" and "too large" in info.value.reason and "64x48" in info.value.reason


# -- bad files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    return write_bad_videos(tmp_path_factory.mktemp("bad-videos"))


@pytest.mark.parametrize(
    "name, reason",
    [
        ("truncated", "without its index (no moov box): truncated"),
        ("truncated_faststart", "truncated: the container lists 60 frames"),
        ("truncated_avi", "truncated: the container lists 60 frames"),
        ("corrupt", "not a video file"),
        ("image", "an image (jpeg), not a video"),
        ("empty", "empty file"),
        ("text", "not a video file"),
        ("audio_only", "no video stream (streams: audio)"),
    ],
)
@pytest.mark.parametrize("every_seconds", [None, 0.5])
def test_bad_videos_are_decode_errors_with_a_reason(bad_videos, name, reason, every_seconds):
    with pytest.raises(ItemError) as info:
        sample(bad_videos[name], every_seconds=every_seconds)
    assert info.value.stage == "decode"
    assert reason in info.value.reason


def test_truncated_errors_name_the_missing_frame(bad_videos):
    with pytest.raises(ItemError, match=r"frame \d+ is missing"):
        sample(bad_videos["truncated_avi"])


def test_an_unfinished_avi_gives_the_frames_it_holds(tmp_path):
    # no frame count in the header, so nothing says frames are missing: the video is the
    # 10 frames present (decord 0.6.0 kills the process on this file)
    path = unfinished_avi(tmp_path / "unfinished.avi", n_frames=60, keep_frames=10)
    frames, indices = sample(path, frames=4)
    assert indices == uniform_reference(10, 4)
    assert [frame_number(f) for f in frames] == indices
    _, indices = sample(path, frames=8, every_seconds=0.5)
    assert indices == [0, 5]


def test_the_process_survives_every_bad_video(bad_videos, tmp_path):
    """In a child process, so that a crash in native code shows as a failed test, not a dead
    test run: every bad file ends in an ItemError, the unfinished AVI decodes."""
    unfinished = unfinished_avi(tmp_path / "unfinished.avi")
    paths = {**{k: str(v) for k, v in bad_videos.items()}, "unfinished_avi": str(unfinished)}
    script = textwrap.dedent("""
        import json, sys
        from itemlens.extractors import ItemError
        from itemlens.extractors.spec import VideoInput
        from itemlens.extractors.video import read_video_frames
        out = {}
        for name, path in json.loads(sys.argv[1]).items():
            for every in (None, 0.5):
                try:
                    frames, _ = read_video_frames(open(path, "rb").read(), VideoInput(video="v", every_seconds=every),
                                                  max_pixels=10_000_000)
                    out[f"{name}/{every}"] = f"ok {len(frames)}"
                except ItemError as exc:
                    out[f"{name}/{every}"] = exc.stage
        print(json.dumps(out))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(paths)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for key, result in results.items():
        expected = "ok" if key.startswith("unfinished_avi") else "decode"
        assert result.startswith(expected), (key, result)
    assert len(results) == 2 * len(paths)


def test_importing_the_module_loads_neither_torch_nor_pyav():
    code = (
        "import sys, itemlens.extractors.video; "
        "print(sorted(m for m in ('torch', 'av', 'decord', 'PIL') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- frames as pictures -------------------------------------------------------------------------


def test_frame_grid_puts_frame_k_at_row_k_div_columns_column_k_mod_columns():
    frames = np.stack([frame_pixels(k, 64, 48) for k in range(5)])
    grid = np.asarray(frame_grid(frames))  # 5 frames: 3 columns, 2 rows
    assert grid.shape == (2 * 48, 3 * 64, 3)
    for k in range(5):
        row, col = divmod(k, 3)
        tile = grid[row * 48 : (row + 1) * 48, col * 64 : (col + 1) * 64]
        assert np.array_equal(tile, frames[k]) and frame_number(tile) == k
    assert not grid[48:, 128:].any()  # the unused sixth tile is black

    grid = np.asarray(frame_grid(frames, columns=2))  # 2 columns, 3 rows
    assert grid.shape == (3 * 48, 2 * 64, 3)
    assert frame_number(grid[2 * 48 :, :64]) == 4


def test_frame_grid_max_side_shrinks_tiles_and_keeps_the_layout():
    frames = np.stack([frame_pixels(k, 64, 48) for k in range(4)])
    grid = frame_grid(frames, max_side=64)  # 2x2 of 64x48 -> 128x96 -> 64x48
    assert grid.size == (64, 48)
    small = np.asarray(grid)
    for k in range(4):
        row, col = divmod(k, 2)
        assert frame_number(small[row * 24 : (row + 1) * 24, col * 32 : (col + 1) * 32]) == k


def test_to_images_and_frame_grid_input_checks():
    frames = np.stack([frame_pixels(k, 8, 6) for k in range(2)])
    images = to_images(frames)
    assert [im.size for im in images] == [(8, 6), (8, 6)] and images[1].mode == "RGB"
    assert np.array_equal(np.asarray(images[1]), frames[1])
    with pytest.raises(ValueError):
        frame_grid(frames.astype(np.float32))
    with pytest.raises(ValueError):
        frame_grid(frames[:0])
