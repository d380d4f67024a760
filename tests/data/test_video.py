"""Keyframe seeking and timestamp tolerance of the video reader."""

from __future__ import annotations

import numpy as np
import pytest

from recap_ray.data import dataset, video
from tests.data.conftest import CAMERAS


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    n = 240
    frames = np.zeros((n, 16, 16, 3), np.uint8)
    frames[..., 0] = (np.arange(n) % 256)[:, None, None]
    video.encode(path, frames, fps=30)
    return path, n


def test_random_access_equals_sequential_decode(clip):
    path, n = clip
    seq = video.VideoReader(path).frames_at(np.arange(n) / 30)
    rng = np.random.default_rng(0)
    idx = rng.permutation(n)[:40]
    rand = video.VideoReader(path).frames_at(idx / 30)
    np.testing.assert_array_equal(rand, seq[idx])


def test_random_access_seeks_instead_of_decoding_from_start(clip):
    path, _ = clip
    reader = video.VideoReader(path)
    decoded = []
    original = reader._next

    def counting():
        item = original()
        decoded.append(item)
        return item

    reader._next = counting
    reader.frames_at([230 / 30])
    assert len(decoded) == 1  # frame 230 is a keyframe (every 2 frames): the index seeks right to it
    decoded.clear()
    reader.frames_at([101 / 30])
    assert len(decoded) == 2  # keyframe 100, then 101


def test_sequential_reads_do_not_seek(clip):
    path, n = clip
    reader = video.VideoReader(path)
    seeks = []
    original = reader._restart
    reader._restart = lambda ts, exact=True: (seeks.append(ts), original(ts, exact))
    for k in range(0, 60):
        reader.frames_at([k / 30])
    assert len(seeks) == 1


def test_seek_landing_past_the_target_falls_back_to_a_conservative_seek(clip):
    # As with reordered frames, where index (decode) timestamps and seeks disagree with pts.
    path, n = clip
    expected = video.VideoReader(path).frames_at(np.arange(n) / 30)
    reader = video.VideoReader(path)
    inner, keyframe_ts = reader._container, set(reader._index_ts.tolist())
    step = int(reader._index_ts[1])

    class Overshooting:
        def seek(self, offset, **kw):  # index-guided seeks land 3 frames late
            return inner.seek(offset + 3 * step if offset in keyframe_ts else offset, **kw)

        def __getattr__(self, name):
            return getattr(inner, name)

    reader._container = Overshooting()
    restarts = []
    original = reader._restart
    reader._restart = lambda ts, exact=True: (restarts.append(exact), original(ts, exact))
    idx = np.array([200, 57, 13, 120])
    np.testing.assert_array_equal(reader.frames_at(idx / 30), expected[idx])
    assert restarts.count(False) == len(idx)  # every index-guided seek overshot and was redone


def test_timestamp_outside_tolerance_is_an_error(clip):
    path, _ = clip
    with pytest.raises(video.FrameTimestampError, match="no frame within"):
        video.VideoReader(path).frames_at([10.5 / 30])


@pytest.fixture(scope="module")
def av1_clip(tmp_path_factory):
    """lerobot's default encoding (libsvtav1, a keyframe every 2 frames), decoded by dav1d."""
    path = tmp_path_factory.mktemp("video") / "av1.mp4"
    n = 24
    yy, xx = np.mgrid[0:64, 0:64]
    frames = np.zeros((n, 64, 64, 3), np.uint8)
    frames[..., 0] = (xx[None] + 8 * np.arange(n)[:, None, None]) % 256
    frames[..., 1] = (yy * 4) % 256
    video.encode(path, frames, fps=30, codec="libsvtav1")
    return path, n


def test_threaded_av1_decoder_holds_no_frame_back(av1_clip):
    path, n = av1_clip
    reader = video.VideoReader(path, threads=2)
    assert reader._stream.codec_context.name == "libdav1d"
    inner, sent = reader._container, []

    class CountingPackets:  # what the decoder is fed before it returns the frame asked for
        def decode(self, stream):
            for packet in inner.demux(stream):
                sent.append(packet.pts)
                yield from packet.decode()

        def __getattr__(self, name):
            return getattr(inner, name)

    reader._container = CountingPackets()
    reader.frames_at([20 / 30])
    assert len(sent) == 1  # keyframe 20 comes out as soon as its packet goes in
    sent.clear()
    reader.frames_at([7 / 30])
    assert len(sent) == 2  # keyframe 6, then 7
    seq = video.VideoReader(path, threads=1).frames_at(np.arange(n) / 30)
    idx = np.random.default_rng(0).permutation(n)
    np.testing.assert_array_equal(video.VideoReader(path, threads=2).frames_at(idx / 30), seq[idx])


