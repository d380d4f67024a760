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
    assert len(decoded) <= 3  # keyframe every 2 frames: at most a keyframe and one more


def test_timestamp_outside_tolerance_is_an_error(clip):
    path, _ = clip
    with pytest.raises(video.FrameTimestampError, match="no frame within"):
        video.VideoReader(path).frames_at([10.5 / 30])
