"""Keyframe seeking and timestamp tolerance of the video reader."""

from __future__ import annotations

import numpy as np
import pytest

from recap_ray.data import video


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