def test_returned_frames_share_no_memory(av1_clip):
    path, _ = av1_clip
    reader = video.VideoReader(path)
    first = reader.frames_at([5 / 30])
    expected = first.copy()
    first[:] = 0  # callers may write to what they get
    again = reader.frames_at([5 / 30])  # the same frame, still the decoder's latest
    assert not np.shares_memory(first, again)
    np.testing.assert_array_equal(again, expected)


def test_video_frames_of_several_cameras_equal_one_call_each(small_dataset):
    keys = [*CAMERAS, "observation.images.right_wrist_camera"]  # two videos (decoded in threads) and an image
    with dataset.open(small_dataset) as ds:
        for ep, idx in [(1, [14, 0, 7]), (0, [3]), (2, [8, 8])]:
            got = ds.frames_of(ep, keys, idx)
            assert list(got) == keys
            for key in keys:
                np.testing.assert_array_equal(got[key], ds.frames(ep, key, idx))
        with pytest.raises(video.VideoError, match="episode 0, observation.images.* no frame within"):  # raised in its thread
            ds._timestamps[0] = ds._episode_timestamps(0) + 0.5 / 30  # half-way between frames
            ds.frames_of(0, keys, [0])


def _moving_disc(n: int = 30, size: int = 96) -> np.ndarray:
    """A disc and a bar moving over a checkered table at the simulator's 96x96 (6 macroblocks a row)."""
    yy, xx = np.mgrid[:size, :size]
    frames = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        frames[t] = (205, 195, 170)
        frames[t][(xx // 8 + yy // 8) % 2 == 0] = (180, 170, 150)
        frames[t][(xx - 20 - t) ** 2 + (yy - 30 - 3 * (t % 13)) ** 2 <= 100] = (255, 140, 0)
        frames[t][size - 20 + t % 8 : size - 12 + t % 8, 10 + t : 40 + t] = (95, 95, 105)
    return frames


def _encode_over_dirty_heap(path, frames, fill: bytes) -> bytes:
    """Encode right after freeing every other one of many heap blocks that hold `fill` (what a busy
    process leaves behind: the generator's main process frees each episode's unpickled frames)."""
    rng = np.random.default_rng(0)
    blocks = [fill * int(n) for n in rng.permutation(np.concatenate([rng.integers(600, 4096, 200),
                                                                     rng.integers(4096, 300_000, 200)]))]
    del blocks[::2]
    video.encode(path, frames, fps=30)
    del blocks
    return path.read_bytes()


def test_h264_bytes_do_not_depend_on_leftover_heap_contents(tmp_path):
    # Before x264 ran its macroblock tree on every CPU alike, freed memory holding small negative
    # numbers (0xff..) changed the bottom rows' quantizers in every encode, zeros in none.
    frames = _moving_disc()
    clean = _encode_over_dirty_heap(tmp_path / "a.mp4", frames, b"\x00")
    assert _encode_over_dirty_heap(tmp_path / "b.mp4", frames, b"\xff") == clean
    assert _encode_over_dirty_heap(tmp_path / "c.mp4", frames, b"\xe0\xff") == clean


def test_h264_bytes_do_not_depend_on_the_cpu(tmp_path, monkeypatch):
    frames = _moving_disc()
    video.encode(tmp_path / "simd.mp4", frames, fps=30)
    options = video._encoder_options

    def without_simd(codec: str, gop: int, crf: int) -> dict[str, str]:  # x264's plain C code, as on any CPU
        out = options(codec, gop, crf)
        out["x264-params"] = ":".join(filter(None, [out.get("x264-params"), "asm=0"]))
        return out

    monkeypatch.setattr(video, "_encoder_options", without_simd)
    video.encode(tmp_path / "c.mp4", frames, fps=30)
    assert (tmp_path / "c.mp4").read_bytes() == (tmp_path / "simd.mp4").read_bytes()
